"""Tests of reproduce/figure_p.py: the smoke run (P = 0.05, pre-trained here; the other five run
the same stages, and P = 0 / 0.1 are Table 1's TwinMAE / DropMAE rows) writes the table with all
six rows, the figure's JSON and CSV, and a PNG only when matplotlib is importable."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

from reproduce import figure_p as fp



def test_rows_are_the_six_ratios_and_p0_is_twinmae():
    assert [r.P for r in fp.ROWS["tiny"]] == [0.0, 0.05, 0.1, 0.2, 0.3, 0.4]
    keys = [r.backbone_key() for r in fp.ROWS["tiny"]]
    assert keys[0] == "twinmae_k400" and keys[2] == "dropmae_k400"         # Table 1's shared backbones
    assert len(set(keys)) == 6 and [s.name for s in fp.STAGES] == ["vot_train", "vot_val", "vos_train", "vos_val"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_table):
    out = tmp_path_factory.mktemp("figure_p_smoke")
    return out, smoke_table("figure_p", "--out", str(out))


def test_smoke_writes_table_json_csv_and_png_only_with_matplotlib(smoke):
    out, stdout = smoke
    fig = json.loads((out / "figure_p.json").read_text())
    assert fig["scale"] == "smoke" and "NOT COMPARABLE" in fig["banner"]
    assert [p["P"] for p in fig["points"]] == list(fp.PS)
    lines = (out / "figure_p_points.csv").read_text().splitlines()
    assert lines[0].startswith("# SMOKE SCALE")
    pts = list(csv.DictReader(lines[1:]))
    table = {r["row"]: r for r in csv.DictReader((out / "figure_p.csv").read_text().splitlines()[1:])}
    assert list(table) == [fp.row_id(P) for P in fp.PS]
    for p, point in zip(pts, fig["points"]):
        rec = table[point["row"]]
        for m in fp.METRICS:
            if point["P"] != 0.05:                                  # not run at smoke scale: no number
                assert p[m] == "" and point[m] is None and rec["status"] == "skipped"
                continue
            assert 0.0 <= float(p[m]) <= 100.0
            assert float(p[m]) == pytest.approx(point[m]) == pytest.approx(float(rec[f"{m}_ours"]))
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    assert (out / "figure_p.png").is_file() == has_mpl
    assert ("no PNG: matplotlib is not installed" in stdout) != has_mpl
