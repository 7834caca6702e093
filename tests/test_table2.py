"""Tests of reproduce/table2.py: the smoke table (its two smoke rows, one per tracker and recipe,
numbered for their recipe's benchmarks, FPS measured, the server zips written; the other two
rows printed as skipped), released trackers through --finetuned (test stages only),
and the benchmark layouts re-laid out from synthetic GOT-10k, read back by tasks/vot_data.py.
The pipeline's kill-and-rerun is tested once, in tests/test_pipeline.py / test_table1.py."""
import csv
from pathlib import Path

import numpy as np
import pytest

from reproduce import table2 as t2
from tasks import vot_data as vd

GOT_COLS = ("AO", "SR50", "SR75")
FULL_COLS = ("TNL2K_AUC", "TNL2K_P", "EXT_AUC", "EXT_Pnorm", "EXT_P", "LASOT_AUC", "LASOT_Pnorm", "LASOT_P")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_table):
    out = tmp_path_factory.mktemp("table2_smoke")
    return out, smoke_table("table2", "--out", str(out))


def records(out):
    lines = (out / "table2.csv").read_text().splitlines()
    assert lines[0] == "# SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"
    return {r["row"]: r for r in csv.DictReader(lines[1:])}


def test_smoke_table_numbers_every_row_on_its_recipes_benchmarks(smoke):
    """4 rows (2 trackers x 2 recipes), the smoke run running DropTrack got10k and OSTrack full
    (the other two run the same stages on the other backbone: skipped, with the reason); a
    got10k-recipe row has GOT-10k val numbers and none of the full recipe's benchmarks, a
    full-recipe row the opposite; FPS is ours; the paper's numbers sit beside ours; the GOT-10k
    test and TrackingNet zips exist."""
    out, stdout = smoke
    recs = records(out)
    assert list(recs) == ["droptrack_got10k", "ostrack_got10k", "droptrack_full", "ostrack_full"]
    for rid in ("ostrack_got10k", "droptrack_full"):
        assert recs[rid]["status"] == "skipped" and "not run at smoke scale" in recs[rid]["reason"]
        assert recs[rid]["AO_ours"] == recs[rid]["LASOT_AUC_ours"] == ""
    for rid in t2.TABLE.smoke_rows:
        r = recs[rid]
        assert r["status"] == "done", r
        mine, other = (GOT_COLS, FULL_COLS) if rid.endswith("got10k") else (FULL_COLS, GOT_COLS)
        for c in mine:
            assert 0.0 <= float(r[f"{c}_ours"]) <= 100.0 and float(r[f"{c}_paper"]) > 50.0, (rid, c)
        for c in other:
            assert r[f"{c}_ours"] == "" and r[f"{c}_paper"] == "", (rid, c)
        assert float(r["FPS_ours"]) > 0.0 and r["FPS_paper"] == ""
    assert recs["droptrack_got10k"]["AO_paper"] == "75.9" and recs["ostrack_full"]["LASOT_AUC_paper"] == "71.1"
    assert recs["droptrack_full"]["LASOT_AUC_paper"] == "71.8"                 # skipped rows keep the paper's
    tests = out / "seed0" / "droptrack_got10k" / "tests"
    assert (tests / "got10k_test.zip").is_file()
    assert (out / "seed0" / "ostrack_full" / "tests" / "trackingnet.zip").is_file()
    assert "75.9 / " in stdout and "FPS (ours)" in stdout


def test_released_tracker_runs_only_the_test_stages(tmp_path, smoke, smoke_table):
    """--finetuned ROW=PATH (here the smoke run's own tracker checkpoint): no backbone, no training;
    the row's two GOT-10k stages run on the file, which gives the same val AO as in the smoke run;
    the table names the file."""
    out, _ = smoke
    ckpt = out / "seed0" / t2.pl.read_json(
        out / "seed0" / "droptrack_got10k" / "vot_train.json")["result"]["checkpoint"]
    run = tmp_path / "released"
    smoke_table("table2", "--out", str(run), "--rows", "droptrack_got10k", "--finetuned", f"droptrack_got10k={ckpt}")
    done = sorted(p.stem for p in (run / "seed0" / "droptrack_got10k").glob("*.json"))
    assert done == ["got10k_test", "got10k_val", "speed"]
    assert records(run)["droptrack_got10k"]["AO_ours"] == records(out)["droptrack_got10k"]["AO_ours"]
    assert records(run)["droptrack_got10k"]["finetuned"] == str(ckpt)
    assert f"the given fine-tuned model {ckpt}" in (run / "table2.txt").read_text()


def test_a_finetuned_full_scale_row_needs_no_backbone_and_runs_only_its_tests(tmp_path):
    """Full scale, --finetuned for a foreign row (OSTrack, MAE IN1K, no --ckpt given) and one of
    ours (no --k700 given): neither is skipped for want of weights or videos, and their stages
    are the recipe's tests only; the other rows still need theirs."""
    (tmp_path / "got").mkdir()
    args = t2.pl.build_parser(t2.TABLE).parse_args([
        "--got10k", str(tmp_path / "got"), "--out", str(tmp_path / "out"),
        f"--finetuned=ostrack_full={__file__}", "--finetuned", f"droptrack_got10k={__file__}"])
    run, rows = t2.pl.make_run(t2.TABLE, args)
    ctx, by_id = run.seed_run(0), {r.id: r for r in rows}
    assert run.finetuned == {"ostrack_full": str(Path(__file__).resolve()),
                             "droptrack_got10k": str(Path(__file__).resolve())}
    assert [s.name for s in ctx.stages(by_id["ostrack_full"])] == [*t2.TESTS["full"], "speed"]
    assert [s.name for s in ctx.stages(by_id["droptrack_got10k"])] == [*t2.TESTS["got10k"], "speed"]
    assert ctx.skip_reason(by_id["ostrack_full"]) is None and ctx.skip_reason(by_id["droptrack_got10k"]) is None
    assert "needs --ckpt ostrack_got10k" in ctx.skip_reason(by_id["ostrack_got10k"])
    assert "needs --k700" in ctx.skip_reason(by_id["droptrack_full"])
    assert ctx.trained(by_id["ostrack_full"], "vot_train") == Path(__file__).resolve()


def test_benchmark_layouts_read_back_as_the_source_sequences(tmp_path):
    """COCO / TrackingNet TRAIN from the source's train split, TNL2K / LaSOT_ext / TrackingNet TEST
    from its val split: tasks/vot_data.py reads the same frames and boxes back; the vot split files
    index train/list.txt (the last sequence is votval)."""
    src = vd.write_synthetic(tmp_path / "src", seed=1, T=20, n_train=3, n_val=2)
    vd.write_synthetic(tmp_path / "vot", seed=0, T=20, n_train=4, n_val=2)
    t2.write_benchmark_layouts(src["got10k"], tmp_path / "vot")
    train, val = vd.GOT10k(src["got10k"], "train"), vd.GOT10k(src["got10k"], "val")
    tnl, ext = vd.TNL2K(tmp_path / "vot" / "tnl2k"), vd.LaSOT(tmp_path / "vot" / "lasot_ext", "all")
    tn_test = vd.TrackingNet(tmp_path / "vot" / "trackingnet", ("TEST",))
    assert tnl.names == val.names and len(ext) == len(val) == len(tn_test) == 2
    for i, name in enumerate(val.names):
        gt = val.sequence_info(i)["boxes"]
        assert np.allclose(tnl.sequence_info(i)["boxes"], gt)
        j = tn_test.names.index(name)
        assert np.allclose(tn_test.sequence_info(j)["boxes"], gt[:1])          # TEST: first box only
        assert len(tn_test.frame_paths(j)) == len(tnl.frame_paths(i)) == len(val.frame_paths(i)) == 20
    vis = ext.sequence_info(ext.names.index("newclass-1"))["visible"]
    cover = np.array((src["got10k"] / "val" / val.names[0] / "cover.label").read_text().split(), int)
    assert np.array_equal(vis, cover > 0)                                      # occluded / absent: invisible
    coco = vd.COCO17(tmp_path / "vot" / "coco")
    tn_train = vd.TrackingNet(tmp_path / "vot" / "trackingnet")
    assert len(coco) == len(tn_train) == len(train) == 3
    assert np.allclose(coco.sequence_info(0)["boxes"], train.sequence_info(0)["boxes"][:1])
    assert coco.frame_path(0, 0).is_file()
    assert len(vd.GOT10k(tmp_path / "vot" / "got10k", "vottrain")) == 3
    assert vd.GOT10k(tmp_path / "vot" / "got10k", "votval").names == ["GOT-10k_Train_000004"]
