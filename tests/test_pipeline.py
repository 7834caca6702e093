"""Tests for reproduce/pipeline.py: the machinery every table runs on.

A toy table (two rows, a subprocess `train` stage and a `test` stage, no torch) runs through the
real command line in a few seconds: seeds with mean ± std, skip-when-done after a real kill,
failure messages, --verbose. Then the formatter, the pre-training hours of a resumed run
(issue 15, defect 14), the fcntl lock, the backbone cache's recipe check and the key rules.
"""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import dropmae
from reproduce import pipeline as pl

REPO = Path(__file__).resolve().parents[1]

TOY = textwrap.dedent(f'''
    import os, sys
    sys.path.insert(0, {str(REPO)!r})
    from reproduce import pipeline as pl

    SLEEP, FAIL = os.environ.get("TOY_SLEEP", "0"), os.environ.get("TOY_FAIL", "")
    TRAIN = ("import sys, time\\n"
             "for i in range(1, 4):\\n"
             "    print(f'step | {{i}}/3 [', flush=True); time.sleep(float(sys.argv[1]))\\n"
             "print('trained seed', sys.argv[2])")

    def train(ctx, row):
        ctx.run([sys.executable, "-c", TRAIN, SLEEP, str(ctx.seed)])
        model = ctx.folder(row, "model.txt")
        model.write_text("0")
        return {{"steps": 3, "checkpoint": ctx.rel(model)}}

    def test(ctx, row):
        if row.id == FAIL:
            ctx.run([sys.executable, "-c", "import sys; print('boom: bad input'); sys.exit(3)"])
        bonus = float(ctx.trained(row, "train").read_text())        # a --finetuned model file: its number
        return {{"score": {{"none": 10.0, "other": 20.0}}[row.id] + ctx.seed + bonus, "loss": 0.5 * ctx.seed}}

    ROWS = [pl.Row("none", "No pre-training"), pl.Row("other", "Other", "X", paper="paper_other")]
    TABLE = pl.Table(
        name="toy", title="Toy table",
        paper={{"none": {{"score": 1.5}}, "paper_other": {{"label": "Other X", "score": 2.25}}}},
        columns=[pl.Column("score", "test"), pl.Column("loss", "test", fmt=".2f")],
        rows={{"full": ROWS, "tiny": ROWS}},
        stages=[pl.Stage("train", train, every_node=True, finetune=True), pl.Stage("test", test)],
        recipes={{"full": {{}}, "tiny": {{}}, "smoke": {{}}}}, collapse_check=False,
        finetuned="a toy model file (its number is added to the score)", smoke_rows=("none",))
    sys.exit(pl.main(TABLE))
''')


def toy(tmp_path, *args, env=None, popen=False):
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    cmd = [sys.executable, str(script), "--out", str(tmp_path / "out"), *args]
    env = {**os.environ, "JOBS": "1", **(env or {})}         # one row at a time unless a test says
    env.pop("SMOKE", None)
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "pipeline.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# The toy table through the command line
# --------------------------------------------------------------------------------------------

def test_seeds_give_mean_and_std_in_every_format(tmp_path):
    """--seeds 3: seed folders 0-2, scores 10/11/12 -> '1.5 / 11.0 ± 1.0' (sample std), in the
    text, Markdown and CSV, with the tiny banner; the paper row label beside 'other'."""
    run = toy(tmp_path, "--seeds", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("seed*")) == ["seed0", "seed1", "seed2"]
    text = (out / "toy.txt").read_text()
    assert "1.5 / 11.0 ± 1.0" in text and "2.2 / 21.0 ± 1.0" in text       # format(2.25, '.1f') == '2.2'
    assert "- / 0.50 ± 0.50" in text and "Other X" in text
    assert "mean ± std over 3 seeds" in text and text.count(pl.BANNERS["tiny"]) == 2
    md = (out / "toy.md").read_text()
    assert md.startswith(f"**{pl.BANNERS['tiny']}**") and "| No pre-training | - | - | same | 1.5 / 11.0 ± 1.0 |" in md
    lines = (out / "toy.csv").read_text().splitlines()
    assert lines[0] == f"# {pl.BANNERS['tiny']}"
    import csv
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert float(recs["none"]["score_ours"]) == 11.0 and float(recs["none"]["score_std"]) == 1.0
    assert float(recs["other"]["score_paper"]) == 2.25 and recs["other"]["seeds"] == "3"
    assert "[seed 2 row 2/2 Other X] test done in " in run.stdout


def test_jobs_run_rows_at_once_with_the_same_table_and_a_stop_stops_every_job(tmp_path):
    """--jobs 2 over 2 seeds x 2 rows: the rows' stages overlap in time (pipeline.jsonl), every
    stage ends with its line, the table equals the one-job table; --stop-after in one job stops
    the run before any stage starts after it, and the rerun finishes the table."""
    one = toy(tmp_path, "--seeds", "2", "--out", str(tmp_path / "one"))
    two = toy(tmp_path, "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "two"), env={"TOY_SLEEP": "0.3"})
    assert one.returncode == 0 and two.returncode == 0, two.stdout + two.stderr
    assert (tmp_path / "one" / "toy.csv").read_text() == (tmp_path / "two" / "toy.csv").read_text()
    assert sum("done in " in line for line in two.stdout.splitlines()) == 8
    ev = [e for e in events(tmp_path / "two") if e.get("stage") == "train" and e["seed"] == 0]
    t = {(e["row"], e["event"]): time.strptime(e["time"], "%Y-%m-%d %H:%M:%S") for e in ev}
    order = [(e["row"], e["event"]) for e in ev]
    assert order.index(("other", "run")) < order.index(("none", "done")), order      # both trained at once
    assert t[("other", "run")] <= t[("none", "done")]
    out = tmp_path / "stop"
    stop = toy(tmp_path, "--jobs", "2", "--stop-after", "none/train", "--out", str(out), env={"TOY_SLEEP": "0.3"})
    assert stop.returncode == 0 and "stopped after seed 0 none/train" in stop.stdout, stop.stdout
    assert not (out / "seed0" / "none" / "test.json").exists() and not (out / "toy.txt").exists()
    started = [(e["row"], e["stage"]) for e in events(out) if e["event"] == "run"]
    assert ("none", "test") not in started
    rerun = toy(tmp_path, "--jobs", "2", "--out", str(out))
    assert rerun.returncode == 0 and (out / "toy.txt").is_file(), rerun.stdout + rerun.stderr


def test_job_threads_share_the_cores_among_the_rows_running(monkeypatch, tmp_path):
    """--jobs 4 on 8 cores: 2 threads per stage while 4 rows run, all 8 for the last row left;
    one job or an OMP_NUM_THREADS of the user's: no setting of ours."""
    table = pl.Table(name="t", title="t", paper={}, columns=[], rows={"tiny": []}, stages=[],
                     recipes={"tiny": {}}, collapse_check=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    run = pl.TableRun(table, "tiny", tmp_path, [0], jobs=4)
    run.active = 4
    assert run.job_env() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    run.active = 1
    assert run.job_env()["OMP_NUM_THREADS"] == "8"
    assert pl.TableRun(table, "tiny", tmp_path, [0], jobs=1).job_env() == {}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run.job_env() == {}


def test_kill_and_rerun_redoes_no_finished_stage(tmp_path):
    """SIGKILL while 'other' trains; the rerun skips every finished stage (result files keep
    their mtime) and redoes only the killed one and those after it."""
    proc = toy(tmp_path, env={"TOY_SLEEP": "0.5"}, popen=True)
    out = tmp_path / "out"
    deadline = time.time() + 60
    while not (out / "seed0" / "other" / "logs" / "train.log").is_file():
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in (out / "seed0").glob("*/*.json")}
    assert sorted(p.relative_to(out).as_posix() for p in done) == ["seed0/none/test.json", "seed0/none/train.json"]
    before = len(events(out))
    rerun = toy(tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert all(p.stat().st_mtime_ns == m for p, m in done.items())
    later = events(out)[before:]
    assert {(e["row"], e["stage"]) for e in later if e["event"] == "skip-done"} == {("none", "train"), ("none", "test")}
    assert {(e["row"], e["stage"]) for e in later if e["event"] == "run"} == {("other", "train"), ("other", "test")}
    assert "[row 1/2 No pre-training] train: done before, skipped" in rerun.stdout


def test_a_failing_stage_prints_its_log_and_the_table_says_failed(tmp_path):
    """Exit code 3 of a stage's command: FAILED, the log path, the log's last lines; the other
    row still runs; the table marks the row failed; exit code 1. The stage output stays off the
    console unless --verbose."""
    run = toy(tmp_path, env={"TOY_FAIL": "other"})
    assert run.returncode == 1
    log = tmp_path / "out" / "seed0" / "other" / "logs" / "test.log"
    assert f"FAILED: other/test: exit code 3; full output: {log}" in run.stdout
    assert "boom: bad input" in run.stdout and "boom: bad input" in log.read_text()
    assert "failed: other/test: exit code 3" in (tmp_path / "out" / "toy.txt").read_text()
    assert "trained seed" not in run.stdout and "trained seed 0" in (log.parent / "train.log").read_text()
    verbose = toy(tmp_path, "--verbose", "--out", str(tmp_path / "v"))
    assert verbose.returncode == 0 and "trained seed 0" in verbose.stdout


def test_stop_after_and_refused_settings(tmp_path):
    """--stop-after ROW/STAGE leaves after that stage; a folder of another scale is refused."""
    run = toy(tmp_path, "--stop-after", "none/train")
    assert run.returncode == 0 and "stopped after seed 0 none/train" in run.stdout
    assert not (tmp_path / "out" / "seed0" / "none" / "test.json").exists()
    other = toy(tmp_path, "--smoke")
    assert other.returncode != 0 and "holds a tiny-scale run" in other.stderr


def test_finetuned_row_runs_only_its_test_stages_and_the_table_names_the_file(tmp_path):
    """--finetuned other=FILE: no train stage for that row (its `finetune` stage), the test stage
    reads the file (score 20 + 100), the table says where the model came from; the other row
    trains as usual. Bad items are refused naming them."""
    model = tmp_path / "released.txt"
    model.write_text("100")
    run = toy(tmp_path, "--finetuned", f"other={model}")
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out" / "seed0"
    assert sorted(p.name for p in (out / "other").glob("*.json")) == ["test.json"]
    assert sorted(p.name for p in (out / "none").glob("*.json")) == ["test.json", "train.json"]
    text = (tmp_path / "out" / "toy.txt").read_text()
    assert "2.2 / 120.0" in text and "1.5 / 10.0" in text
    assert f"Other X: the given fine-tuned model {model} (--finetuned other=...)" in text
    assert f"the given fine-tuned model {model}" in (tmp_path / "out" / "toy.md").read_text()
    for item, why in ((f"nosuch={model}", "ROW=PATH with ROW one of"), ("other=/no/such/file", "no such file"),
                      (str(model), "ROW=PATH")):
        bad = toy(tmp_path, "--finetuned", item, "--out", str(tmp_path / "bad"))
        assert bad.returncode != 0 and why in bad.stderr, bad.stderr
    rows = pl.tiny_rows()
    assert pl.parse_finetuned([f"dropmae={model}"], rows, {}) == {"dropmae": str(model.resolve())}
    with pytest.raises(SystemExit, match="also has --ckpt"):
        pl.parse_finetuned([f"dropmae={model}"], rows, {"dropmae": str(model)})


def test_smoke_rows_run_a_subset_and_print_every_row(tmp_path):
    """Table.smoke_rows: --smoke runs those rows; the table still lists every row, the others
    skipped with the reason; --rows overrides the subset."""
    run = toy(tmp_path, "--smoke")
    assert run.returncode == 0, run.stdout + run.stderr
    text = (tmp_path / "out" / "toy.txt").read_text()
    assert "1.5 / 10.0" in text and "skipped: not run at smoke scale (the smoke run runs none" in text
    assert not (tmp_path / "out" / "seed0" / "other").exists()
    chosen = toy(tmp_path, "--smoke", "--rows", "other", "--out", str(tmp_path / "o"))
    assert chosen.returncode == 0 and "2.2 / 20.0" in (tmp_path / "o" / "toy.txt").read_text()


# --------------------------------------------------------------------------------------------
# The formatter on hand-written results
# --------------------------------------------------------------------------------------------

def _table(columns, paper):
    rows = [pl.Row("none", "No pre-training"), pl.pretrained("dropmae", "DropMAE", "k400", 400, P=0.1)]
    return pl.Table(name="t", title="T", paper=paper, columns=columns, rows={"full": rows, "tiny": rows},
                    stages=[], recipes={"full": {}, "tiny": {}}), rows


def test_full_scale_cells_pair_paper_with_ours_and_no_banner(tmp_path):
    """Full scale: 'paper / ours', '-' where ours is missing, no banner; tiny: the banner."""
    table, rows = _table([pl.Column("AO", "val"), pl.Column("J&F", "vos")], {"none": {"AO": 62.7, "J&F": 69.5}})
    run = pl.TableRun(table, "full", tmp_path, [0], stream=open(os.devnull, "w"))
    pl.write_json(tmp_path / "seed0" / "none" / "val.json", {"result": {"AO": 60.25}})
    status = {0: {"none": {"status": "done", "reason": ""}, "dropmae": {"status": "skipped", "reason": "needs --k400"}}}
    recs = pl.table_records(run, rows, status)
    text = pl.format_text(table, recs, "full")
    assert "62.7 / 60.2" in text and "69.5 / -" in text and "- / -" in text and "NOT COMPARABLE" not in text
    assert "skipped: needs --k400" in text
    assert not pl.format_csv(table, recs, "full").startswith("#")
    assert pl.BANNERS["tiny"] in pl.format_text(table, recs, "tiny")
    md = pl.format_markdown(table, recs, "full")
    assert "| No pre-training | - | - | same | 62.7 / 60.2 | 69.5 / - | done |" in md


def test_mean_std_over_seeds_skips_missing_values():
    assert pl._mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert pl._mean_std([4.0, None]) == (4.0, None)
    assert pl._mean_std([None]) == (None, None)
    mean, std = pl._mean_std([0.0, 1.0])
    assert mean == 0.5 and math.isclose(std, math.sqrt(0.5))


# --------------------------------------------------------------------------------------------
# Pre-training hours from the log (issue 15, defect 14)
# --------------------------------------------------------------------------------------------

def _write_run(folder: Path, lines: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "config.json").write_text(json.dumps({"args": {"world_size": 64}}))
    (folder / "env.json").write_text(json.dumps({"gpus": ["NVIDIA A100-SXM4-80GB"]}))


def test_hours_count_each_epoch_once(tmp_path):
    """Epoch 1 logged, its save interrupted, redone after resume: counted once (the later one).
    A mid-epoch stop (steps 4-5 of epoch 2) and its resume (steps 6-7): both parts count."""
    _write_run(tmp_path, [
        {"epoch": 0, "step": 0, "loss": 1.0}, {"epoch": 0, "step": 1}, {"epoch": 0, "epoch_time_s": 1800.0},
        {"epoch": 1, "step": 2}, {"epoch": 1, "step": 3}, {"epoch": 1, "epoch_time_s": 3600.0},
        # killed while saving epoch 1; resumed from epoch 0's checkpoint:
        {"epoch": 1, "step": 2}, {"epoch": 1, "step": 3}, {"epoch": 1, "epoch_time_s": 1800.0},
        {"epoch": 2, "step": 4}, {"epoch": 2, "step": 5}, {"epoch": 2, "epoch_time_s": 900.0},   # --max-steps 6
        {"epoch": 2, "step": 6}, {"epoch": 2, "step": 7}, {"epoch": 2, "epoch_time_s": 900.0}])
    hours, hardware, epochs = pl.pretrain_hours(tmp_path)
    assert (hours, hardware, epochs) == ((1800 + 1800 + 900 + 900) / 3600, "64 x NVIDIA A100-SXM4-80GB", 4)
    (tmp_path / "env.json").write_text(json.dumps({"gpus": []}))
    assert pl.pretrain_hours(tmp_path)[1] == "64 x CPU"
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 16"):
        pl.pretrain_hours(tmp_path)


def test_hours_of_a_real_resumed_pretraining_run(tmp_path):
    """dropmae.py pretrain, 3 epochs saved at epochs 0 and 2; checkpoint-2 lost as if the run
    was killed while saving it; --resume auto redoes epochs 1 and 2. The log then holds five
    epoch lines; the hours are those of epochs 0, 1 (again) and 2 (again), each once."""
    run = tmp_path / "pre"
    cmd = [sys.executable, "dropmae.py", "pretrain", "--model", "tiny", "--data", "synthetic", "--num-synthetic", "4",
           "--batch-size", "2", "--epochs", "3", "--warmup-epochs", "1", "--lr", "1e-3", "--num-workers", "0",
           "--save-every", "2", "--log-every", "1", "--output", str(run), "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        if (run / "checkpoint-2.pth").is_file():
            (run / "checkpoint-2.pth").rename(run / "checkpoint-2.pth.tmp")     # the interrupted save
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    times = [(r["epoch"], r["epoch_time_s"]) for r in recs if "epoch_time_s" in r]
    assert [e for e, _ in times] == [0, 1, 2, 1, 2]
    hours, hardware, epochs = pl.pretrain_hours(run)
    assert epochs == 3 and hardware == "1 x CPU"
    assert hours == pytest.approx((times[0][1] + times[3][1] + times[4][1]) / 3600, rel=1e-12)
    assert hours < sum(t for _, t in times) / 3600


# --------------------------------------------------------------------------------------------
# Locks and the backbone cache
# --------------------------------------------------------------------------------------------

ONCE = textwrap.dedent(f'''
    import sys, time
    sys.path.insert(0, {str(REPO)!r})
    from pathlib import Path
    from reproduce import pipeline as pl
    folder = Path(sys.argv[1])
    def build():
        with open(folder / "builds.txt", "a") as f:
            f.write(sys.argv[2] + "\\n")
        time.sleep(1.0)
        return {{"by": sys.argv[2]}}
    print(pl.once(folder / "thing.json", build, "the thing")["by"])
''')


def test_once_builds_once_under_the_lock_when_two_processes_ask(tmp_path):
    """Two processes start together: exactly one builds; the other waits and reads its result."""
    script = tmp_path / "once.py"
    script.write_text(ONCE)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), name], stdout=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    builders = (tmp_path / "builds.txt").read_text().split()
    assert len(builders) == 1
    assert [o.strip().splitlines()[-1] for o in outs] == builders * 2
    assert sum("waiting for" in o for o in outs) == 1


def test_backbone_cache_refuses_another_recipe(tmp_path):
    """A cached backbone folder whose recipe.json differs from what is asked is not reused."""
    cache = pl.Backbones(tmp_path, "smoke")
    pl.write_json(tmp_path / "clips" / "clips.json", {"recipe": pl.BACKBONE_RECIPE["smoke"]["clips"],
                                                      "k400": "t", "k400_val": "v"})
    row = pl.tiny_rows(ids=["dropmae"])[0]
    _, recipe = cache.command(row, 0, tmp_path / "x")
    assert recipe["P"] == 0.1 and recipe["seed"] == 0 and recipe["lr"] == pl.BACKBONE_RECIPE["smoke"]["lr"]
    pl.write_json(tmp_path / "dropmae_k400_seed0" / "recipe.json", {**recipe, "lr": 1.0})
    with pytest.raises(SystemExit, match="pre-trained with another recipe"):
        cache.get(row, 0, pl.Console(stream=open(os.devnull, "w")))
    assert [r.backbone_key() for r in pl.tiny_rows()[1:]] == ["image_mae_k400", "twinmae_k400", "dropmae_k400"]


def test_a_rows_video_source_gets_its_own_synthetic_clips(smoke_backbones, tmp_path):
    """Row.video declares the pre-training source: at smoke scale the cache makes that source's
    clips once, in its layout (MiT: training/<class>/; WebVid: no classes), with the counts of
    SYNTHETIC_SOURCES and other scenes than K400's; dropmae.py pretrain reads them with the
    source's preset. A source without a synthetic stand-in is refused."""
    import data
    cache = pl.Backbones(smoke_backbones, "smoke")
    clips = cache.clips(sources=["mit", "webvid"])
    for source in ("mit", "webvid"):
        classes, per_class, _ = pl.SYNTHETIC_SOURCES["smoke"][source]
        videos = data.list_videos(source, clips[source])
        assert len(videos) == classes * per_class
        assert all(v.startswith("training/") == (source == "mit") for v in videos)
    k400 = sorted(Path(clips["k400"]).rglob("*.mp4"))
    mit = sorted(Path(clips["mit"]).rglob("*.mp4"))
    assert k400[0].name == mit[0].name and k400[0].read_bytes() != mit[0].read_bytes()    # other scenes
    assert cache.clips(sources=["mit"])["mit"] == clips["mit"]                            # made once
    cmd, recipe = cache.command(pl.pretrained("m", "DropMAE", "mit", P=0.1), 0, tmp_path / "m")
    assert recipe["data"] == "mit" and recipe["data_path"] == clips["mit"]
    assert cmd[cmd.index("--data") + 1] == "mit" and cmd[cmd.index("--data-path") + 1] == clips["mit"]
    with pytest.raises(SystemExit, match="no synthetic 'folder' videos"):
        cache.command(pl.pretrained("f", "DropMAE", "folder"), 0, tmp_path / "f")


def test_shared_synthetic_data_is_made_once_for_tables_of_the_same_recipe(tmp_path):
    """share_data: two tables with the same synthetic function and recipe make the data once, in
    the backbone cache, each <out>/data linking to it; another recipe makes its own."""
    made = []

    def synth(ctx, row):
        made.append(ctx.recipe["n"])
        ctx.folder(row).mkdir(parents=True, exist_ok=True)
        (ctx.folder(row) / "x.txt").write_text(str(ctx.recipe["n"]))
        return {"paths": {"x": str(ctx.folder(row) / "x.txt")}}

    rows = [pl.Row("none", "No pre-training")]
    devnull = open(os.devnull, "w")

    def prepared(name, n):
        table = pl.Table(name=name, title=name, paper={}, columns=[], rows={"tiny": rows}, stages=[],
                         recipes={"tiny": {"n": n}}, synthetic=synth, collapse_check=False, share_data=True)
        run = pl.TableRun(table, "tiny", tmp_path / name, [0], backbones=tmp_path / "cache", stream=devnull)
        run.prepare(rows)
        return run
    a, b, c = prepared("a", 1), prepared("b", 1), prepared("c", 2)
    assert made == [1, 2]
    assert a.data["x"] == b.data["x"] != c.data["x"] and Path(a.data["x"]).is_relative_to(tmp_path / "cache")
    assert (tmp_path / "b" / "data").is_symlink() and (tmp_path / "b" / "data" / "x.txt").read_text() == "1"
    assert (tmp_path / "c" / "data" / "x.txt").read_text() == "2"


def test_token_cosine_is_one_for_identical_tokens_and_lower_at_random_init():
    """Constant tokens (zeroed blocks, norm bias only) -> cosine 1; a random init on noise < 1."""
    torch.manual_seed(0)
    enc = dropmae.ViTEncoder(dropmae.get_config("tiny"))
    frames = torch.randn(2, 3, enc.cfg.img_size, enc.cfg.img_size)
    assert pl.token_cosine(enc, frames) < 0.9
    with torch.no_grad():
        enc.norm.weight.zero_()
        enc.norm.bias.fill_(1.0)
    assert pl.token_cosine(enc, frames) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Launching and the key rules of foreign checkpoints
# --------------------------------------------------------------------------------------------

def test_launcher_plain_python_for_one_process_torchrun_otherwise():
    """NPROC=1, NNODES=1 (and every test stage): python; else torch.distributed.run with the node."""
    one = {"nproc": 1, "nnodes": 1, "node_rank": 0, "master_addr": "a", "master_port": 1}
    assert pl.launcher("dropmae.py", one, train=True) == [sys.executable, "dropmae.py"]
    many = {"nproc": 8, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29500}
    assert pl.launcher("tasks/vot.py", many, train=True) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=2", "--node_rank=1",
        "--master_addr=10.0.0.1", "--master_port=29500", "tasks/vot.py"]
    assert pl.launcher("tasks/vot.py", many, train=False) == [sys.executable, "tasks/vot.py"]


def test_progress_reads_counts_from_output_lines():
    assert pl.Progress().fraction("sequences:  50%|#####     | 4/8 [00:01<00:01]") == 0.5
    assert pl.Progress(r"^epoch (\d+): loss", total=4, base=1).fraction("epoch 1: loss 0.5, lr") == 0.5
    assert pl.Progress(r"^it (\d+)/(\d+)").fraction("it 50/500 loss 1.0") == 0.1
    assert pl.Progress().fraction("no progress here") is None


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
    converted = pl.convert_timm_vit(state, "vit.pth")
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
    with pytest.raises(pl.Unsupported, match="fc_norm"):
        pl.convert_timm_vit({**state, "fc_norm.weight": torch.ones(96)}, "gap.pth")
    with pytest.raises(pl.Unsupported, match="layer-scale"):
        pl.convert_timm_vit({**state, "blocks.0.ls1.gamma": torch.ones(96)}, "ls.pth")
    with pytest.raises(ValueError, match="x.pth: not a timm ViT"):
        pl.convert_timm_vit({"conv1.weight": torch.ones(1)}, "x.pth")


def test_mocov3_rule_takes_the_base_encoder_only():
    """module.base_encoder.* kept (minus head.*), momentum encoder and predictor dropped."""
    _, state = _timm_state()
    moco = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in state.items()},
                           **{f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()},
                           "module.predictor.0.weight": torch.zeros(4, 4)}, "epoch": 300}
    got = pl.convert_mocov3(moco, "moco.pth.tar")["model"]
    want = pl.convert_timm_vit(state)["model"]
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="module.base_encoder"):
        pl.convert_mocov3({"state_dict": {"encoder.x": torch.ones(1)}}, "bad.pth")


def test_ckpt_for_one_of_our_rows_replaces_its_pretraining(tmp_path):
    """--ckpt dropmae=PATH: the row converts (checks by loading) that file instead of
    pre-training, and its downstream stages start from it; a foreign row converts by its rule."""
    torch.manual_seed(0)
    model = dropmae.DropMAE(dropmae.get_config("tiny"))
    path = tmp_path / "mine.pth"
    torch.save({"model": model.state_dict(), "config": vars(model.cfg)}, path)
    table, rows = _table([pl.Column("AO", "val")], {})
    run = pl.TableRun(table, "tiny", tmp_path / "out", [0], ckpts={"dropmae": str(path)},
                      stream=open(os.devnull, "w"))
    ctx, row = run.seed_run(0), rows[1]
    assert [s.name for s in ctx.stages(row)] == ["convert"] and ctx.skip_reason(row) is None
    ctx.stage(row, pl.CONVERT, "[row 2/2]")
    assert ctx.result(row, "convert")["kind"] == "ours" and ctx.backbone(row) == path.resolve()
    _, state = _timm_state()
    torch.save(state, tmp_path / "timm.pth")
    sup = pl.foreign("sup", "Supervised", "IN1K", 300, "timm")
    run.ckpts["sup"] = str(tmp_path / "timm.pth")
    ctx.stage(sup, pl.CONVERT, "[row 3/3]")
    res = ctx.result(sup, "convert")
    assert res["rule"] == "timm" and res["dropped"] == ["cls_token"] and ctx.backbone(sup).is_file()
