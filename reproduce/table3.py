"""Table 3 of DropMAE: DropSeg, one-shot video object segmentation on DAVIS-16 and DAVIS-17.

The paper's Table 3 (specs/paper.md; DropSeg = the STCN-style decoder on the DropMAE K700-800E
ViT-B/16, one-shot from the first frame, no online learning, no memory bank):
    | Method  | DAVIS-16 J&F | J    | F    | DAVIS-17 J&F | J    | F    |
    | DropSeg | 92.1         | 90.9 | 93.3 | 83.0         | 80.2 | 85.7 |

Stages of every row (on reproduce/pipeline.py; each writes <out>/seed<s>/<row>/<stage>.json and
is skipped when that file exists):
    pretrain / convert   the pipeline's: the row's backbone (DropMAE K700 800 epochs; give a
                         released DropMAE file with --ckpt dropseg=PATH to skip pre-training)
    vos_train            tasks/vos.py train (DAVIS-17 train x5 + YouTube-VOS 2019 train, 210k
                         iterations at batch 4 x 8 GPUs); not run for a row given --finetuned
    davis16_val          tasks/vos.py test --dataset davis16_val, scored by eval/davis.py
    davis17_val          tasks/vos.py test --dataset davis17_val, scored by eval/davis.py
    davis17_testdev      the DAVIS-17 test-dev submission (PNG folder + submission.zip, server)
    ytvos19_valid        the YouTube-VOS 2019 valid submission (Annotations/ + submission.zip)
`--finetuned dropseg=PATH` (the pipeline's) takes a fine-tuned DropSeg instead of training one:
a released file of github jimmy-dq/DropSeg (`<id>_210000.pth`, converted on load by
tasks/vos.py's `convert_official_dropseg`) or a tasks/vos.py checkpoint; then only the four test
stages run, and the table names the file.
The submission folders and zips are listed under the table (their numbers come from the servers).

Hardware and time of the full run: DropSeg fine-tuning 210k iterations at batch 32 on 8 GPUs
(DropSeg's README; about 2 days on 8 V100s by STCN's per-iteration cost, our estimate), the
DropMAE K700-800E pre-training 92.4 h on 64 A100s (Table 1), and 480p one-shot inference, one
backbone pass per object and frame: DAVIS-17 val (30 sequences, 61 objects, 1999 frames) about
10 min on one A100.

Commands:
    make table3                   # tiny synthetic scale (no dataset paths), ~5 min on 2 cores (est.;
                                  #   measured 3:42 with cached backbones at load 10-13)
    make table3 SMOKE=1           # smoke scale, ~1 min (the test suite's)
    # the paper, one node of 8 GPUs, from the released DropMAE K700-800E checkpoint:
    NPROC=8 python -m reproduce.table3 --davis /data/DAVIS/2017/trainval \\
        --davis-testdev /data/DAVIS/2017/test-dev --ytvos /data/YouTubeVOS2019 \\
        --ckpt dropseg=dropmae_k700_800e.pth --out runs/table3
    # only the test stages, from a released fine-tuned DropSeg file:
    python -m reproduce.table3 --davis /data/DAVIS/2017/trainval --davis-testdev ... \\
        --ytvos ... --finetuned dropseg=Nov06_22.16.18_retrain_s03_210000.pth

Tiny scale: the synthetic DAVIS and YouTube-VOS layouts of `tasks/vos.py synthetic` (test-dev is
the val sequences listed in ImageSets/2017/test-dev.txt, read with first-frame annotations only),
the tiny DropSeg preset on the shared tiny DropMAE backbone. The numbers
are labelled tiny scale wherever printed; they show that the pipeline runs end to end, nothing
about the paper's numbers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reproduce import pipeline as pl  # noqa: E402
from reproduce import table1  # noqa: E402

PAPER = {"dropseg": {"label": "DropSeg (DropMAE K700 800E)", "D16_JF": 92.1, "D16_J": 90.9,
                     "D16_F": 93.3, "D17_JF": 83.0, "D17_J": 80.2, "D17_F": 85.7}}

ROWS = {
    "full": [pl.pretrained("dropseg", "DropSeg", "k700", epochs=800, P=0.1)],
    "tiny": pl.tiny_rows({"dropmae": "dropseg"}, ids=("dropmae",)),
}

def _recipe(scale: str) -> dict:
    """Table 1's DropSeg recipe of the scale (tiny / smoke: its synthetic DAVIS / YouTube-VOS sizes)."""
    t1 = table1.FINETUNE_RECIPE[scale]
    out = dict(train_args=t1["vos"]["args"], workers=t1["vos"]["workers"], resolution=480 if scale == "full" else 0)
    if scale != "full":
        out.update(frames=t1["vos_frames"], vos_synth=t1["vos_synth"])
    return out


RECIPES = {s: _recipe(s) for s in ("full", "tiny", "smoke")}         # full: DropSeg's, 210k iterations


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------

def make_data(ctx, row) -> dict:
    """Synthetic DAVIS-2017 (with the 2016 lists) and YouTube-VOS 2019 layouts; test-dev lists
    the val sequences (the test-dev reader opens only their first-frame annotations)."""
    from tasks import vos
    out = ctx.folder(row, "vos")
    v = ctx.recipe["vos_synth"]
    ctx.run_inline(vos.main, ["synthetic", "--out", str(out), "--frames", str(ctx.recipe["frames"]),
                              "--davis-train", str(v["davis_train"]), "--davis-val", str(v["davis_val"]),
                              "--ytvos-videos", str(v["ytvos"])])
    davis = out / "DAVIS"
    sets = davis / "ImageSets" / "2017"
    (sets / "test-dev.txt").write_text((sets / "val.txt").read_text())
    return {"paths": {"davis": str(davis), "davis_testdev": str(davis), "ytvos": str(out / "YouTubeVOS")}}


def stage_vos_train(ctx, row) -> dict:
    """DropSeg fine-tuning from the row's backbone (random init for no pre-training)."""
    for name in ("davis", "ytvos"):
        if not ctx.data.get(name):
            raise pl.StageFailed(f"{row.id}/vos_train: needs --{name} (DropSeg trains on DAVIS-17 train + "
                                 "YouTube-VOS 2019 train), or --finetuned to test a trained model")
    run = ctx.folder(row, "dropseg")
    cmd = ctx.launcher("tasks/vos.py", train=True) + [
        "train", "--model", ctx.model, "--data-path", str(ctx.data["davis"]), "--ytvos-path", str(ctx.data["ytvos"]),
        "--output", str(run), "--resume", "auto", "--workers", str(ctx.recipe["workers"]),
        *ctx.recipe["train_args"]]
    if ctx.backbone(row):
        cmd += ["--pretrained", str(ctx.backbone(row))]
    ctx.run(cmd, progress=pl.Progress(r"^it (\d+)/(\d+)"))
    import dropmae
    return {"checkpoint": ctx.rel(dropmae.latest_checkpoint(run))}


def vos_test(ctx, row, dataset: str, data: str) -> dict:
    """tasks/vos.py test on one benchmark -> its scores (val) or its submission (test-dev, YT)."""
    if not ctx.data.get(data):
        return {"skipped": f"needs --{data.replace('_', '-')}"}
    out = ctx.folder(row, dataset)
    cmd = ctx.launcher("tasks/vos.py", train=False) + [
        "test", "--dataset", dataset, "--data-path", str(ctx.data[data]), "--ckpt", str(ctx.trained(row, "vos_train")),
        "--output", str(out), "--resolution", str(ctx.recipe["resolution"])]
    ctx.run(cmd, progress=pl.Progress(r"(\d+)/(\d+) \["))
    timing = json.loads((out / "timing.json").read_text())
    result = {"fps": timing["fps"], "frames": timing["frames"]}
    if dataset.endswith("_val"):
        year = "2016" if dataset == "davis16_val" else "2017"
        res = json.loads((out / f"davis{year}_results-val.json").read_text())
        result.update({"J&F": 100 * res["J&F-Mean"], "J": 100 * res["J-Mean"], "F": 100 * res["F-Mean"],
                       "objects": res["n_objects"]})
    else:
        result.update({"folder": ctx.rel(out), "zip": ctx.rel(out / "submission.zip")})
    return result


STAGES = [
    pl.Stage("vos_train", stage_vos_train, every_node=True, finetune=True),
    pl.Stage("davis16_val", lambda ctx, row: vos_test(ctx, row, "davis16_val", "davis")),
    pl.Stage("davis17_val", lambda ctx, row: vos_test(ctx, row, "davis17_val", "davis")),
    pl.Stage("davis17_testdev", lambda ctx, row: vos_test(ctx, row, "davis17_testdev", "davis_testdev")),
    pl.Stage("ytvos19_valid", lambda ctx, row: vos_test(ctx, row, "ytvos19_valid", "ytvos")),
]

COLUMNS = [pl.Column("D16_JF", "davis16_val", "J&F", "DAVIS-16 J&F"), pl.Column("D16_J", "davis16_val", "J", "J"),
           pl.Column("D16_F", "davis16_val", "F", "F"), pl.Column("D17_JF", "davis17_val", "J&F", "DAVIS-17 J&F"),
           pl.Column("D17_J", "davis17_val", "J", "J"), pl.Column("D17_F", "davis17_val", "F", "F")]

TABLE = pl.Table(
    name="table3", title="Table 3: DropSeg one-shot VOS on DAVIS-16 val and DAVIS-17 val", paper=PAPER,
    columns=COLUMNS, rows=ROWS, stages=STAGES, recipes=RECIPES,
    datasets={"k700": "Kinetics-700 training videos (to pre-train the DropMAE backbone ourselves)",
              "davis": "DAVIS-2017 trainval root (train split for DropSeg, val for both tables)",
              "davis_testdev": "DAVIS-2017 test-dev root (submission for the server)",
              "ytvos": "YouTube-VOS 2019 root (train/ for DropSeg, valid/ for the submission)"},
    needs_full=("davis",), synthetic=make_data, share_data=True,
    finetuned="a fine-tuned DropSeg: a released file of github jimmy-dq/DropSeg or a tasks/vos.py checkpoint",
    notes=("DAVIS-17 test-dev and YouTube-VOS 2019 valid: submission folders and zips under "
           "<out>/seed<s>/<row>/{davis17_testdev,ytvos19_valid}/ (scored by their servers)",),
    description=__doc__)


if __name__ == "__main__":
    sys.exit(pl.main(TABLE))
