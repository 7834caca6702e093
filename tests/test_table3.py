"""Tests of reproduce/table3.py: the smoke table (DAVIS-16 / DAVIS-17 val numbered, the test-dev
and YouTube-VOS submissions written), and a released DropSeg file (the official key layout)
through --finetuned: only the test stages run, with the masks of the same weights."""
import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reproduce import table3 as t3

COLS = ("D16_JF", "D16_J", "D16_F", "D17_JF", "D17_J", "D17_F")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_table):
    out = tmp_path_factory.mktemp("table3_smoke")
    return out, smoke_table("table3", "--out", str(out))


def records(out):
    lines = (out / "table3.csv").read_text().splitlines()
    assert lines[0] == "# SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"
    return {r["row"]: r for r in csv.DictReader(lines[1:])}


def test_smoke_table_and_submissions(smoke):
    """The DropSeg row: every DAVIS cell numbered beside the paper's; J&F = (J + F) / 2; the
    test-dev zip holds <seq>/<frame>.png for every frame of the listed sequences, the YouTube-VOS
    one Annotations/<vid>/<frame>.png."""
    out, stdout = smoke
    (rec,) = records(out).values()
    assert rec["row"] == "dropmae" and rec["status"] == "done"
    for c in COLS:
        assert 0.0 <= float(rec[f"{c}_ours"]) <= 100.0 and float(rec[f"{c}_paper"]) > 80.0, c
    for y in ("D16", "D17"):
        assert abs(float(rec[f"{y}_JF_ours"]) - (float(rec[f"{y}_J_ours"]) + float(rec[f"{y}_F_ours"])) / 2) < 1e-6
    row = out / "seed0" / "dropmae"
    davis = out / "data" / "vos" / "DAVIS"
    seqs = (davis / "ImageSets" / "2017" / "test-dev.txt").read_text().split()
    expected = [f"{s}/{p.stem}.png" for s in seqs for p in sorted((davis / "JPEGImages" / "480p" / s).glob("*.jpg"))]
    names = zipfile.ZipFile(row / "davis17_testdev" / "submission.zip").namelist()
    n_val, frames = t3.RECIPES["smoke"]["vos_synth"]["davis_val"], t3.RECIPES["smoke"]["frames"]
    assert len(seqs) == n_val and sorted(names) == sorted(expected) and len(names) == n_val * frames
    yt = zipfile.ZipFile(row / "ytvos19_valid" / "submission.zip").namelist()
    assert yt and all(n.startswith("Annotations/") for n in yt)
    assert "92.1 / " in stdout and "submission folders and zips" in stdout


def official_layout(state: dict) -> dict:
    """Our DropSeg weights written with the released file's keys (tasks/vos.py's key table)."""
    out = {}
    for k, v in state.items():
        if k.startswith("fpn2."):
            k = "fpn2.0." + k[5:]
        elif k.startswith("fpn1.1."):
            k = "fpn1.1.ln." + k[7:]
        elif k == "pos_embed_two_frame":
            cls = torch.zeros_like(v[:, :1])
            out["pos_embed_three_frame"] = torch.cat([cls, v, v, v], 1)
            v = torch.cat([cls, v, v], 1)
        out[k] = v
    D = state["pos_embed"].shape[-1]
    out.update({"cls_token": torch.zeros(1, 1, D), "head.weight": torch.zeros(1000, D), "head.bias": torch.zeros(1000),
                "fc_norm.weight": torch.ones(D), "fc_norm.bias": torch.zeros(D)})
    return out


def test_released_dropseg_file_runs_only_the_test_stages(tmp_path, smoke, smoke_table):
    """The smoke run's DropSeg weights saved as a released file (bare state dict, official keys):
    --finetuned dropseg... runs no backbone or training stage, and writes the same DAVIS-17 masks."""
    out, _ = smoke
    row = out / "seed0" / "dropmae"
    ckpt = out / "seed0" / t3.pl.read_json(row / "vos_train.json")["result"]["checkpoint"]
    torch.save(official_layout(torch.load(ckpt, weights_only=True)["model"]), tmp_path / "official_2.pth")
    run = tmp_path / "released"
    smoke_table("table3", "--out", str(run), "--finetuned", f"dropmae={tmp_path / 'official_2.pth'}")
    mine = run / "seed0" / "dropmae"
    assert sorted(p.stem for p in mine.glob("*.json")) == ["davis16_val", "davis17_testdev", "davis17_val",
                                                           "ytvos19_valid"]
    pngs = sorted((row / "davis17_val").glob("*/*.png"))
    assert pngs
    for png in pngs:
        other = mine / "davis17_val" / png.relative_to(row / "davis17_val")
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(other)))
    assert records(run)["dropmae"]["D17_JF_ours"] == records(out)["dropmae"]["D17_JF_ours"]
    assert f"the given fine-tuned model {tmp_path / 'official_2.pth'}" in (run / "table3.txt").read_text()
