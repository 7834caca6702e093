"""3-D point-cloud single-object tracking on KITTI (Point-DropTrack, tasks/pointcloud.py).

The extended DropMAE paper reports 3-D tracking, but neither its tracker nor its numbers are
public (specs/paper.md), so the "paper" half of every cell is "-": the design is ours
(specs/pointcloud.md) and only the initialisation of the ViT blocks differs between the rows.
Every row trains one model per category (Car, Pedestrian, Van, Cyclist) on the train scenes
0-16, takes the last epoch, tracks every tracklet of the test scenes 19-20 (and the val scenes
17-18) from its first-frame box, and scores Success / Precision with eval/kitti3d.py (velodyne
mode, official height overlap). "Mean" weighs the categories by their frames, like the anchors.
The row "Previous box" is the baseline that never moves (every frame repeats the first box).

Stages of a row (on reproduce/pipeline.py; each resumable, skipped once done):
    pretrain    the shared backbone (TwinMAE, DropMAE, image MAE rows), or --ckpt ROW=PATH
    train_<C>   tasks/pointcloud.py train --category C          (every node; torchrun)
    test_<C>    tasks/pointcloud.py test --category C --split test val
    mean        frame-weighted means over the categories (no command)

Other methods, printed under the table as context (not DropMAE; KITTI test scenes 19-20,
Success / Precision; specs/paper.md, secondary sources):
    | method   | Car         | Pedestrian  | Van         | Cyclist     | Mean        |
    | P2B      | 56.2 / 72.8 | 28.7 / 49.6 | 40.8 / 48.4 | 32.1 / 44.7 | 42.4 / 60.0 |
    | BAT      | 60.5 / 77.7 | 42.1 / 70.1 | 52.4 / 67.0 | 33.7 / 45.4 | 51.2 / 72.8 |
    | M2-Track | 65.5 / 80.8 | 61.5 / 88.2 | 53.8 / 70.7 | 73.2 / 93.5 | 62.9 / 83.4 |
    | CXTrack  | 69.1 / 81.6 | 67.0 / 91.5 | 60.0 / 71.8 | 74.2 / 94.3 | 67.5 / 85.3 |

Hardware and time of the full run (our estimate, not measured): the base model (ViT-B blocks,
2 x 128 point tokens) trains 60 epochs at batch 64 per category; M2-Track needs ~1 h per category
for Car on 2 GPUs, and our ViT-B blocks cost several times its PointNet, so plan ~4-8 GPU-hours
for Car and Pedestrian each and less for Van and Cyclist, i.e. about a day of one A100 for the
4 rows x 4 categories, plus the pre-training of the backbones (table 1's).

Commands:
    make table-3d                      # tiny synthetic scale: 21 LiDAR scenes in the KITTI layout
    make table-3d SMOKE=1              # smoke scale (the test suite's): Car only, 1 epoch
    python -m reproduce.table_3d --kitti /data/kitti/tracking/training --k400 /data/k400/train \\
        --ckpt mae_in1k=mae_pretrain_vit_base.pth --out runs/table_3d
    NPROC=2 python -m reproduce.table_3d --kitti ... --ckpt dropmae_k400=dropmae_k400_vitb.pth

Tiny scale: data.LidarWorld scenes written by `tasks/pointcloud.py synthetic` (boxes of the four
classes moving on a ground plane, clutter, occlusion, sparsity with distance; 8-20 frames each),
the tiny backbones of the shared cache, TINY_TRAIN of tasks/pointcloud.py with the val pass off.
What it shows: the whole pipeline runs, resumes, and a trained tiny model tracks far better than
the box that never moves; with 2 val and 2 test scenes the differences between the pre-training
rows are noise.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from reproduce import pipeline as pl  # noqa: E402
from tasks import pointcloud as P  # noqa: E402

CATEGORIES = ("Car", "Pedestrian", "Van", "Cyclist")
SHORT = {"Car": "Car", "Pedestrian": "Ped", "Van": "Van", "Cyclist": "Cyc"}
BASELINE = pl.Row("previous", "Previous box (baseline)")
OTHER_METHODS = (
    "Other methods (context, not DropMAE; KITTI test scenes 19-20, Success / Precision; secondary):",
    "  P2B      Car 56.2 / 72.8  Ped 28.7 / 49.6  Van 40.8 / 48.4  Cyc 32.1 / 44.7  Mean 42.4 / 60.0",
    "  BAT      Car 60.5 / 77.7  Ped 42.1 / 70.1  Van 52.4 / 67.0  Cyc 33.7 / 45.4  Mean 51.2 / 72.8",
    "  M2-Track Car 65.5 / 80.8  Ped 61.5 / 88.2  Van 53.8 / 70.7  Cyc 73.2 / 93.5  Mean 62.9 / 83.4",
    "  CXTrack  Car 69.1 / 81.6  Ped 67.0 / 91.5  Van 60.0 / 71.8  Cyc 74.2 / 94.3  Mean 67.5 / 85.3",
    "The extended DropMAE paper's 3-D tracker and numbers are not public: the paper column is '-'.",
    "Columns: test scenes 19-20 (velodyne mode, official height overlap); val S / val P: the "
    "frame-weighted mean over the categories on the val scenes 17-18 (never used for selection).",
)

RECIPES = {
    "full": dict(model="base", categories=CATEGORIES, train_args=["--workers", "8"], test_seeds=[0, 1, 2]),
    "tiny": dict(model="tiny", categories=CATEGORIES, frames=(8, 16),
                 train_args=["--val-every", "0", "--workers", "0"], test_seeds=[0]),
    "smoke": dict(model="tiny", categories=("Car",), frames=(8, 8),
                  train_args=["--epochs", "1", "--candidates", "1", "--batch-size", "32", "--val-every", "0",
                              "--workers", "0"], test_seeds=[0]),
}


def make_data(ctx, row) -> dict:
    """Tiny / smoke data: the synthetic LiDAR scenes in the KITTI tracking layout."""
    root = ctx.folder(row, "kitti")
    P.write_synthetic(root, seed=0, frames=ctx.recipe["frames"])
    return {"paths": {"kitti": str(root)}}


def not_run(ctx, category) -> dict | None:
    if category not in ctx.recipe["categories"]:
        return {"not_run": f"{category} is not in the {ctx.scale} recipe"}
    return None


def train_stage(category):
    def stage(ctx, row) -> dict:
        skip = not_run(ctx, category)
        if skip:
            return skip
        run = ctx.folder(row, f"train_{category}")
        cmd = ctx.launcher("tasks/pointcloud.py", train=True) + [
            "train", "--category", category, "--model", ctx.recipe["model"], "--data-path", ctx.data["kitti"],
            "--output", str(run), "--resume", "auto", "--seed", str(ctx.seed), *ctx.recipe["train_args"]]
        backbone = ctx.backbone(row)
        if backbone:
            cmd += ["--pretrained", str(backbone)]
        ctx.run(cmd, progress=pl.Progress(r'^\{"epoch": (\d+)', total=_epochs(ctx)))
        return {"checkpoint": ctx.rel(dropmae.latest_checkpoint(run))}
    return stage


def _epochs(ctx) -> int:
    args = ctx.recipe["train_args"]
    if "--epochs" in args:
        return int(args[args.index("--epochs") + 1])
    return P.TINY_TRAIN["epochs"] if ctx.recipe["model"] == "tiny" else P.COMMON["epochs"]


def test_stage(category):
    def stage(ctx, row) -> dict:
        skip = not_run(ctx, category)
        if skip:
            return skip
        out = ctx.folder(row, f"test_{category}")
        cmd = ctx.launcher("tasks/pointcloud.py", train=False) + [
            "test", "--category", category, "--split", "test", "val", "--data-path", ctx.data["kitti"],
            "--output", str(out), "--test-seeds", *map(str, ctx.recipe["test_seeds"])]
        if row.id == BASELINE.id:
            cmd += ["--tracker", "previous"]
        else:
            cmd += ["--ckpt", str(ctx.out / ctx.result(row, f"train_{category}")["checkpoint"])]
        ctx.run(cmd)
        s = pl.read_json(out / "summaries.json")
        return {"success": s["test"]["success"], "precision": s["test"]["precision"],
                "frames": s["test"]["n_frames"], "val_success": s["val"]["success"],
                "val_precision": s["val"]["precision"], "val_frames": s["val"]["n_frames"],
                "fps": s["test"]["fps"]}
    return stage


def mean_stage(ctx, row) -> dict:
    """Frame-weighted Success / Precision over the categories that ran (test and val)."""
    res = [ctx.result(row, f"test_{c}") for c in CATEGORIES]
    res = [r for r in res if r and "success" in r]
    out = {}
    for prefix in ("", "val_"):
        n = sum(r[f"{prefix}frames"] for r in res)
        for k in ("success", "precision"):
            out[prefix + k] = sum(r[prefix + k] * r[f"{prefix}frames"] for r in res) / n if n else None
    out["categories"] = len(res)
    return out


def _rows(full: bool) -> list:
    if full:
        rows = [pl.Row("none", "No pre-training"),
                pl.foreign("mae_in1k", "MAE", "IN1K", 1600, "mae"),
                pl.pretrained("twinmae_k400", "TwinMAE", "k400", 400),
                pl.pretrained("dropmae_k400", "DropMAE", "k400", 400, P=0.1)]
    else:
        rows = pl.tiny_rows()
    return rows + [BASELINE]


trained = lambda row: row.id != BASELINE.id  # noqa: E731
STAGES = ([pl.Stage(f"train_{c}", train_stage(c), every_node=True, rows=trained) for c in CATEGORIES]
          + [pl.Stage(f"test_{c}", test_stage(c)) for c in CATEGORIES] + [pl.Stage("mean", mean_stage)])
COLUMNS = ([col for c in CATEGORIES for col in (pl.Column(f"{SHORT[c]}_S", f"test_{c}", "success", f"{SHORT[c]} S"),
                                                pl.Column(f"{SHORT[c]}_P", f"test_{c}", "precision", f"{SHORT[c]} P"))]
           + [pl.Column("Mean_S", "mean", "success", "Mean S"), pl.Column("Mean_P", "mean", "precision", "Mean P"),
              pl.Column("val_S", "mean", "val_success", "val S"), pl.Column("val_P", "mean", "val_precision", "val P")])

TABLE = pl.Table(
    name="table_3d", title="3-D SOT on KITTI tracking (Point-DropTrack): Success / Precision",
    paper={}, columns=COLUMNS, rows={"full": _rows(True), "tiny": _rows(False)}, stages=STAGES,
    recipes=RECIPES, datasets={"kitti": "KITTI tracking training root (velodyne/, label_02/, calib/)",
                               "k400": "Kinetics-400 train videos (the TwinMAE / DropMAE pre-training rows)"},
    needs_full=("kitti",), synthetic=make_data, collapse_check=False, notes=OTHER_METHODS,
    description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(pl.main(TABLE))
