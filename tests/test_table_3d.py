"""Tests for reproduce/table_3d.py on reproduce/pipeline.py: the smoke 3-D table, its resume and labels.

One smoke-scale run (module fixture) of three rows (no pre-training, DropMAE from the session's
shared smoke backbones, the previous-box baseline), Car only: stopped after the DropMAE training
stage, then rerun to the end; the second run redoes no finished stage.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce import pipeline as pl

REPO = Path(__file__).resolve().parents[1]
ROWS = ["none", "dropmae", "previous"]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_backbones):
    out = tmp_path_factory.mktemp("table_3d_smoke")
    cmd = [sys.executable, "-m", "reproduce.table_3d", "--smoke", "--out", str(out), "--backbones",
           str(smoke_backbones), "--rows", *ROWS]
    first = subprocess.run(cmd + ["--stop-after", "dropmae/train_Car"], cwd=REPO, env=_env(),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    finished = {p: p.stat().st_mtime_ns for p in (out / "seed0").glob("*/*.json")}
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"out": out, "first": first.stdout, "second": second.stdout, "finished": finished}


def test_smoke_table_rows_columns_and_banner(smoke):
    lines = (smoke["out"] / "table_3d.csv").read_text().splitlines()
    assert lines[0] == f"# {pl.BANNERS['smoke']}"
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert list(recs) == ROWS and all(r["status"] == "done" for r in recs.values())
    for r in recs.values():
        for col in ("Car_S", "Car_P", "Mean_S", "Mean_P", "val_S", "val_P"):
            assert 0.0 <= float(r[f"{col}_ours"]) <= 100.0, (r["row"], col)
            assert r[f"{col}_paper"] == ""                          # the paper's 3-D numbers are not public
        assert r["Ped_S_ours"] == "" and r["Van_P_ours"] == ""     # smoke: Car only
        assert float(r["Mean_S_ours"]) == pytest.approx(float(r["Car_S_ours"]))
    text = (smoke["out"] / "table_3d.txt").read_text()
    assert pl.BANNERS["smoke"] in text and "Previous box (baseline)" in text
    assert "M2-Track Car 65.5 / 80.8" in text and "not DropMAE" in text


def test_result_files_scores_and_backbone(smoke):
    seed = smoke["out"] / "seed0"
    test = json.loads((seed / "dropmae" / "test_Car.json").read_text())["result"]
    summaries = json.loads((seed / "dropmae" / "test_Car" / "summaries.json").read_text())
    assert test["success"] == summaries["test"]["success"] and test["frames"] == summaries["test"]["n_frames"]
    names = sorted(p.name for p in (seed / "dropmae" / "test_Car" / "test").glob("0*_*.txt"))
    assert names and all(n.startswith(("0019_", "0020_")) for n in names)
    log = (seed / "dropmae" / "logs" / "train_Car.log").read_text()
    assert "loaded" in log and "(ours)" in log                                  # the shared backbone
    assert "the ViT blocks start random" in (seed / "none" / "logs" / "train_Car.log").read_text()


def test_rerun_after_stop_redoes_no_finished_stage(smoke):
    assert "stopped after seed 0 dropmae/train_Car" in smoke["first"]
    for path, mtime in smoke["finished"].items():
        assert path.stat().st_mtime_ns == mtime, path
    assert "done before, skipped" in smoke["second"]
