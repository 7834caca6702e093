"""Table 2 of DropMAE: DropTrack against OSTrack-384 on the VOT benchmarks.

The paper's Table 2 (specs/paper.md; ViT-B/16 at 384, candidate elimination; DropTrack = OSTrack
on the DropMAE K700-800E checkpoint, OSTrack on MAE IN1K). GOT-10k numbers come from the GOT-10k
one-shot recipe (`got10k`: trained on GOT-10k train only, scored on its test server); TNL2K,
LaSOT_ext and LaSOT from the `full` recipe (LaSOT, GOT-10k vottrain, COCO, TrackingNet):
    | Tracker                | GOT AO | SR0.5 | SR0.75 | TNL2K AUC | P    | LaSOT_ext AUC | Pnorm | P    | LaSOT AUC | Pnorm | P    |
    | OSTrack-384 (MAE IN1K) | 73.7   | 83.2  | 70.8   | 55.9      | 56.7 | 50.5          | 61.3  | 57.6 | 71.1      | 81.1  | 77.6 |
    | DropTrack              | 75.9   | 86.8  | 72.0   | 56.9      | 57.9 | 52.7          | 63.9  | 60.2 | 71.8      | 81.8  | 78.1 |
TrackingNet AUC of DropTrack: 84.1 (README; server only). The FPS column is ours: frames per
second of our tracker over all its test sequences, measured on the machine that ran them.

Rows and stages (on reproduce/pipeline.py; each stage writes <out>/seed<s>/<row>/<stage>.json
and is skipped when it exists):
    | row               | backbone (pipeline)         | train                  | test stages              |
    | droptrack_got10k  | DropMAE K700 800 epochs     | vot_train: got10k      | got10k_val (scored here),|
    | ostrack_got10k    | MAE IN1K (--ckpt)           |   recipe, 100 epochs   | got10k_test (server zip) |
    | droptrack_full    | DropMAE K700 800 epochs     | vot_train: full recipe,| lasot, lasot_ext, tnl2k  |
    | ostrack_full      | MAE IN1K (--ckpt)           |   300 epochs           | (eval/sot.py), trackingnet (zip) |
  and `speed` (FPS over the row's test stages). Our GOT-10k numbers are on val (test labels are
  hidden; the test zip is in <row>/got10k_test.zip for the server).
`--finetuned ROW=PATH` (the pipeline's) takes a released fine-tuned tracker (official DropTrack /
OSTrack `.pth.tar`, loaded by tasks/vot.py with --trust-pickle, or a tasks/vot.py checkpoint)
for a row: no backbone, no training, only its test stages run, and the table names the file.

Hardware and time of the full run (specs/vot.md, the official READMEs): the got10k recipe ~6 h
on 4 A100s (100 epochs x 60k pairs, batch 32 per GPU), the full recipe ~3x that (300 epochs);
the DropMAE K700-800E pre-training 92.4 h on 64 A100s (Table 1). Tests on one GPU: LaSOT (280
sequences, 690k frames) about 3 h at OSTrack-384's ~60 FPS, TNL2K (700 seqs) ~2.5 h, LaSOT_ext
(150 seqs) ~1 h, GOT-10k test (180 seqs) ~10 min, TrackingNet test (511 seqs) ~1 h.

Commands:
    make table2                   # tiny synthetic scale (no dataset paths), 9:28 measured at load ~4 (Table 1's backbones cached)
    make table2 SMOKE=1           # smoke scale (the test suite's)
    # the paper, 4 GPUs per training, from the released pre-training checkpoints:
    NPROC=4 python -m reproduce.table2 --got10k /data/got10k --lasot /data/lasot \\
        --lasot-ext /data/lasot_ext --tnl2k /data/tnl2k --trackingnet /data/trackingnet \\
        --coco /data/coco --ckpt droptrack_got10k=dropmae_k700_800e.pth \\
        --ckpt droptrack_full=dropmae_k700_800e.pth --ckpt ostrack_got10k=mae_pretrain_vit_base.pth \\
        --ckpt ostrack_full=mae_pretrain_vit_base.pth --out runs/table2
    # released trackers, test stages only:
    python -m reproduce.table2 --got10k ... --lasot ... --lasot-ext ... --tnl2k ... \\
        --finetuned droptrack_got10k=DropTrack_got10k_ep0100.pth.tar \\
        --finetuned droptrack_full=OSTrack_alldata_300E.pth.tar --rows droptrack_got10k droptrack_full

Tiny scale: synthetic GOT-10k and LaSOT layouts (`tasks/vot.py synth`), and COCO, TrackingNet,
LaSOT_ext and TNL2K layouts re-laid out here from a second synthetic GOT-10k folder (its frames and
boxes; no rendering of our own); the tiny tracker preset on the shared tiny backbones (DropMAE
for DropTrack, the single-frame image MAE standing in for MAE IN1K). Numbers labelled tiny scale.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reproduce import pipeline as pl  # noqa: E402
from reproduce import table1  # noqa: E402

PAPER = {
    "ostrack_got10k": {"label": "OSTrack-384 (MAE IN1K), GOT-10k test", "AO": 73.7, "SR50": 83.2, "SR75": 70.8},
    "droptrack_got10k": {"label": "DropTrack, GOT-10k test", "AO": 75.9, "SR50": 86.8, "SR75": 72.0},
    "ostrack_full": {"label": "OSTrack-384 (MAE IN1K)", "TNL2K_AUC": 55.9, "TNL2K_P": 56.7, "EXT_AUC": 50.5,
                     "EXT_Pnorm": 61.3, "EXT_P": 57.6, "LASOT_AUC": 71.1, "LASOT_Pnorm": 81.1, "LASOT_P": 77.6},
    "droptrack_full": {"label": "DropTrack", "TNL2K_AUC": 56.9, "TNL2K_P": 57.9, "EXT_AUC": 52.7,
                       "EXT_Pnorm": 63.9, "EXT_P": 60.2, "LASOT_AUC": 71.8, "LASOT_Pnorm": 81.8, "LASOT_P": 78.1},
}
TRACKINGNET_PAPER = {"droptrack_full": 84.1}          # AUC, README; the server scores our zip

# row id -> (training recipe of tasks/vot.py, test stages)
RECIPE_OF = {"droptrack_got10k": "got10k", "ostrack_got10k": "got10k",
             "droptrack_full": "full", "ostrack_full": "full"}
TESTS = {"got10k": ("got10k_val", "got10k_test"), "full": ("lasot", "lasot_ext", "tnl2k", "trackingnet")}

ROWS = {
    "full": [pl.pretrained("droptrack_got10k", "DropTrack (GOT-10k only)", "k700", epochs=800, P=0.1),
             pl.foreign("ostrack_got10k", "OSTrack-384 (GOT-10k only)", "IN1K", 1600, "mae"),
             pl.pretrained("droptrack_full", "DropTrack (all data)", "k700", epochs=800, P=0.1),
             pl.foreign("ostrack_full", "OSTrack-384 (all data)", "IN1K", 1600, "mae")],
    "tiny": [pl.pretrained("droptrack_got10k", "DropTrack (GOT-10k only)", "k400", P=0.1),
             pl.pretrained("ostrack_got10k", "OSTrack (MAE 1 frame, GOT-10k only)", "k400", image_mae=True),
             pl.pretrained("droptrack_full", "DropTrack (all data)", "k400", P=0.1),
             pl.pretrained("ostrack_full", "OSTrack (MAE 1 frame, all data)", "k400", image_mae=True)],
}

def _recipe(scale: str) -> dict:
    """Table 1's DropTrack recipe of the scale (epochs, pairs, batch; tiny / smoke: its synthetic
    GOT-10k sizes), and the second synthetic folder the other benchmarks are re-laid out from."""
    t1 = table1.FINETUNE_RECIPE[scale]
    out = dict(model="base" if scale == "full" else "tiny", train_args=t1["vot"]["args"],
               epochs=t1["vot"]["epochs"], workers=t1["vot"]["workers"], test_workers=t1["vot_test_workers"])
    if scale != "full":
        out.update(synth=t1["vot_synth"], src={"tiny": dict(train=8, val=4), "smoke": dict(train=2, val=2)}[scale])
    return out


RECIPES = {s: _recipe(s) for s in ("full", "tiny", "smoke")}         # full: the official recipes
TEST_DATA = {"got10k_val": "got10k", "got10k_test": "got10k", "lasot": "lasot", "lasot_ext": "lasot_ext",
             "tnl2k": "tnl2k", "trackingnet": "trackingnet"}

# --------------------------------------------------------------------------------------------
# Tiny scale: the other benchmarks' layouts, from the synthetic GOT-10k sequences
# --------------------------------------------------------------------------------------------
# `tasks/vot.py synth` writes GOT-10k and LaSOT. The `full` recipe also reads COCO 2017 and
# TrackingNet (and GOT-10k's vottrain / votval split files), and the test stages read LaSOT_ext,
# TNL2K and TrackingNet TEST. These are written here by re-laying out the frames and boxes of a
# second synthetic GOT-10k folder (another seed): no pixels of their own.

def _got_sequences(split_dir: Path) -> list[tuple[str, list[Path], list[str], list[int], list[int]]]:
    """(name, frames, groundtruth lines, cover, absence) of every sequence of a GOT-10k split."""
    out = []
    for name in (split_dir / "list.txt").read_text().split():
        d = split_dir / name
        frames = sorted(d.glob("*.jpg"))
        gt = (d / "groundtruth.txt").read_text().split()
        cover = [int(v) for v in (d / "cover.label").read_text().split()]
        absence = [int(v) for v in (d / "absence.label").read_text().split()]
        out.append((name, frames, gt, cover, absence))
    return out


def write_benchmark_layouts(src_got: Path, vot_root: Path):
    """Under `vot_root` (which holds got10k/ and lasot/ from `tasks/vot.py synth`): coco/,
    trackingnet/TRAIN_0..11 from `src_got`/train; tnl2k/, lasot_ext/, trackingnet/TEST from
    `src_got`/val; got10k/got10k_vot_{train,val}_split.txt (the last train sequence is votval)."""
    train, val = _got_sequences(src_got / "train"), _got_sequences(src_got / "val")
    images, anns = [], []
    for k, (name, frames, gt, _, _) in enumerate(train):                 # COCO: frame 0 of each
        file_name = f"{k + 1:012d}.jpg"
        _copy(frames[0], vot_root / "coco" / "train2017" / file_name)
        images.append({"id": k + 1, "file_name": file_name})
        anns.append({"id": k + 1, "image_id": k + 1, "iscrowd": 0, "category_id": 1,
                     "bbox": [float(v) for v in gt[0].split(",")]})
    coco = vot_root / "coco" / "annotations" / "instances_train2017.json"
    coco.parent.mkdir(parents=True, exist_ok=True)
    coco.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))
    tn = vot_root / "trackingnet"
    for chunk in [f"TRAIN_{k}" for k in range(12)] + ["TEST"]:
        (tn / chunk / "anno").mkdir(parents=True, exist_ok=True)
        (tn / chunk / "frames").mkdir(parents=True, exist_ok=True)
    for chunk, seqs, rows in (("TRAIN_0", train, None), ("TEST", val, 1)):
        for name, frames, gt, _, _ in seqs:
            for t, f in enumerate(frames):
                _copy(f, tn / chunk / "frames" / name / f"{t}.jpg")
            (tn / chunk / "anno" / f"{name}.txt").write_text("\n".join(gt[:rows]) + "\n")
    for k, (name, frames, gt, cover, absence) in enumerate(val):
        for t, f in enumerate(frames):
            _copy(f, vot_root / "tnl2k" / name / "imgs" / f"{t + 1:05d}.jpg")
        (vot_root / "tnl2k" / name / "groundtruth.txt").write_text("\n".join(gt) + "\n")
        cls = "newclass" if k % 2 == 0 else "otherclass"
        seq = vot_root / "lasot_ext" / cls / f"{cls}-{k // 2 + 1}"
        for t, f in enumerate(frames):
            _copy(f, seq / "img" / f"{t + 1:08d}.jpg")
        (seq / "groundtruth.txt").write_text("\n".join(gt) + "\n")
        occluded = [int(c == 0 and not a) for c, a in zip(cover, absence)]
        (seq / "full_occlusion.txt").write_text(",".join(map(str, occluded)) + "\n")
        (seq / "out_of_view.txt").write_text(",".join(map(str, absence)) + "\n")
    got = vot_root / "got10k"
    n = len((got / "train" / "list.txt").read_text().split())
    (got / "got10k_vot_train_split.txt").write_text("".join(f"{i}\n" for i in range(n - 1)))
    (got / "got10k_vot_val_split.txt").write_text(f"{n - 1}\n")


def _copy(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def make_data(ctx, row) -> dict:
    """GOT-10k + LaSOT (`tasks/vot.py synth`), then COCO, TrackingNet, LaSOT_ext, TNL2K and the
    GOT-10k vot split files from a second synthetic folder (seed 1)."""
    from tasks import vot
    s, d = ctx.recipe, ctx.folder(row)
    for out, seed, n in ((d / "vot", 0, s["synth"]), (d / "vot_src", 1, dict(s["synth"], **s["src"]))):
        ctx.run_inline(vot.main, ["synth", "--out", str(out), "--seed", str(seed), "--train-seqs", str(n["train"]),
                                  "--val-seqs", str(n["val"]), "--frames", str(n["frames"])])
    write_benchmark_layouts(d / "vot_src" / "got10k", d / "vot")
    return {"paths": {name: str(d / "vot" / name) for name in
                      ("got10k", "lasot", "lasot_ext", "tnl2k", "trackingnet", "coco")}}


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------

FULL_SETS = ("lasot", "got10k", "coco", "trackingnet")        # the `full` recipe's training sets


def stage_vot_train(ctx, row) -> dict:
    """tasks/vot.py train with the row's recipe from its backbone."""
    recipe = RECIPE_OF[row.id]
    sets = ("got10k",) if recipe == "got10k" else FULL_SETS
    lacking = [s for s in sets if not ctx.data.get(s)]
    if lacking:
        raise pl.StageFailed(f"{row.id}/vot_train: the {recipe} recipe trains on {', '.join(sets)}: "
                             f"missing --{' --'.join(lacking)} (or give --finetuned {row.id}=PATH)")
    run = ctx.folder(row, "droptrack")
    cmd = ctx.launcher("tasks/vot.py", train=True) + [
        "train", "--config", recipe, "--model", ctx.recipe["model"],
        "--data-path", *[f"{s}={ctx.data[s]}" for s in sets], "--output", str(run), "--resume", "auto",
        "--workers", str(ctx.recipe["workers"]), *ctx.recipe["train_args"]]
    if ctx.backbone(row):
        cmd += ["--pretrained", str(ctx.backbone(row))]
    epochs = ctx.recipe["epochs"] if ctx.scale != "full" else (100 if recipe == "got10k" else 300)
    ctx.run(cmd, progress=pl.Progress(r'^\{"epoch": (\d+)', total=epochs))
    import dropmae
    return {"checkpoint": ctx.rel(dropmae.latest_checkpoint(run)), "recipe": recipe}


def stage_vot_test(ctx, row, dataset: str) -> dict:
    """tasks/vot.py test on one benchmark -> scores (where local), the zip (servers), frames/s."""
    data = ctx.data.get(TEST_DATA[dataset])
    if not data:
        return {"skipped": f"needs --{TEST_DATA[dataset].replace('_', '-')}"}
    ckpt = str(ctx.trained(row, "vot_train"))
    extra = ["--trust-pickle", "--model", ctx.recipe["model"]] if ctx.released(row) else []
    out = ctx.folder(row, "tests")
    cmd = ctx.launcher("tasks/vot.py", train=False) + [
        "test", "--dataset", dataset, "--data-path", str(data), "--ckpt", ckpt, "--output", str(out),
        "--workers", str(ctx.recipe["test_workers"]), *extra]
    ctx.run(cmd)
    summary = json.loads((out / f"{dataset}_summary.json").read_text())
    seconds = sum(s["seconds"] for s in summary["per_sequence"].values())
    result = {"frames": summary["frames"], "seconds": seconds, "fps": summary["fps_overall"],
              "device": summary["device"]}
    if summary.get("zip"):
        result["zip"] = ctx.rel(summary["zip"])
    scores = summary.get("scores") or {}
    if dataset == "got10k_val":
        result.update(AO=scores["AO"], SR50=scores["SR0.5"], SR75=scores["SR0.75"])
    elif scores:
        result.update(AUC=scores["AUC"], P=scores["P"], Pnorm=scores["Pnorm"])
    return result


def stage_speed(ctx, row) -> dict:
    """Frames per second of the tracker over every test stage of the row (frames / seconds, the
    per-frame times tasks/vot.py measured: reading the image excluded)."""
    runs = [ctx.result(row, t) for t in TESTS[RECIPE_OF[row.id]]]
    runs = [r for r in runs if r and "frames" in r]
    frames, seconds = sum(r["frames"] for r in runs), sum(r["seconds"] for r in runs)
    return {"fps": frames / seconds if seconds else None, "frames": frames,
            "device": ", ".join(sorted({r["device"] for r in runs}))}


def _test(dataset: str):
    return pl.Stage(dataset, lambda ctx, row: stage_vot_test(ctx, row, dataset),
                    rows=lambda r: dataset in TESTS[RECIPE_OF[r.id]])


STAGES = ([pl.Stage("vot_train", stage_vot_train, every_node=True, finetune=True)]
          + [_test(d) for d in (*TESTS["got10k"], *TESTS["full"])] + [pl.Stage("speed", stage_speed)])

COLUMNS = [pl.Column("AO", "got10k_val", header="GOT-10k AO"), pl.Column("SR50", "got10k_val", header="SR0.5"),
           pl.Column("SR75", "got10k_val", header="SR0.75"),
           pl.Column("TNL2K_AUC", "tnl2k", "AUC", "TNL2K AUC"), pl.Column("TNL2K_P", "tnl2k", "P", "P"),
           pl.Column("EXT_AUC", "lasot_ext", "AUC", "LaSOT_ext AUC"), pl.Column("EXT_Pnorm", "lasot_ext", "Pnorm", "Pnorm"),
           pl.Column("EXT_P", "lasot_ext", "P", "P"),
           pl.Column("LASOT_AUC", "lasot", "AUC", "LaSOT AUC"), pl.Column("LASOT_Pnorm", "lasot", "Pnorm", "Pnorm"),
           pl.Column("LASOT_P", "lasot", "P", "P"),
           pl.Column("FPS", "speed", "fps", "FPS (ours)")]

TABLE = pl.Table(
    name="table2", title="Table 2: DropTrack vs OSTrack-384 (GOT-10k: ours on val, paper on test)", paper=PAPER,
    columns=COLUMNS, rows=ROWS, stages=STAGES, recipes=RECIPES,
    datasets={"k700": "Kinetics-700 training videos (to pre-train DropMAE K700 ourselves)",
              "got10k": "GOT-10k root (train/, val/, test/; vot split files for the full recipe)",
              "lasot": "LaSOT root (training_set.txt / testing_set.txt)", "lasot_ext": "LaSOT_ext root",
              "tnl2k": "TNL2K test root", "trackingnet": "TrackingNet root (TRAIN_0..11, TEST)",
              "coco": "COCO 2017 root (annotations/, train2017/)"},
    needs_full=("got10k",), synthetic=make_data, share_data=True,
    smoke_rows=("droptrack_got10k", "ostrack_full"),      # one row per tracker and per recipe
    finetuned="a released fine-tuned tracker (official DropTrack / OSTrack .pth.tar) or a tasks/vot.py checkpoint",
    notes=("TrackingNet test and GOT-10k test: zips in <out>/seed<s>/<row>/tests/ for the servers "
           "(paper: DropTrack TrackingNet AUC 84.1); FPS: ours, on the machine that ran the tests",),
    description=__doc__)


if __name__ == "__main__":
    sys.exit(pl.main(TABLE))
