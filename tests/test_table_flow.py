"""Tests for reproduce/table_flow.py on reproduce/pipeline.py: the smoke table and its resume.

One smoke-scale run of two rows (DropMAE, zero flow; the other rows run the same stages) is
stopped after a stage with --stop-after (as if killed), then rerun to the end. The DropMAE backbone comes from
the session's shared smoke-backbone folder (tests/conftest.py).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pl = pytest.importorskip("reproduce.pipeline", reason="reproduce/pipeline.py is not merged on this branch yet")

REPO = Path(__file__).resolve().parents[1]
ROWS = ["dropmae", "zero"]
STOP = "dropmae/train_T"


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_backbones):
    out = tmp_path_factory.mktemp("table_flow_smoke")
    cmd = [sys.executable, "-m", "reproduce.table_flow", "--smoke", "--out", str(out),
           "--backbones", str(smoke_backbones), "--rows", *ROWS]
    first = subprocess.run(cmd + ["--stop-after", STOP], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    done_first = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in (out / "seed0").glob("*/*.json")}
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"out": out, "first": done_first, "second": second.stdout}


def test_smoke_table_complete_labelled_and_resumed(smoke):
    out = smoke["out"]
    lines = (out / "table_flow.csv").read_text().splitlines()
    assert lines[0] == f"# {pl.BANNERS['smoke']}"
    recs = {r["row"]: r for r in csv.DictReader(lines[1:])}
    assert list(recs) == ROWS and all(r["status"] == "done" for r in recs.values())
    for r in recs.values():
        for col in ("chairs_epe", "sintel_clean", "sintel_final", "kitti_fl"):
            assert 0.0 <= float(r[f"{col}_ours"]) < 100.0, (r["row"], col)
            assert r[f"{col}_paper"] == ""                      # no paper numbers exist
    text = (out / "table_flow.txt").read_text()
    assert pl.BANNERS["smoke"] in text and "Other methods" in text and "RAFT" in text
    # the zero-flow row scores what zero flow scores, by hand on the GT files
    from tasks import flow
    import numpy as np
    data = json.loads((out / "data" / "data.json").read_text())["result"]["paths"]
    pairs = [p for d in ("clean", "final") for p in flow.sintel_pairs(data["sintel"], "training", d)
             if p.name in ("seq_0/frame_0001", "seq_0/frame_0002")]
    mags = np.concatenate([np.linalg.norm(flow.read_gt(p.flow, "flo")[0], axis=2).ravel() for p in pairs[:2]])
    assert float(recs["zero"]["sintel_clean_ours"]) == pytest.approx(mags.mean(), rel=1e-3)
    # C then T: protocol names carried from stage to stage
    t = json.loads((out / "seed0" / "dropmae" / "train_T.json").read_text())["result"]
    assert t["protocol"] == "C+T" and t["steps"] == 2
    # resume: what the first run finished was not redone
    assert "dropmae/train_T.json" in {k.split("/", 1)[1] for k in smoke["first"]}
    assert "dropmae/test.json" not in {k.split("/", 1)[1] for k in smoke["first"]}
    for rel, mtime in smoke["first"].items():
        assert (out / rel).stat().st_mtime_ns == mtime, rel
