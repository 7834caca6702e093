"""Tests for reproduce/table1.py on reproduce/pipeline.py: the smoke table, its resume, its labels.

One smoke-scale run (module fixture) is shared: it is stopped after a stage with --stop-after
(as if killed between stages), then rerun to the end. Its backbones come from the session's
shared smoke-backbone folder (tests/conftest.py). The pipeline's pieces (formatter, seeds,
skip-when-done, hours, locks, key rules) are tested in tests/test_pipeline.py.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reproduce import pipeline as pl
from reproduce import table1 as t1

REPO = Path(__file__).resolve().parents[1]
STOP = "twinmae/vot_train"
SMOKE_BANNER = pl.BANNERS["smoke"]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_backbones):
    """Run 1 stops after twinmae/vot_train; run 2 finishes. -> dict of paths, outputs, mtimes."""
    out = tmp_path_factory.mktemp("table1_smoke")
    cmd = [sys.executable, "-m", "reproduce.table1", "--smoke", "--out", str(out), "--backbones", str(smoke_backbones)]
    first = subprocess.run(cmd + ["--stop-after", STOP], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    finished = {p: p.stat().st_mtime_ns for p in (out / "seed0").glob("*/*.json")}
    events_first = len((out / "pipeline.jsonl").read_text().splitlines())
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    events = [json.loads(line) for line in (out / "pipeline.jsonl").read_text().splitlines()]
    return {"out": out, "cmd": cmd, "first": first.stdout, "second": second.stdout, "finished": finished,
            "events_first": events[:events_first], "events_second": events[events_first:],
            "backbones": smoke_backbones}


def test_smoke_run_writes_a_complete_table(smoke):
    """Every row of the table is numbered in every cell; the GOT-10k server zip is written."""
    lines = (smoke["out"] / "table1.csv").read_text().splitlines()
    recs = list(csv.DictReader(lines[1:]))                       # line 0 is the banner
    assert [r["row"] for r in recs] == ["none", "image_mae", "twinmae", "dropmae", "hold"]
    assert all(r["status"] == "done" for r in recs)              # every tiny row can run
    for r in recs[:4]:
        for m in t1.METRICS:
            assert 0.0 <= float(r[f"{m}_ours"]) <= 100.0, (r["row"], m)
            assert float(r[f"{m}_paper"]) > 50.0
        assert r[f"{m}_std"] == ""                               # one seed: no std
    pre = {r["row"]: r["pretrain_h_ours"] for r in recs}
    assert pre["none"] == "" and all(float(pre[k]) > 0 for k in ("image_mae", "twinmae", "dropmae"))
    assert (smoke["out"] / "seed0" / "dropmae" / "got10k" / "got10k_test.zip").is_file()   # for the server
    md = (smoke["out"] / "table1.md").read_text()
    assert md.count("\n| ") == 6                                  # header + 5 rows


def test_the_baseline_row_holds_the_first_box_and_the_first_masks(smoke):
    """The no-network row: no backbone, no training; its AO is that of the first GT box held
    (per-frame IoUs by eval.sot's rules, recomputed here from the GT files) and its J&F that of
    the first masks held, which on frames identical to frame 0 is perfect."""
    from eval import davis, sot
    hold = next(r for r in csv.DictReader((smoke["out"] / "table1.csv").read_text().splitlines()[1:])
                if r["row"] == "hold")
    assert all(hold[f"{m}_paper"] == "" for m in t1.METRICS) and hold["pretrain_h_ours"] == ""
    done = {p.stem for p in (smoke["out"] / "seed0" / "hold").glob("*.json")}
    assert done == {"vot_val", "vos_val"}                                   # no pretrain / train stages
    got = Path(json.loads((smoke["out"] / "data" / "data.json").read_text())["result"]["paths"]["got10k"])
    ious = []
    for seq in sot.read_sequence_list(got / "val" / "list.txt"):
        gt = sot.read_boxes(got / "val" / seq / "groundtruth.txt")
        cover = sot.read_numbers(got / "val" / seq / "cover.label")
        bound = sot.read_got10k_resolution(got / "val" / seq / "meta_info.ini")
        ious.append(sot.got10k_sequence_ious(gt[[0] * len(gt)], gt, cover, bound))
    assert float(hold["AO_ours"]) == pytest.approx(100 * np.concatenate(ious).mean(), abs=0.01)
    assert 0.0 < float(hold["AO_ours"]) < 100.0
    root = Path(json.loads((smoke["out"] / "data" / "data.json").read_text())["result"]["paths"]["davis"])
    per_object = []                               # J: IoU of each first mask with its later masks
    for seq in davis.read_sequence_list(root, "val", 2017):
        gt = [davis.read_index_png(p) for p in davis.annotation_paths(root, seq)[:-1]]   # last: unscored
        for k in range(1, int(gt[0].max()) + 1):
            a = gt[0] == k
            per_object.append(np.mean([(a & (g == k)).sum() / max((a | (g == k)).sum(), 1) for g in gt[1:]]))
    assert float(hold["J_ours"]) == pytest.approx(100 * np.mean(per_object), abs=0.01)
    assert 0.0 < float(hold["J&F_ours"]) < 100.0


def test_backbones_come_from_the_shared_cache_with_their_collapse_check(smoke):
    """The pretrain stages point into the shared folder; every row (random init for 'none') has
    a token cosine in (-1, 1), printed under the table and written to collapse.json."""
    for row in ("image_mae", "twinmae", "dropmae"):
        res = json.loads((smoke["out"] / "seed0" / row / "pretrain.json").read_text())["result"]
        assert Path(res["checkpoint"]).is_file()
        assert Path(res["checkpoint"]).parent.parent == smoke["backbones"]
        assert res["epochs"] == pl.BACKBONE_RECIPE["smoke"]["epochs"]
    collapse = json.loads((smoke["out"] / "collapse.json").read_text())
    assert set(collapse["rows"]) == {"none", "image_mae", "twinmae", "dropmae"}
    for rec in collapse["rows"].values():
        assert -1.0 < rec["mean"] < 1.0 and rec["per_seed"] == [rec["mean"]]
    assert "Backbone collapse check" in smoke["second"] and "random init (no pre-training)" in smoke["second"]


def test_rerun_after_stop_redoes_no_finished_stage(smoke):
    """Stages finished before the stop keep their result files (mtime) and are not re-executed."""
    first_done = {(e["row"], e["stage"]) for e in smoke["events_first"] if e["event"] == "done" and e["seed"] == 0}
    assert ("twinmae", "vot_train") in first_done and ("twinmae", "vot_val") not in first_done
    # none: collapse + 5 stages; image_mae: pretrain, collapse + 5; twinmae: pretrain, collapse, vot_train
    assert len(first_done) == len(smoke["finished"]) == 6 + 7 + 3
    for path, mtime in smoke["finished"].items():
        assert path.stat().st_mtime_ns == mtime, path
    ran_again = {(e["row"], e["stage"]) for e in smoke["events_second"] if e["event"] == "run"}
    skipped = {(e["row"], e["stage"]) for e in smoke["events_second"] if e["event"] == "skip-done" and e["seed"] == 0}
    assert not ran_again & first_done
    assert skipped == first_done
    assert ("twinmae", "vot_val") in ran_again and ("dropmae", "pretrain") in ran_again
    assert "done before, skipped" in smoke["second"]


def test_tiny_numbers_are_labelled_wherever_printed(smoke):
    """The banner heads the console table, the CSV (plus a scale column) and the Markdown."""
    text = smoke["second"]
    table_at = text.index("Table 1:")
    assert SMOKE_BANNER in text[:table_at] and SMOKE_BANNER in text[table_at:]
    assert text.startswith(f"!!! {SMOKE_BANNER} !!!")
    lines = (smoke["out"] / "table1.csv").read_text().splitlines()
    assert lines[0] == f"# {SMOKE_BANNER}"
    assert {r["scale"] for r in csv.DictReader(lines[1:])} == {"smoke (tiny synthetic)"}
    assert (smoke["out"] / "table1.md").read_text().startswith(f"**{SMOKE_BANNER}**")
    assert (smoke["out"] / "table1.txt").read_text().count(SMOKE_BANNER) == 2


def test_console_is_one_line_per_stage_and_the_log_holds_the_output(smoke):
    """'[row k/5 Method Data] stage ...' then '... done in m:ss  <numbers>'; nothing of the
    stages' own output (config JSON, tqdm bars) on the console; it is in the stage's log."""
    first, second = smoke["first"], smoke["second"]
    assert "[row 3/5 TwinMAE K400] pretrain ..." in first
    assert "[row 4/5 DropMAE K400] vos_val ..." in second
    assert any(line.startswith("[row 4/5 DropMAE K400] vot_val done in ") and " AO " in line
               for line in second.splitlines())
    assert f"--stop-after {STOP}: stopped after seed 0 {STOP}" in first
    assert len(first.splitlines()) + len(second.splitlines()) < 150
    for text in (first, second):
        assert '"epoch"' not in text and "it/s" not in text and "lr " not in text
    log = (smoke["out"] / "seed0" / "dropmae" / "logs" / "vot_train.log").read_text()
    assert log.startswith("$ ") and '"epoch": 1' in log


def test_figure_attention_over_seeds_reuses_the_table_and_averages(smoke):
    """--figure-attention --attention-seeds 2 on the finished smoke run: seed 0 reads the
    table's own backbones (its pretrain stages are skipped), seed 1 gets a new pair from the
    cache (seed1/<row>/pretrain.json), and the summary's mean is the average of the two seeds."""
    out = smoke["out"]
    run = subprocess.run(smoke["cmd"] + ["--figure-attention", "--attention-seeds", "2"], cwd=REPO, env=_env(),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[attention seed 0, 1/2 TwinMAE] pretrain: done before" in run.stdout
    assert "[attention seed 1, 2/2 DropMAE] pretrain ..." in run.stdout
    seed1 = json.loads((out / "seed1" / "dropmae" / "pretrain.json").read_text())
    assert Path(seed1["result"]["checkpoint"]).is_file() and "seed1" in seed1["result"]["checkpoint"]
    summary = json.loads((out / "attention" / "summary.json").read_text())
    s0, s1 = summary["seeds"]["0"], summary["seeds"]["1"]
    assert s0 != s1                                               # another seed, other weights
    for name in ("TwinMAE", "DropMAE"):
        for a, b, m in zip(s0[name]["between"], s1[name]["between"], summary["mean"][name]["between"]):
            assert m == pytest.approx((a + b) / 2)
            assert 0.0 < a < 1.0 and 0.0 < b < 1.0
    holds = [d > t for d, t in zip(s1["DropMAE"]["between"], s1["TwinMAE"]["between"])]
    assert summary["holds"]["1"] == holds and len(holds) == 2     # the tiny decoder's 2 layers
    assert "mean " in run.stdout and "smoke scale" in run.stdout


# --------------------------------------------------------------------------------------------
# Unit tests of the declaration
# --------------------------------------------------------------------------------------------

def test_rows_without_weights_or_data_are_skipped_with_a_reason(tmp_path):
    """BEiT / CLIP: unsupported conversion; a missing --ckpt, file or video folder: named."""
    run = pl.TableRun(t1.TABLE, "full", tmp_path, [0], videos={"k400": "/videos"},
                      ckpts={"mocov3": str(tmp_path / "absent.pth")}, stream=open(os.devnull, "w"))
    ctx, rows = run.seed_run(0), {r.id: r for r in t1.FULL_ROWS}
    assert "relative position bias" in ctx.skip_reason(rows["beit"])
    assert "ln_pre" in ctx.skip_reason(rows["clip"])
    assert ctx.skip_reason(rows["sup_in1k"]).startswith("needs --ckpt sup_in1k=PATH")
    assert "absent.pth: no such file" in ctx.skip_reason(rows["mocov3"])
    assert ctx.skip_reason(rows["dropmae_k700_800"]).startswith("needs --k700")
    assert ctx.skip_reason(rows["dropmae_k400_400"]) is None and ctx.skip_reason(rows["none"]) is None


def test_full_scale_rows_and_paper_numbers():
    """The 15 full rows print beside their paper rows; every paper cell of Table 1 is present."""
    assert len(t1.FULL_ROWS) == 15 and len({r.id for r in t1.FULL_ROWS}) == 15
    for r in t1.FULL_ROWS:
        assert all(isinstance(t1.PAPER[r.paper_key][m], float) for m in t1.METRICS), r.id
    assert t1.PAPER["dropmae_k700_800"]["AO"] == 75.9 and t1.PAPER["twinmae_k400_400"]["pretrain_h"] == 20.7
    assert [r.backbone_key() for r in t1.FULL_ROWS if r.source == "pretrain"][:2] == [
        "image_mae_k400_1600ep", "twinmae_k400_400ep"]


def test_command_line_errors_are_clear(tmp_path):
    """Partial full-scale data, an unknown --ckpt row, and reusing a folder of another scale."""
    with pytest.raises(SystemExit, match="missing --got10k --davis --ytvos"):
        t1.main(["--k400", str(tmp_path), "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="'dino' is not a row that takes weights"):
        t1.main(["--ckpt", "dino=x.pth", "--out", str(tmp_path / "a")])
    pl.write_json(tmp_path / "b" / "table1_config.json", {"scale": "tiny"})
    with pytest.raises(SystemExit, match="holds a tiny-scale run"):
        t1.main(["--smoke", "--out", str(tmp_path / "b"), "--backbones", str(tmp_path / "bb")])
