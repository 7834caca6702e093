"""Tests for reproduce/table1.py: the Table 1 pipeline, its resume, its labels, its key rules.

One smoke-scale run (module fixture, ~1.5 min on one core) is shared: it is stopped after a
stage with --stop-after (as if killed between stages), then rerun to the end. The other tests
are unit tests on small hand-made inputs.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dropmae
from reproduce import table1 as t1

REPO = Path(__file__).resolve().parents[1]
STOP = "twinmae/vot_train"


# --------------------------------------------------------------------------------------------
# The smoke run (shared)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run 1 stops after twinmae/vot_train; run 2 finishes. -> dict of paths, outputs, mtimes."""
    out = tmp_path_factory.mktemp("table1_smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    cmd = [sys.executable, "-m", "reproduce.table1", "--smoke", "--out", str(out), "--quiet"]
    first = subprocess.run(cmd + ["--stop-after", STOP], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json") if p.name != "table1_config.json"}
    events_first = len((out / "pipeline.jsonl").read_text().splitlines())
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    events = [json.loads(line) for line in (out / "pipeline.jsonl").read_text().splitlines()]
    return {"out": out, "first": first.stdout, "second": second.stdout, "finished": finished,
            "events_first": events[:events_first], "events_second": events[events_first:]}


def test_smoke_run_writes_a_complete_table(smoke):
    """Every row of the table is numbered in every cell, or marked skipped/failed with a reason."""
    lines = (smoke["out"] / "table1.csv").read_text().splitlines()
    recs = list(csv.DictReader(lines[1:]))                       # line 0 is the banner
    assert [r["row"] for r in recs] == ["none", "image_mae", "twinmae", "dropmae"]
    for r in recs:
        if r["status"] == "done":
            for m in t1.METRICS:
                assert 0.0 <= float(r[f"{m}_ours"]) <= 100.0, (r["row"], m)
                assert float(r[f"{m}_paper"]) > 50.0
        else:
            assert r["status"] == "skipped" and r["reason"], r
    assert all(r["status"] == "done" for r in recs)              # every tiny row can run
    pre = {r["row"]: r["pretrain_h_ours"] for r in recs}
    assert pre["none"] == "" and all(float(pre[k]) > 0 for k in ("image_mae", "twinmae", "dropmae"))
    assert (smoke["out"] / "dropmae" / "got10k" / "got10k_test.zip").is_file()   # for the server
    md = (smoke["out"] / "table1.md").read_text()
    assert md.count("\n| ") == 5                                  # header + 4 rows


def test_rerun_after_stop_redoes_no_finished_stage(smoke):
    """Stages finished before the stop keep their result files (mtime) and are not re-executed."""
    first_done = {(e["row"], e["stage"]) for e in smoke["events_first"] if e["event"] == "done"}
    assert ("twinmae", "vot_train") in first_done and ("twinmae", "vot_val") not in first_done
    assert len(first_done) == len(smoke["finished"]) == 5 + 6 + 2  # none (no pretrain), image_mae, twinmae
    for path, mtime in smoke["finished"].items():
        assert path.stat().st_mtime_ns == mtime, path
    ran_again = {(e["row"], e["stage"]) for e in smoke["events_second"] if e["event"] == "run"}
    skipped = {(e["row"], e["stage"]) for e in smoke["events_second"] if e["event"] == "skip-done"}
    assert not ran_again & first_done
    assert skipped == first_done
    assert ("twinmae", "vot_val") in ran_again and ("dropmae", "pretrain") in ran_again
    assert "done before" in smoke["second"] and "skipped" in smoke["second"]


def test_tiny_numbers_are_labelled_wherever_printed(smoke):
    """The banner heads the console table, the CSV (plus a scale column) and the Markdown."""
    text = smoke["second"]
    table_at = text.index("Table 1:")
    assert t1.SMOKE_BANNER in text[:table_at] and t1.SMOKE_BANNER in text[table_at:]
    assert text.startswith(f"!!! {t1.SMOKE_BANNER} !!!")
    lines = (smoke["out"] / "table1.csv").read_text().splitlines()
    assert lines[0] == f"# {t1.SMOKE_BANNER}"
    assert {r["scale"] for r in csv.DictReader(lines[1:])} == {"smoke (tiny synthetic)"}
    assert (smoke["out"] / "table1.md").read_text().startswith(f"**{t1.SMOKE_BANNER}**")
    assert (smoke["out"] / "table1.txt").read_text().count(t1.SMOKE_BANNER) == 2


def test_stage_headers_name_row_and_stage(smoke):
    """Progress: a header per stage, '[row k/4 Method Data] stage ...'."""
    assert "[row 3/4 TwinMAE K400] pretrain ..." in smoke["first"]
    assert "[row 4/4 DropMAE K400] vos_val ..." in smoke["second"]
    assert f"--stop-after {STOP}: stopped after {STOP}" in smoke["first"]


def test_figure_attention_over_seeds_reuses_the_table_and_averages(smoke):
    """--figure-attention --attention-seeds 2 on the finished smoke run: seed 0 reads the
    table's own checkpoints (its pretrain stages are skipped, not rerun), seed 1 pre-trains a new
    pair under attention/seed1/, and the summary's mean is the average of the two seeds."""
    out = smoke["out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    cmd = [sys.executable, "-m", "reproduce.table1", "--smoke", "--out", str(out), "--quiet",
           "--figure-attention", "--attention-seeds", "2"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[attention seed 0, 1/2 TwinMAE] pretrain: done before" in run.stdout
    assert "[attention seed 1, 2/2 DropMAE] pretrain ..." in run.stdout
    seed1 = json.loads((out / "attention" / "seed1" / "dropmae" / "pretrain.json").read_text())
    assert (out / "attention" / "seed1" / seed1["result"]["checkpoint"]).is_file()
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
# Unit tests
# --------------------------------------------------------------------------------------------

def _pipe(tmp_path, **kw):
    dist = {"nproc": 1, "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1", "master_port": 29511}
    args = dict(video={"k400": "/videos", "k700": None}, got10k=None, davis=None, ytvos=None, ckpts={},
                dist=dist, quiet=True)
    args.update(kw)
    return t1.Pipeline(tmp_path, "full", **args)


def test_pretrain_hours_sum_the_epoch_lines_of_the_log(tmp_path):
    """Hours = sum of epoch_time_s over epoch lines (step lines ignored): 1800+3600+1800 s = 2 h."""
    lines = [{"epoch": 0, "step": 0, "loss": 1.0}, {"epoch": 0, "epoch_time_s": 1800.0},
             {"epoch": 1, "epoch_time_s": 3600.0}, {"epoch": 2, "step": 40, "loss": 0.9},
             {"epoch": 2, "epoch_time_s": 1800.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "config.json").write_text(json.dumps({"args": {"world_size": 64}}))
    (tmp_path / "env.json").write_text(json.dumps({"gpus": ["NVIDIA A100-SXM4-80GB"]}))
    assert t1.pretrain_hours(tmp_path) == (2.0, "64 x NVIDIA A100-SXM4-80GB")
    (tmp_path / "env.json").write_text(json.dumps({"gpus": []}))
    assert t1.pretrain_hours(tmp_path)[1] == "64 x CPU"
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 6"):
        t1.pretrain_hours(tmp_path)


def test_launcher_plain_python_for_one_process_torchrun_otherwise():
    """NPROC=1, NNODES=1 (and every test stage): python; else torch.distributed.run with the node."""
    one = {"nproc": 1, "nnodes": 1, "node_rank": 0, "master_addr": "a", "master_port": 1}
    assert t1.launcher("dropmae.py", one, train=True) == [sys.executable, "dropmae.py"]
    many = {"nproc": 8, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29500}
    assert t1.launcher("tasks/vot.py", many, train=True) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=2", "--node_rank=1",
        "--master_addr=10.0.0.1", "--master_port=29500", "tasks/vot.py"]
    assert t1.launcher("tasks/vot.py", many, train=False) == [sys.executable, "tasks/vot.py"]


def _timm_state():
    """A timm-named ViT state dict built from our tiny encoder (timm keys are ours + cls/head)."""
    torch.manual_seed(0)
    enc = dropmae.ViTEncoder(dropmae.get_config("tiny"))
    state = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith("temporal_pos_embed")}
    state["cls_token"] = torch.randn(1, 1, 96)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 96), torch.zeros(1000)
    return enc, state


def test_timm_rule_drops_cls_and_head_and_loads_exactly():
    """timm ViT -> every block, norm, patch and position tensor equal after load_pretrained."""
    enc, state = _timm_state()
    state["pre_logits.fc.weight"] = torch.zeros(96, 96)           # the IN21k checkpoints' extra layer
    converted = t1.convert_timm_vit(state, "vit.pth")
    assert "head.weight" not in converted["model"] and "pre_logits.fc.weight" not in converted["model"]
    target = dropmae.ViTEncoder(dropmae.get_config("tiny"))
    report = dropmae.load_pretrained(converted, target, verbose=False)
    assert report["kind"] == "mae" and report["dropped"] == ["cls_token"]
    assert report["missing"] == ["temporal_pos_embed_x", "temporal_pos_embed_z"]
    for k, v in enc.state_dict().items():
        if not k.startswith("temporal_pos_embed"):
            assert torch.equal(target.state_dict()[k], v), k


def test_timm_rule_refuses_what_our_vit_cannot_represent():
    """Global-pool (fc_norm) and layer-scale ViTs are Unsupported, not loaded approximately."""
    _, state = _timm_state()
    with pytest.raises(t1.Unsupported, match="fc_norm"):
        t1.convert_timm_vit({**state, "fc_norm.weight": torch.ones(96)}, "gap.pth")
    with pytest.raises(t1.Unsupported, match="layer-scale"):
        t1.convert_timm_vit({**state, "blocks.0.ls1.gamma": torch.ones(96)}, "ls.pth")
    with pytest.raises(ValueError, match="x.pth: not a timm ViT"):
        t1.convert_timm_vit({"conv1.weight": torch.ones(1)}, "x.pth")


def test_mocov3_rule_takes_the_base_encoder_only():
    """module.base_encoder.* kept (minus head.*), momentum encoder and predictor dropped."""
    _, state = _timm_state()
    moco = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in state.items()},
                           **{f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()},
                           "module.predictor.0.weight": torch.zeros(4, 4)}, "epoch": 300}
    got = t1.convert_mocov3(moco, "moco.pth.tar")["model"]
    want = t1.convert_timm_vit(state)["model"]
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="module.base_encoder"):
        t1.convert_mocov3({"state_dict": {"encoder.x": torch.ones(1)}}, "bad.pth")


def test_rows_without_weights_or_data_are_skipped_with_a_reason(tmp_path):
    """BEiT / CLIP: unsupported conversion; a missing --ckpt, file or video folder: named."""
    pipe = _pipe(tmp_path, ckpts={"mocov3": str(tmp_path / "absent.pth")})
    rows = {r.id: r for r in t1.FULL_ROWS}
    assert "relative position bias" in pipe.skip_reason(rows["beit"])
    assert "ln_pre" in pipe.skip_reason(rows["clip"])
    assert pipe.skip_reason(rows["sup_in1k"]).startswith("needs --ckpt sup_in1k=PATH")
    assert "absent.pth: no such file" in pipe.skip_reason(rows["mocov3"])
    assert pipe.skip_reason(rows["dropmae_k700_800"]).startswith("needs --k700")
    assert pipe.skip_reason(rows["dropmae_k400_400"]) is None and pipe.skip_reason(rows["none"]) is None


def test_a_stage_with_a_result_file_is_not_run_again(tmp_path, monkeypatch):
    """Second call: no execution, result file untouched; --stop-after stops right after a stage."""
    calls = []
    monkeypatch.setitem(t1.STAGES, "vot_val", lambda ctx, row: calls.append(row.id) or {"AO": 50.0})
    pipe = _pipe(tmp_path, stop_after="none/vot_val")
    row = t1.FULL_ROWS[0]
    with pytest.raises(t1.StopRequested):
        pipe.stage(row, "vot_val", "[row 1/1]")
    path = t1.result_path(tmp_path, "none", "vot_val")
    mtime = path.stat().st_mtime_ns
    pipe.stop_after = None
    pipe.stage(row, "vot_val", "[row 1/1]")
    assert calls == ["none"] and path.stat().st_mtime_ns == mtime
    assert pipe.result(row, "vot_val") == {"AO": 50.0}
    events = [json.loads(x)["event"] for x in (tmp_path / "pipeline.jsonl").read_text().splitlines()]
    assert events == ["run", "done", "skip-done"]


def test_full_scale_table_has_no_banner_and_pairs_paper_with_ours(tmp_path):
    """Full scale: 'paper / ours' cells, '-' where ours is missing, no tiny banner."""
    pipe = _pipe(tmp_path)
    row = t1.FULL_ROWS[0]
    t1.write_json(t1.result_path(tmp_path, "none", "vot_val"), {"result": {"AO": 60.25, "SR0.5": 70.0,
                                                                           "SR0.75": 50.0}})
    recs = t1.table_rows(pipe, [row], {"none": {"status": "done", "reason": ""}})
    text = t1.format_text(recs, "full")
    assert "62.7 / 60.2" in text and "69.5 / -" in text and "NOT COMPARABLE" not in text
    assert not t1.format_csv(recs, "full").startswith("#")
    assert "TINY SYNTHETIC SCALE" in t1.format_text(recs, "tiny")


def test_command_line_errors_are_clear(tmp_path):
    """Partial full-scale data, an unknown --ckpt row, and reusing a folder of another scale."""
    with pytest.raises(SystemExit, match="missing --got10k --davis --ytvos"):
        t1.main(["--k400", str(tmp_path), "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="'dino' is not a row that takes weights"):
        t1.parse_ckpts(["dino=x.pth"])
    t1.write_json(tmp_path / "b" / "table1_config.json", {"scale": "tiny"})
    with pytest.raises(SystemExit, match="holds a tiny-scale run"):
        t1.main(["--smoke", "--out", str(tmp_path / "b")])
