"""reproduce/table_tap.py at smoke scale on reproduce/pipeline.py: synthetic-world tracks in
the Kubric and TAP-Vid layouts, tasks/tap.py train/test per row, the zero-motion row, the
table's labels and anchors. One run (module fixture) on the shared smoke backbones; two rows
(a pre-trained one and the baseline) keep it inside the suite's budget (the tiny default runs
every row: `make table-tap`).
Run: .venv/bin/python -m pytest -q tests/test_table_tap.py"""
import csv
import json
import os
import subprocess
import sys

import pytest

from reproduce import pipeline as pl


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_backbones):
    out = tmp_path_factory.mktemp("table_tap_smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SMOKE", None)
    cmd = [sys.executable, "-m", "reproduce.table_tap", "--smoke", "--out", str(out), "--backbones",
           str(smoke_backbones), "--rows", "dropmae", "zero_motion"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": out, "text": done.stdout}


def test_smoke_table_rows_numbers_and_labels(smoke):
    out, text = smoke["out"], smoke["text"]
    lines = (out / "table_tap.csv").read_text().splitlines()
    assert lines[0] == f"# {pl.BANNERS['smoke']}"
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert list(recs) == ["dropmae", "zero_motion"]
    for rec in recs.values():
        assert rec["status"] == "done"
        for m in ("AJ", "delta", "OA"):
            assert 0.0 <= float(rec[f"davis_first_{m}_ours"]) <= 100.0
        assert rec["davis_strided_AJ_ours"] == "" and rec["kinetics_first_AJ_ours"] == ""  # not at smoke
    assert pl.BANNERS["smoke"] in text and "Other methods (not rows of ours" in text
    assert "TAP-Net DAVIS first 33.0/48.6/78.8" in (out / "table_tap.txt").read_text()


def test_smoke_stages_and_outputs(smoke):
    seed = smoke["out"] / "seed0"
    assert not (seed / "zero_motion" / "train.json").exists()       # no network, no training
    zero = json.loads((seed / "zero_motion" / "davis_first.json").read_text())["result"]
    model = json.loads((seed / "dropmae" / "davis_first.json").read_text())["result"]
    assert zero["videos"] == model["videos"] == 2 and zero["queries"] == model["queries"] > 0
    preds = sorted(p.name for p in (seed / "dropmae" / "davis_first").glob("*.npz"))
    assert preds == ["world-00.npz", "world-01.npz"]
    ckpt = json.loads((seed / "dropmae" / "train.json").read_text())["result"]["checkpoint"]
    assert ckpt.endswith("checkpoint-2.pth")
    log = (seed / "dropmae" / "logs" / "davis_first.log").read_text()
    assert "tiny scale, not comparable with the paper" in log
    data = smoke["out"] / "data"
    assert (data / "kubric" / "train" / "00000" / "00000.npy").is_file()
    assert (data / "tapvid_kinetics" / "0001_of_0010.pkl").is_file()
