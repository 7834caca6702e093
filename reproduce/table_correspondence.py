"""Label propagation on DAVIS-17 val with frozen encoders (the extended paper's correspondence task).

The extended DropMAE paper (arXiv 2304.00571) also evaluates the pre-trained encoders on DAVIS
label propagation, but its protocol and numbers could not be read (specs/paper.md): there are no
paper numbers to print, every "paper" cell is "-". The protocol is DINO's for ViTs
(specs/metrics-dense.md section 5; tasks/correspondence.py): last-block patch tokens of each frame
alone, L2-normalised, affinity exp(<f_t, f_s> / 0.1) in a 12-cell square neighbourhood, top-5,
frame 0 with its labels plus the n preceding frames as context, scored by eval/davis.py (J&F, J,
F). The context size is the one knob the protocols in the spec disagree on: DINO's 7 preceding
frames, CRW's and VFS's 20; the table gives both, everything else is DINO's.

Rows (the encoders, frozen; nothing is trained): random init, image MAE, TwinMAE, DropMAE. At
full scale: MAE IN1K (`--ckpt mae_in1k=mae_pretrain_vit_base.pth`), TwinMAE and DropMAE K400 1600
epochs and DropMAE K700 800 epochs (pre-trained by the pipeline, or `--ckpt ROW=PATH` with
released DropMAE files). Stages per row, after the pipeline's pretrain / convert:
    random_init          the none row only: a seeded random ViT saved as a checkpoint
    labelprop_n7         tasks/correspondence.py --n-last-frames 7  (DINO)
    labelprop_n20        tasks/correspondence.py --n-last-frames 20 (CRW, VFS)
A single frame is encoded with the `_x` frame vector (tasks/correspondence.py's default) for
DropMAE and TwinMAE, with none for MAE (it has none) and random init (its would be noise).

Hardware and time of the full run: inference only, DAVIS-17 val (30 sequences, 1999 frames at
480p, 30x52 tokens): about 10 min per encoder and context size on one A100, plus the backbones'
pre-training (Table 1: 84 h on 64 A100s for 1600 K400 epochs).

Commands:
    make table-correspondence            # tiny synthetic scale, ~9 min on 2 cores (est.; measured 1:23
                                         #   with cached backbones at load 12-13)
    make table-correspondence SMOKE=1    # smoke scale (the test suite's)
    python -m reproduce.table_correspondence --davis /data/DAVIS/2017/trainval \\
        --ckpt mae_in1k=mae_pretrain_vit_base.pth --ckpt dropmae_k700_800=dropmae_k700_800e.pth \\
        --ckpt dropmae_k400_1600=... --ckpt twinmae_k400_1600=... --out runs/table_correspondence

Tiny scale: the synthetic DAVIS layout of `tasks/vos.py synthetic`, the shared tiny backbones,
frames at their own size (`--short-side 0 --multiple 16`); numbers labelled tiny scale.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reproduce import pipeline as pl  # noqa: E402

CONTEXTS = (7, 20)                       # preceding frames: DINO's 7; CRW's and VFS's 20

PAPER: dict = {}                         # the extended paper's numbers could not be read

ROWS = {
    "full": [pl.Row("none", "Random init"),
             pl.foreign("mae_in1k", "MAE", "IN1K", 1600, "mae"),
             pl.pretrained("twinmae_k400_1600", "TwinMAE", "k400", epochs=1600),
             pl.pretrained("dropmae_k400_1600", "DropMAE", "k400", epochs=1600, P=0.1),
             pl.pretrained("dropmae_k700_800", "DropMAE", "k700", epochs=800, P=0.1)],
    "tiny": pl.tiny_rows(),
}

_OWN_SIZE = ["--short-side", "0", "--multiple", "16"]                # the synthetic frames' own size
RECIPES = {
    "full": dict(frame_args=[]),                                     # 480p, sides to multiples of 64
    "tiny": dict(frames=12, davis_val=12, frame_args=_OWN_SIZE),      # Table 1's tiny DAVIS val
    "smoke": dict(frames=12, davis_val=2, frame_args=_OWN_SIZE),      # 12: frames 9-10 see other contexts
}


def make_data(ctx, row) -> dict:
    from tasks import vos
    out = ctx.folder(row, "vos")
    ctx.run_inline(vos.main, ["synthetic", "--out", str(out), "--frames", str(ctx.recipe["frames"]),
                              "--davis-train", "1", "--davis-val", str(ctx.recipe["davis_val"]), "--ytvos-videos", "1"])
    return {"paths": {"davis": str(out / "DAVIS")}}


def stage_random_init(ctx, row) -> dict:
    """A random ViT encoder (seeded by the run's seed), saved so the propagation can load it."""
    import torch

    import dropmae
    torch.manual_seed(ctx.seed)
    encoder = dropmae.ViTEncoder(dropmae.get_config(ctx.table_run.backbone_recipe["model"]))
    path = ctx.folder(row, "random_init.pth")
    dropmae.save_checkpoint(path, {"model": encoder.state_dict()})
    return {"checkpoint": ctx.rel(path), "seed": ctx.seed}


def is_random(ctx, row) -> bool:
    return row.source == "none" and row.id not in ctx.table_run.ckpts


def encoder_file(ctx, row) -> Path:
    if is_random(ctx, row):
        return ctx.out / ctx.result(row, "random_init")["checkpoint"]
    return ctx.backbone(row)


def stage_labelprop(ctx, row, n_last: int) -> dict:
    """tasks/correspondence.py on DAVIS-17 val with `n_last` preceding frames -> J&F, J, F."""
    out = ctx.folder(row, f"labelprop_n{n_last}")
    frame = "none" if is_random(ctx, row) else "x"          # MAE files: none (the task decides)
    cmd = ctx.launcher("tasks/correspondence.py", train=False) + [
        "--data-path", str(ctx.data["davis"]), "--pretrained", str(encoder_file(ctx, row)),
        "--output", str(out), "--model", ctx.table_run.backbone_recipe["model"],
        "--n-last-frames", str(n_last), "--frame", frame, *ctx.recipe["frame_args"]]
    ctx.run(cmd, progress=pl.Progress(r"(\d+)/(\d+) \["))
    res = json.loads((out / "davis2017_results-val.json").read_text())
    return {"J&F": 100 * res["J&F-Mean"], "J": 100 * res["J-Mean"], "F": 100 * res["F-Mean"],
            "objects": res["n_objects"], "frame_vector": frame}


def _labelprop(n: int):
    return lambda ctx, row: stage_labelprop(ctx, row, n)


STAGES = [pl.Stage("random_init", stage_random_init,
                   rows=lambda r: r.source == "none")] + [
    pl.Stage(f"labelprop_n{n}", _labelprop(n)) for n in CONTEXTS]

COLUMNS = [pl.Column(f"{m}_n{n}", f"labelprop_n{n}", m, f"{m} ({n} prev.)" if m == "J&F" else m)
           for n in CONTEXTS for m in ("J&F", "J", "F")]

TABLE = pl.Table(
    name="table_correspondence",
    title="Label propagation on DAVIS-17 val with frozen encoders (DINO's protocol; context = frame 0 "
          f"+ {' or '.join(map(str, CONTEXTS))} previous frames)",
    paper=PAPER, columns=COLUMNS, rows=ROWS, stages=STAGES, recipes=RECIPES,
    datasets={"k400": "Kinetics-400 training videos (our TwinMAE / DropMAE K400 rows)",
              "k700": "Kinetics-700 training videos (our DropMAE K700 row)",
              "davis": "DAVIS-2017 trainval root (val split)"},
    needs_full=("davis",), synthetic=make_data, share_data=True,
    smoke_rows=("none", "dropmae"),  # random init (no frame vector) and a pre-trained encoder ("x")
    notes=("paper: the extended version's label-propagation numbers could not be read (specs/paper.md), "
           "so every paper cell is '-'",),
    description=__doc__)


if __name__ == "__main__":
    sys.exit(pl.main(TABLE))
