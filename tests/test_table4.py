"""Tests of reproduce/table4.py: videos / actions counted from generated folders with known
counts in every source's layout, and the smoke table: every source a row, the smoke run
pre-training and scoring MiT (its own synthetic clips from the pipeline, training/<class>/
layout; the other sources run the same stages) with the counts of its clips."""
import csv
from pathlib import Path

import pytest

from reproduce import table4 as t4



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


def test_rows_declare_their_source_at_every_scale():
    """Each row pre-trains DropMAE (P 0.1) on its own source, at tiny scale as at full: the K400
    row is the shared DropMAE backbone of Table 1, the others their own cache entries."""
    for scale in ("full", "tiny"):
        rows = t4.ROWS[scale]
        assert [r.video for r in rows] == list(t4.SOURCES) and {r.P for r in rows} == {0.1}
        assert len({r.backbone_key() for r in rows}) == 5
    assert t4.ROWS["tiny"][0].backbone_key() == t4.pl.tiny_rows(ids=["dropmae"])[0].backbone_key()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_table):
    out = tmp_path_factory.mktemp("table4_smoke")
    return out, smoke_table("table4", "--out", str(out))


def test_smoke_table_counts_the_clips_and_numbers_every_cell(smoke, smoke_backbones):
    out, stdout = smoke
    lines = (out / "table4.csv").read_text().splitlines()
    assert lines[0] == "# SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert list(recs) == list(t4.SOURCES)
    for rid in ("k400", "k600", "k700", "webvid"):
        assert recs[rid]["status"] == "skipped" and "not run at smoke scale" in recs[rid]["reason"]
    mit = recs["mit"]
    classes, per_class, _ = t4.pl.SYNTHETIC_SOURCES["smoke"]["mit"]
    assert (float(mit["videos_ours"]), float(mit["actions_ours"])) == (classes * per_class, classes)
    assert mit["status"] == "done"
    for m in ("AO", "SR0.5", "SR0.75", "J&F"):
        assert 0.0 <= float(mit[f"{m}_ours"]) <= 100.0 and float(mit[f"{m}_paper"]) > 50.0
    assert mit["videos_paper"] == "802244" and recs["k400"]["videos_paper"] == "240000"
    assert f"802,244 / {classes * per_class}" in stdout
    count = t4.pl.read_json(out / "seed0" / "mit" / "data_count.json")["result"]
    pre = t4.pl.read_json(out / "seed0" / "mit" / "pretrain.json")["result"]
    assert count["preset"] == "mit" and count["folder"] == pre["recipe"]["data_path"]
    assert Path(count["folder"]) == smoke_backbones / "clips" / "mit"              # the pipeline's clips
