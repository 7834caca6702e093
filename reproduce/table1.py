"""Table 1 of DropMAE: pre-training methods, each fine-tuned as DropTrack (GOT-10k) and DropSeg (DAVIS-17).

Every row of the table is one pipeline of stages; each stage writes `<out>/<row>/<stage>.json`
when it has finished and is skipped when that file exists, so the pipeline can be stopped at any
point and rerun (the training stages also resume inside themselves with `--resume auto`):

    pretrain    dropmae.py pretrain (TwinMAE: --P 0, DropMAE: --P 0.1, image MAE: --image-mae)
      or convert  someone else's checkpoint -> our key layout (`CONVERTERS` below), or nothing
    vot_train   tasks/vot.py train --config got10k            (DropTrack, the GOT-10k recipe)
    vot_val     tasks/vot.py test --dataset got10k_val        (scored here with eval.sot)
    vot_test    tasks/vot.py test --dataset got10k_test       (the zip for the GOT-10k server)
    vos_train   tasks/vos.py train                            (DropSeg: DAVIS-17 + YouTube-VOS)
    vos_val     tasks/vos.py test --dataset davis17_val       (scored here with eval.davis)

The printed table puts the paper's number and ours side by side in every cell ("paper / ours"),
with our pre-training hours summed from the pre-training run's own log (`epoch_time_s` of every
epoch line of log.jsonl) and the processes that ran it; it is written as table1.csv and
table1.md in `<out>`. GOT-10k numbers of ours are on val (the test split has hidden labels; its
zip is in `<out>/<row>/got10k/got10k_test.zip` for the server), DAVIS-17 on val.

The paper's Table 1 (ViT-B/16; specs/paper.md; pre-training hours on 64 GPUs):
    | Method          | Data  | Ep   | PT h  | GOT AO | SR0.5 | SR0.75 | DAVIS J&F | J    | F    |
    | No pre-training | -     | -    | -     | 62.7   | 72.8  | 53.7   | 69.5      | 66.9 | 72.2 |
    | Supervised      | IN1K  | 300  | -     | 69.7   | 79.0  | 65.6   | 78.0      | 74.8 | 81.1 |
    | Supervised      | IN21K | 80   | -     | 70.2   | 80.7  | 65.4   | 78.5      | 75.4 | 81.7 |
    | CLIP            | IN1K  | 32   | -     | 67.4   | 76.8  | 60.0   | 73.6      | 70.5 | 76.7 |
    | MoCo-v3         | IN1K  | 300  | -     | 70.1   | 80.1  | 65.3   | 78.4      | 75.4 | 81.5 |
    | BEiT            | IN1K  | 800  | 103.1 | 67.4   | 76.8  | 60.0   | 76.1      | 72.7 | 79.4 |
    | MAE             | IN1K  | 1600 | 84    | 73.7   | 83.2  | 70.8   | 81.7      | 78.5 | 84.9 |
    | TwinMAE         | K400  | 400  | 20.7  | 72.2   | 83.2  | 65.9   | 79.3      | 76.4 | 82.3 |
    | TwinMAE         | K400  | 800  | 41.3  | 72.9   | 83.6  | 68.5   | 80.7      | 77.9 | 83.6 |
    | TwinMAE         | K400  | 1600 | 82.7  | 74.2   | 84.9  | 69.4   | 81.2      | 78.1 | 84.2 |
    | DropMAE         | K400  | 400  | 21.1  | 73.2   | 83.9  | 67.5   | 81.3      | 78.5 | 84.0 |
    | DropMAE         | K400  | 800  | 42.2  | 74.8   | 85.4  | 70.5   | 82.7      | 79.7 | 85.6 |
    | DropMAE         | K400  | 1600 | 84.4  | 75.8   | 86.4  | 72.0   | 83.1      | 80.2 | 86.0 |
    | DropMAE         | K700  | 800  | 92.4  | 75.9   | 86.8  | 72.0   | 83.0      | 80.2 | 85.7 |
(the CLIP and BEiT rows print the same GOT-10k triple in the slides; treat one as unverified.)
Our extra row "MAE (1 frame), K400" is the image MAE trained on single frames of the K400
videos; it is printed beside the paper's MAE IN1K row, the closest one (different data).

Hardware and time of the full run (the paper): pre-training on 64 A100s (8 nodes x 8, batch 64
per GPU), 20.7-92.4 h per row (about 21 h per 400 K400 epochs); DropTrack GOT-10k fine-tuning
~6 h on 4 A100s (100 epochs x 60k pairs, batch 32 per GPU); DropSeg 210k iterations at batch 4
on 8 GPUs. The 11 rows we can run ourselves are ~600 h of 64 GPUs: pick rows with --rows.

Commands:
    make table1                  # tiny synthetic scale on a CPU (below), ~12 min on 2 cores
    make table1 SMOKE=1          # the same pipeline at smoke scale, ~2 min (the test suite's)
    make figure-attention        # reproduce/attention.py on the tiny TwinMAE / DropMAE of table1
    make figure-attention ARGS="--attention-seeds 4"   # and on pairs pre-trained with seeds 1-3
    # the paper, one node of 8 GPUs (NPROC / NNODES from the environment or --nproc / --nnodes):
    NPROC=8 python -m reproduce.table1 --k400 /data/k400/train --k700 /data/k700/train \\
        --got10k /data/got10k --davis /data/DAVIS2017 --ytvos /data/YouTubeVOS2019 \\
        --ckpt sup_in1k=vit_base_patch16_224.pth --ckpt mocov3=vit-b-300ep.pth.tar \\
        --ckpt mae_in1k=mae_pretrain_vit_base.pth --out runs/table1
    # 8 nodes x 8 GPUs: the same line on every node with NNODES=8 NODE_RANK=<i> MASTER_ADDR=<node 0>
    # (a shared filesystem for --out; only node 0 runs the test stages and prints the table)
    python -m reproduce.table1 --rows twinmae_k400_400 dropmae_k400_400 ...   # some rows only

Tiny scale (no dataset path given): synthetic data in the Kinetics-400 layout (mp4 clips from
`data.py make-clips`), GOT-10k layout (`tasks/vot.py synth`) and DAVIS/YouTube-VOS layouts
(`tasks/vos.py synthetic`) are written to `<out>/data`, and four rows run with the `tiny` model
presets: no pre-training, image MAE, TwinMAE, DropMAE (every pre-training row gets the same
steps). The table then says loudly that it is tiny synthetic scale and not comparable with the
paper (in the printout, the CSV and the Markdown). What it shows: the whole pipeline runs end to
end, resumes, and every number is produced by the same code as the full run. What it does not
show: any of the paper's numbers or their ordering; the synthetic val sets hold a few sequences,
so differences of several points between rows are noise.

Tiny budget, from the stage times of one `make table1` on a fresh clone on this 2-core machine
(it is shared with other jobs; the same stages ran 2-40x slower while other test suites ran
beside them):
    | stage                                     | tiny settings                      | wall s   |
    |-------------------------------------------|------------------------------------|----------|
    | synthetic data (once)                     | 32 + 20 mp4 clips, GOT 32+8+1 seqs | ~10      |
    | pretrain, x3 (image MAE, TwinMAE, DropMAE)| 3000 steps, batch 8, 1 loader proc | ~120-155 |
    | vot_train, x4                             | 50 epochs x 64 pairs, batch 8      | ~25      |
    | vot_val + vot_test, x4                    | 8 + 1 sequences of 24 frames       | ~4       |
    | vos_train, x4                             | 500 iterations, batch 4, 96 px     | ~33-39   |
    | vos_val, x4                               | 3 sequences of 12 frames           | ~2       |
    | total, venv included                      |                                    | ~12 min  |
    Measured end to end: `make table1` on a fresh clone, venv included, 12 min 15 s (2026-11-25).
Smoke (`--smoke`): 4 pre-training steps, 1 tracker epoch of 8 pairs, 2 DropSeg iterations:
~85 s on one core. Pre-training is the most of the tiny run. Its 3000 steps are for the
attention figure: at 1000 steps both models sit at the loss plateau of predicting each patch's
mean and the decoder's attention is near uniform. With 3000 steps, DropMAE's between-frame share
is above TwinMAE's in both tiny decoder layers for the default seed and in the mean over 4
seeds, but not in every layer for every seed (`make figure-attention ARGS="--attention-seeds
4"`; the README gives the numbers): a 2-layer, 4-head tiny decoder trained on 32 clips shows
the paper's effect on average, not reliably.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BANNER = "TINY SYNTHETIC SCALE: NOT COMPARABLE WITH THE PAPER"
SMOKE_BANNER = "SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"


# --------------------------------------------------------------------------------------------
# The paper's numbers (specs/paper.md, Table 1); hours on 64 GPUs, None = not given
# --------------------------------------------------------------------------------------------

METRICS = ("AO", "SR0.5", "SR0.75", "J&F", "J", "F")
PAPER = {  # id: (method, data, epochs, pre-train hours, AO, SR0.5, SR0.75, J&F, J, F)
    "none": ("No pre-training", "-", None, None, 62.7, 72.8, 53.7, 69.5, 66.9, 72.2),
    "sup_in1k": ("Supervised", "IN1K", 300, None, 69.7, 79.0, 65.6, 78.0, 74.8, 81.1),
    "sup_in21k": ("Supervised", "IN21K", 80, None, 70.2, 80.7, 65.4, 78.5, 75.4, 81.7),
    "clip": ("CLIP", "IN1K", 32, None, 67.4, 76.8, 60.0, 73.6, 70.5, 76.7),
    "mocov3": ("MoCo-v3", "IN1K", 300, None, 70.1, 80.1, 65.3, 78.4, 75.4, 81.5),
    "beit": ("BEiT", "IN1K", 800, 103.1, 67.4, 76.8, 60.0, 76.1, 72.7, 79.4),
    "mae_in1k": ("MAE", "IN1K", 1600, 84.0, 73.7, 83.2, 70.8, 81.7, 78.5, 84.9),
    "twinmae_k400_400": ("TwinMAE", "K400", 400, 20.7, 72.2, 83.2, 65.9, 79.3, 76.4, 82.3),
    "twinmae_k400_800": ("TwinMAE", "K400", 800, 41.3, 72.9, 83.6, 68.5, 80.7, 77.9, 83.6),
    "twinmae_k400_1600": ("TwinMAE", "K400", 1600, 82.7, 74.2, 84.9, 69.4, 81.2, 78.1, 84.2),
    "dropmae_k400_400": ("DropMAE", "K400", 400, 21.1, 73.2, 83.9, 67.5, 81.3, 78.5, 84.0),
    "dropmae_k400_800": ("DropMAE", "K400", 800, 42.2, 74.8, 85.4, 70.5, 82.7, 79.7, 85.6),
    "dropmae_k400_1600": ("DropMAE", "K400", 1600, 84.4, 75.8, 86.4, 72.0, 83.1, 80.2, 86.0),
    "dropmae_k700_800": ("DropMAE", "K700", 800, 92.4, 75.9, 86.8, 72.0, 83.0, 80.2, 85.7),
}


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the table. `source`: 'none' (random init), 'pretrain' (ours: `video` data,
    `epochs`, ASAD ratio `P`, `image_mae`) or 'ckpt' (someone else's weights, `--ckpt id=PATH`,
    converted by CONVERTERS[id]). `paper`: the PAPER row printed beside it."""
    id: str
    method: str
    data: str
    epochs: int | None
    source: str
    paper: str
    video: str = ""
    P: float = 0.0
    image_mae: bool = False


def _ours(id, method, video, epochs, P=0.0, image_mae=False, paper=None):
    return Row(id, method, video.upper(), epochs, "pretrain", paper or id, video, P, image_mae)


FULL_ROWS = [
    Row("none", "No pre-training", "-", None, "none", "none"),
    Row("sup_in1k", "Supervised", "IN1K", 300, "ckpt", "sup_in1k"),
    Row("sup_in21k", "Supervised", "IN21K", 80, "ckpt", "sup_in21k"),
    Row("clip", "CLIP", "IN1K", 32, "ckpt", "clip"),
    Row("mocov3", "MoCo-v3", "IN1K", 300, "ckpt", "mocov3"),
    Row("beit", "BEiT", "IN1K", 800, "ckpt", "beit"),
    Row("mae_in1k", "MAE", "IN1K", 1600, "ckpt", "mae_in1k"),
    _ours("image_mae_k400", "MAE (1 frame)", "k400", 1600, image_mae=True, paper="mae_in1k"),
    _ours("twinmae_k400_400", "TwinMAE", "k400", 400),
    _ours("twinmae_k400_800", "TwinMAE", "k400", 800),
    _ours("twinmae_k400_1600", "TwinMAE", "k400", 1600),
    _ours("dropmae_k400_400", "DropMAE", "k400", 400, P=0.1),
    _ours("dropmae_k400_800", "DropMAE", "k400", 800, P=0.1),
    _ours("dropmae_k400_1600", "DropMAE", "k400", 1600, P=0.1),
    _ours("dropmae_k700_800", "DropMAE", "k700", 800, P=0.1),
]

# Tiny rows: epochs come from the scale's settings (equal steps for every pre-training row);
# each is printed beside the paper's 400-epoch K400 rows (the official default schedule).
TINY_ROWS = [
    Row("none", "No pre-training", "-", None, "none", "none"),
    _ours("image_mae", "MAE (1 frame)", "k400", None, image_mae=True, paper="mae_in1k"),
    _ours("twinmae", "TwinMAE", "k400", None, paper="twinmae_k400_400"),
    _ours("dropmae", "DropMAE", "k400", None, P=0.1, paper="dropmae_k400_400"),
]


# --------------------------------------------------------------------------------------------
# Recipes per scale. Full: the paper's (every flag not given is the script's official default).
# --------------------------------------------------------------------------------------------

SCALES = {
    "full": dict(
        model="base",
        pretrain=dict(batch=64, paper_gpus=64, workers=10),            # accum keeps batch 4096
        vot=dict(args=[], workers=8),                                  # got10k: 100 epochs
        vot_test_workers=4,
        vos=dict(args=[], workers=8),                                  # 210k iterations
    ),
    "tiny": dict(
        model="tiny",
        clips=dict(train=(4, 8), val=(4, 5)),                          # (classes, clips per class)
        pretrain=dict(batch=8, epochs=750, warmup=20, lr=1.5e-3, workers=1),  # 32 clips: 3000 steps
        vot_synth=dict(train=32, val=8, frames=24),
        vot=dict(args=["--epochs", "50", "--samples-per-epoch", "64", "--batch-size", "8",
                       "--val-every", "0"], workers=0),
        vot_test_workers=1,
        vos_frames=12,
        vos=dict(args=["--iterations", "500", "--batch-size", "4", "--size", "96", "--lr", "1e-4",
                       "--lr-steps", "400", "--bootstrap-start", "150", "--bootstrap-end", "350",
                       "--print-freq", "50", "--save-every", "250"], workers=0),
    ),
    "smoke": dict(
        model="tiny",
        clips=dict(train=(2, 2), val=(2, 1)),
        pretrain=dict(batch=2, epochs=2, warmup=1, lr=1.5e-3, workers=0),    # 4 clips: 4 steps
        vot_synth=dict(train=4, val=2, frames=20),
        vot=dict(args=["--epochs", "1", "--samples-per-epoch", "8", "--batch-size", "4",
                       "--val-every", "0"], workers=0),
        vot_test_workers=1,
        vos_frames=4,
        vos=dict(args=["--iterations", "2", "--batch-size", "2", "--size", "64", "--lr", "1e-4",
                       "--print-freq", "1", "--save-every", "2"], workers=0),
    ),
}


# --------------------------------------------------------------------------------------------
# Other people's checkpoints -> our ViT key layout (STYLE 7: one explicit table per source)
# --------------------------------------------------------------------------------------------
#
# Our encoder keys: patch_embed.proj.{weight,bias}, pos_embed (1, 1+g*g, D; row 0 an unused cls
# slot), blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}, norm.*,
# temporal_pos_embed_{x,z}. `dropmae.load_pretrained` reads an "MAE kind" file ({"model": sd}
# with `cls_token`): it drops cls_token and keeps the frame vectors at their init. So each rule
# below maps a source to that layout:
#   | row            | source file                        | rule                                 |
#   |----------------|------------------------------------|--------------------------------------|
#   | sup_in1k/21k   | timm ViT-B/16 state dict (.pth)    | keys already ours; drop head.*,      |
#   |                |                                    | pre_logits.*; learned pos_embed kept |
#   |                |                                    | (1, 197, 768); fc_norm (global-pool  |
#   |                |                                    | variants) -> unsupported             |
#   | mocov3         | {"state_dict": module.base_encoder.| strip `module.base_encoder.`, drop   |
#   |                |   *, module.momentum_encoder.*,...}| the momentum encoder, predictor and  |
#   |                |                                    | head.* (projection MLP); then timm   |
#   | mae_in1k       | official mae_pretrain_vit_base.pth | none: load_pretrained reads it       |
#   | beit           | BEiT (unilm) checkpoint            | unsupported: relative position bias  |
#   |                |                                    | inside attention (no absolute table) |
#   | clip           | OpenAI CLIP ViT-B/16 (visual.*)    | unsupported: ln_pre LayerNorm before |
#   |                |                                    | the blocks, QuickGELU MLPs, no patch |
#   |                |                                    | bias, CLIP's pixel mean/std          |
# An unsupported rule skips the row with its reason; nothing is loaded approximately.

class Unsupported(Exception):
    """A checkpoint that our ViT cannot represent exactly; the message is the reason."""


TIMM_DROP = ("head.", "pre_logits.")


def convert_timm_vit(state: dict, name: str = "<state dict>") -> dict:
    """A timm ViT state dict -> {"model": MAE-kind state dict} for dropmae.load_pretrained."""
    if "cls_token" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise ValueError(f"{name}: not a timm ViT state dict (no cls_token / blocks.0.attn.qkv.weight); "
                         f"first keys {list(state)[:5]}")
    if any(k.startswith("fc_norm.") for k in state):
        raise Unsupported(f"{name}: global-average-pool ViT (fc_norm.* instead of norm.*): our "
                          "encoder ends with `norm` on every token")
    if any(".ls1." in k or ".gamma_1" in k for k in state):
        raise Unsupported(f"{name}: layer-scale ViT (ls1/ls2): not in our Block")
    return {"model": {k: v for k, v in state.items() if not k.startswith(TIMM_DROP)}}


def convert_mocov3(ckpt: dict, name: str = "<checkpoint>") -> dict:
    """MoCo-v3 `vit-b-300ep.pth.tar` ({"state_dict": {"module.base_encoder.*": ...}}) -> timm rule."""
    state = ckpt.get("state_dict", ckpt)
    prefix = "module.base_encoder."
    base = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not base:
        raise ValueError(f"{name}: no '{prefix}*' keys (MoCo-v3 layout); first keys {list(state)[:5]}")
    return convert_timm_vit(base, name)


def convert_mae(ckpt: dict, name: str = "<checkpoint>") -> dict:
    """Official MAE ImageNet pre-training: already the layout load_pretrained reads."""
    state = ckpt.get("model", ckpt)
    if "cls_token" not in state:
        raise ValueError(f"{name}: not an MAE checkpoint (no cls_token)")
    return {"model": state}


# The rows whose weights our ViT cannot represent exactly: skipped with these reasons.
UNSUPPORTED = {
    "beit": "BEiT adds a relative position bias inside every attention (plus layer scale and q/v-only "
            "biases) and has no absolute position table; our ViT has only the absolute table, so no "
            "exact conversion exists",
    "clip": "CLIP's ViT needs a LayerNorm before the blocks (ln_pre), QuickGELU MLPs, a patch embedding "
            "without bias and CLIP's own pixel normalisation: none of them is in our ViT",
}
CONVERTERS = {"sup_in1k": convert_timm_vit, "sup_in21k": convert_timm_vit, "mocov3": convert_mocov3,
              "mae_in1k": convert_mae}
CKPT_ROWS = sorted(set(CONVERTERS) | set(UNSUPPORTED))


def load_foreign(path: str):
    """torch.load of a foreign file: weights only, argparse.Namespace allowed (MoCo/MAE store args)."""
    import torch
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------------------------
# Launching: torchrun for training, python for everything else
# --------------------------------------------------------------------------------------------

def launcher(script: str, dist: dict, train: bool) -> list[str]:
    """The command prefix of a stage. NPROC=1 and NNODES=1 (or a test stage): plain python."""
    if not train or (dist["nproc"] == 1 and dist["nnodes"] == 1):
        return [sys.executable, script]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist['nproc']}",
            f"--nnodes={dist['nnodes']}", f"--node_rank={dist['node_rank']}",
            f"--master_addr={dist['master_addr']}", f"--master_port={dist['master_port']}", script]


def run_command(cmd: list[str], log_path: Path, quiet: bool, env: dict | None = None) -> int:
    """Run cmd in the repository root; its output goes to log_path and (unless quiet) the console.

    Bytes are passed through as they come, so the stage's own tqdm bar draws on the console.
    `env`: variables added to this process's environment.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        while chunk := os.read(proc.stdout.fileno(), 65536):
            log.write(chunk)
            if not quiet:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        return proc.wait()


# --------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------

class StageFailed(Exception):
    """A stage's command failed; the message names the stage, the exit code and the log."""


def result_path(out: Path, row: str, stage: str) -> Path:
    return out / row / f"{stage}.json"


def write_json(path: Path, obj: dict):
    """Atomic: a half-written result file would make a rerun skip an unfinished stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def log_event(out: Path, **event):
    """One line per stage event in <out>/pipeline.jsonl (run, done, skip-done, failed, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pipeline.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **event}) + "\n")


def rel(ctx, path) -> str:
    return os.path.relpath(path, ctx.out)


def last_checkpoint(folder: Path) -> Path:
    import dropmae
    ckpt = dropmae.latest_checkpoint(folder)
    if ckpt is None:
        raise StageFailed(f"{folder}: the training command finished but wrote no checkpoint-*.pth")
    return ckpt


def pretrain_hours(run: Path) -> tuple[float, str]:
    """(hours, hardware) of a pre-training run folder: the sum of `epoch_time_s` over the epoch
    lines of log.jsonl (a resumed run appends; an interrupted epoch's time is not counted), and
    "<processes> x <GPU name | CPU>" from config.json / env.json."""
    seconds = 0.0
    for n, line in enumerate((run / "log.jsonl").read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{run / 'log.jsonl'}, line {n}: not JSON ({err})") from None
        if "epoch_time_s" in rec:
            seconds += float(rec["epoch_time_s"])
    procs = json.loads((run / "config.json").read_text())["args"].get("world_size", 1)
    gpus = json.loads((run / "env.json").read_text()).get("gpus") or []
    return seconds / 3600.0, f"{procs} x {gpus[0] if gpus else 'CPU'}"


# --------------------------------------------------------------------------------------------
# The stages. Each returns the dict stored in its result file.
# --------------------------------------------------------------------------------------------

def stage_pretrain(ctx, row: Row) -> dict:
    s = ctx.scale
    run = ctx.out / row.id / "pretrain"
    p = s["pretrain"]
    cmd = launcher("dropmae.py", ctx.dist, train=True) + [
        "pretrain", "--model", s["model"], "--data", row.video, "--data-path", str(ctx.video[row.video]),
        "--output", str(run), "--resume", "auto", "--P", str(row.P), "--batch-size", str(p["batch"]),
        "--num-workers", str(p["workers"]), "--seed", str(ctx.seed)]
    if row.image_mae:
        cmd.append("--image-mae")
    if ctx.scale_name == "full":
        world = ctx.dist["nproc"] * ctx.dist["nnodes"]
        accum = max(1, p["paper_gpus"] // world)           # effective batch 64 x 64 = 4096
        cmd += ["--epochs", str(row.epochs), "--accum-iter", str(accum)]
    else:
        cmd += ["--epochs", str(p["epochs"]), "--warmup-epochs", str(p["warmup"]), "--lr", str(p["lr"]),
                "--save-every", str(p["epochs"]), "--log-every", "50"]
    env = None
    if p["workers"] and ctx.scale_name != "full" and "OMP_NUM_THREADS" not in os.environ:
        env = {"OMP_NUM_THREADS": "1"}        # 2 cores: one for the model, one for the loader
    ctx.run(row, "pretrain", cmd, env)
    ckpt = last_checkpoint(run)
    hours, hardware = pretrain_hours(run)
    return {"checkpoint": rel(ctx, ckpt), "hours": hours, "hardware": hardware}


def stage_convert(ctx, row: Row) -> dict:
    """Someone else's checkpoint -> <row>/backbone.pth in the MAE layout, checked by loading it."""
    import torch

    import dropmae
    src = ctx.ckpts[row.id]
    converted = CONVERTERS[row.id](load_foreign(src), src)      # Unsupported / ValueError: skipped
    model = dropmae.ViTEncoder(dropmae.get_config(ctx.scale["model"]))
    report = dropmae.load_pretrained(converted, model)           # raises on any key or shape mismatch
    path = ctx.out / row.id / "backbone.pth"
    dropmae.save_checkpoint(path, converted)
    return {"checkpoint": rel(ctx, path), "source": str(src), "rule": CONVERTERS[row.id].__name__,
            "loaded": report["loaded"], "dropped": report["dropped"], "missing": report["missing"]}


def stage_vot_train(ctx, row: Row) -> dict:
    run = ctx.out / row.id / "droptrack"
    cmd = launcher("tasks/vot.py", ctx.dist, train=True) + [
        "train", "--config", "got10k", "--model", ctx.scale["model"], "--data-path", f"got10k={ctx.got10k}",
        "--output", str(run), "--resume", "auto", "--workers", str(ctx.scale["vot"]["workers"]),
        *ctx.scale["vot"]["args"]]
    if ctx.backbone(row):
        cmd += ["--pretrained", str(ctx.backbone(row))]
    ctx.run(row, "vot_train", cmd)
    return {"checkpoint": rel(ctx, last_checkpoint(run))}


def _vot_test(ctx, row: Row, stage: str, dataset: str) -> dict:
    ckpt = ctx.out / ctx.result(row, "vot_train")["checkpoint"]
    out = ctx.out / row.id / "got10k"
    cmd = launcher("tasks/vot.py", ctx.dist, train=False) + [
        "test", "--dataset", dataset, "--data-path", str(ctx.got10k), "--ckpt", str(ckpt),
        "--output", str(out), "--workers", str(ctx.scale["vot_test_workers"])]
    ctx.run(row, stage, cmd)
    summary = json.loads((out / f"{dataset}_summary.json").read_text())
    result = {"zip": rel(ctx, summary["zip"]) if summary.get("zip") else None,
              "fps": summary.get("fps_overall")}
    if dataset == "got10k_val":
        scores = summary.get("scores") or {}
        result.update({k: scores[k] for k in ("AO", "SR0.5", "SR0.75")})
    return result


def stage_vot_val(ctx, row: Row) -> dict:
    return _vot_test(ctx, row, "vot_val", "got10k_val")


def stage_vot_test(ctx, row: Row) -> dict:
    return _vot_test(ctx, row, "vot_test", "got10k_test")


def stage_vos_train(ctx, row: Row) -> dict:
    run = ctx.out / row.id / "dropseg"
    cmd = launcher("tasks/vos.py", ctx.dist, train=True) + [
        "train", "--model", ctx.scale["model"], "--data-path", str(ctx.davis), "--ytvos-path", str(ctx.ytvos),
        "--output", str(run), "--resume", "auto", "--workers", str(ctx.scale["vos"]["workers"]),
        *ctx.scale["vos"]["args"]]
    if ctx.backbone(row):
        cmd += ["--pretrained", str(ctx.backbone(row))]
    ctx.run(row, "vos_train", cmd)
    return {"checkpoint": rel(ctx, last_checkpoint(run))}


def stage_vos_val(ctx, row: Row) -> dict:
    ckpt = ctx.out / ctx.result(row, "vos_train")["checkpoint"]
    out = ctx.out / row.id / "davis17_val"
    cmd = launcher("tasks/vos.py", ctx.dist, train=False) + [
        "test", "--dataset", "davis17_val", "--data-path", str(ctx.davis), "--ckpt", str(ckpt),
        "--output", str(out)]
    if ctx.scale_name != "full":
        cmd += ["--resolution", "0"]                         # the synthetic frames' own size
    ctx.run(row, "vos_val", cmd)
    res = json.loads((out / "davis2017_results-val.json").read_text())
    return {"J&F": 100 * res["J&F-Mean"], "J": 100 * res["J-Mean"], "F": 100 * res["F-Mean"],
            "sequences": res["n_sequences"]}


TRAIN_STAGES = {"pretrain", "vot_train", "vos_train"}        # the only ones every node runs
STAGES = {"pretrain": stage_pretrain, "convert": stage_convert, "vot_train": stage_vot_train,
          "vot_val": stage_vot_val, "vot_test": stage_vot_test, "vos_train": stage_vos_train,
          "vos_val": stage_vos_val}


def row_stages(row: Row) -> list[str]:
    first = {"pretrain": ["pretrain"], "ckpt": ["convert"], "none": []}[row.source]
    return first + ["vot_train", "vot_val", "vot_test", "vos_train", "vos_val"]


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

class StopRequested(Exception):
    """--stop-after reached: leave as if killed between stages."""


class Pipeline:
    """The run folder, the data paths, the launcher settings, and stage execution with resume."""

    def __init__(self, out, scale_name, video, got10k, davis, ytvos, ckpts, dist, seed=0,
                 quiet=False, stop_after=None):
        self.out, self.scale_name, self.scale = Path(out), scale_name, SCALES[scale_name]
        self.video, self.got10k, self.davis, self.ytvos = video, got10k, davis, ytvos
        self.ckpts, self.dist, self.seed, self.quiet, self.stop_after = ckpts, dist, seed, quiet, stop_after
        self.header = ""

    def result(self, row: Row, stage: str) -> dict | None:
        path = result_path(self.out, row.id, stage)
        return json.loads(path.read_text())["result"] if path.is_file() else None

    def backbone(self, row: Row) -> Path | None:
        first = {"pretrain": "pretrain", "ckpt": "convert"}.get(row.source)
        return self.out / self.result(row, first)["checkpoint"] if first else None

    def run(self, row: Row, stage: str, cmd: list[str], env: dict | None = None):
        log = self.out / row.id / "logs" / f"{stage}.log"
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
        print(f"{self.header} $ {prefix}{' '.join(cmd)}", flush=True)
        code = run_command(cmd, log, self.quiet, env)
        if code != 0:
            raise StageFailed(f"{row.id}/{stage}: exit code {code}; log {log}")

    def stage(self, row: Row, stage: str, header: str):
        """Run one stage unless its result file exists; write the result file when it ends."""
        path = result_path(self.out, row.id, stage)
        self.header = f"{header} {stage}"
        if path.is_file():
            print(f"{self.header}: done before ({rel(self, path)}), skipped", flush=True)
            log_event(self.out, row=row.id, stage=stage, event="skip-done")
        elif self.dist["node_rank"] != 0 and stage not in TRAIN_STAGES:
            print(f"{self.header}: node 0 runs it", flush=True)
        else:
            print(f"{self.header} ...", flush=True)
            log_event(self.out, row=row.id, stage=stage, event="run")
            tic = time.time()
            result = STAGES[stage](self, row)
            seconds = time.time() - tic
            write_json(path, {"row": row.id, "stage": stage, "seconds": seconds, "scale": self.scale_name,
                              "result": result})
            log_event(self.out, row=row.id, stage=stage, event="done", seconds=seconds)
            print(f"{self.header}: done in {seconds:.1f} s", flush=True)
        if self.stop_after in (stage, f"{row.id}/{stage}"):
            raise StopRequested(f"--stop-after {self.stop_after}: stopped after {row.id}/{stage}")

    def skip_reason(self, row: Row) -> str | None:
        """Why a row cannot run here (missing data or weights, unsupported conversion), or None."""
        if row.source == "pretrain" and not self.video.get(row.video):
            return f"needs --{row.video} (the {row.video.upper()} training videos)"
        if row.source == "ckpt":
            if row.id in UNSUPPORTED:
                return f"conversion unsupported: {UNSUPPORTED[row.id]}"
            if row.id not in self.ckpts:
                return f"needs --ckpt {row.id}=PATH (weights of {row.method} {row.data})"
            if not Path(self.ckpts[row.id]).is_file():
                return f"--ckpt {row.id}={self.ckpts[row.id]}: no such file"
        return None

    def run_row(self, row: Row, index: int, total: int) -> dict:
        """All stages of a row -> {'status': 'done' | 'skipped' | 'failed', 'reason': ...}."""
        header = f"[row {index}/{total} {row.method}{' ' + row.data if row.data != '-' else ''}]"
        reason = self.skip_reason(row)
        if reason:
            print(f"{header} skipped: {reason}", flush=True)
            log_event(self.out, row=row.id, event="skip-row", reason=reason)
            return {"status": "skipped", "reason": reason}
        for stage in row_stages(row):
            try:
                self.stage(row, stage, header)
            except (Unsupported, ValueError, KeyError) as err:
                if stage != "convert":
                    raise
                log_event(self.out, row=row.id, stage=stage, event="skip-row", reason=str(err))
                print(f"{header} skipped: {err}", flush=True)
                return {"status": "skipped", "reason": f"conversion: {err}"}
            except StageFailed as err:
                log_event(self.out, row=row.id, stage=stage, event="failed", reason=str(err))
                print(f"{header} FAILED: {err}", flush=True)
                return {"status": "failed", "reason": str(err)}
        return {"status": "done", "reason": ""}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

def table_rows(pipe: Pipeline, rows: list[Row], status: dict) -> list[dict]:
    """One dict per row: labels, status, and per metric the paper's number and ours (or None)."""
    out = []
    for row in rows:
        paper = PAPER[row.paper]
        rec = {"row": row.id, "method": row.method, "data": row.data,
               "epochs": row.epochs if row.epochs else (pipe.scale["pretrain"]["epochs"]
                                                        if row.source == "pretrain" else None),
               "paper_row": f"{paper[0]} {paper[1]} {paper[2] or ''}".strip() if row.paper != row.id else "",
               "scale": {"full": "full", "tiny": "tiny synthetic", "smoke": "smoke (tiny synthetic)"}[pipe.scale_name],
               "status": status[row.id]["status"], "reason": status[row.id]["reason"],
               "pretrain_h_paper": paper[3], "pretrain_h_ours": None, "pretrain_hardware": ""}
        ours = {}
        pre = pipe.result(row, "pretrain") if row.source == "pretrain" else None
        if pre:
            rec["pretrain_h_ours"], rec["pretrain_hardware"] = pre["hours"], pre["hardware"]
        for stage in ("vot_val", "vos_val"):
            ours.update(pipe.result(row, stage) or {})
        for k, p in zip(METRICS, paper[4:]):
            rec[f"{k}_paper"], rec[f"{k}_ours"] = p, ours.get(k)
        out.append(rec)
    return out


def _num(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _cells(rec: dict) -> list[str]:
    ours = rec["pretrain_h_ours"]
    hours = f"{_num(rec['pretrain_h_paper'])} / {'-' if ours is None else f'{ours:.2g}'}"
    cells = [rec["method"], rec["data"], str(rec["epochs"] or "-"), rec["paper_row"] or "same", hours]
    cells += [f"{_num(rec[k + '_paper'])} / {_num(rec[k + '_ours'])}" for k in METRICS]
    status = rec["status"] if rec["status"] == "done" else f"{rec['status']}: {rec['reason']}"
    return cells + [status]


HEADER = ["Method", "Data", "Ep", "Paper row", "PT h (paper/ours)"] + [f"{m} (paper/ours)" for m in METRICS] + ["status"]


def banner_for(scale_name: str) -> str:
    return {"tiny": BANNER, "smoke": SMOKE_BANNER}.get(scale_name, "")


def format_text(recs: list[dict], scale_name: str) -> str:
    rows = [HEADER] + [_cells(r) for r in recs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    title = "Table 1: pre-training methods fine-tuned on GOT-10k (val; paper: test) and DAVIS-17 val"
    out = [title]
    banner = banner_for(scale_name)
    if banner:
        bar = "!" * (len(banner) + 8)
        out = [bar, f"!!! {banner} !!!", bar, title + f"  [{banner.lower()}]"]
    hw = {r["pretrain_hardware"] for r in recs if r["pretrain_hardware"]}
    foot = f"PT h: paper on 64 GPUs; ours summed from the pre-training logs on {', '.join(sorted(hw)) or '-'}"
    return "\n".join(out + lines + [foot] + ([f"!!! {banner} !!!"] if banner else [])) + "\n"


def format_markdown(recs: list[dict], scale_name: str) -> str:
    banner = banner_for(scale_name)
    out = [f"**{banner}**", ""] if banner else []
    out += ["Table 1 (cells: paper / ours; ours on GOT-10k val and DAVIS-17 val)", "",
            "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in recs]
    return "\n".join(out) + "\n"


def format_csv(recs: list[dict], scale_name: str) -> str:
    buf = io.StringIO()
    banner = banner_for(scale_name)
    if banner:
        buf.write(f"# {banner}\n")
    writer = csv.DictWriter(buf, fieldnames=list(recs[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(recs)
    return buf.getvalue()


def write_table(pipe: Pipeline, recs: list[dict]) -> str:
    text = format_text(recs, pipe.scale_name)
    (pipe.out / "table1.txt").write_text(text)
    (pipe.out / "table1.md").write_text(format_markdown(recs, pipe.scale_name))
    (pipe.out / "table1.csv").write_text(format_csv(recs, pipe.scale_name))
    return text


# --------------------------------------------------------------------------------------------
# Synthetic data for the tiny and smoke scales (a stage of its own: <out>/data.json)
# --------------------------------------------------------------------------------------------

def make_synthetic_data(pipe: Pipeline):
    """Kinetics-400 (mp4 clips), GOT-10k, DAVIS-17 and YouTube-VOS layouts under <out>/data."""
    s, data = pipe.scale, pipe.out / "data"
    pipe.video = {"k400": data / "k400", "k400_val": data / "k400_val"}
    pipe.got10k, pipe.davis, pipe.ytvos = data / "vot" / "got10k", data / "vos" / "DAVIS", data / "vos" / "YouTubeVOS"
    if (pipe.out / "data.json").is_file():
        print("[data] synthetic data: done before, skipped", flush=True)
        return
    print(f"[data] synthetic Kinetics-400 / GOT-10k / DAVIS / YouTube-VOS layouts in {data} ...", flush=True)
    py = sys.executable
    # MPEG-4 Part 2 clips: the same bytes on every run. libx264 in our PyAV build is not
    # deterministic (the second and later encodes in one process vary), and the tiny
    # pre-training is sensitive enough that other pixels give another attention figure.
    cmds = [[py, "data.py", "make-clips", "--out", str(data / "k400"), "--classes", str(s["clips"]["train"][0]),
             "--per-class", str(s["clips"]["train"][1]), "--seed", "0", "--codec", "mpeg4"],
            [py, "data.py", "make-clips", "--out", str(data / "k400_val"), "--classes", str(s["clips"]["val"][0]),
             "--per-class", str(s["clips"]["val"][1]), "--seed", "1", "--codec", "mpeg4"],
            [py, "tasks/vot.py", "synth", "--out", str(data / "vot"), "--train-seqs", str(s["vot_synth"]["train"]),
             "--val-seqs", str(s["vot_synth"]["val"]), "--frames", str(s["vot_synth"]["frames"])],
            [py, "tasks/vos.py", "synthetic", "--out", str(data / "vos"), "--frames", str(s["vos_frames"])]]
    for cmd in cmds:
        if run_command(cmd, pipe.out / "logs" / "data.log", pipe.quiet) != 0:
            raise SystemExit(f"synthetic data failed: {' '.join(cmd)} (log {pipe.out / 'logs' / 'data.log'})")
    write_json(pipe.out / "data.json", {"paths": {k: str(v) for k, v in pipe.video.items()}})


# --------------------------------------------------------------------------------------------
# The attention figure (reproduce/attention.py on this table's TwinMAE / DropMAE checkpoints)
# --------------------------------------------------------------------------------------------

def attention_for_seed(pipe: Pipeline, twin: Row, drop: Row, seed: int, val_path: Path, label: str) -> dict:
    """TwinMAE and DropMAE pre-trained with `seed` (the table's own checkpoints for the table's
    seed; otherwise the same recipe under <out>/attention/seed<s>/), then reproduce/attention.py.
    -> {name: {within, between}}."""
    if seed == pipe.seed:
        run = pipe
    else:
        run = Pipeline(pipe.out / "attention" / f"seed{seed}", pipe.scale_name, pipe.video, got10k=None,
                       davis=None, ytvos=None, ckpts={}, dist=pipe.dist, seed=seed, quiet=pipe.quiet)
    for k, row in enumerate((twin, drop), 1):
        run.stage(row, "pretrain", f"[attention seed {seed}, {k}/2 {row.method}]")
    out = pipe.out / "attention" / f"seed{seed}"
    cmd = [sys.executable, "-m", "reproduce.attention", "--ckpt", str(run.backbone(twin)),
           "--ckpt", str(run.backbone(drop)), "--names", "TwinMAE", "DropMAE", "--data", "k400",
           "--data-path", str(val_path), "--videos", "20", "--out", str(out),
           "--label", f"{label}, pre-training seed {seed}"]
    print(f"[attention seed {seed}] $ {' '.join(cmd)}", flush=True)
    if run_command(cmd, out / "attention.log", quiet=False) != 0:
        raise SystemExit(f"reproduce/attention.py failed (log {out / 'attention.log'})")
    return json.loads((out / "attention.json").read_text())["result"]


def figure_attention(pipe: Pipeline, rows: list[Row], val_path: Path | None, label: str,
                     seeds: int = 1) -> dict:
    """The analysis on the table's TwinMAE and DropMAE (pre-trained first if missing), and with
    `seeds` > 1 on pairs pre-trained with the next seeds too (same recipe, same steps), since a
    tiny model's attention varies from seed to seed. Writes <out>/attention/summary.json.
    -> {"seeds": {seed: result}, "holds": {seed: per-layer DropMAE between > TwinMAE's},
        "mean": {name: {within, between}} over seeds}."""
    twin = next(r for r in rows if r.method == "TwinMAE")
    drop = next(r for r in rows if r.method == "DropMAE" and r.video == twin.video and r.epochs == twin.epochs)
    if val_path is None:
        raise SystemExit("--figure-attention at full scale needs --k400-val (K400 validation videos)")
    results, holds = {}, {}
    for seed in range(pipe.seed, pipe.seed + seeds):
        res = attention_for_seed(pipe, twin, drop, seed, val_path, label)
        results[seed] = res
        holds[seed] = [d > t for d, t in zip(res["DropMAE"]["between"], res["TwinMAE"]["between"])]
    mean = {name: {key: [sum(layer) / len(layer) for layer in zip(*(r[name][key] for r in results.values()))]
                   for key in ("within", "between")} for name in ("TwinMAE", "DropMAE")}
    print(f"[attention] {label}: between-frame share per decoder layer (TwinMAE / DropMAE)")
    layers = len(mean["TwinMAE"]["between"])
    print("seed   " + "  ".join(f"{'layer ' + str(i + 1):>15s}" for i in range(layers)) + "  DropMAE higher in")
    for seed, res in results.items():
        cells = "  ".join(f"{t:6.3f} / {d:6.3f}" for t, d in zip(res["TwinMAE"]["between"], res["DropMAE"]["between"]))
        print(f"{seed:<5d}  {cells}  {sum(holds[seed])} of {layers} layers")
    if len(results) > 1:
        cells = "  ".join(f"{t:6.3f} / {d:6.3f}" for t, d in zip(mean["TwinMAE"]["between"], mean["DropMAE"]["between"]))
        every = sum(all(h) for h in holds.values())
        print(f"mean   {cells}  (every layer in {every} of {len(results)} seeds)")
    summary = {"label": label, "seeds": results, "holds": holds, "mean": mean}
    write_json(pipe.out / "attention" / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_ckpts(items: list[str]) -> dict:
    ckpts = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--ckpt {item}: expected ROW=PATH with ROW one of {CKPT_ROWS}")
        row, path = item.split("=", 1)
        if row not in CKPT_ROWS:
            raise SystemExit(f"--ckpt {item}: {row!r} is not a row that takes weights; choose from "
                             f"{CKPT_ROWS}")
        ckpts[row] = path
    return ckpts


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (none given: tiny synthetic scale)")
    g.add_argument("--k400", help="Kinetics-400 training videos (<root>/<class>/<id>.mp4)")
    g.add_argument("--k700", help="Kinetics-700 training videos")
    g.add_argument("--k400-val", help="Kinetics-400 validation videos (only --figure-attention)")
    g.add_argument("--got10k", help="GOT-10k root (train/, val/, test/)")
    g.add_argument("--davis", help="DAVIS-2017 trainval root")
    g.add_argument("--ytvos", help="YouTube-VOS 2019 root (train/)")
    g.add_argument("--ckpt", action="append", default=[], metavar="ROW=PATH",
                   help=f"weights for a row of other people's pre-training: {', '.join(CKPT_ROWS)}")
    g = p.add_argument_group("what to run")
    g.add_argument("--smoke", action="store_true", default=env.get("SMOKE", "") not in ("", "0"),
                   help="smoke scale (~2 min; also SMOKE=1 in the environment)")
    g.add_argument("--rows", nargs="+", help="row ids to run (default: all of the scale)")
    g.add_argument("--out", help="run folder (default runs/table1, runs/table1_tiny, runs/table1_smoke)")
    g.add_argument("--stop-after", metavar="[ROW/]STAGE",
                   help="stop after this stage, as if killed (tests the resume)")
    g.add_argument("--figure-attention", action="store_true",
                   help="only the attention figure on the TwinMAE / DropMAE checkpoints (pre-trains them "
                        "if missing)")
    g.add_argument("--attention-seeds", type=int, default=1, metavar="N",
                   help="--figure-attention: also pre-train TwinMAE / DropMAE pairs with the next N-1 "
                        "seeds and report every seed and the mean")
    g.add_argument("--quiet", action="store_true", help="stage output to the logs only; headers printed")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("launch (torchrun for the training stages when NPROC * NNODES > 1)")
    g.add_argument("--nproc", type=int, default=int(env.get("NPROC", 1)), help="processes per node (NPROC)")
    g.add_argument("--nnodes", type=int, default=int(env.get("NNODES", 1)), help="nodes (NNODES)")
    g.add_argument("--node-rank", type=int, default=int(env.get("NODE_RANK", 0)), help="NODE_RANK")
    g.add_argument("--master-addr", default=env.get("MASTER_ADDR", "127.0.0.1"), help="MASTER_ADDR")
    g.add_argument("--master-port", type=int, default=int(env.get("MASTER_PORT", 29511)), help="MASTER_PORT")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: getattr(args, k) for k in ("k400", "k700", "got10k", "davis", "ytvos")}
    full = any(given.values())
    scale_name = "full" if full else ("smoke" if args.smoke else "tiny")
    if full and args.smoke:
        raise SystemExit("--smoke is the synthetic scale: give no dataset paths with it")
    if full:
        lacking = [f"--{k}" for k in ("got10k", "davis", "ytvos") if not given[k]]
        if lacking:
            raise SystemExit(f"full scale needs the fine-tuning datasets: missing {' '.join(lacking)}")
        for k, v in given.items():
            if v and not Path(v).is_dir():
                raise SystemExit(f"--{k} {v}: no such folder")
    all_rows = FULL_ROWS if full else TINY_ROWS
    if args.rows:
        unknown = sorted(set(args.rows) - {r.id for r in all_rows})
        if unknown:
            raise SystemExit(f"--rows: unknown {unknown}; the {scale_name} rows are {[r.id for r in all_rows]}")
    rows = [r for r in all_rows if not args.rows or r.id in args.rows]
    out = Path(args.out or {"full": "runs/table1", "tiny": "runs/table1_tiny", "smoke": "runs/table1_smoke"}[scale_name])
    out = out.resolve()
    setting = out / "table1_config.json"
    if setting.is_file():
        before = json.loads(setting.read_text())["scale"]
        if before != scale_name:
            raise SystemExit(f"{out} holds a {before}-scale run; this is {scale_name} scale: use another --out")
    else:
        write_json(setting, {"scale": scale_name, "settings": SCALES[scale_name], "argv": sys.argv})
    dist = {"nproc": args.nproc, "nnodes": args.nnodes, "node_rank": args.node_rank,
            "master_addr": args.master_addr, "master_port": args.master_port}
    pipe = Pipeline(out, scale_name, {"k400": given["k400"], "k700": given["k700"]}, given["got10k"],
                    given["davis"], given["ytvos"], parse_ckpts(args.ckpt), dist, args.seed, args.quiet,
                    args.stop_after)
    banner = banner_for(scale_name)
    if banner:
        print(f"!!! {banner} !!!  (run folder {out})", flush=True)
        make_synthetic_data(pipe)
    tic = time.time()
    if args.figure_attention:
        val = pipe.video.get("k400_val") or (Path(args.k400_val) if args.k400_val else None)
        label = {"tiny": "tiny synthetic scale", "smoke": "smoke scale (tiny synthetic)"}.get(scale_name, "full scale")
        if args.attention_seeds < 1:
            raise SystemExit("--attention-seeds must be >= 1")
        figure_attention(pipe, [r for r in all_rows], val, label, args.attention_seeds)
        return 0
    status = {}
    try:
        for k, row in enumerate(rows, 1):
            status[row.id] = pipe.run_row(row, k, len(rows))
    except StopRequested as stop:
        print(str(stop), flush=True)
        log_event(out, event="stopped", reason=str(stop))
        return 0
    if args.node_rank != 0:
        return 0
    text = write_table(pipe, table_rows(pipe, rows, status))
    print(text, end="")
    print(f"wrote {out / 'table1.csv'}, {out / 'table1.md'} ({time.time() - tic:.0f} s this run)")
    failed = [r for r, s in status.items() if s["status"] == "failed"]
    if failed:
        print(f"failed rows: {failed}; rerun the same command to resume them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
