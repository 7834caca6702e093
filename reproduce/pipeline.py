"""The machinery every paper table runs on: rows, stages, resume, launch, backbones, formatting.

A table is a declaration (`Table`): its rows (`Row`: which initialisation), its stages (`Stage`:
a function that runs one command line and returns a result dict), its columns (`Column`: which
number of which stage's result, beside the paper's), and its recipes per scale. `main(TABLE)`
then gives it the whole command line: `--smoke`, `--seeds N`, `--rows`, `--out`, `--ckpt
ROW=PATH`, `--finetuned ROW=PATH` (tables that declare `finetuned`), `--backbones DIR`,
`--verbose`, `--stop-after`, the torchrun launch through
NPROC / NNODES / NODE_RANK / MASTER_ADDR, the loud tiny-scale banner, and the table as text, CSV
and Markdown with "paper / ours" (mean ± std over seeds) in every cell.

Declaring a table (a sketch; reproduce/table1.py is the real one):

    from reproduce import pipeline as pl

    PAPER = {"none": {"label": "No pre-training", "AO": 62.7}, "dropmae": {"AO": 75.9}, ...}
    def stage_train(ctx, row):                 # ctx: SeedRun (ctx.out, ctx.seed, ctx.recipe, ...)
        run = ctx.folder(row, "train")
        cmd = ctx.launcher("tasks/vot.py", train=True) + ["train", "--output", str(run),
              "--resume", "auto", "--seed", str(ctx.seed), *ctx.recipe["train_args"]]
        if ctx.backbone(row):                  # None for the no-pre-training row
            cmd += ["--pretrained", str(ctx.backbone(row))]
        ctx.run(cmd, progress=pl.Progress(r'^\\{"epoch": (\\d+)', total=ctx.recipe["epochs"]))
        return {"checkpoint": ctx.rel(dropmae.latest_checkpoint(run))}
    def stage_test(ctx, row):
        ...                                    # python tasks/x.py test ...; read its summary JSON
        return {"AO": summary["AO"]}
    TABLE = pl.Table(
        name="table9", title="Table 9: ...", paper=PAPER,
        rows={"full": [...], "tiny": pl.tiny_rows({"none": "none", "dropmae": "dropmae", ...})},
        stages=[pl.Stage("train", stage_train, every_node=True), pl.Stage("test", stage_test)],
        columns=[pl.Column("AO", stage="test")],
        recipes={"full": {...}, "tiny": {...}, "smoke": {...}},
        datasets={"got10k": "GOT-10k root"}, needs_full=("got10k",), synthetic=make_data)
    if __name__ == "__main__":
        sys.exit(pl.main(TABLE))

Every row's stages: first the pipeline's own — `pretrain` (a backbone from the shared cache,
below), or `convert` (someone else's checkpoint, `--ckpt ROW=PATH`, by an explicit key rule),
or nothing (random init) — then `collapse` (the token-cosine check, below) where held-out frames
exist, then the table's stages in order. A row given a fine-tuned model (`--finetuned
ROW=PATH`: a released tracker or segmenter, or one of ours) runs only the table's test stages:
no pretrain / convert / collapse, none of the stages declared `finetune=True`; the test stages
read the model through `ctx.trained(row, <fine-tuning stage>)`, and the table prints, under it,
which file that row's numbers came from. A table's `smoke_rows` lets `--smoke` run a subset:
the table still prints every row, the others skipped with the reason.

Run folder (`--out`, default runs/<name>, runs/<name>_tiny, runs/<name>_smoke):
    <out>/<name>_config.json       scale and settings; another scale or recipe is refused
    <out>/data/                    the tiny/smoke synthetic data (a stage of its own: data.json);
                                   with Table.share_data a link to <backbones>/data/<key>/data
    <out>/seed<s>/<row>/<stage>.json   one result file per finished stage (written atomically)
    <out>/seed<s>/<row>/logs/<stage>.log   the stage's whole output
    <out>/pipeline.jsonl           one line per stage event (run, done, skip-done, failed, ...)
    <out>/<name>.txt|.csv|.md, <out>/collapse.json
A stage whose result file exists is skipped, so a run may be stopped at any point (killed too)
and rerun with the same command: no finished stage is redone, and the training commands resume
inside themselves (`--resume auto`).

Rows at once (`--jobs N`, or JOBS=N): the (seed, row) pairs run N at a time, each in a thread
that waits on its stages' commands, which then get OMP_NUM_THREADS = cores / (rows running
when the stage starts; unless the environment sets it). A row's stages keep their order; rows share nothing but backbones, which
are built once under their lock. The default is 2 at tiny scale on a machine of 2 or more cores
(the tiny models use two threads poorly, so two rows on one thread each finish sooner than
one after the other on two) and 1 at smoke and full scale (full-scale stages are GPU jobs: use
NPROC). Each stage's result is the same as with one job up to the thread count's float
rounding. The console then prints each stage's start and end line, and on a terminal one live
line of every running stage's percentage.

Backbones (`Backbones`): the pre-trained encoders of a scale live in one cache folder shared by
every table (`--backbones DIR`, default `<out>/../backbones_<scale>`, i.e. runs/backbones_tiny),
one folder per recipe and seed (`<key>_seed<s>/`: the dropmae.py run folder, its recipe.json and
backbone.json), plus the synthetic pre-training and held-out clips (`clips/`). A row's
pre-training source is its `video` (`pretrained(id, method, video)`): k400, k600, k700, mit,
webvid or folder (the dataset presets of data.py). At full scale its folder is the user's
`--<video> PATH`; at tiny / smoke scale K400 is the shared clips (`clips/train`) and every other
source its own synthetic clips in its official layout (`clips/<video>/`, SYNTHETIC_SOURCES:
other world seed streams, so other scenes), made when a row needs them. Each is built
once under an `fcntl` lock: two processes (two tables, two pytest-xdist workers) asking for the
same backbone at once train it once; the other waits and reuses it. A folder pre-trained with
another recipe is refused, not reused. `BACKBONE_RECIPE` holds the pre-training numbers per
scale; the standard tiny rows (no pre-training, image MAE, TwinMAE, DropMAE) are `tiny_rows()`.
Tests pass the session's shared folder (`smoke_backbones` in tests/conftest.py) as --backbones,
so every table's `--smoke` test, on any pytest-xdist worker, uses one set of smoke backbones.
`python -m reproduce.pipeline backbones [--scale smoke] [--seeds N]` pre-trains them ahead.

Console: one line per stage, redrawn in place on a terminal,
    [row 3/4 TwinMAE K400] pretrain [##########..........]  52%  1:05 elapsed, 1:00 left
and ended by its result and time; the stage's output goes only to
its log file, whose path (and last lines) are printed when it fails. `--verbose` streams it.

Pre-training hours come from our own logs (`pretrain_hours`): the sum of `epoch_time_s` over the
epoch lines of log.jsonl, each epoch counted once (an epoch logged, then redone after a resume
because its checkpoint was never saved, is counted once, the later run's time).

Collapse check (`token_cosine`): for every backbone of a run (and a random init: the
no-pre-training row), the mean pairwise cosine similarity between the encoder's output tokens of
one image, over held-out synthetic frames. Near 1: the tokens are nearly one vector (collapse);
the goal for the tiny recipe is below 0.7. Printed under the table, written to collapse.json.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BANNERS = {"tiny": "TINY SYNTHETIC SCALE: NOT COMPARABLE WITH THE PAPER",
           "smoke": "SMOKE SCALE (tiny synthetic): NOT COMPARABLE WITH THE PAPER"}
SCALE_LABELS = {"full": "full", "tiny": "tiny synthetic", "smoke": "smoke (tiny synthetic)"}
COLLAPSE_GOAL = 0.7


# --------------------------------------------------------------------------------------------
# Declarations: rows, columns, stages, the table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of a table: which initialisation the downstream stages start from.

    `source`: 'none' (random init), 'pretrain' (ours: the `video` set, `epochs` (None: the
    scale's recipe), ASAD ratio `P`, `image_mae`, further dropmae.py flags `pretrain_args`) or
    'ckpt' (someone else's weights from `--ckpt ID=PATH`, converted by the rule `weights`: a key
    of CONVERTERS or UNSUPPORTED) or 'baseline' (no network at all, e.g. a box held at its
    first position: no backbone and no collapse check; the table's stages say what it does). `paper`: the key of the paper's row printed beside it
    (default: `id`). A pretrain row given `--ckpt ID=PATH` uses that file instead of pre-training.
    """
    id: str
    method: str
    data: str = "-"
    epochs: int | None = None
    source: str = "none"
    paper: str | None = None
    video: str = ""
    P: float = 0.0
    image_mae: bool = False
    pretrain_args: tuple = ()
    weights: str = ""

    @property
    def paper_key(self) -> str:
        return self.paper or self.id

    @property
    def title(self) -> str:
        return self.method + (f" {self.data}" if self.data != "-" else "")

    def backbone_key(self) -> str:
        """The name of this row's pre-training recipe in the backbone cache."""
        kind = "image_mae" if self.image_mae else "twinmae" if self.P == 0 else (
            "dropmae" if self.P == 0.1 else f"dropmae_P{self.P:g}")
        extra = "".join(re.sub(r"[^A-Za-z0-9.]+", "", a) for a in self.pretrain_args)
        return "_".join(x for x in (kind, self.video, f"{self.epochs}ep" if self.epochs else "", extra) if x)


def pretrained(id, method, video, epochs=None, P=0.0, image_mae=False, paper=None, pretrain_args=()):
    """A row pre-trained by us (dropmae.py pretrain)."""
    return Row(id, method, video.upper(), epochs, "pretrain", paper, video, P, image_mae, tuple(pretrain_args))


def foreign(id, method, data, epochs, weights, paper=None):
    """A row with someone else's checkpoint (`--ckpt ID=PATH`, converted by rule `weights`)."""
    return Row(id, method, data, epochs, "ckpt", paper, weights=weights)


TINY_ROWS = (Row("none", "No pre-training"),
             pretrained("image_mae", "MAE (1 frame)", "k400", image_mae=True),
             pretrained("twinmae", "TwinMAE", "k400"),
             pretrained("dropmae", "DropMAE", "k400", P=0.1))


def baseline(id, method):
    """A row without a network (what the learnt rows are measured against)."""
    return Row(id, method, source="baseline")


def tiny_rows(paper: dict | None = None, ids=None) -> list[Row]:
    """The standard tiny/smoke rows (no pre-training, image MAE, TwinMAE, DropMAE), sharing the
    cached backbones; `paper` maps a row id to the paper row printed beside it; `ids` selects."""
    paper = paper or {}
    return [replace(r, paper=paper.get(r.id)) for r in TINY_ROWS if ids is None or r.id in ids]


@dataclass(frozen=True)
class Column:
    """A number of the table: ours from the result of `stage` (its key `key`, default `id`), the
    paper's from the paper row's `id` entry. `id` names the CSV columns (`<id>_paper`, `<id>_ours`,
    `<id>_std`); `header` is printed (default `id`); `fmt` formats both numbers."""
    id: str
    stage: str
    key: str | None = None
    header: str | None = None
    fmt: str = ".1f"


@dataclass(frozen=True)
class Stage:
    """A step of every row: fn(ctx: SeedRun, row: Row) -> result dict (JSON-able), stored in
    `<seed folder>/<row>/<name>.json`. `every_node`: a training stage that every node runs
    (torchrun); the others run on node 0 only, and with `wait` the other nodes wait for node 0's
    result file (a stage whose result a later training stage reads). `rows`: a predicate
    choosing the rows that run it. `finetune`: a fine-tuning stage (its result's "checkpoint" is
    the model the test stages read, `SeedRun.trained`), not run for a row given a fine-tuned
    model (`--finetuned ROW=PATH`)."""
    name: str
    fn: Callable
    every_node: bool = False
    rows: Callable | None = None
    wait: bool = False
    finetune: bool = False


@dataclass
class Table:
    """A paper table. `paper`: {paper row key: {"label": str, <column id>: number}}; `rows`:
    {"full": [...], "tiny": [...]} (smoke uses the tiny rows); `recipes`: {scale: dict} handed
    to the stages as `ctx.recipe`; `datasets`: {name: help} becomes `--<name> PATH` flags (any
    given means full scale; `needs_full` must all be given then); `synthetic(ctx, row)`: the
    tiny/smoke data stage, writing under ctx.folder(row) and returning {"paths": {name: path}};
    `heldout`: the dataset name of held-out video frames for the collapse check at full scale;
    `collapse_check`: False leaves the collapse stage out; `notes`: lines under the table.
    `finetuned`: what a fine-tuned model of a row is, the help of `--finetuned ROW=PATH` (empty:
    the table takes none); a row given one runs only its test stages (no pretrain, convert,
    collapse or `finetune` stage). `smoke_rows`: the row ids a `--smoke` run runs (None: all);
    the table still prints every row, the others skipped with that reason. `share_data`: the
    synthetic data depends only on (the `synthetic` function, the scale, the recipe), so it is
    made once in the backbone cache (`<backbones>/data/<function>_<scale>_<hash>/data`, under a
    lock) and `<out>/data` links to it: tables declaring the same function and recipe share it."""
    name: str
    title: str
    paper: dict
    columns: list
    rows: dict
    stages: list
    recipes: dict
    datasets: dict = field(default_factory=dict)
    needs_full: tuple = ()
    synthetic: Callable | None = None
    heldout: str | None = None
    collapse_check: bool = True
    notes: tuple = ()
    description: str = ""
    finetuned: str = ""
    smoke_rows: tuple | None = None
    share_data: bool = False


# --------------------------------------------------------------------------------------------
# The pre-training recipe of the shared backbones, per scale
# --------------------------------------------------------------------------------------------

BACKBONE_RECIPE = {
    # the paper: ViT-B, batch 64 on each of 64 GPUs (accum keeps 4096 on fewer), dropmae.py's
    # official defaults for everything else; the row gives the epochs
    "full": dict(model="base", batch=64, paper_gpus=64, workers=10),
    # tiny: 256 clips of 8 classes (held-out: 20 clips), 94 epochs x 32 iterations = 3008 steps.
    # lr: the paper's linear rule (blr 1.5e-4 x 8 / 256 = 4.7e-6) barely moves a model in 3000
    # steps; Adam's square-root rule from the paper's (batch 4096, lr 2.4e-3) gives 1.1e-4 at
    # batch 8, and we use 1.5e-4. Measured on the synthetic world (DropMAE, 3008 steps, 16
    # held-out frames; random init 0.83): lr 4.7e-6 ends at loss 0.909 (it starts at ~0.98),
    # token cosine 0.88; lr 1.5e-4 at loss 0.565, cosine 0.87; the old 1.5e-3 at 0.532, cosine
    # 0.95 (collapse). The old 32 clips x 750 epochs saw each clip 750 times.
    "tiny": dict(model="tiny", clips=dict(train=(8, 32), val=(4, 5)), batch=8, epochs=94,
                 warmup=3, lr=1.5e-4, workers=1, log_every=50),
    # smoke: 4 clips, 2 epochs x 2 iterations
    "smoke": dict(model="tiny", clips=dict(train=(2, 2), val=(2, 1)), batch=2, epochs=2,
                  warmup=1, lr=1.5e-3, workers=0, log_every=1),
}
VIDEO_SETS = ("k400", "k600", "k700", "mit", "webvid", "folder")   # dataset flags that are pre-training videos
# The tiny / smoke stand-ins of the other pre-training sources (a row's `video`; K400's are the
# clips of BACKBONE_RECIPE): (classes, clips per class, make-clips seed), each seed its own world
# stream (data.world_seed('clips', seed, i)), so every source is other scenes, in its official
# layout: K600 / K700 <root>/<class>/, MiT <root>/training/<class>/, WebVid one folder of videos
# (no classes). Sizes: the counts a table shows; fewer clips than K400's give fewer steps.
SYNTHETIC_SOURCES = {
    "tiny": {"k600": (6, 3, 11), "k700": (8, 2, 12), "mit": (3, 4, 13), "webvid": (1, 16, 14)},
    "smoke": {"k600": (3, 2, 11), "k700": (4, 1, 12), "mit": (2, 2, 13), "webvid": (1, 5, 14)},
}
COLLAPSE_FRAMES = 16                                     # held-out frames of the collapse check


def code_version() -> str:
    """A hash of the code that makes the clips and the backbones (data.py, dropmae.py): a cache
    entry made by other code is reported when reused (delete it to redo it)."""
    import hashlib
    h = hashlib.sha256()
    for name in ("data.py", "dropmae.py"):
        h.update((REPO / name).read_bytes())
    return h.hexdigest()[:12]


def _warn_if_other_code(done: dict, folder: Path, say):
    if done.get("code") not in (None, code_version()):
        say(f"note: {folder} was made by other code (data.py / dropmae.py changed since, hash "
            f"{done['code']} vs {code_version()}); delete it to redo it with this code")


# --------------------------------------------------------------------------------------------
# Other people's checkpoints -> our ViT key layout (STYLE 7: one explicit table per source)
# --------------------------------------------------------------------------------------------
#
# Our encoder keys: patch_embed.proj.{weight,bias}, pos_embed (1, 1+g*g, D; row 0 an unused cls
# slot), blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}, norm.*,
# temporal_pos_embed_{x,z}. `dropmae.load_pretrained` reads an "MAE kind" file ({"model": sd}
# with `cls_token`): it drops cls_token and keeps the frame vectors at their init. So each rule
# below maps a source to that layout:
#   | rule    | source file                        | rule                                        |
#   |---------|------------------------------------|---------------------------------------------|
#   | timm    | timm ViT-B/16 state dict (.pth)    | keys already ours; drop head.*, pre_logits.*;|
#   |         |                                    | learned pos_embed kept (1, 197, 768);       |
#   |         |                                    | fc_norm (global-pool variants): unsupported |
#   | mocov3  | {"state_dict": module.base_encoder.| strip `module.base_encoder.`, drop the      |
#   |         |   *, module.momentum_encoder.*,...}| momentum encoder, predictor and head.*      |
#   |         |                                    | (projection MLP); then the timm rule        |
#   | mae     | official mae_pretrain_vit_base.pth | none: load_pretrained reads it              |
#   | ours    | DropMAE / our checkpoint           | none: load_pretrained reads it              |
#   | beit    | BEiT (unilm) checkpoint            | unsupported: relative position bias inside  |
#   |         |                                    | attention (no absolute table)               |
#   | clip    | OpenAI CLIP ViT-B/16 (visual.*)    | unsupported: ln_pre LayerNorm before the    |
#   |         |                                    | blocks, QuickGELU MLPs, no patch bias,      |
#   |         |                                    | CLIP's pixel mean/std                       |
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


def convert_ours(ckpt: dict, name: str = "<checkpoint>") -> dict:
    """DropMAE (official or ours): load_pretrained reads it as it is."""
    return ckpt


UNSUPPORTED = {
    "beit": "BEiT adds a relative position bias inside every attention (plus layer scale and q/v-only "
            "biases) and has no absolute position table; our ViT has only the absolute table, so no "
            "exact conversion exists",
    "clip": "CLIP's ViT needs a LayerNorm before the blocks (ln_pre), QuickGELU MLPs, a patch embedding "
            "without bias and CLIP's own pixel normalisation: none of them is in our ViT",
}
CONVERTERS = {"timm": convert_timm_vit, "mocov3": convert_mocov3, "mae": convert_mae, "ours": convert_ours}


def load_foreign(path: str):
    """A foreign checkpoint file through the one checkpoint reader (`dropmae.load_checkpoint`:
    weights only, argparse.Namespace allowed as MoCo/MAE store args; errors name the file)."""
    import dropmae
    return dropmae.load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Launching commands: torchrun for training, python otherwise; output to a log, one live line
# --------------------------------------------------------------------------------------------

def launcher(script: str, dist: dict, train: bool) -> list[str]:
    """The command prefix of a stage. NPROC=1 and NNODES=1 (or a test stage): plain python."""
    if not train or (dist["nproc"] == 1 and dist["nnodes"] == 1):
        return [sys.executable, script]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist['nproc']}",
            f"--nnodes={dist['nnodes']}", f"--node_rank={dist['node_rank']}",
            f"--master_addr={dist['master_addr']}", f"--master_port={dist['master_port']}", script]


@dataclass(frozen=True)
class Progress:
    """How far a command is, read from its output: `pattern` (a regex) matched on every line
    (tqdm's carriage-return updates count as lines); group 1 is the count done (+ `base`), group
    2 the total unless `total` is given. The default follows any tqdm bar ("| 3/8 [")."""
    pattern: str = r"\| *(\d+)/(\d+) \["
    total: int | None = None
    base: int = 0

    def fraction(self, line: str) -> float | None:
        m = re.search(self.pattern, line)
        if not m:
            return None
        total = self.total if self.total is not None else int(m.group(2))
        return min(1.0, max(0.0, (int(m.group(1)) + self.base) / total)) if total else None


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Console:
    """The quiet console: a live line per stage on a terminal (redrawn at most 4 times a second),
    or a start and an end line elsewhere (logs, CI, tests); `verbose` streams stage output."""

    def __init__(self, verbose: bool = False, stream=None):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.live = self.stream.isatty() and not verbose
        self.label, self.tic, self.drawn, self.width = "", 0.0, 0.0, 0
        self.lock = threading.RLock()                    # --jobs: several stages print at once

    def say(self, text: str):
        with self.lock:
            self._clear()
            print(text, file=self.stream, flush=True)

    def begin(self, label: str):
        self.label, self.tic, self.drawn = label, time.time(), 0.0
        if self.live:
            self._draw(f"{label} ...")
        else:
            self.say(f"{label} ...")

    def progress(self, fraction: float):
        now = time.time()
        if not self.live or now - self.drawn < 0.25:
            return
        self.drawn = now
        bar = "#" * int(20 * fraction) + "." * (20 - int(20 * fraction))
        elapsed = now - self.tic
        left = f", {_clock(elapsed * (1 - fraction) / fraction)} left" if fraction > 0.02 else ""
        self._draw(f"{self.label} [{bar}] {100 * fraction:3.0f}%  {_clock(elapsed)} elapsed{left}")

    def end(self, text: str):
        self.say(f"{self.label} {text}")

    def _draw(self, text: str):
        text = text[:_columns() - 1]
        self.stream.write("\r" + text + " " * max(0, self.width - len(text)))
        self.stream.flush()
        self.width = len(text)

    def _clear(self):
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0


class JobConsole:
    """One job's view of the console under `--jobs N` (N stages at once): the same begin /
    progress / end / say as Console. Started and finished stages are printed as lines; on a
    terminal one live line under them shows every running stage's percentage."""

    def __init__(self, board: "JobBoard", job: int):
        self.board, self.job, self.verbose, self.label = board, job, False, ""

    def say(self, text: str):
        self.board.say(text)

    def begin(self, label: str):
        self.label = label
        self.board.update(self.job, label, 0.0, announce=True)

    def progress(self, fraction: float):
        self.board.update(self.job, self.label, fraction)

    def end(self, text: str):
        self.board.finish(self.job, f"{self.label} {text}")


class JobBoard:
    """The running stages of `--jobs N` on one Console: {job: (label, fraction)}."""

    def __init__(self, console: Console):
        self.console, self.running, self.drawn = console, {}, 0.0

    def say(self, text: str):
        with self.console.lock:
            self.console.say(text)
            self._draw()

    def update(self, job: int, label: str, fraction: float, announce: bool = False):
        with self.console.lock:
            self.running[job] = (label, fraction)
            if announce:
                self.say(f"{label} ...")
            elif self.console.live and time.time() - self.drawn >= 0.25:
                self._draw()

    def finish(self, job: int, text: str):
        with self.console.lock:
            self.running.pop(job, None)
            self.say(text)

    def _draw(self):
        if not self.console.live or not self.running:
            return
        self.drawn = time.time()
        parts = [f"{label.split('] ')[0]}] {label.rsplit(' ', 1)[-1]} {100 * f:.0f}%"
                 for label, f in self.running.values()]
        self.console._draw(" | ".join(parts))


def _columns() -> int:
    try:
        columns = os.get_terminal_size().columns
    except OSError:
        return 120
    return columns if columns >= 40 else 120


def run_command(cmd: list[str], log_path: Path, console: Console, progress: Progress | None = None,
                env: dict | None = None) -> int:
    """Run cmd in the repository root; all its output goes to log_path (appended); with
    console.verbose also to the console, else its progress moves the console's live line.
    `env`: variables added to this process's environment. -> the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress()
    pending = b""
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        while chunk := os.read(proc.stdout.fileno(), 65536):
            log.write(chunk)
            log.flush()
            if console.verbose:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                continue
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in reversed(lines):                     # the newest progress wins
                f = progress.fraction(line.decode(errors="replace"))
                if f is not None:
                    console.progress(f)
                    break
        return proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log (tqdm's carriage returns folded), for a failure message."""
    if not path.is_file():
        return ""
    text = path.read_bytes()[-20000:].decode(errors="replace")
    rows = [r.rsplit("\r", 1)[-1] for r in text.splitlines()]
    return "\n".join("    " + r for r in rows[-lines:])


# --------------------------------------------------------------------------------------------
# Result files, events, locks
# --------------------------------------------------------------------------------------------

class StageFailed(Exception):
    """A stage's command failed; the message names the stage, the exit code and the log."""


class StopRequested(Exception):
    """--stop-after reached: leave as if killed between stages."""


def write_json(path: Path, obj: dict):
    """Atomic: a half-written result file would make a rerun skip an unfinished stage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err}); delete it to redo what wrote it") from None


def log_event(out: Path, **event):
    """One line per stage event in <out>/pipeline.jsonl (run, done, skip-done, failed, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pipeline.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **event}) + "\n")


@contextmanager
def locked(path: Path, what: str, say=print):
    """An exclusive fcntl lock on `path` for the block (released when the process dies, too);
    says once that it waits when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {path}: another process is building {what}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def once(done: Path, build: Callable[[], dict], what: str, say=print, lock: bool = True) -> dict:
    """The JSON in `done`, built first by `build()` if missing, under the lock `<done>.lock`: of
    several processes asking at once, one builds and the others wait, then read its result."""
    done = Path(done)
    if done.is_file():
        return read_json(done)
    if not lock:                                         # multi-node: every node runs torchrun
        write_json(done, build())
        return read_json(done)
    with locked(done.with_name(done.name + ".lock"), what, say):
        if not done.is_file():
            write_json(done, build())
        return read_json(done)


# --------------------------------------------------------------------------------------------
# Pre-training hours from our own logs (each epoch once)
# --------------------------------------------------------------------------------------------

def pretrain_hours(run: Path) -> tuple[float, str, int]:
    """(hours, hardware, epochs) of a dropmae.py pre-training run folder.

    Hours: the sum of `epoch_time_s` over the epoch lines of log.jsonl. A resumed run appends to
    the log, so an epoch may appear twice: logged, then its checkpoint not saved (killed while
    saving, or between saves) and the epoch redone after `--resume auto`. The step lines
    ({epoch, step, loss, ...}) logged during an epoch identify it: an epoch line whose epoch
    repeats any (epoch, step) of an earlier epoch line's steps replaces it (the later run's
    time is the one that produced the checkpoint). A mid-epoch stop (`--max-steps`) and its
    resume log different steps of the same epoch, so both parts count. An interrupted epoch
    that logged no epoch line is not counted. Hardware: "<processes> x <GPU name | CPU>".
    """
    kept: list[tuple[set, float]] = []                   # (the epoch's (epoch, step) keys, seconds)
    steps: set = set()
    for n, line in enumerate((run / "log.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{run / 'log.jsonl'}, line {n}: not JSON ({err})") from None
        if "epoch_time_s" in rec:
            keys = steps | ({(rec["epoch"], rec["step"])} if "step" in rec else set())
            if not keys:
                keys = {(rec.get("epoch"), f"line {n}")}    # no step logged: cannot match another
            kept = [(k, s) for k, s in kept if not k & keys]
            kept.append((keys, float(rec["epoch_time_s"])))
            steps = set()
        elif "step" in rec:
            steps.add((rec.get("epoch"), rec["step"]))
    procs = read_json(run / "config.json")["args"].get("world_size", 1)
    gpus = read_json(run / "env.json").get("gpus") or []
    return sum(s for _, s in kept) / 3600.0, f"{procs} x {gpus[0] if gpus else 'CPU'}", len(kept)


# --------------------------------------------------------------------------------------------
# The shared backbone cache
# --------------------------------------------------------------------------------------------

class Backbones:
    """Pre-trained backbones of one scale in one folder, shared by every table and process.

    `clips(console, sources)`: at tiny/smoke scale the synthetic Kinetics-400-layout mp4 clips
    the backbones are pre-trained on (`clips/train`), held-out clips (`clips/val`) and, for each
    other pre-training source asked for (a row's `video`: k600, k700, mit, webvid), its own
    clips in its layout (`clips/<source>/`, SYNTHETIC_SOURCES), each made once; at full scale
    the user's video folders (`--k400 PATH`, `--k600 PATH`, ...). `get(row, seed, console)`: the
    backbone of a pretrain row -> {"checkpoint", "hours", "hardware", "epochs", "folder",
    "recipe"} (the recipe names the preset and folder it was pre-trained on), pre-trained once
    per (recipe, seed).
    """

    def __init__(self, folder, scale: str, videos: dict | None = None, dist: dict | None = None):
        self.folder, self.scale, self.recipe = Path(folder).resolve(), scale, BACKBONE_RECIPE[scale]
        self.videos = {k: v for k, v in (videos or {}).items() if v}
        self.dist = dist or {"nproc": 1, "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1",
                             "master_port": 29511}

    def clips(self, console: Console | None = None, sources=()) -> dict:
        """{video set name: folder}; tiny/smoke: 'k400' (train), 'k400_val' (held out) and every
        one of `sources` other than those (its synthetic stand-in)."""
        if self.scale == "full":
            return self.videos
        console = console or Console()
        found = self._k400_clips(console)
        for source in dict.fromkeys(sources):
            if source not in found:
                found[source] = self._source_clips(source, console)
        return found

    def _k400_clips(self, console: Console) -> dict:
        c = self.recipe["clips"]

        def build():
            # MPEG-4 Part 2 clips: the same bytes on every run (libx264 in our PyAV build is not
            # deterministic, and the tiny pre-training is sensitive to the pixels).
            log = self.folder / "clips" / "make-clips.log"
            for name, (classes, per_class), seed in (("train", c["train"], 0), ("val", c["val"], 1)):
                cmd = [sys.executable, "data.py", "make-clips", "--out", str(self.folder / "clips" / name),
                       "--classes", str(classes), "--per-class", str(per_class), "--seed", str(seed),
                       "--codec", "mpeg4"]
                if run_command(cmd, log, console) != 0:
                    raise StageFailed(f"synthetic clips failed: {' '.join(cmd)}; log {log}\n{tail(log)}")
            return {"recipe": c, "code": code_version(), "k400": str(self.folder / "clips" / "train"),
                    "k400_val": str(self.folder / "clips" / "val")}
        done = once(self.folder / "clips" / "clips.json", build, "the synthetic clips", console.say)
        _warn_if_other_code(done, self.folder / "clips", console.say)
        if done["recipe"] != json.loads(json.dumps(c)):
            raise SystemExit(f"{self.folder / 'clips'} holds clips of another recipe ({done['recipe']}, "
                             f"now {c}): delete the folder or pass another --backbones")
        return {"k400": done["k400"], "k400_val": done["k400_val"]}

    def _source_clips(self, source: str, console: Console) -> str:
        """The synthetic clips of one more pre-training source -> its root, `clips/<source>`."""
        known = SYNTHETIC_SOURCES[self.scale]
        if source not in known:
            raise SystemExit(f"no synthetic {source!r} videos at {self.scale} scale: the synthetic sources "
                             f"are k400 and {sorted(known)}")
        classes, per_class, seed = known[source]
        recipe = {"classes": classes, "per_class": per_class, "seed": seed}
        root = self.folder / "clips" / source
        folder = root / "training" if source == "mit" else root       # MiT: <root>/training/<class>/

        def build():
            log = self.folder / "clips" / f"make-clips-{source}.log"
            cmd = [sys.executable, "data.py", "make-clips", "--out", str(folder), "--classes", str(classes),
                   "--per-class", str(per_class), "--seed", str(seed), "--codec", "mpeg4"]
            if run_command(cmd, log, console) != 0:
                raise StageFailed(f"synthetic {source} clips failed: {' '.join(cmd)}; log {log}\n{tail(log)}")
            return {"recipe": recipe, "code": code_version(), "root": str(root)}
        done = once(self.folder / "clips" / f"{source}.json", build, f"the synthetic {source} clips", console.say)
        _warn_if_other_code(done, root, console.say)
        if done["recipe"] != recipe:
            raise SystemExit(f"{root} holds {source} clips of another recipe ({done['recipe']}, now {recipe}): "
                             "delete it or pass another --backbones")
        return done["root"]

    def command(self, row: Row, seed: int, run: Path) -> tuple[list[str], dict]:
        """The dropmae.py pretrain command of a row and seed, and its recipe (what identifies it)."""
        r = self.recipe
        videos = self.clips(sources=[row.video]) if self.scale != "full" else self.videos
        if row.video not in videos:
            raise SystemExit(f"row {row.id} pre-trains on {row.video!r}; at {self.scale} scale the backbones "
                             f"have {sorted(videos)}" + (" (the synthetic clips)" if self.scale != "full" else ""))
        path = videos[row.video]
        recipe = {"scale": self.scale, "model": r["model"], "data": row.video, "data_path": str(path),
                  "P": row.P, "image_mae": row.image_mae, "seed": seed, "extra": list(row.pretrain_args)}
        args = ["pretrain", "--model", r["model"], "--data", row.video, "--data-path", str(path),
                "--output", str(run), "--resume", "auto", "--P", str(row.P), "--batch-size", str(r["batch"]),
                "--num-workers", str(r["workers"]), "--seed", str(seed)]
        if row.image_mae:
            args.append("--image-mae")
        if self.scale == "full":
            world = self.dist["nproc"] * self.dist["nnodes"]
            accum = max(1, r["paper_gpus"] // world)              # effective batch 64 x 64 = 4096
            args += ["--epochs", str(row.epochs), "--accum-iter", str(accum)]
            recipe.update(epochs=row.epochs, effective_batch=r["batch"] * accum * world)
        else:
            epochs = row.epochs or r["epochs"]
            args += ["--epochs", str(epochs), "--warmup-epochs", str(r["warmup"]), "--lr", str(r["lr"]),
                     "--save-every", str(epochs), "--log-every", str(r["log_every"])]
            recipe.update(epochs=epochs, warmup=r["warmup"], lr=r["lr"], batch=r["batch"])
        return launcher("dropmae.py", self.dist, train=True) + args + list(row.pretrain_args), recipe

    def get(self, row: Row, seed: int, console: Console | None = None) -> dict:
        console = console or Console()
        run = self.folder / f"{row.backbone_key()}_seed{seed}"
        cmd, recipe = self.command(row, seed, run)
        stored = run / "recipe.json"

        def check():
            if stored.is_file() and read_json(stored) != json.loads(json.dumps(recipe)):
                raise SystemExit(f"{run} was pre-trained with another recipe ({read_json(stored)}; now "
                                 f"{recipe}): delete it or pass another --backbones folder")

        def build():
            check()
            write_json(stored, recipe)
            env = None
            if self.recipe["workers"] and self.scale != "full" and "OMP_NUM_THREADS" not in os.environ:
                env = {"OMP_NUM_THREADS": "1"}        # 2 cores: one for the model, one for the loader
            log = run / "pretrain.log"
            epochs = recipe["epochs"]
            code = run_command(cmd, log, console, Progress(r"^epoch (\d+): loss", total=epochs, base=1), env)
            if code != 0:
                raise StageFailed(f"pre-training {run.name}: exit code {code}; full output: {log}\n{tail(log)}")
            import dropmae
            ckpt = dropmae.latest_checkpoint(run)
            if ckpt is None:
                raise StageFailed(f"{run}: pre-training finished but wrote no checkpoint-*.pth")
            hours, hardware, n_epochs = pretrain_hours(run)
            return {"checkpoint": str(ckpt), "hours": hours, "hardware": hardware, "epochs": n_epochs,
                    "folder": str(run), "recipe": recipe, "code": code_version()}
        check()
        multi_node = self.dist["nnodes"] > 1
        done = once(run / "backbone.json", build, f"the backbone {run.name}", console.say, lock=not multi_node)
        _warn_if_other_code(done, run, console.say)
        return done


def ensure_backbones(folder, scale: str = "smoke", seeds=(0,), rows=TINY_ROWS, verbose=False) -> dict:
    """Pre-train (or find) the backbones of `rows` for `seeds` in `folder`: {(row id, seed): info}.
    For tests and for tables that want them all up front; tables' `pretrain` stages call
    Backbones.get themselves."""
    cache, console = Backbones(folder, scale), Console(verbose)
    found = {}
    for seed in seeds:
        for row in (r for r in rows if r.source == "pretrain"):
            console.begin(f"[backbones {scale}] {row.backbone_key()} seed {seed}")
            found[row.id, seed] = cache.get(row, seed, console)
            console.end(f"done: {found[row.id, seed]['checkpoint']}")
    return found


# --------------------------------------------------------------------------------------------
# The collapse check: mean pairwise cosine of an encoder's output tokens
# --------------------------------------------------------------------------------------------

def heldout_frames(path, size: int, count: int = COLLAPSE_FRAMES):
    """Up to `count` frames (both frames of each pair) of the held-out clips: (N, 3, size, size)."""
    import torch

    from data import FramePairDataset
    ds = FramePairDataset("k400", str(path), input_size=size, seed=0)
    frames = []
    for i in range(len(ds)):
        x, z, _ = ds[i]
        frames += [x, z]
        if len(frames) >= count:
            break
    return torch.stack(frames[:count])


def token_cosine(encoder, frames) -> float:
    """Mean over frames of the mean pairwise cosine similarity (i != j) between the encoder's
    output tokens of one frame. encoder: ViTEncoder; frames (N, 3, S, S) -> float in [-1, 1]."""
    import torch
    with torch.no_grad():
        t = torch.nn.functional.normalize(encoder.eval()(frames, frames=("x",)), dim=-1)   # (N, L, D)
        sim = t @ t.transpose(1, 2)                                                    # (N, L, L)
        L = sim.shape[-1]
        return ((sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (L * (L - 1))).mean().item()


def stage_collapse(ctx, row: Row) -> dict:
    """Token cosine of the row's backbone (random init for the no-pre-training row)."""
    import torch

    import dropmae
    cfg = dropmae.get_config(ctx.model)
    torch.manual_seed(ctx.seed)
    enc = dropmae.ViTEncoder(cfg)
    ckpt = ctx.backbone(row)
    if ckpt is not None:
        dropmae.load_pretrained(str(ckpt), enc, verbose=False)
    frames = heldout_frames(ctx.table_run.heldout, cfg.img_size)
    return {"cosine": token_cosine(enc, frames), "frames": len(frames),
            "init": "random" if ckpt is None else str(ckpt)}


# --------------------------------------------------------------------------------------------
# The pipeline's own first stages of a row
# --------------------------------------------------------------------------------------------

def stage_pretrain(ctx, row: Row) -> dict:
    """The row's backbone from the shared cache (pre-trained there first if missing)."""
    return ctx.table_run.backbones.get(row, ctx.seed, ctx.console)


def stage_convert(ctx, row: Row) -> dict:
    """Someone else's checkpoint -> <row>/backbone.pth in the MAE layout, checked by loading it;
    a pretrain row given --ckpt: that file as it is, checked by loading it."""
    import dropmae
    rule = row.weights or "ours"
    src = ctx.table_run.ckpts[row.id]
    converted = CONVERTERS[rule](load_foreign(src), src)          # Unsupported / ValueError: skipped
    model = dropmae.ViTEncoder(dropmae.get_config(ctx.model))
    report = dropmae.load_pretrained(converted, model, verbose=False)   # raises on any key/shape mismatch
    if rule == "ours":
        return {"checkpoint": str(Path(src).resolve()), "source": str(src), "rule": rule, "kind": report["kind"]}
    path = ctx.folder(row, "backbone.pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    dropmae.save_checkpoint(path, converted)
    return {"checkpoint": ctx.rel(path), "source": str(src), "rule": rule,
            "loaded": report["loaded"], "dropped": report["dropped"], "missing": report["missing"]}


PRETRAIN = Stage("pretrain", stage_pretrain, every_node=True)
CONVERT = Stage("convert", stage_convert, wait=True)
COLLAPSE = Stage("collapse", stage_collapse)


# --------------------------------------------------------------------------------------------
# Running a table: one Run per command, one SeedRun per seed
# --------------------------------------------------------------------------------------------

def _summary(result: dict) -> str:
    """The numbers of a result dict, for the stage's end line."""
    parts = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "  ".join(parts[:6])


_INLINE = threading.Lock()          # SeedRun.run_inline: one in-process command at a time


class SeedRun:
    """One seed of a table run: its folder `out` (<run>/seed<s>), `seed`, `recipe` (the table's
    recipe of this scale), `data` ({name: path}), and stage execution with skip-when-done.
    What a stage function uses: folder(), rel(), result(), backbone(), launcher(), run()."""

    def __init__(self, run: "TableRun", seed: int | None):
        self.table_run, self.seed = run, seed
        self.out = run.out if seed is None else run.out / f"seed{seed}"
        self.scale, self.recipe, self.dist = run.scale, run.recipe, run.dist
        self.console = run.console
        self.current: tuple[Row, str] | None = None

    @property
    def data(self) -> dict:
        return self.table_run.data

    @property
    def model(self) -> str:
        """The model preset of this scale's backbones (tiny, base)."""
        return self.table_run.backbone_recipe["model"]

    def folder(self, row: Row, *parts) -> Path:
        return self.out.joinpath(row.id, *parts)

    def rel(self, path) -> str:
        return os.path.relpath(path, self.out)

    def result_path(self, row: Row, stage: str) -> Path:
        return self.out / row.id / f"{stage}.json"

    def result(self, row: Row, stage: str) -> dict | None:
        path = self.result_path(row, stage)
        return read_json(path)["result"] if path.is_file() else None

    def backbone(self, row: Row) -> Path | None:
        """The checkpoint a row's downstream stages start from; None: random init (and a row
        given a fine-tuned model, which has no backbone stage)."""
        first = {"pretrain": "pretrain", "ckpt": "convert"}.get(row.source)
        if row.id in self.table_run.ckpts:
            first = "convert"
        if first is None or self.released(row):
            return None
        res = self.result(row, first)
        if res is None:
            raise StageFailed(f"{row.id}: no {first} result yet in {self.out}")
        return self.out / res["checkpoint"]                 # absolute paths stay absolute

    def released(self, row: Row) -> bool:
        """Whether the row was given a fine-tuned model (`--finetuned ROW=PATH`)."""
        return row.id in self.table_run.finetuned

    def trained(self, row: Row, stage: str) -> Path:
        """The fine-tuned model a test stage reads: the `--finetuned` file of the row, else the
        checkpoint in the result of its fine-tuning stage `stage`."""
        if self.released(row):
            return Path(self.table_run.finetuned[row.id])
        res = self.result(row, stage)
        if res is None:
            raise StageFailed(f"{row.id}: no {stage} result yet in {self.out}")
        return self.out / res["checkpoint"]

    def launcher(self, script: str, train: bool) -> list[str]:
        return launcher(script, self.dist, train)

    def run(self, cmd: list[str], progress: Progress | None = None, env: dict | None = None,
            log: Path | None = None):
        """Run a stage's command; its output goes to <row>/logs/<stage>.log; raise StageFailed."""
        row, stage = self.current
        log = log or self.folder(row, "logs", f"{stage}.log")
        code = run_command(cmd, log, self.console, progress, {**self.table_run.job_env(), **(env or {})})
        if code != 0:
            raise StageFailed(f"{row.id}/{stage}: exit code {code}; full output: {log}\n{tail(log)}")

    def run_inline(self, main: Callable, argv: list[str], log: Path | None = None):
        """Run a script's `main(argv)` in this process, its printed output to the stage's log: for
        the data-writing commands of the synthetic data stage, which then cost no interpreter and
        torch start-up of their own (the same command line as `python <script> <argv>`)."""
        import contextlib
        row, stage = self.current
        log = log or self.folder(row, "logs", f"{stage}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        # one at a time: the redirection is of the whole process (the console keeps its stream)
        with _INLINE, open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            print(f"$ {main.__module__}.main({argv})", flush=True)
            try:
                main(argv)
            except SystemExit as err:
                if err.code not in (None, 0):
                    raise StageFailed(f"{row.id}/{stage}: {main.__module__} {' '.join(argv)} exited with "
                                      f"{err.code}; full output: {log}") from None

    def stages(self, row: Row) -> list[Stage]:
        """The pipeline's first stages of the row, then the table's that the row runs; a row given
        a fine-tuned model runs only the table's test stages (none of `finetune`)."""
        mine = [s for s in self.table_run.table.stages if s.rows is None or s.rows(row)]
        if self.released(row):
            return [s for s in mine if not s.finetune]
        first = []
        if row.id in self.table_run.ckpts or row.source == "ckpt":
            first = [CONVERT]
        elif row.source == "pretrain":
            first = [PRETRAIN]
        if self.table_run.heldout and row.source != "baseline":
            first.append(COLLAPSE)
        return first + mine

    def stage(self, row: Row, stage: Stage, label: str):
        """Run one stage unless its result file exists; write the result file when it ends."""
        path = self.result_path(row, stage.name)
        label = f"{label} {stage.name}"
        if self.table_run.stopping.is_set():             # --jobs: another job hit --stop-after
            raise StopRequested(self.table_run.stop_reason)
        if path.is_file():
            self.console.say(f"{label}: done before, skipped")
            log_event(self.table_run.out, seed=self.seed, row=row.id, stage=stage.name, event="skip-done")
        elif self.dist["node_rank"] != 0 and not stage.every_node:
            self.console.say(f"{label}: node 0 runs it" + (f"; waiting for {path}" if stage.wait else ""))
            while stage.wait and not path.is_file():
                time.sleep(10)
        else:
            self.console.begin(label)
            log_event(self.table_run.out, seed=self.seed, row=row.id, stage=stage.name, event="run")
            tic = time.time()
            self.current = (row, stage.name)
            result = stage.fn(self, row)
            seconds = time.time() - tic
            write_json(path, {"row": row.id, "stage": stage.name, "seed": self.seed, "seconds": seconds,
                              "scale": self.scale, "result": result})
            log_event(self.table_run.out, seed=self.seed, row=row.id, stage=stage.name, event="done", seconds=seconds)
            self.console.end(f"done in {_clock(seconds)}  {_summary(result)}".rstrip())
        stop = self.table_run.stop_after
        if stop in (stage.name, f"{row.id}/{stage.name}", f"seed{self.seed}/{row.id}/{stage.name}"):
            self.table_run.stop_reason = f"--stop-after {stop}: stopped after seed {self.seed} {row.id}/{stage.name}"
            self.table_run.stopping.set()
            raise StopRequested(self.table_run.stop_reason)

    def skip_reason(self, row: Row) -> str | None:
        """Why a row cannot run here (missing data or weights, unsupported conversion), or None."""
        ckpts, run = self.table_run.ckpts, self.table_run
        if run.smoke_only is not None and row.id not in run.smoke_only:
            return (f"not run at smoke scale (the smoke run runs {', '.join(run.smoke_only)}, the same "
                    "stages; --rows to choose)")
        if self.released(row):
            return None
        if row.source == "ckpt" or row.id in ckpts:
            if row.weights in UNSUPPORTED:
                return f"conversion unsupported: {UNSUPPORTED[row.weights]}"
            if row.id not in ckpts:
                return f"needs --ckpt {row.id}=PATH (weights of {row.method} {row.data})"
            if not Path(ckpts[row.id]).is_file():
                return f"--ckpt {row.id}={ckpts[row.id]}: no such file"
        elif row.source == "pretrain" and self.scale == "full" and not self.table_run.backbones.videos.get(row.video):
            return f"needs --{row.video} (the {row.video.upper()} training videos)"
        return None

    def run_row(self, row: Row, index: int, total: int) -> dict:
        """All stages of a row -> {'status': 'done' | 'skipped' | 'failed', 'reason': ...}."""
        seeds = len(self.table_run.seeds)
        label = f"[{f'seed {self.seed} ' if seeds > 1 else ''}row {index}/{total} {row.title}]"
        reason = self.skip_reason(row)
        if reason:
            self.console.say(f"{label} skipped: {reason}")
            log_event(self.table_run.out, seed=self.seed, row=row.id, event="skip-row", reason=reason)
            return {"status": "skipped", "reason": reason}
        for stage in self.stages(row):
            try:
                self.stage(row, stage, label)
            except (Unsupported, ValueError, KeyError) as err:
                if stage is not CONVERT:
                    raise
                log_event(self.table_run.out, seed=self.seed, row=row.id, stage=stage.name, event="skip-row",
                          reason=str(err))
                self.console.end(f"skipped: {err}")
                return {"status": "skipped", "reason": f"conversion: {err}"}
            except StageFailed as err:
                log_event(self.table_run.out, seed=self.seed, row=row.id, stage=stage.name, event="failed",
                          reason=str(err).split("\n")[0])
                self.console.end(f"FAILED: {err}")
                return {"status": "failed", "reason": str(err).split("\n")[0]}
        return {"status": "done", "reason": ""}


class TableRun:
    """One invocation of a table: scale, run folder, seeds, data, backbones, launch settings."""

    def __init__(self, table: Table, scale: str, out, seeds, videos=None, datasets=None, ckpts=None,
                 dist=None, backbones=None, verbose=False, stop_after=None, stream=None, finetuned=None,
                 smoke_only=None, jobs=1):
        """`finetuned`: {row id: fine-tuned model file} (--finetuned); `smoke_only`: the row ids
        that run (the others are skipped with that reason; None: all); `jobs`: rows run at once
        (--jobs), each stage's commands then with cores / jobs threads."""
        self.table, self.scale, self.out = table, scale, Path(out).resolve()
        self.recipe = table.recipes[scale]
        self.backbone_recipe = BACKBONE_RECIPE[scale]
        self.seeds, self.ckpts, self.stop_after = list(seeds), dict(ckpts or {}), stop_after
        self.finetuned = dict(finetuned or {})
        self.smoke_only = tuple(smoke_only) if smoke_only is not None else None
        self.dist = dist or {"nproc": 1, "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1",
                             "master_port": 29511}
        self.console = Console(verbose, stream)
        self.backbones = Backbones(backbones or self.out.parent / f"backbones_{scale}", scale, videos, self.dist)
        self.data = {k: v for k, v in (datasets or {}).items() if v}
        self.heldout = None
        self.jobs = 1 if verbose else max(1, int(jobs))
        self.active = 0                                  # --jobs: rows running now
        self.stopping, self.stop_reason = threading.Event(), ""        # --jobs: why every job stops

    def job_env(self) -> dict:
        """The thread settings of a stage's command under --jobs: the cores shared by the rows
        running now (so the last row left gets them all); {} with one job or when the
        environment sets OMP_NUM_THREADS."""
        if self.jobs == 1 or "OMP_NUM_THREADS" in os.environ:
            return {}
        threads = str(max(1, (os.cpu_count() or 1) // max(1, self.active)))
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def seed_run(self, seed: int) -> SeedRun:
        return SeedRun(self, seed)

    def prepare(self, rows: list[Row]):
        """The config check, the banner, the held-out and pre-training clips (tiny/smoke, when a
        row pre-trains or the collapse check is on) and the table's synthetic data."""
        settings = {"scale": self.scale, "recipe": self.recipe, "backbones": self.backbone_recipe}
        path = self.out / f"{self.table.name}_config.json"
        if path.is_file():
            before = read_json(path)
            if before.get("scale") != self.scale:
                raise SystemExit(f"{self.out} holds a {before.get('scale')}-scale run; this is {self.scale} "
                                 "scale: use another --out")
            if {k: before.get(k) for k in settings} != json.loads(json.dumps(settings)):
                raise SystemExit(f"{self.out} holds a run with other settings ({path}): use another --out "
                                 "or delete it")
        else:
            write_json(path, {**settings, "argv": sys.argv})
        banner = BANNERS.get(self.scale)
        if banner:
            self.console.say(f"!!! {banner} !!!  (run folder {self.out})")
        running = [r for r in rows if r.id not in self.finetuned
                   and (self.smoke_only is None or r.id in self.smoke_only)]       # rows with a backbone stage
        collapse = self.table.collapse_check and bool(running)
        if self.scale != "full":
            sources = [r.video for r in running if r.source == "pretrain" and r.id not in self.ckpts]
            if collapse or sources:
                clips = self.backbones.clips(self.console, sources)
                self.heldout = clips["k400_val"] if collapse else None
                self.data.update(clips)
            if self.table.synthetic:
                self.data.update(self.synthetic_data())
        elif collapse and self.table.heldout and self.data.get(self.table.heldout):
            self.heldout = self.data[self.table.heldout]

    def synthetic_data(self) -> dict:
        """The table's tiny / smoke data stage ({name: path}): in <out>/data, or with
        `share_data` in the backbone cache (made once under a lock) with <out>/data linking to it."""
        ctx, row = SeedRun(self, None), Row("data", "synthetic data")
        stage = Stage("data", self.table.synthetic)
        if not self.table.share_data:
            ctx.stage(row, stage, "[synthetic data]")
            return ctx.result(row, "data")["paths"]
        import hashlib
        import inspect
        fn = self.table.synthetic
        module = Path(inspect.getfile(fn)).stem              # also when the table runs as __main__
        digest = hashlib.sha256(json.dumps(self.recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]
        ctx.out = self.backbones.folder / "data" / f"{module}.{fn.__name__}_{self.scale}_{digest}"
        link = self.out / "data"
        if not link.exists() and not link.is_symlink():
            ctx.folder(row).mkdir(parents=True, exist_ok=True)
            link.symlink_to(ctx.folder(row), target_is_directory=True)
        with locked(ctx.out / "data.lock", f"the synthetic data {ctx.out.name}", self.console.say):
            ctx.stage(row, stage, f"[synthetic data, shared: {ctx.out}]")
        return ctx.result(row, "data")["paths"]

    def execute(self, rows: list[Row]) -> dict:
        """Every seed, every row -> {seed: {row id: status}}; raises StopRequested.

        With `jobs` > 1 the (seed, row) pairs run `jobs` at a time, each in a thread that waits
        on its stages' commands (a row's stages stay in order; rows are independent, and a
        backbone two rows share is built once under its lock)."""
        if self.jobs == 1:
            status = {}
            for seed in self.seeds:
                ctx = self.seed_run(seed)
                status[seed] = {row.id: ctx.run_row(row, k, len(rows)) for k, row in enumerate(rows, 1)}
            return status
        from concurrent.futures import ThreadPoolExecutor
        board = JobBoard(self.console)
        free = list(range(self.jobs))                        # a console slot per running job
        slots = threading.Lock()

        def job(seed: int, k: int, row: Row) -> dict:
            with slots:
                slot = free.pop()
                self.active += 1
            ctx = self.seed_run(seed)
            ctx.console = JobConsole(board, slot)
            try:
                return ctx.run_row(row, k, len(rows))
            finally:
                with slots:
                    free.append(slot)
                    self.active -= 1

        with ThreadPoolExecutor(self.jobs) as pool:
            futures = {(seed, row.id): pool.submit(job, seed, k, row)
                       for seed in self.seeds for k, row in enumerate(rows, 1)}
            errors = []
            for f in futures.values():
                try:
                    f.result()
                except BaseException as err:                 # noqa: BLE001 - re-raised below
                    self.stop_reason = self.stop_reason or f"stopped: {err}"
                    self.stopping.set()                      # the other jobs stop at their next stage
                    errors.append(err)
        stops = [e for e in errors if isinstance(e, StopRequested)]
        others = [e for e in errors if not isinstance(e, StopRequested)]
        if others:
            raise others[0]
        if stops:
            raise StopRequested(self.stop_reason)
        return {seed: {rid: futures[(seed, rid)].result() for s, rid in futures if s == seed} for seed in self.seeds}


# --------------------------------------------------------------------------------------------
# The table: records over seeds, text / Markdown / CSV
# --------------------------------------------------------------------------------------------

def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the numbers given; None where none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return mean, std


def table_records(run: TableRun, rows: list[Row], status: dict) -> list[dict]:
    """One dict per row: labels, status over seeds, and per column the paper's number and ours
    (the mean over seeds, its std, the values of every seed)."""
    recs = []
    seeds = list(status)
    for row in rows:
        paper = run.table.paper.get(row.paper_key, {})
        states = [status[s][row.id] for s in seeds]
        worst = next((st for kind in ("failed", "skipped") for st in states if st["status"] == kind), states[0])
        released = run.finetuned.get(row.id, "")
        epochs = row.epochs or (run.backbone_recipe.get("epochs") if row.source == "pretrain" and not released
                                else None)
        rec = {"row": row.id, "method": row.method, "data": row.data, "epochs": epochs,
               "paper_row": paper.get("label", row.paper_key) if row.paper_key != row.id else "",
               "scale": SCALE_LABELS[run.scale], "seeds": len(seeds),
               "status": worst["status"], "reason": worst["reason"], "values": {}, "hardware": "",
               "finetuned": released}
        ctxs = [run.seed_run(s) for s in seeds]
        for col in run.table.columns:
            vals = [(c.result(row, col.stage) or {}).get(col.key or col.id) for c in ctxs]
            mean, std = _mean_std(vals)
            rec[f"{col.id}_paper"], rec[f"{col.id}_ours"], rec[f"{col.id}_std"] = paper.get(col.id), mean, std
            rec["values"][col.id] = vals
        pre = [c.result(row, "pretrain") for c in ctxs]
        rec["hardware"] = ", ".join(sorted({p["hardware"] for p in pre if p}))
        cos = [(c.result(row, "collapse") or {}).get("cosine") for c in ctxs]
        rec["token_cosine"], rec["token_cosine_std"] = _mean_std(cos)
        rec["values"]["token_cosine"] = cos
        recs.append(rec)
    return recs


def _num(v, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _ours(rec: dict, col: Column) -> str:
    mean, std = rec[f"{col.id}_ours"], rec[f"{col.id}_std"]
    return _num(mean, col.fmt) + (f" ± {format(std, col.fmt)}" if std is not None else "")


def _cells(table: Table, rec: dict) -> list[str]:
    cells = [rec["method"], rec["data"], str(rec["epochs"] or "-"), rec["paper_row"] or "same"]
    cells += [f"{_num(rec[c.id + '_paper'], c.fmt)} / {_ours(rec, c)}" for c in table.columns]
    return cells + [rec["status"] if rec["status"] == "done" else f"{rec['status']}: {rec['reason']}"]


def _header(table: Table) -> list[str]:
    return ["Method", "Data", "Ep", "Paper row"] + [c.header or c.id for c in table.columns] + ["status"]


def _subtitle(recs: list[dict]) -> str:
    n = recs[0]["seeds"] if recs else 1
    return "cells: paper / ours" + (f" (mean ± std over {n} seeds)" if n > 1 else "")


def collapse_lines(recs: list[dict]) -> list[str]:
    """The collapse check under the table (rows that measured it)."""
    measured = [r for r in recs if r["token_cosine"] is not None]
    if not measured:
        return []
    out = [f"Backbone collapse check: mean pairwise cosine of the encoder's output tokens of one image, "
           f"held-out synthetic frames (goal below {COLLAPSE_GOAL}; near 1 = collapsed)"]
    for r in measured:
        std = f" ± {r['token_cosine_std']:.3f}" if r["token_cosine_std"] is not None else ""
        name = "random init (no pre-training)" if r["row"] == "none" else r["method"]
        flag = "" if r["row"] == "none" or r["token_cosine"] < COLLAPSE_GOAL else "  above the goal"
        out.append(f"  {name:32s} {r['token_cosine']:.3f}{std}{flag}")
    return out


def finetuned_lines(recs: list[dict]) -> list[str]:
    """Where the rows given a fine-tuned model (--finetuned) came from."""
    return [f"{r['method']}{'' if r['data'] == '-' else ' ' + r['data']}: the given fine-tuned model "
            f"{r['finetuned']} (--finetuned {r['row']}=...); "
            "its pre-training and fine-tuning did not run here" for r in recs if r.get("finetuned")]


def format_text(table: Table, recs: list[dict], scale: str) -> str:
    rows = [_header(table)] + [_cells(table, r) for r in recs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    title = f"{table.title}  ({_subtitle(recs)})"
    banner = BANNERS.get(scale, "")
    out = [title]
    if banner:
        bar = "!" * (len(banner) + 8)
        out = [bar, f"!!! {banner} !!!", bar, title + f"  [{banner.lower()}]"]
    hw = sorted({r["hardware"] for r in recs if r["hardware"]})
    notes = list(table.notes) + ([f"our pre-training ran on {', '.join(hw)}"] if hw else []) + finetuned_lines(recs)
    return "\n".join(out + lines + notes + collapse_lines(recs) + ([f"!!! {banner} !!!"] if banner else [])) + "\n"


def format_markdown(table: Table, recs: list[dict], scale: str) -> str:
    banner = BANNERS.get(scale, "")
    out = [f"**{banner}**", ""] if banner else []
    out += [f"{table.title} ({_subtitle(recs)})", "", "| " + " | ".join(_header(table)) + " |",
            "|" + "---|" * len(_header(table))]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(table, r)) + " |" for r in recs]
    out += ["", *(f"- {line}" for line in finetuned_lines(recs))] if finetuned_lines(recs) else []
    col = collapse_lines(recs)
    if col:
        out += ["", col[0], ""] + [f"- {line.strip()}" for line in col[1:]]
    return "\n".join(out) + "\n"


def format_csv(table: Table, recs: list[dict], scale: str) -> str:
    buf = io.StringIO()
    banner = BANNERS.get(scale, "")
    if banner:
        buf.write(f"# {banner}\n")
    flat = [{k: v for k, v in r.items() if k != "values"} for r in recs]
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def write_table(run: TableRun, recs: list[dict]) -> str:
    t, name = run.table, run.table.name
    text = format_text(t, recs, run.scale)
    (run.out / f"{name}.txt").write_text(text)
    (run.out / f"{name}.md").write_text(format_markdown(t, recs, run.scale))
    (run.out / f"{name}.csv").write_text(format_csv(t, recs, run.scale))
    if any(r["token_cosine"] is not None for r in recs):
        write_json(run.out / "collapse.json", {
            "goal": COLLAPSE_GOAL, "scale": run.scale, "seeds": list(run.seeds),
            "rows": {r["row"]: {"method": r["method"], "mean": r["token_cosine"], "std": r["token_cosine_std"],
                                "per_seed": r["values"]["token_cosine"]}
                     for r in recs if r["token_cosine"] is not None}})      # as collapse_lines
    return text


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_ckpts(items: list[str], rows: list[Row]) -> dict:
    allowed = sorted(r.id for r in rows if r.source in ("ckpt", "pretrain"))
    ckpts = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--ckpt {item}: expected ROW=PATH with ROW one of {allowed}")
        row, path = item.split("=", 1)
        if row not in allowed:
            raise SystemExit(f"--ckpt {item}: {row!r} is not a row that takes weights; choose from {allowed}")
        ckpts[row] = path
    return ckpts


def parse_finetuned(items: list[str], rows: list[Row], ckpts: dict) -> dict:
    """`--finetuned ROW=PATH` items -> {row id: absolute path}; SystemExit naming the item when the
    row is not one of the table's, the file does not exist, or the row also has --ckpt."""
    ids = sorted(r.id for r in rows)
    found = {}
    for item in items:
        row, sep, path = item.partition("=")
        if not sep or row not in ids:
            raise SystemExit(f"--finetuned {item}: expected ROW=PATH with ROW one of {ids}")
        if not Path(path).is_file():
            raise SystemExit(f"--finetuned {item}: no such file")
        if row in ckpts:
            raise SystemExit(f"--finetuned {item}: row {row} also has --ckpt; a fine-tuned model needs no backbone")
        found[row] = str(Path(path).resolve())
    return found


def build_parser(table: Table) -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(description=table.description or table.title,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (none given: tiny synthetic scale)")
    for name, help in table.datasets.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, help=help)
    g.add_argument("--ckpt", action="append", default=[], metavar="ROW=PATH",
                   help="weights for a row: other people's pre-training (converted by the row's rule) or "
                        "a DropMAE checkpoint for one of our pre-training rows (no pre-training then)")
    if table.finetuned:
        g.add_argument("--finetuned", action="append", default=[], metavar="ROW=PATH",
                       help=f"{table.finetuned} for a row: only its test stages run (no pre-training, "
                            "conversion or fine-tuning); the table says where it came from")
    g = p.add_argument_group("what to run")
    g.add_argument("--smoke", action="store_true", default=env.get("SMOKE", "") not in ("", "0"),
                   help="smoke scale (about 2 min; also SMOKE=1 in the environment)")
    g.add_argument("--rows", nargs="+", help="row ids to run (default: all of the scale" + (
        f"; --smoke runs {', '.join(table.smoke_rows)} and prints the others as skipped)"
        if table.smoke_rows is not None else ")"))
    g.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run every row with seeds SEED .. SEED+N-1 (own folders <out>/seed<s>); the table "
                        "gives mean ± std")
    g.add_argument("--seed", type=int, default=0, help="the first seed")
    g.add_argument("--out", help=f"run folder (default runs/{table.name}, runs/{table.name}_tiny, "
                                 f"runs/{table.name}_smoke)")
    g.add_argument("--backbones", metavar="DIR",
                   help="the shared backbone cache (default <out>/../backbones_<scale>)")
    g.add_argument("--stop-after", metavar="[[seedS/]ROW/]STAGE",
                   help="stop after this stage, as if killed (tests the resume)")
    g.add_argument("--verbose", action="store_true", help="stream every stage's output to the console")
    g.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="rows run at once, each stage on its share of the cores (default: 2 at tiny scale on "
                        "2 or more cores, which is faster than one row on 2 threads; else 1; JOBS=N)")
    g = p.add_argument_group("launch (torchrun for the training stages when NPROC * NNODES > 1)")
    g.add_argument("--nproc", type=int, default=int(env.get("NPROC", 1)), help="processes per node (NPROC)")
    g.add_argument("--nnodes", type=int, default=int(env.get("NNODES", 1)), help="nodes (NNODES)")
    g.add_argument("--node-rank", type=int, default=int(env.get("NODE_RANK", 0)), help="NODE_RANK")
    g.add_argument("--master-addr", default=env.get("MASTER_ADDR", "127.0.0.1"), help="MASTER_ADDR")
    g.add_argument("--master-port", type=int, default=int(env.get("MASTER_PORT", 29511)), help="MASTER_PORT")
    return p


def make_run(table: Table, args: argparse.Namespace, stream=None) -> tuple[TableRun, list[Row]]:
    """The Run and the chosen rows of parsed arguments (errors are SystemExit with a reason)."""
    given = {k: getattr(args, k) for k in table.datasets}
    full = any(given.values())
    scale = "full" if full else ("smoke" if args.smoke else "tiny")
    if full and args.smoke:
        raise SystemExit("--smoke is the synthetic scale: give no dataset paths with it")
    if full:
        lacking = [f"--{k.replace('_', '-')}" for k in table.needs_full if not given[k]]
        if lacking:
            raise SystemExit(f"full scale needs: missing {' '.join(lacking)}")
        for k, v in given.items():
            if v and not Path(v).is_dir():
                raise SystemExit(f"--{k.replace('_', '-')} {v}: no such folder")
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    all_rows = table.rows["full" if full else "tiny"]
    if args.rows:
        unknown = sorted(set(args.rows) - {r.id for r in all_rows})
        if unknown:
            raise SystemExit(f"--rows: unknown {unknown}; the {scale} rows are {[r.id for r in all_rows]}")
    rows = [r for r in all_rows if not args.rows or r.id in args.rows]
    out = Path(args.out or f"runs/{table.name}" + ("" if full else f"_{scale}"))
    dist = {"nproc": args.nproc, "nnodes": args.nnodes, "node_rank": args.node_rank,
            "master_addr": args.master_addr, "master_port": args.master_port}
    videos = {k: v for k, v in given.items() if k in VIDEO_SETS}
    ckpts = parse_ckpts(args.ckpt, all_rows)
    finetuned = parse_finetuned(getattr(args, "finetuned", None) or [], all_rows, ckpts)
    smoke_only = table.smoke_rows if scale == "smoke" and not args.rows else None
    jobs = args.jobs if args.jobs is not None else int(os.environ.get("JOBS", 0)) or (
        min(2, os.cpu_count() or 1) if scale == "tiny" else 1)
    if jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    run = TableRun(table, scale, out, range(args.seed, args.seed + args.seeds), videos=videos, datasets=given,
                   ckpts=ckpts, dist=dist, backbones=args.backbones, verbose=args.verbose,
                   stop_after=args.stop_after, stream=stream, finetuned=finetuned, smoke_only=smoke_only,
                   jobs=jobs)
    return run, rows


def run_table(run: TableRun, rows: list[Row]) -> int:
    """Prepare, run every seed and row, print and write the table. -> exit code."""
    tic = time.time()
    try:
        run.prepare(rows)
        status = run.execute(rows)
    except StopRequested as stop:
        run.console.say(str(stop))
        log_event(run.out, event="stopped", reason=str(stop))
        return 0
    except StageFailed as err:                           # the data or the clips: nothing can run
        run.console.say(f"FAILED: {err}")
        return 1
    if run.dist["node_rank"] != 0:
        return 0
    text = write_table(run, table_records(run, rows, status))
    run.console.say(text.rstrip("\n"))
    name = run.table.name
    run.console.say(f"wrote {run.out / (name + '.txt')}, .csv, .md ({_clock(time.time() - tic)} this run)")
    failed = sorted({r for st in status.values() for r, s in st.items() if s["status"] == "failed"})
    if failed:
        print(f"failed rows: {failed}; rerun the same command to resume them", file=sys.stderr)
        return 1
    return 0


def main(table: Table, argv=None) -> int:
    """The whole command line of a table."""
    args = build_parser(table).parse_args(argv)
    return run_table(*make_run(table, args))


# ---- python -m reproduce.pipeline backbones: pre-train the shared backbones ahead of the tables

def _cli(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.pipeline",
                                description="pre-train the shared tiny/smoke backbones into a cache folder")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backbones", help="pre-train (or find) the standard tiny rows' backbones")
    b.add_argument("--scale", choices=("tiny", "smoke"), default="tiny")
    b.add_argument("--dir", help="cache folder (default runs/backbones_<scale>)")
    b.add_argument("--seeds", type=int, default=1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--verbose", action="store_true")
    c = sub.add_parser("clips", help="only the synthetic pre-training and held-out clips of the cache")
    c.add_argument("--scale", choices=("tiny", "smoke"), default="tiny")
    c.add_argument("--dir", help="cache folder (default runs/backbones_<scale>)")
    args = p.parse_args(argv)
    if args.command == "clips":
        for name, path in Backbones(args.dir or f"runs/backbones_{args.scale}", args.scale).clips().items():
            print(f"{name}: {path}")
        return 0
    found = ensure_backbones(args.dir or f"runs/backbones_{args.scale}", args.scale,
                             range(args.seed, args.seed + args.seeds), verbose=args.verbose)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(_cli())
