"""Tests of reproduce/table4.py: videos / actions counted from generated folders with known
counts in every source's layout, and a smoke table of two sources (the shared K400 backbone and
WebVid's own clips; the other sources run the same stages) with the counts of their clips."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce import table4 as t4

REPO = Path(__file__).resolve().parents[1]


def touch(root: Path, rel: str):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"")


def test_counts_in_every_layout(tmp_path):
    """K400 with a train/ folder, K600 flat class folders, MiT training/<class>/, WebVid nested:
    videos by extension (any case), hidden files, non-videos and loose top-level files ignored,
    actions = class folders holding a video (an empty class folder does not count)."""
    k400 = tmp_path / "k400"
    for c in range(3):
        for k in range(c + 1):                                       # 1 + 2 + 3 = 6 videos
            touch(k400, f"train/cls{c}/v{k}.mp4")
    touch(k400, "train/cls0/._v0.mp4")                               # macOS resource fork
    touch(k400, "train/cls1/notes.txt")
    (k400 / "train" / "empty_class").mkdir()
    assert t4.count_videos_actions("k400", k400) == (6, 3)
    k600 = tmp_path / "k600"
    for c in range(4):
        touch(k600, f"c{c}/a.webm")
        touch(k600, f"c{c}/b.MKV")
    touch(k600, "loose.mp4")                                         # not in a class folder
    assert t4.count_videos_actions("k600", k600) == (8, 4)
    mit = tmp_path / "mit"
    for c, n in (("running", 3), ("jumping", 2)):
        for k in range(n):
            touch(mit, f"training/{c}/{k}.mp4")
    touch(mit, "validation/running/x.mp4")                           # only training/ is read
    assert t4.count_videos_actions("mit", mit) == (5, 2)
    web = tmp_path / "webvid"
    for k in range(7):
        touch(web, f"{k % 3:03d}/{k}/{k}.mp4")
    assert t4.count_videos_actions("webvid", web) == (7, None)


def test_tiny_rows_pretrain_on_their_own_clips(tmp_path):
    """Tiny / smoke: every source but K400 keeps the cache's video set and points dropmae.py at
    its clips under <out>/data/<source>; full scale leaves the rows alone."""
    class Run:
        scale, out = "smoke", tmp_path
    rows = {r.id: r for r in t4.with_tiny_sources(Run, t4.ROWS["tiny"])}
    assert rows["k400"].pretrain_args == ()
    assert t4.source_of(rows["mit"]) == ("mit", str(tmp_path / "data" / "mit"))
    assert rows["mit"].video == "k400" and rows["mit"].data == "MiT" and rows["mit"].P == 0.1
    Run.scale = "full"
    assert t4.with_tiny_sources(Run, t4.ROWS["full"]) == t4.ROWS["full"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_backbones):
    out = tmp_path_factory.mktemp("table4_smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    cmd = [sys.executable, "-m", "reproduce.table4", "--smoke", "--out", str(out), "--backbones",
           str(smoke_backbones), "--rows", "k400", "webvid"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_smoke_table_counts_the_clips_and_numbers_every_cell(smoke):
    out, stdout = smoke
    lines = (out / "table4.csv").read_text().splitlines()
    assert lines[0] == "# SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert list(recs) == ["k400", "webvid"]
    clips = t4.pl.BACKBONE_RECIPE["smoke"]["clips"]["train"]                  # (classes, per class)
    assert (float(recs["k400"]["videos_ours"]), float(recs["k400"]["actions_ours"])) == (clips[0] * clips[1], clips[0])
    classes, per_class, _ = t4.TINY_SOURCES["smoke"]["webvid"]
    assert float(recs["webvid"]["videos_ours"]) == classes * per_class and recs["webvid"]["actions_ours"] == ""
    for r in recs.values():
        assert r["status"] == "done"
        for m in ("AO", "SR0.5", "SR0.75", "J&F"):
            assert 0.0 <= float(r[f"{m}_ours"]) <= 100.0 and float(r[f"{m}_paper"]) > 50.0
    assert recs["k400"]["videos_paper"] == "240000"
    assert "240,000 / 4" in stdout
    webvid = out / "seed0" / "webvid" / "data_count.json"
    assert t4.pl.read_json(webvid)["result"]["folder"] == str(out / "data" / "webvid")
