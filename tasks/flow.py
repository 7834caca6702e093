"""DropMAE-Flow: optical flow from the joint two-frame DropMAE ViT and a DPT head (our design).

The extended DropMAE paper reports optical flow, but its flow model, data and numbers are not
public, so the model here is ours, built in the spirit of the paper (specs/flow.md section 1):
the pre-trained two-frame ViT, loaded through `dropmae.load_pretrained` unchanged, runs jointly
on both frames (frame 1 on `_x`, frame 2 on `_z`, as in pre-training); the frame-1 tokens after
four blocks feed a DPT head that outputs (u, v, confidence) at full resolution; CroCo-Flow's
bounded Laplacian loss; CroCo's tiled inference with confidence-weighted blending. Only the
initial weights differ between the rows of the table (scratch, MAE, TwinMAE, DropMAE).

The file reads along the data flow:
  1. configuration: model presets, the training stages (C -> T -> S -> K);
  2. model: the DPT head, the joint ViT, the loss, checkpoint import with key tables;
  3. file formats (.pfm here; .flo and KITTI PNG come from eval/flow.py);
  4. datasets in their official layouts (FlyingChairs, FlyingThings3D full and subset,
     MPI-Sintel, KITTI-2015, HD1K) and RAFT's augmentations;
  5. `train`: config, distributed init, data, model, optimizer, loop, atomic checkpoints;
  6. inference: tiles with confidence-weighted blending, or the full frame;
  7. `test`: official output trees (Sintel submission, KITTI zip), scoring with eval/flow.py, FPS;
  8. `synthetic`: the datasets' layouts written from the synthetic world's exact flow.

Commands:
    # tiny CPU smoke run on the synthetic layouts (data.World's exact flow)
    python tasks/flow.py synthetic --out /tmp/flow_synth
    python tasks/flow.py train --stage chairs --model tiny --chairs /tmp/flow_synth/FlyingChairs \\
        --output runs/flow_tiny_C --workers 0
    python tasks/flow.py test --dataset sintel_train --data-path /tmp/flow_synth/Sintel \\
        --ckpt runs/flow_tiny_C/checkpoint-last.pth --output runs/flow_tiny_C/sintel_train

    # the main table (C+T protocol), ViT-B/16, effective batch 8 on 8 GPUs x batch 1
    torchrun --nproc_per_node=8 tasks/flow.py train --stage chairs --model base \\
        --chairs /data/FlyingChairs_release --pretrained dropmae_k700_vitb.pth \\
        --batch-size 1 --output runs/flow_C --resume auto
    torchrun --nproc_per_node=8 tasks/flow.py train --stage things --model base \\
        --things /data/FlyingThings3D --chairs /data/FlyingChairs_release \\
        --init runs/flow_C --batch-size 1 --output runs/flow_CT --resume auto
    python tasks/flow.py test --dataset sintel_train --data-path /data/Sintel \\
        --ckpt runs/flow_CT/checkpoint-last.pth --output results/CT_sintel --overlap 0.9
    python tasks/flow.py test --dataset kitti_train --data-path /data/KITTI2015 \\
        --ckpt runs/flow_CT/checkpoint-last.pth --output results/CT_kitti --overlap 0.9
    # test-server entries: S (RAFT's Sintel mix) then K, then
    python tasks/flow.py test --dataset sintel_test --data-path /data/Sintel --overlap 0.9 ...
    python tasks/flow.py test --dataset kitti_test --data-path /data/KITTI2015 --overlap 0.99 ...

    # one GPU ("reduced" recipe): --batch-size 8 --steps 25000 (C) and --steps 50000 (T)

Full scale: C and T are 100k steps each at effective batch 8 with 960 joint tokens per pair;
about 2 x 30 GPU-hours on A100s (bf16), our estimate, not measured.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import IMAGENET_MEAN, IMAGENET_STD, item_generator  # noqa: E402
from eval import flow as eval_flow  # noqa: E402

TINY_TAG = "  [tiny model: tiny scale, not comparable with the paper]"

# --------------------------------------------------------------------------------------------
# 1. Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class FlowConfig:
    """Model shape (specs/flow.md section 1)."""
    encoder: str = "base"                        # dropmae preset of the backbone
    crop: tuple = (320, 384)                     # (H, W) training crop = inference tile
    hooks: tuple = (2, 5, 8, 11)                 # 0-based blocks whose frame-1 tokens feed the DPT
    layer_dims: tuple = (96, 192, 384, 768)      # DPT adapter widths at stride 4, 8, 16, 32
    feature_dim: int = 256                       # DPT fusion width
    head_dims: tuple = (128, 32)                 # output convs before the final 1x1
    drop_path: float = 0.0
    zero_init: bool = False                      # final 1x1 conv all zero (flow 0, c 0 at start)
    # The spec's optional local correlation (off in the main table), ours: the last hook's
    # frame-1 tokens against the frame-2 tokens within `corr_radius` tokens, concatenated to the
    # stride-16 DPT input; with `corr_match`, the correlation's soft-argmax displacement (in
    # pixels, upsampled bilinearly) is also added to the head's (u, v), GMFlow-style, so that the
    # loss reaches the tokens through the matching directly. On for the tiny table (README).
    corr_radius: int = 0                         # tokens; 0: off
    corr_groups: int = 1                         # channel groups of that correlation
    corr_match: bool = False                     # add the soft-argmax matching flow to (u, v)


FLOW_PRESETS = {
    "base": FlowConfig(),                                                 # ViT-B/16, 320x384
    "tiny": FlowConfig(encoder="tiny", crop=(64, 64), hooks=(0, 1, 2, 3),  # tests, smoke runs
                       layer_dims=(16, 32, 64, 96), feature_dim=32, head_dims=(32, 16)),
}

# Training stages (specs/flow.md section 3, "Ours"): CroCo's optimiser (AdamW (0.9, 0.95), lr
# 2e-5 for every tensor, wd 0.05, no wd on biases / 1-D), 1000 warm-up steps then a cosine to 0
# within each stage, effective batch 8, RAFT's augmentations with its per-stage scale ranges.
# `data`: (dataset key, repeat, log2 scale range or None for the stage's). `after`: the stage a
# run starts from (`--init`). C and T make the main table; S and K are for test-server entries.
STAGES = {
    "chairs": dict(letter="C", data=[("chairs_train", 1, None)], val="chairs_val", after=None,
                   steps=100_000, crop=(320, 384), scale=(-0.1, 1.0), flip=True, wd=0.05),
    "things": dict(letter="T", data=[("things_train", 1, None)], val="things_val", after="chairs",
                   steps=100_000, crop=(320, 384), scale=(-0.4, 0.8), flip=True, wd=0.05),
    "sintel": dict(letter="S", val=None, after="things", steps=100_000, crop=(352, 768),
                   scale=(-0.2, 0.6), flip=True, wd=0.05,
                   data=[("sintel_train_clean", 100, None), ("sintel_train_final", 100, None),
                         ("kitti_train", 200, (-0.3, 0.5)), ("hd1k", 5, (-0.5, 0.2)),
                         ("things_train_clean", 1, None)]),
    "kitti": dict(letter="K", data=[("kitti_train", 1, None)], val=None, after="sintel",
                  steps=50_000, crop=(288, 960), scale=(-0.2, 0.4), flip=False, wd=0.05),
}
OPTIM = dict(lr=2e-5, betas=(0.9, 0.95), warmup=1000, batch=8, eraser=(50, 100))
# The tiny model's smoke scale (CPU, the synthetic layouts of `synthetic`, 64x64 crops): a few
# hundred steps at a high lr; eraser boxes shrunk with the crop. Results: README, make table-flow.
# At this budget the tiny model learns flow only with the local correlation and its matching
# flow on (`--corr-radius 1 --corr-match`, as reproduce/table_flow.py's tiny recipe passes);
# without them it stays at zero flow (reproduce/flow_probe.py on held-out worlds, README).
TINY_TRAIN = dict(steps=400, lr=1e-3, warmup=40, batch=8, crop=(64, 64), eraser=(8, 20))


def stage_config(stage: str, model: str, **overrides) -> dict:
    """The resolved recipe of one stage: the paper-scale stage, then TINY_TRAIN for the tiny
    model, then the non-None `overrides` (command-line flags)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {sorted(STAGES)}")
    cfg = {**STAGES[stage], **OPTIM, "stage": stage}
    if model == "tiny":
        cfg.update(TINY_TRAIN)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["crop"] = tuple(cfg["crop"])
    return cfg


def parse_aug(items: list[str]) -> dict:
    """['eraser_prob=0', 'colour=0'] -> AugParams overrides (typed by the field's default)."""
    fields = {f.name: f.default for f in dataclasses.fields(AugParams)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or key in ("crop", "scale", "sparse", "eraser", "flip"):
            raise SystemExit(f"--aug {item}: not an AugParams field; choose from "
                             f"{sorted(set(fields) - {'crop', 'scale', 'sparse', 'eraser', 'flip'})}")
        out[key] = bool(float(value)) if isinstance(fields[key], bool) else float(value)
    return out


def lr_at_step(step: int, lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 over `warmup` steps, then a half-cycle cosine to 0 at `total`."""
    if step < warmup:
        return lr * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


# --------------------------------------------------------------------------------------------
# 2. Model: DPT head on the joint two-frame ViT
# --------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    """ReLU, 3x3, ReLU, 3x3, plus the input (DPT's ResidualConvUnit_custom without BN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """path (+ unit1(skip)) -> unit2 -> bilinear x2 (align_corners=True) -> 1x1 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.unit1 = ResidualConvUnit(dim)
        self.unit2 = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, path, skip=None):
        if skip is not None:
            path = path + self.unit1(skip)
        path = F.interpolate(self.unit2(path), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTHead(nn.Module):
    """Four stride-16 token maps -> (u, v, c) at full resolution (CroCo's DPTOutputAdapter,
    regression head). Hook k: 1x1 conv to layer_dims[k], then to stride 4 / 8 / 16 / 32, then a
    3x3 conv without bias to feature_dim; fusion coarse to fine; output convs."""

    def __init__(self, embed_dim: int, layer_dims, feature_dim: int, head_dims, zero_init: bool = False,
                 extra16: int = 0):
        super().__init__()
        d = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(embed_dim, d[0], 1), nn.ConvTranspose2d(d[0], d[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(embed_dim, d[1], 1), nn.ConvTranspose2d(d[1], d[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(embed_dim + extra16, d[2], 1)),    # + correlation channels
            nn.Sequential(nn.Conv2d(embed_dim, d[3], 1), nn.Conv2d(d[3], d[3], 3, stride=2, padding=1)),
        ])
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, feature_dim, 3, padding=1, bias=False) for c in d)
        self.refinenet = nn.ModuleList(FusionBlock(feature_dim) for _ in range(4))  # [0] finest
        # The coarsest block has no skip input, so its unit1 is never used (DPT keeps it too);
        # frozen, so that DDP does not wait for its gradient.
        self.refinenet[3].unit1.requires_grad_(False)
        h1, h2 = head_dims
        self.conv1 = nn.Conv2d(feature_dim, h1, 3, padding=1)
        self.conv2 = nn.Conv2d(h1, h2, 3, padding=1)
        self.out = nn.Conv2d(h2, 3, 1)
        nn.init.zeros_(self.out.bias)
        # A zero weight too gives flow 0 and c 0 at the start, but then every gradient upstream
        # of it is 0 and stays tiny: the tiny model sat at zero flow for 300 steps (its flow
        # varies in sign from pair to pair, so this layer's own gradient averages out). Off by
        # default (PyTorch's init, as CroCo); the option is for tests.
        if zero_init:
            nn.init.zeros_(self.out.weight)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: 4 x (B, D, H/16, W/16), shallow to deep (the third with `extra16` more
        channels) -> (B, 3, H, W)."""
        layers = [rn(post(f)) for f, post, rn in zip(feats, self.act_postprocess, self.layer_rn)]
        path = self.refinenet[3](layers[3])                          # stride 32 -> 16
        for k in (2, 1, 0):                                          # -> 8, 4, 2
            path = self.refinenet[k](path, layers[k])
        x = F.interpolate(self.conv1(path), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(F.relu(self.conv2(x)))


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int, groups: int = 1) -> torch.Tensor:
    """Local correlation of two token maps (B, D, h, w) -> (B, groups * (2r+1)^2, h, w).

    Channel k = (g, dy, dx): the mean over group g's channels of LN(f1)(p) * LN(f2)(p + (dy, dx)),
    each token layer-normalised (no affine) over its group; displacements dy, dx in -r..r
    (row-major, dy outer); 0 where p + (dy, dx) leaves the grid."""
    B, D, h, w = f1.shape
    r = radius
    a = f1.reshape(B, groups, D // groups, h, w)
    b = f2.reshape(B, groups, D // groups, h, w)
    a = F.layer_norm(a.transpose(2, -1), (D // groups,)).transpose(2, -1)
    b = F.layer_norm(b.transpose(2, -1), (D // groups,)).transpose(2, -1)
    b = F.pad(b, (r, r, r, r))                                       # zeros outside the grid
    out = [(a * b[..., dy:dy + h, dx:dx + w]).mean(2) for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
    return torch.stack(out, 2).reshape(B, -1, h, w)                  # (B, G * (2r+1)^2, h, w)


MATCH_TEMPERATURE = 0.1   # softmax temperature of the matching flow (correlations in [-1, 1])


def soft_argmax(corr: torch.Tensor, radius: int, patch: int, temperature: float = MATCH_TEMPERATURE) -> torch.Tensor:
    """(B, G * (2r+1)^2, h, w) local correlation -> (B, 2, h, w) = (u, v) in pixels: the
    displacements of the window weighted by softmax(correlation / temperature) over the window
    (groups averaged first), times the patch size. Frame-2 content at p + d matching frame 1 at p
    means flow d."""
    B, C, h, w = corr.shape
    k = 2 * radius + 1
    c = corr.reshape(B, -1, k * k, h, w).mean(1)                      # (B, k*k, h, w)
    p = torch.softmax(c / temperature, 1)
    d = torch.arange(-radius, radius + 1, dtype=corr.dtype, device=corr.device) * patch
    dy, dx = d.repeat_interleave(k), d.repeat(k)                      # dy outer, dx inner
    return torch.stack([(p * dx.view(1, -1, 1, 1)).sum(1), (p * dy.view(1, -1, 1, 1)).sum(1)], 1)


class DropMAEFlow(dropmae.ViTEncoder):
    """The DropMAE encoder (keys at the top level, as in the pre-training checkpoint) plus
    `head.*`. Input: normalised frames (B, 3, H, W), H and W multiples of 32."""

    def __init__(self, cfg: FlowConfig):
        enc = dropmae.get_config(cfg.encoder, drop_path=cfg.drop_path)
        super().__init__(enc)
        assert cfg.crop[0] % 32 == 0 and cfg.crop[1] % 32 == 0, \
            f"crop {cfg.crop}: H and W must be multiples of 32 (the DPT's stride-32 branch)"
        assert len(cfg.hooks) == 4 and cfg.hooks[-1] == enc.depth - 1, \
            f"hooks {cfg.hooks}: four blocks, the last one the final block {enc.depth - 1}"
        assert cfg.corr_radius >= 0 and enc.embed_dim % max(cfg.corr_groups, 1) == 0, \
            f"corr_radius {cfg.corr_radius} / corr_groups {cfg.corr_groups} vs width {enc.embed_dim}"
        self.flow_cfg = cfg
        assert cfg.corr_radius or not cfg.corr_match, "corr_match needs corr_radius > 0"
        n_corr = cfg.corr_groups * (2 * cfg.corr_radius + 1) ** 2 if cfg.corr_radius else 0
        self.head = DPTHead(enc.embed_dim, cfg.layer_dims, cfg.feature_dim, cfg.head_dims, cfg.zero_init,
                            extra16=n_corr)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """img1 (earlier, `_x`), img2 (`_z`): (B, 3, H, W) -> (B, 3, H, W) = (u, v, c)."""
        B, _, H, W = img1.shape
        assert H % 32 == 0 and W % 32 == 0, f"input {H}x{W}: sides must be multiples of 32"
        t1 = self.embed(img1, "x")                                   # (B, N, D)
        tokens = torch.cat([t1, self.embed(img2, "z")], dim=1)       # (B, 2N, D)
        feats = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in self.flow_cfg.hooks:
                feats.append(tokens)
        feats[-1] = self.norm(feats[-1])                             # norm on the last hook only
        grid = self.patch_embed.grid(H, W)
        n = t1.shape[1]
        maps = [f[:, :n].transpose(1, 2).reshape(B, -1, *grid) for f in feats]  # frame 1 only
        cfg = self.flow_cfg
        if not cfg.corr_radius:
            return self.head(maps)
        f2 = feats[-1][:, n:].transpose(1, 2).reshape(B, -1, *grid)             # frame 2, last hook
        corr = local_correlation(maps[3], f2, cfg.corr_radius, cfg.corr_groups)  # (B, G (2r+1)^2, h, w)
        maps[2] = torch.cat([maps[2], corr], 1)
        out = self.head(maps)
        if not cfg.corr_match:
            return out
        match = soft_argmax(corr, cfg.corr_radius, self.patch_embed.patch_size)  # (B, 2, h, w) px
        match = F.interpolate(match, size=(H, W), mode="bilinear", align_corners=False)
        return torch.cat([out[:, :2] + match, out[:, 2:]], 1)


def build_model(name: str = "base", **overrides) -> DropMAEFlow:
    if name not in FLOW_PRESETS:
        raise ValueError(f"unknown flow preset {name!r}; choose from {sorted(FLOW_PRESETS)}")
    return DropMAEFlow(dataclasses.replace(FLOW_PRESETS[name], **overrides))


def laplacian_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                   a: float = 0.25, b: float = 4.0) -> torch.Tensor:
    """CroCo-Flow's bounded Laplacian loss. pred (B, 3, H, W) = (u, v, c), gt (B, 2, H, W),
    valid (B, H, W) bool. s = (b - a) sigmoid(c) + a; mean over valid pixels (finite GT with
    |f*| < 10000) of (|u - u*| + |v - v*|) / s + log s. No valid pixel -> 0 (with a graph)."""
    finite = torch.isfinite(gt).all(1)
    gt = torch.where(finite[:, None], gt, torch.zeros_like(gt))
    mask = valid & finite & (gt.norm(dim=1) < 10000)
    s = (b - a) * torch.sigmoid(pred[:, 2]) + a                     # (B, H, W)
    per_pixel = (pred[:, :2] - gt).abs().sum(1) / s + torch.log(s)
    if not mask.any():
        return pred.sum() * 0.0
    return per_pixel[mask].mean()


# Checkpoint import. Key table of the backbone files, into DropMAEFlow:
#   | file                     | loaded                    | dropped           | missing (kept at init) |
#   |--------------------------|---------------------------|-------------------|------------------------|
#   | DropMAE / TwinMAE        | encoder (incl. both frame | decoder_*,        | head.*                 |
#   |   (official or ours)     |   vectors, pos_embed)     |   mask_token      |                        |
#   | MAE ImageNet             | encoder                   | cls_token, (dec.) | head.*, temporal_pos_  |
#   |                          |                           |                   |   embed_x / _z (std 1) |
#   | our flow checkpoint      | everything (strict)       | -                 | -                      |


def head_keys(model: DropMAEFlow) -> list[str]:
    """State-dict keys the flow model adds to the encoder (missing from any backbone file)."""
    return sorted(k for k in model.state_dict() if k.startswith("head."))


def load_backbone(src, model: DropMAEFlow, verbose: bool = True) -> dict:
    """Load a DropMAE, TwinMAE, MAE or our pre-training checkpoint into the encoder; exactly
    `head_keys(model)` (plus the frame vectors for MAE) may be missing, else the core raises."""
    return dropmae.load_pretrained(src, model, expect_missing=head_keys(model), verbose=verbose)


def load_flow_checkpoint(src, device="cpu") -> tuple[DropMAEFlow, dict]:
    """Our `train` checkpoint (path, or a run folder -> its latest) -> (model in eval mode, ckpt)."""
    path = Path(src)
    if path.is_dir():
        found = dropmae.latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoint-*.pth in this folder")
        path = found
    ckpt = dropmae.load_checkpoint(path)                  # the one reader: errors name the file
    if "flow" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a flow checkpoint (needs 'model' and 'flow'); keys {list(ckpt)[:6]}")
    cfg = FlowConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["flow"].items()})
    model = DropMAEFlow(cfg)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), ckpt


def param_groups(model: DropMAEFlow, weight_decay: float, head_lr_mult: float = 1.0,
                 verbose: bool = True) -> list[dict]:
    """CroCo-Flow's AdamW groups: weight decay on every >= 2-D weight, none on biases and 1-D
    tensors (the same rule as `dropmae.param_groups`); `lr_mult` head_lr_mult on `head.*`."""
    groups = []
    for g in dropmae.param_groups(model, weight_decay, verbose=verbose):
        for is_head in (False, True):
            names = [n for n in g["names"] if n.startswith("head.") == is_head]
            if names:
                params = [p for n, p in zip(g["names"], g["params"]) if n in set(names)]
                groups.append({"params": params, "names": names, "weight_decay": g["weight_decay"],
                               "lr_mult": head_lr_mult if is_head else 1.0})
    if verbose:
        n_head = sum(len(g["names"]) for g in groups if g["names"][0].startswith("head."))
        print(f"lr multiplier {head_lr_mult} on the {n_head} head tensors, 1 on the encoder")
    return groups


# --------------------------------------------------------------------------------------------
# 3. File formats: .pfm here; .flo, KITTI PNG in eval/flow.py
# --------------------------------------------------------------------------------------------


def read_pfm(path) -> np.ndarray:
    """Read a PFM -> (H, W, 3) or (H, W) float32, rows top to bottom.

    Three ASCII header lines: `PF` (3 channels) or `Pf` (1), `W H`, scale (< 0: little-endian);
    then float32 rows stored bottom to top. Errors name the file."""
    data = Path(path).read_bytes()
    lines, pos = [], 0
    for _ in range(3):
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: truncated PFM header")
        lines.append(data[pos:end].decode("ascii", "replace").strip())
        pos = end + 1
    magic, dims, scale = lines
    if magic not in ("PF", "Pf"):
        raise ValueError(f"{path}: bad PFM magic {magic[:8]!r}, expected 'PF' or 'Pf'")
    try:
        w, h = (int(v) for v in dims.split())
        scale = float(scale)
    except ValueError:
        raise ValueError(f"{path}: bad PFM header {dims!r} / {scale!r}") from None
    channels = 3 if magic == "PF" else 1
    expected = w * h * channels * 4
    if w <= 0 or h <= 0 or scale == 0 or len(data) - pos != expected:
        raise ValueError(f"{path}: PFM header says {w}x{h}x{channels} (scale {scale}), "
                         f"data has {len(data) - pos} bytes (expected {expected})")
    arr = np.frombuffer(data, "<f4" if scale < 0 else ">f4", w * h * channels, offset=pos)
    arr = arr.reshape(h, w, channels)[::-1].astype(np.float32)      # bottom-up -> top-down
    return arr[:, :, 0] if channels == 1 else arr


def write_pfm(path, array, little_endian: bool = True):
    """Write (H, W, 3) or (H, W) float32 as a PFM (rows bottom to top)."""
    arr = np.asarray(array, np.float32)
    magic = b"PF" if arr.ndim == 3 else b"Pf"
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ValueError(f"{path}: PFM holds 1 or 3 channels, got {arr.shape}")
    h, w = arr.shape[:2]
    header = magic + b"\n" + f"{w} {h}\n{-1.0 if little_endian else 1.0}\n".encode()
    body = np.ascontiguousarray(arr[::-1]).astype("<f4" if little_endian else ">f4").tobytes()
    Path(path).write_bytes(header + body)


def write_things_pfm(path, flow, little_endian: bool = True):
    """FlyingThings3D flow PFM: (u, v, 0)."""
    flow = np.asarray(flow, np.float32)
    write_pfm(path, np.concatenate([flow, np.zeros_like(flow[:, :, :1])], 2), little_endian)


def read_gt(path, fmt: str, allow_nonfinite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A GT flow file -> flow (H, W, 2) float32, valid (H, W) bool.

    fmt 'flo' (Chairs, Sintel, Things subset), 'pfm' (Things; the third channel must be 0),
    'kitti' (KITTI, HD1K: 16-bit PNG with validity). Non-finite values are an error naming the
    file, unless `allow_nonfinite` (the Things subset ships NaN files): then they are invalid."""
    if fmt == "kitti":
        flow, valid = eval_flow.read_kitti_png(path)
        valid = valid > 0
    elif fmt == "flo":
        flow, valid = eval_flow.read_flo(path), None
    elif fmt == "pfm":
        arr = read_pfm(path)
        if arr.ndim != 3:
            raise ValueError(f"{path}: a flow PFM has 3 channels, this one has 1")
        third = arr[:, :, 2]
        if np.any(third[np.isfinite(third)] != 0):
            raise ValueError(f"{path}: third channel of a Things flow PFM must be 0")
        flow, valid = np.ascontiguousarray(arr[:, :, :2]), None
    else:
        raise ValueError(f"unknown flow format {fmt!r}")
    finite = np.isfinite(flow).all(2)
    if not finite.all() and not allow_nonfinite:
        raise ValueError(f"{path}: {int((~finite).sum())} non-finite flow values (NaN / inf)")
    valid = finite if valid is None else valid & finite
    return flow, valid


def read_image(path) -> np.ndarray:
    """An image file (PNG, PPM, ...) -> (H, W, 3) uint8 RGB. Errors name the file."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None


# --------------------------------------------------------------------------------------------
# 4. Datasets in their official layouts, and RAFT's augmentations
# --------------------------------------------------------------------------------------------


@dataclass
class FlowPair:
    """One frame pair: two image files, the GT flow file (None on test splits) and its format,
    `name`: the pair's relative output name (e.g. `alley_1/frame_0001`, `000000_10`)."""
    img1: Path
    img2: Path
    flow: Path | None
    fmt: str
    name: str
    sparse: bool = False                 # KITTI / HD1K: scatter, never interpolate
    nonfinite_ok: bool = False           # Things subset: NaN GT becomes invalid


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: missing {what} folder")
    return path


def read_split_file(path, n: int) -> np.ndarray:
    """FlyingChairs `chairs_split.txt`: one integer per pair, 1 = train, 2 = val."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing the FlyingChairs split file (RAFT's chairs_split.txt)")
    values = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            if line.strip() not in ("1", "2"):
                raise ValueError(f"{path}:{i}: expected 1 (train) or 2 (val), got {line.strip()!r}")
            values.append(int(line))
    if len(values) != n:
        raise ValueError(f"{path}: {len(values)} entries for {n} image pairs")
    return np.array(values)


def chairs_pairs(root, split: str, split_file=None) -> list[FlowPair]:
    """FlyingChairs `data/NNNNN_img1.ppm`, `_img2.ppm`, `_flow.flo`; split 'train' or 'val'."""
    data = _need_dir(Path(root) / "data", "FlyingChairs data")
    flows = sorted(data.glob("*_flow.flo"))
    if not flows:
        raise FileNotFoundError(f"{data}: no *_flow.flo files")
    split_ids = read_split_file(split_file or Path(root) / "chairs_split.txt", len(flows))
    if len(flows) == 22872 and (np.sum(split_ids == 1), np.sum(split_ids == 2)) != (22232, 640):
        raise ValueError(f"{split_file}: the official split has 22232 train / 640 val pairs")
    want = {"train": 1, "val": 2}[split]
    pairs = []
    for f, s in zip(flows, split_ids):
        stem = f.name[:-len("_flow.flo")]
        if s == want:
            pairs.append(FlowPair(data / f"{stem}_img1.ppm", data / f"{stem}_img2.ppm", f, "flo",
                                  f"{stem}_flow"))
    return pairs


def things_layout(root) -> str:
    """'full' (frames_cleanpass/...) or 'subset' (train/image_clean/...)."""
    root = Path(root)
    if (root / "frames_cleanpass").is_dir() or (root / "frames_finalpass").is_dir():
        return "full"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return "subset"
    raise FileNotFoundError(f"{root}: neither the FlyingThings3D full layout (frames_cleanpass/) "
                            f"nor the subset layout (train/, val/)")


def things_pairs(root, split: str = "train", passes=("clean", "final"),
                 directions=("into_future", "into_past"), cameras=("left",)) -> list[FlowPair]:
    """FlyingThings3D pairs, full set or subset (detected by layout); split 'train' or 'val'
    (full set: TRAIN / TEST). into_future: (i, i+1) with flow file i; into_past: (i+1, i) with
    flow file i+1 (RAFT, CroCo). Subset flows are .flo, some with NaN: masked as invalid."""
    root, layout = Path(root), things_layout(root)
    pairs = []
    for ps in passes:
        for cam in cameras:
            for direction in directions:
                step = 1 if direction == "into_future" else -1
                if layout == "full":
                    top = _need_dir(root / f"frames_{ps}pass" / split_name(split), f"Things {ps} pass")
                    seqs = sorted(p for p in top.glob("*/*") if p.is_dir())
                    for seq in seqs:
                        rel = seq.relative_to(top)
                        fdir = root / "optical_flow" / split_name(split) / rel / direction / cam
                        tag = "Future" if step == 1 else "Past"
                        frames = sorted(int(p.stem) for p in (seq / cam).glob("*.png"))
                        for a, b in _consecutive(frames, step):
                            fl = fdir / f"OpticalFlowInto{tag}_{a:04d}_{cam[0].upper()}.pfm"
                            pairs.append(FlowPair(seq / cam / f"{a:04d}.png", seq / cam / f"{b:04d}.png",
                                                  _exists(fl), "pfm", f"{ps}/{rel.as_posix()}/{cam}/{direction}/{a:04d}"))
                else:
                    base = _need_dir(root / split, f"Things subset {split}")
                    img = _need_dir(base / f"image_{ps}" / cam, f"Things subset image_{ps}")
                    fdir = _need_dir(base / "flow" / cam / direction, "Things subset flow")
                    frames = set(int(p.stem) for p in img.glob("*.png"))
                    for fl in sorted(fdir.glob("*.flo")):
                        a = int(fl.stem)
                        if a in frames and a + step in frames:
                            pairs.append(FlowPair(img / fl.name.replace(".flo", ".png"),
                                                  img / f"{a + step:07d}.png", fl, "flo",
                                                  f"{ps}/{cam}/{direction}/{a:07d}", nonfinite_ok=True))
    return pairs


def split_name(split: str) -> str:
    return {"train": "TRAIN", "val": "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}[split]


def _consecutive(frames: list[int], step: int) -> list[tuple[int, int]]:
    """Pairs of consecutive frame numbers; (i, i+1) for step 1, (i+1, i) for step -1."""
    out = [(a, a + 1) for a in frames if a + 1 in set(frames)]
    return out if step == 1 else [(b, a) for a, b in out]


def _exists(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing flow file")
    return path


def sintel_pairs(root, split: str = "training", dstype: str = "clean") -> list[FlowPair]:
    """MPI-Sintel `<split>/<dstype>/<seq>/frame_NNNN.png` (1-based); training flow
    `training/flow/<seq>/frame_NNNN.flo` goes from frame N to N+1. Name `<seq>/frame_NNNN`."""
    top = _need_dir(Path(root) / split / dstype, f"Sintel {split}/{dstype}")
    pairs = []
    for seq in sorted(p for p in top.iterdir() if p.is_dir()):
        frames = sorted(seq.glob("frame_*.png"))
        for f1, f2 in zip(frames[:-1], frames[1:]):
            name = f"{seq.name}/{f1.stem}"
            fl = _exists(Path(root) / "training" / "flow" / f"{name}.flo") if split == "training" else None
            pairs.append(FlowPair(f1, f2, fl, "flo", name))
    return pairs


def kitti_pairs(root, split: str = "training", image_dir: str = "image_2") -> list[FlowPair]:
    """KITTI-2015 `<split>/image_2/NNNNNN_10.png` + `_11.png`, GT `training/flow_occ/NNNNNN_10.png`."""
    top = _need_dir(Path(root) / split / image_dir, f"KITTI {split}/{image_dir}")
    pairs = []
    for f1 in sorted(top.glob("*_10.png")):
        f2 = _exists(f1.with_name(f1.name.replace("_10.png", "_11.png")))
        fl = _exists(Path(root) / "training" / "flow_occ" / f1.name) if split == "training" else None
        pairs.append(FlowPair(f1, f2, fl, "kitti", f1.stem, sparse=True))
    if not pairs:
        raise FileNotFoundError(f"{top}: no *_10.png frames")
    return pairs


def hd1k_pairs(root) -> list[FlowPair]:
    """HD1K `hd1k_input/image_2/SSSSSS_FFFF.png`, GT `hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png`
    (KITTI encoding): frames F and F+1 of one sequence, flow file F."""
    img = _need_dir(Path(root) / "hd1k_input" / "image_2", "HD1K hd1k_input/image_2")
    gt = _need_dir(Path(root) / "hd1k_flow_gt" / "flow_occ", "HD1K hd1k_flow_gt/flow_occ")
    pairs = []
    for fl in sorted(gt.glob("*.png")):
        seq, frame = fl.stem.split("_")
        nxt = img / f"{seq}_{int(frame) + 1:04d}.png"
        if nxt.is_file():
            pairs.append(FlowPair(_exists(img / fl.name), nxt, fl, "kitti", fl.stem, sparse=True))
    return pairs


def dataset_pairs(key: str, paths: dict) -> list[FlowPair]:
    """Pairs of a named split: chairs_train / chairs_val, things_train / things_train_clean /
    things_val, sintel_train_clean / _final, sintel_test_clean / _final, kitti_train /
    kitti_test, hd1k. `paths`: {'chairs', 'things', 'sintel', 'kitti', 'hd1k'} -> root."""
    src = key.split("_")[0]
    root = paths.get(src)
    if not root:
        raise SystemExit(f"{key} needs --{src}")
    if src == "chairs":
        return chairs_pairs(root, key.split("_")[1], paths.get("chairs_split"))
    if src == "things":
        passes = ("clean",) if key.endswith("_clean") else ("clean", "final")
        split = "val" if key == "things_val" else "train"
        return things_pairs(root, split, passes)
    if src == "sintel":
        _, split, dstype = key.split("_")
        return sintel_pairs(root, "training" if split == "train" else "test", dstype)
    if src == "kitti":
        return kitti_pairs(root, "training" if key == "kitti_train" else "testing")
    if src == "hd1k":
        return hd1k_pairs(root)
    raise ValueError(f"unknown dataset {key!r}")


# RAFT's augmentations (core/utils/augmentor.py), ported to PIL + torch with the same ranges.
# Randomness comes from one torch.Generator per item (a pure function of seed, epoch, index).

def _uniform(g, lo, hi) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g, lo, hi) -> int:
    """Uniform integer in [lo, hi) (numpy's randint)."""
    return int(torch.randint(lo, hi, (), generator=g).item()) if hi > lo else lo


def color_jitter(images: list[np.ndarray], g, brightness, contrast, saturation, hue) -> list[np.ndarray]:
    """torchvision ColorJitter on PIL images: the four factors in a random order, the same
    factors for every image of `images`."""
    factors = [("b", _uniform(g, 1 - brightness, 1 + brightness)),
               ("c", _uniform(g, 1 - contrast, 1 + contrast)),
               ("s", _uniform(g, 1 - saturation, 1 + saturation)),
               ("h", _uniform(g, -hue, hue))]
    order = torch.randperm(4, generator=g).tolist()
    out = []
    for img in images:
        im = Image.fromarray(img)
        for k in order:
            kind, f = factors[k]
            if kind == "b":
                im = ImageEnhance.Brightness(im).enhance(f)
            elif kind == "c":
                im = ImageEnhance.Contrast(im).enhance(f)
            elif kind == "s":
                im = ImageEnhance.Color(im).enhance(f)
            else:
                h, s, v = im.convert("HSV").split()
                h = Image.fromarray((np.array(h).astype(np.int32) + int(round(f * 255))).astype(np.uint8))
                im = Image.merge("HSV", (h, s, v)).convert("RGB")
        out.append(np.array(im))
    return out


def _resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear (cv2.INTER_LINEAR's pixel-centre rule)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def resize_dense_flow(flow: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, 2) -> (h, w, 2) bilinear, u x w/W, v x h/H. NaN (invalid) spreads to the output
    pixels it touches, so an invalid pixel never yields a valid one."""
    H, W = flow.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    return x * np.array([w / W, h / H], np.float32)


def resize_sparse_flow(flow: np.ndarray, valid: np.ndarray, fx: float, fy: float, h: int, w: int):
    """RAFT's SparseFlowAugmentor.resize_sparse_flow_map: scatter every valid pixel to its
    rounded scaled position (never interpolate sparse GT). -> flow (h, w, 2), valid (h, w)."""
    yy, xx = np.nonzero(valid)
    f = flow[yy, xx] * np.array([fx, fy], np.float32)
    x1, y1 = np.round(xx * fx).astype(int), np.round(yy * fy).astype(int)
    keep = (x1 >= 0) & (x1 < w) & (y1 >= 0) & (y1 < h)
    out, out_valid = np.zeros((h, w, 2), np.float32), np.zeros((h, w), bool)
    out[y1[keep], x1[keep]] = f[keep]
    out_valid[y1[keep], x1[keep]] = True
    return out, out_valid


@dataclass
class AugParams:
    """RAFT FlowAugmentor / SparseFlowAugmentor settings for one source of a mix."""
    crop: tuple = (320, 384)
    scale: tuple = (-0.2, 0.5)           # log2 range
    flip: bool = True
    sparse: bool = False
    spatial_prob: float = 0.8
    stretch_prob: float = 0.8
    max_stretch: float = 0.2
    h_flip_prob: float = 0.5
    v_flip_prob: float = 0.1
    asymmetric_prob: float = 0.2
    eraser_prob: float = 0.5
    eraser: tuple = (50, 100)
    colour: bool = True


def augment(img1, img2, flow, valid, p: AugParams, g):
    """RAFT's order: colour, eraser, spatial (scale + stretch), flips, crop.

    img1, img2 (H, W, 3) uint8; flow (H, W, 2) with NaN where invalid (dense) or any value
    (sparse); valid (H, W) bool -> the same at the crop size. Horizontal flips negate u,
    vertical flips negate v."""
    if p.colour:
        jitter = (0.3, 0.3, 0.3, 0.3 / math.pi) if p.sparse else (0.4, 0.4, 0.4, 0.5 / math.pi)
        if torch.rand((), generator=g).item() < p.asymmetric_prob:
            img1, img2 = color_jitter([img1], g, *jitter)[0], color_jitter([img2], g, *jitter)[0]
        else:
            img1, img2 = color_jitter([img1, img2], g, *jitter)
    if torch.rand((), generator=g).item() < p.eraser_prob:       # boxes of image-2's mean colour
        img2 = img2.copy()
        mean = img2.reshape(-1, 3).mean(0)
        ht, wd = img2.shape[:2]
        for _ in range(_randint(g, 1, 3)):
            x0, y0 = _randint(g, 0, wd), _randint(g, 0, ht)
            dx, dy = _randint(g, *p.eraser), _randint(g, *p.eraser)
            img2[y0:y0 + dy, x0:x0 + dx] = mean
    ht, wd = img1.shape[:2]
    ch, cw = p.crop
    pad = 1 if p.sparse else 8
    min_scale = max((ch + pad) / ht, (cw + pad) / wd)
    scale = 2 ** _uniform(g, *p.scale)
    sx = sy = scale
    if not p.sparse and torch.rand((), generator=g).item() < p.stretch_prob:
        sx *= 2 ** _uniform(g, -p.max_stretch, p.max_stretch)
        sy *= 2 ** _uniform(g, -p.max_stretch, p.max_stretch)
    sx, sy = max(sx, min_scale), max(sy, min_scale)
    if torch.rand((), generator=g).item() < p.spatial_prob or ht < ch or wd < cw:
        h1, w1 = int(round(ht * sy)), int(round(wd * sx))
        img1, img2 = _resize_image(img1, h1, w1), _resize_image(img2, h1, w1)
        if p.sparse:
            flow, valid = resize_sparse_flow(flow, valid, w1 / wd, h1 / ht, h1, w1)
        else:
            flow = resize_dense_flow(np.where(valid[..., None], flow, np.nan), h1, w1)
            valid = np.isfinite(flow).all(2)
    if p.flip and torch.rand((), generator=g).item() < p.h_flip_prob:
        img1, img2, valid = img1[:, ::-1], img2[:, ::-1], valid[:, ::-1]
        flow = flow[:, ::-1] * np.array([-1.0, 1.0], np.float32)
    if p.flip and not p.sparse and torch.rand((), generator=g).item() < p.v_flip_prob:
        img1, img2, valid = img1[::-1], img2[::-1], valid[::-1]
        flow = flow[::-1] * np.array([1.0, -1.0], np.float32)
    ht, wd = img1.shape[:2]
    if p.sparse:                                                  # RAFT's margins, then clipped
        y0 = min(max(_randint(g, 0, ht - ch + 20), 0), ht - ch)
        x0 = min(max(_randint(g, -50, wd - cw + 50), 0), wd - cw)
    else:
        y0, x0 = _randint(g, 0, ht - ch + 1), _randint(g, 0, wd - cw + 1)
    sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    return (np.ascontiguousarray(img1[sl]), np.ascontiguousarray(img2[sl]),
            np.ascontiguousarray(flow[sl]), np.ascontiguousarray(valid[sl]))


_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float, [0, 1] then ImageNet mean / std."""
    return (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 - _MEAN) / _STD


class FlowTrainSet(torch.utils.data.Dataset):
    """A training mix: [(pairs, repeat, AugParams)] concatenated, each source `repeat` times.
    Items are indexed by (epoch, index) (data.EpochOrder's convention); the augmentation's
    randomness is `item_generator(seed, epoch, index)`."""

    def __init__(self, sources: list, seed: int):
        self.items = [(pair, aug) for pairs, repeat, aug in sources for _ in range(repeat)
                      for pair in pairs]
        self.seed = seed

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key
        pair, aug = self.items[index]
        img1, img2 = read_image(pair.img1), read_image(pair.img2)
        flow, valid = read_gt(pair.flow, pair.fmt, pair.nonfinite_ok)
        if img1.shape != img2.shape or img1.shape[:2] != flow.shape[:2]:
            raise ValueError(f"{pair.img1}: images {img1.shape} / {img2.shape} and flow "
                             f"{pair.flow} {flow.shape} differ in size")
        img1, img2, flow, valid = augment(img1, img2, flow, valid, aug,
                                          item_generator(self.seed, epoch, index))
        flow = np.where(valid[..., None], flow, 0.0).astype(np.float32)
        return (to_tensor(img1), to_tensor(img2), torch.from_numpy(flow).permute(2, 0, 1),
                torch.from_numpy(valid))


class StepOrder(torch.utils.data.Sampler):
    """Yields (epoch, index) for micro-batches start..stop of this rank: global sample position
    q = (micro_step * world + rank) * batch + b walks a fresh permutation of the dataset each
    epoch (epoch = q // n, permutation seeded by (seed, epoch)). Pure function of the step, so
    `--resume` continues exactly and the GPU count does not change the sample order."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, start: int, stop: int):
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.start, self.stop = start, stop

    def _perm(self, epoch: int, cache={}):
        key = (self.n, self.seed, epoch)
        if key not in cache:
            cache.clear()
            cache[key] = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.seed * 1000003 + epoch)).tolist()
        return cache[key]

    def __iter__(self):
        for micro in range(self.start, self.stop):
            for b in range(self.batch):
                q = (micro * self.world + self.rank) * self.batch + b
                epoch = q // self.n
                yield epoch, self._perm(epoch)[q % self.n]

    def __len__(self):
        return (self.stop - self.start) * self.batch


# --------------------------------------------------------------------------------------------
# 5. Training
# --------------------------------------------------------------------------------------------

DATA_ARGS = ("chairs", "things", "sintel", "kitti", "hd1k")
CORR_FIELDS = ("corr_radius", "corr_groups", "corr_match")     # FlowConfig fields set by flags


def training_sources(cfg: dict, paths: dict) -> list:
    """The stage's mix as [(pairs, repeat, AugParams)], with each source's pair count printed."""
    sources = []
    for key, repeat, scale in cfg["data"]:
        pairs = dataset_pairs(key, paths)
        if not pairs:
            raise SystemExit(f"{key}: no pairs under {paths.get(key.split('_')[0])}")
        sparse = key.startswith(("kitti", "hd1k"))
        aug = AugParams(crop=cfg["crop"], scale=tuple(scale or cfg["scale"]), flip=cfg["flip"],
                        sparse=sparse, eraser=tuple(cfg["eraser"]), **cfg.get("aug", {}))
        sources.append((pairs, repeat, aug))
        if dropmae.is_main():
            extra = f" ({things_layout(paths['things'])} layout)" if key.startswith("things") else ""
            print(f"data: {key}{extra}: {len(pairs)} pairs x {repeat}")
    return sources


def _protocol(init_ckpt: dict | None, letter: str) -> str:
    """Training-mix name: C, C+T, C+T+S, ... (specs/flow.md section 5.2)."""
    before = init_ckpt["config"].get("protocol") if init_ckpt else None
    return f"{before}+{letter}" if before else letter


def train(args) -> Path:
    """The `train` command: one stage of the schedule, resumable, DDP under torchrun."""
    # config
    overrides = dict(steps=args.steps, lr=args.lr, warmup=args.warmup, batch=args.effective_batch,
                     crop=tuple(args.crop) if args.crop else None,
                     scale=tuple(args.scale_range) if args.scale_range else None,
                     aug=parse_aug(args.aug) if args.aug else None)
    cfg = stage_config(args.stage, args.model, **overrides)
    rank, world, local_rank, device = dropmae.init_distributed()
    if args.cpu:
        device = torch.device("cpu")
    if cfg["batch"] % (args.batch_size * world):
        raise SystemExit(f"effective batch {cfg['batch']} is not a multiple of --batch-size "
                         f"{args.batch_size} x {world} processes")
    accum = cfg["batch"] // (args.batch_size * world)
    amp = device.type == "cuda" and not args.no_amp
    torch.manual_seed(args.seed + rank)
    paths = {k: getattr(args, k) for k in DATA_ARGS} | {"chairs_split": args.chairs_split}
    # model, and where it starts from: --resume (this stage), --init (the previous stage's
    # flow checkpoint) or --pretrained (a backbone file); none of them = from scratch
    model_overrides = {k: getattr(args, k) for k in CORR_FIELDS if getattr(args, k) is not None}
    model = build_model(args.model, crop=cfg["crop"], **model_overrides)
    # the newest readable checkpoint (a corrupt newer one is moved aside, named) or --resume PATH
    resume, ckpt = dropmae.resume_checkpoint(args.output, args.resume,
                                             required=("model", "optimizer", "step", "rng"))
    init_ckpt = None
    if args.init:
        init_model, init_ckpt = load_flow_checkpoint(args.init)
        for k in CORR_FIELDS:
            if getattr(init_model.flow_cfg, k) != getattr(model.flow_cfg, k):
                raise SystemExit(f"--init {args.init}: {k} {getattr(init_model.flow_cfg, k)} there, "
                                 f"{getattr(model.flow_cfg, k)} here; pass --{k.replace('_', '-')}")
        model.load_state_dict(init_model.state_dict(), strict=True)
    elif args.pretrained and not resume:
        load_backbone(args.pretrained, model, verbose=dropmae.is_main())
    protocol = _protocol(init_ckpt, cfg["letter"])
    # data
    sources = training_sources(cfg, paths)
    dataset = FlowTrainSet(sources, args.seed)
    config = {**vars(args), "recipe": cfg, "protocol": protocol, "world_size": world,
              "accum_iter": accum, "effective_batch": cfg["batch"], "train_pairs": len(dataset),
              "amp": "bf16" if amp else "off", "device": str(device),
              "things_layout": things_layout(args.things) if args.things and any(
                  k.startswith("things") for k, _, _ in cfg["data"]) else None}
    run_dir = dropmae.make_run_dir(args.output, config)
    logger = dropmae.JsonlLogger(run_dir)
    if dropmae.is_main():
        print(json.dumps(config, indent=1, default=str))
        print(f"stage {args.stage} ({protocol}): lr {cfg['lr']:g} absolute at effective batch "
              f"{cfg['batch']} = {args.batch_size} per process x {world} x accum {accum}")
    model.to(device)
    groups = param_groups(model, cfg["wd"], args.head_lr_mult, verbose=dropmae.is_main())
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=cfg["betas"], eps=1e-8)
    step = 0
    if resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        dropmae.set_rng_state(ckpt["rng"])
        if dropmae.is_main():
            print(f"resumed from {resume} at step {step}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    order = StepOrder(len(dataset), args.batch_size, rank, world, args.seed, step * accum,
                      cfg["steps"] * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=order,
                                         num_workers=args.workers, drop_last=True,
                                         pin_memory=device.type == "cuda")
    batches = iter(loader)

    def save(step: int):
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "flow": dataclasses.asdict(model.flow_cfg),
                 "config": json.loads(json.dumps(config, default=str)), "rng": dropmae.rng_state()}
        path = Path(args.output) / f"checkpoint-{step}.pth"
        dropmae.save_checkpoint(path, state)
        dropmae.save_checkpoint(Path(args.output) / "checkpoint-last.pth", state)
        if dropmae.is_main() and args.keep_last > 0:
            old = sorted(Path(args.output).glob("checkpoint-[0-9]*.pth"),
                         key=lambda q: int(q.stem.split("-")[-1]))[:-args.keep_last]
            for q in old:
                q.unlink()
        return path

    # loop
    pbar = None
    if dropmae.is_main() and not args.no_progress:
        from tqdm import tqdm
        pbar = tqdm(total=cfg["steps"], initial=step, desc=f"flow {args.stage}", dynamic_ncols=True)
    model.train()
    tic, last = time.time(), step
    stop = min(cfg["steps"], args.max_steps or cfg["steps"])
    while step < stop:
        lr = lr_at_step(step, cfg["lr"], cfg["warmup"], cfg["steps"])
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        optimizer.zero_grad(set_to_none=True)
        total, epe = 0.0, 0.0
        for micro in range(accum):
            img1, img2, flow, valid = (t.to(device, non_blocking=True) for t in next(batches))
            sync = world == 1 or micro == accum - 1
            with (net.no_sync() if not sync else contextlib.nullcontext()):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred = net(img1, img2)
                loss = laplacian_loss(pred.float(), flow, valid)
                (loss / accum).backward()
            total += loss.item() / accum
            with torch.no_grad():
                e = (pred[:, :2].float() - flow).norm(dim=1)
                epe += (e[valid].mean().item() if valid.any() else 0.0) / accum
        if not math.isfinite(total):
            raise FloatingPointError(f"loss is {total} at step {step}")
        optimizer.step()
        step += 1
        if pbar:
            pbar.update(1)
            pbar.set_postfix(loss=f"{total:.3f}", epe=f"{epe:.2f}")
        if step % args.log_every == 0 or step == cfg["steps"]:
            sec = (time.time() - tic) / max(step - last, 1)
            tic, last = time.time(), step
            logger.log(step=step, lr=lr, loss=total, epe=epe, sec_per_step=sec)
        if cfg["val"] and args.val_every and (step % args.val_every == 0 or step == cfg["steps"]):
            metrics = validate(model, cfg["val"], paths, device, args.val_pairs, amp)
            logger.log(step=step, **{f"val_{k}": v for k, v in metrics.items()})
            if dropmae.is_main():
                print(f"step {step}: {cfg['val']} EPE {metrics['epe']:.3f} (overlap 0.7)"
                      f"{TINY_TAG if args.model == 'tiny' else ''}", flush=True)
            model.train()
        if step % args.save_every == 0 or step == stop:
            save(step)
    if pbar:
        pbar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return Path(args.output) / "checkpoint-last.pth"


@torch.no_grad()
def validate(model, key: str, paths: dict, device, max_pairs: int, amp: bool) -> dict:
    """Pooled EPE over the finite GT pixels of a validation split, tiled at overlap 0.7."""
    model.eval()
    predictor = Predictor(model, device, overlap=0.7, amp=amp)
    epes = []
    for pair in dataset_pairs(key, paths)[:max_pairs or None]:
        gt, valid = read_gt(pair.flow, pair.fmt, pair.nonfinite_ok)
        pred = predictor(read_image(pair.img1), read_image(pair.img2))
        epes.append(eval_flow.endpoint_error(pred, gt)[valid])
    return eval_flow.pooled_metrics(epes)


# --------------------------------------------------------------------------------------------
# 6. Inference: confidence-weighted tiles, or the full frame
# --------------------------------------------------------------------------------------------


def tile_offsets(total: int, window: int, overlap: float) -> list[int]:
    """CroCo's `_overlapping`: n = 1 + ceil((L - l) / ((1 - overlap) l)) windows at offsets
    round(linspace(0, L - l, n))."""
    assert total >= window and 0 <= overlap < 1, (total, window, overlap)
    n = 1 + int(math.ceil((total - window) / ((1 - overlap) * window)))
    return np.linspace(0, total - window, n).round().astype(int).tolist()


def confidence_weight(c: torch.Tensor, beta: float = 10.0, beta_s: float = 5.0) -> torch.Tensor:
    """CroCo's `conf_expsigmoid_10_5` on the raw c: exp(-2 beta (sigmoid(c / beta_s) - 0.5))."""
    return torch.exp(-2.0 * beta * (torch.sigmoid(c / beta_s) - 0.5))


def tiled_flow(predict, img1: torch.Tensor, img2: torch.Tensor, crop, overlap: float,
               tile_batch: int = 16) -> torch.Tensor:
    """Blend tile predictions: flow = sum w f / (sum w + 1e-16), w = confidence_weight(c).

    predict: (n, 3, h, w) x 2 -> (n, 3, h, w) = (u, v, c); img1, img2 (3, H, W) with H >= h,
    W >= w -> (2, H, W)."""
    (_, H, W), (h, w) = img1.shape, crop
    boxes = [(y, x) for y in tile_offsets(H, h, overlap) for x in tile_offsets(W, w, overlap)]
    num = torch.zeros(2, H, W, device=img1.device)
    den = torch.zeros(1, H, W, device=img1.device)
    for i in range(0, len(boxes), tile_batch):
        chunk = boxes[i:i + tile_batch]
        t1 = torch.stack([img1[:, y:y + h, x:x + w] for y, x in chunk])
        t2 = torch.stack([img2[:, y:y + h, x:x + w] for y, x in chunk])
        out = predict(t1, t2).float()                                # (n, 3, h, w)
        wgt = confidence_weight(out[:, 2:3])
        for (y, x), f, wt in zip(chunk, out[:, :2], wgt):
            num[:, y:y + h, x:x + w] += wt * f
            den[:, y:y + h, x:x + w] += wt
    return num / (den + 1e-16)


def _resize_flow_tensor(flow: torch.Tensor, h: int, w: int, mode: str = "bicubic") -> torch.Tensor:
    """(2, H, W) -> (2, h, w), u x w/W and v x h/H."""
    H, W = flow.shape[1:]
    out = F.interpolate(flow[None], size=(h, w), mode=mode, align_corners=False)[0]
    return out * torch.tensor([w / W, h / H], device=flow.device).view(2, 1, 1)


class Predictor:
    """Flow for one frame pair of any size, as uint8 (H, W, 3) arrays -> (H, W, 2) float32.

    mode 'tiled' (CroCo): frames smaller than the crop are first upscaled bicubically by
    max(h_c / H, w_c / W) and the flow mapped back per axis; 'full': one pass on the frame
    padded (replicate) to a multiple of 32. `downscale` f: predict at 1/f, upsample, x f."""

    def __init__(self, model, device, overlap: float = 0.9, mode: str = "tiled",
                 downscale: float = 1.0, tile_batch: int = 16, amp: bool = False):
        self.model, self.device, self.overlap, self.mode = model, device, overlap, mode
        self.downscale, self.tile_batch, self.amp = downscale, tile_batch, amp
        self.crop = tuple(model.flow_cfg.crop)

    def settings(self) -> dict:
        return {"crop": list(self.crop), "overlap": self.overlap, "confidence": "conf_expsigmoid_10_5",
                "inference": self.mode, "downscale": self.downscale}

    def net(self, a, b):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(a, b)

    @torch.no_grad()
    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        a, b = to_tensor(img1).to(self.device), to_tensor(img2).to(self.device)
        H, W = a.shape[1:]
        if self.downscale != 1.0:
            h, w = max(1, round(H / self.downscale)), max(1, round(W / self.downscale))
            a, b = (F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                    for t in (a, b))
        flow = self.predict_tensor(a, b)
        if flow.shape[1:] != (H, W):
            flow = _resize_flow_tensor(flow, H, W, mode="bilinear")
        return flow.permute(1, 2, 0).cpu().numpy().astype(np.float32)

    def predict_tensor(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(3, H, W) x 2 normalised -> (2, H, W)."""
        H, W = a.shape[1:]
        if self.mode == "full":
            ph, pw = -H % 32, -W % 32
            a2, b2 = (F.pad(t[None], (0, pw, 0, ph), mode="replicate") for t in (a, b))
            return self.net(a2, b2)[0, :2, :H, :W].float()
        ch, cw = self.crop
        if H < ch or W < cw:                                           # upscale, then map back
            s = max(ch / H, cw / W)
            h, w = max(ch, math.ceil(H * s)), max(cw, math.ceil(W * s))
            a2, b2 = (F.interpolate(t[None], size=(h, w), mode="bicubic", align_corners=False)[0]
                      for t in (a, b))
            flow = tiled_flow(self.net, a2, b2, self.crop, self.overlap, self.tile_batch)
            return _resize_flow_tensor(flow, H, W)
        return tiled_flow(self.net, a, b, self.crop, self.overlap, self.tile_batch)


# --------------------------------------------------------------------------------------------
# 7. `test`: official output trees, scoring with eval/flow.py, frames per second
# --------------------------------------------------------------------------------------------

TEST_DATASETS = ("sintel_train", "sintel_test", "kitti_train", "kitti_test", "chairs_val", "things_val")


def write_sintel_submission(out_dir, preds: dict) -> Path:
    """preds {(dstype, '<seq>/frame_NNNN'): flow} -> `<out>/submission/test/<dstype>/<seq>/
    frame_NNNN.flo` (N = 1-based index of the first frame). Then run the Sintel SDK's
    `bundler <clean> <final> bundled.lzma` and upload the .lzma."""
    root = Path(out_dir) / "submission" / "test"
    for (dstype, name), flow in preds.items():
        path = root / dstype / f"{name}.flo"
        path.parent.mkdir(parents=True, exist_ok=True)
        eval_flow.write_flo(path, flow)
    return root


def write_kitti_submission(out_dir, preds: dict) -> Path:
    """preds {'NNNNNN_10': flow} -> `<out>/flow/NNNNNN_10.png` (validity all 1) and
    `<out>/kitti15_flow_results.zip` holding the `flow/` folder."""
    flow_dir = Path(out_dir) / "flow"
    flow_dir.mkdir(parents=True, exist_ok=True)
    for name, flow in preds.items():
        eval_flow.write_kitti_png(flow_dir / f"{name}.png", flow)
    zip_path = Path(out_dir) / "kitti15_flow_results.zip"
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(preds):
            zf.write(flow_dir / f"{name}.png", f"flow/{name}.png")
    tmp.replace(zip_path)
    return zip_path


def run_pairs(predictor, pairs: list[FlowPair]) -> tuple[dict, float]:
    """{pair.name: flow} for every pair, and the seconds spent predicting (reading excluded)."""
    out, seconds = {}, 0.0
    for pair in pairs:
        img1, img2 = read_image(pair.img1), read_image(pair.img2)
        tic = time.perf_counter()
        if predictor is None:                                          # zero-flow baseline
            out[pair.name] = np.zeros(img1.shape[:2] + (2,), np.float32)
        else:
            out[pair.name] = predictor(img1, img2)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
        seconds += time.perf_counter() - tic
    return out, seconds


def evaluate(dataset: str, root, predictor, out_dir, max_pairs: int = 0, paths: dict | None = None) -> dict:
    """Predict one test dataset, write its official files under out_dir, score what has GT.

    sintel_train: `<out>/sintel_{clean,final}/<seq>/frame_NNNN.flo`, scored against
    `training/flow` (all pixels, pooled); kitti_train: `<out>/kitti15/NNNNNN_10.png` scored
    against `training/flow_occ` (EPE per image, Fl-all); sintel_test / kitti_test: the
    submission files; chairs_val / things_val: pooled EPE over finite GT pixels (in memory).
    `predictor` None gives the zero-flow baseline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"dataset": dataset, "settings": predictor.settings() if predictor else {"predictor": "zero"}}
    n_pairs, seconds = 0, 0.0
    if dataset in ("sintel_train", "sintel_test"):
        split = "training" if dataset == "sintel_train" else "test"
        sub = {}
        for dstype in ("clean", "final"):
            pairs = sintel_pairs(root, split, dstype)[:max_pairs or None]
            preds, sec = run_pairs(predictor, pairs)
            n_pairs, seconds = n_pairs + len(pairs), seconds + sec
            if split == "training":
                pred_dir = out_dir / f"sintel_{dstype}"
                for name, flow in preds.items():
                    (pred_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    eval_flow.write_flo(pred_dir / f"{name}.flo", flow)
                gt_dir = _subset_gt(Path(root) / "training" / "flow", pairs, out_dir / f"gt_{dstype}", ".flo") \
                    if max_pairs else Path(root) / "training" / "flow"
                m = eval_flow.evaluate_dirs(pred_dir, gt_dir, "sintel")
                result[dstype] = {k: m[k] for k in ("epe", "1px", "3px", "5px", "n_images")}
            else:
                sub.update({(dstype, k): v for k, v in preds.items()})
        if sub:
            result["submission"] = str(write_sintel_submission(out_dir, sub))
            result["files"] = len(sub)
    elif dataset in ("kitti_train", "kitti_test"):
        split = "training" if dataset == "kitti_train" else "testing"
        pairs = kitti_pairs(root, split)[:max_pairs or None]
        preds, seconds = run_pairs(predictor, pairs)
        n_pairs = len(pairs)
        if split == "training":
            pred_dir = out_dir / "kitti15"
            pred_dir.mkdir(parents=True, exist_ok=True)
            for name, flow in preds.items():
                eval_flow.write_kitti_png(pred_dir / f"{name}.png", flow)
            gt_dir = _subset_gt(Path(root) / "training" / "flow_occ", pairs, out_dir / "gt_kitti", ".png") \
                if max_pairs else Path(root) / "training" / "flow_occ"
            m = eval_flow.evaluate_dirs(pred_dir, gt_dir, "kitti")
            result["kitti"] = {k: m[k] for k in ("kitti_epe", "fl_all", "epe_pooled", "n_images")}
            empty = [n for n, e in zip(m["images"], m["per_image_epe"]) if np.isnan(e)]
            if empty:
                result["kitti"]["images_without_valid_pixels"] = empty
        else:
            result["zip"] = str(write_kitti_submission(out_dir, preds))
            result["files"] = len(preds)
    elif dataset in ("chairs_val", "things_val"):
        src = dataset.split("_")[0]
        pairs = dataset_pairs(dataset, {**(paths or {}), src: root})[:max_pairs or None]
        preds, seconds = run_pairs(predictor, pairs)
        n_pairs = len(pairs)
        epes = []
        for pair in pairs:
            gt, valid = read_gt(pair.flow, pair.fmt, pair.nonfinite_ok)
            epes.append(eval_flow.endpoint_error(preds[pair.name], gt)[valid])
        result[src] = eval_flow.pooled_metrics(epes)
    else:
        raise ValueError(f"unknown test dataset {dataset!r}; choose from {TEST_DATASETS}")
    result["pairs"] = n_pairs
    result["fps"] = n_pairs / seconds if seconds > 0 else float("nan")
    return result


def _subset_gt(gt_root: Path, pairs: list[FlowPair], dest: Path, ext: str) -> Path:
    """With --max-pairs: a folder of links to the GT of just these pairs (eval/flow.py scores
    every GT file it finds)."""
    for pair in pairs:
        link = dest / f"{pair.name}{ext}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(pair.flow.resolve())
    return dest


def summary_line(result: dict, tiny: bool) -> str:
    parts = [result["dataset"]]
    for key in ("clean", "final", "chairs", "things"):
        if key in result:
            parts.append(f"{key} EPE {result[key]['epe']:.3f}")
    if "kitti" in result:
        parts.append(f"KITTI EPE {result['kitti']['kitti_epe']:.3f} Fl-all {result['kitti']['fl_all']:.2f}%")
    if "files" in result:
        parts.append(f"{result['files']} submission files")
    s = result["settings"]
    parts.append(f"{result['pairs']} pairs, {result['fps']:.2f} FPS")
    if "crop" in s:
        parts.append(f"{s['inference']} crop {s['crop'][0]}x{s['crop'][1]} overlap {s['overlap']}"
                     f" downscale {s['downscale']}")
    return ", ".join(parts) + (TINY_TAG if tiny else "")


def test(args) -> dict:
    """The `test` command."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor, ckpt, tiny = None, {}, False
    if not args.zero_flow:
        if not args.ckpt:
            raise SystemExit("give --ckpt (a flow checkpoint or run folder) or --zero-flow")
        model, ckpt = load_flow_checkpoint(args.ckpt, device)
        tiny = model.flow_cfg.encoder == "tiny"
        predictor = Predictor(model, device, args.overlap, args.inference, args.downscale,
                              args.tile_batch, amp=args.amp and device.type == "cuda")
    if len(args.data_path) != len(args.dataset):
        raise SystemExit(f"give one --data-path per --dataset ({len(args.dataset)} datasets, "
                         f"{len(args.data_path)} paths)")
    results = {}
    for dataset, root in zip(args.dataset, args.data_path):    # one model load for all of them
        out = Path(args.output) / (dataset if len(args.dataset) > 1 else "")
        result = evaluate(dataset, root, predictor, out, args.max_pairs)
        result["ckpt"] = str(args.ckpt) if args.ckpt else None
        result["protocol"] = ckpt.get("config", {}).get("protocol")
        result["tiny_scale"] = tiny
        (out / "metrics.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(summary_line(result, tiny), flush=True)
        results[dataset] = result
    return results if len(results) > 1 else result


# --------------------------------------------------------------------------------------------
# 8. `synthetic`: the official layouts written from the synthetic world's exact flow
# --------------------------------------------------------------------------------------------
#
# Every frame and flow comes from `data.World` (one source of synthetic truth): frame t of a
# world and `World.flow(t, t + 1)`, dense (occluded pixels included, like Sintel's `flow` and
# KITTI's `flow_occ`). The "final" pass is the clean frame blurred plus noise. KITTI / HD1K keep
# ~40% of the pixels valid (one KITTI pair has none). Counts per scale:
SYNTH_SCALES = {
    # chairs (train, val), things sequences x frames, sintel train sequences x frames, kitti
    # train / test pairs, hd1k frames
    "test": dict(chairs=(4, 2), things=(2, 10), sintel=(2, 4), kitti=(3, 2), hd1k=3, empty_kitti=True),
    "tiny": dict(chairs=(160, 16), things=(8, 10), sintel=(4, 8), kitti=(12, 4), hd1k=6, empty_kitti=False),
}
# World seeds: seed * 7919 + SEED_BASE[kind] + index (index: pair, sequence x camera, ...)
SEED_BASE = {"chairs": 0, "things": 1000, "sintel": 5000, "sintel_test": 5100, "kitti": 9000,
             "kitti_test": 9100, "hd1k": 12000}
SYNTH_SIZE = (96, 64)                    # (W, H), the spec's "about 64 x 96"
KITTI_SIZES = [(96, 64), (100, 60), (90, 72)]


# Faster than the world's defaults (sprites ~3 px, camera ~0.4 px per frame at 96 px): about
# 5 px mean flow (a third of a 16-px patch; Chairs / Sintel flows at their crops are about a
# patch), the camera pan a large part of it. At ~3 px (speed 0.05, pan 0.03) the tiny model did
# not beat zero flow on held-out worlds, with or without the correlation (README, the probe).
WORLD_KNOBS = dict(speed=0.1, pan_speed=0.08)


def synthetic_world(kind: str, index: int, frames: int, seed: int = 0, size=SYNTH_SIZE):
    """The world behind one synthetic pair / sequence (tests rebuild it to check the files)."""
    from data import World
    return World(seed * 7919 + SEED_BASE[kind] + index, size=size, num_frames=frames, **WORLD_KNOBS)


def final_pass(frame: np.ndarray, seed: int) -> np.ndarray:
    """Sintel-style "final": Gaussian blur (radius 0.7) plus noise (std 3), deterministic."""
    blurred = np.array(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(0.7)), np.float32)
    noise = np.random.default_rng(seed).normal(0, 3.0, frame.shape)
    return np.clip(np.round(blurred + noise), 0, 255).astype(np.uint8)


def _save_png(path: Path, img: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _sparse_valid(shape, seed: int, fraction: float = 0.4) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < fraction


def write_synthetic_chairs(root, n_train: int, n_val: int, seed: int = 0) -> Path:
    """FlyingChairs: `data/NNNNN_img{1,2}.ppm`, `NNNNN_flow.flo`, `chairs_split.txt` (1/2)."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    split = [1] * n_train + [2] * n_val
    split = [split[i] for i in np.random.default_rng(seed).permutation(len(split))]  # interleaved
    for i in range(len(split)):
        w = synthetic_world("chairs", i, 2, seed)
        stem = root / "data" / f"{i + 1:05d}"
        Image.fromarray(w.frame(0)).save(f"{stem}_img1.ppm")
        Image.fromarray(w.frame(1)).save(f"{stem}_img2.ppm")
        eval_flow.write_flo(f"{stem}_flow.flo", w.flow(0, 1)[0])
    (root / "chairs_split.txt").write_text("".join(f"{s}\n" for s in split))
    return root


def write_synthetic_things(root, n_seq: int, n_frames: int, seed: int = 0, first: int = 6) -> Path:
    """FlyingThings3D full layout: TRAIN/A/NNNN (n_seq) and TEST/A/0000, left and right
    cameras (two worlds), clean and final passes, into_future / into_past PFMs (file t: from
    frame t), little- and big-endian alternating. Frames numbered from `first` (0006...)."""
    root = Path(root)
    k = 0
    for split, count in (("TRAIN", n_seq), ("TEST", 1)):
        for s in range(count):
            for cam in ("left", "right"):
                w = synthetic_world("things", k, n_frames, seed)
                k += 1
                rel = Path(split) / "A" / f"{s:04d}"
                for t in range(n_frames):
                    f = first + t
                    frame = w.frame(t)
                    _save_png(root / "frames_cleanpass" / rel / cam / f"{f:04d}.png", frame)
                    _save_png(root / "frames_finalpass" / rel / cam / f"{f:04d}.png", final_pass(frame, k * 1000 + t))
                    for direction, tag, dt in (("into_future", "Future", 1), ("into_past", "Past", -1)):
                        if 0 <= t + dt < n_frames:
                            path = (root / "optical_flow" / rel / direction / cam
                                    / f"OpticalFlowInto{tag}_{f:04d}_{cam[0].upper()}.pfm")
                            path.parent.mkdir(parents=True, exist_ok=True)
                            write_things_pfm(path, w.flow(t, t + dt)[0], little_endian=(t % 2 == 0))
    return root


def write_synthetic_things_subset(root, n_seq: int, n_frames: int, seed: int = 0) -> Path:
    """FlyingThings3D subset layout: `{train,val}/image_{clean,final}/{left,right}/NNNNNNN.png`,
    `{train,val}/flow/{left,right}/{into_future,into_past}/NNNNNNN.flo`; sequences numbered
    consecutively, no flow file across a sequence boundary; the first into_future file of
    train/left holds NaN pixels (as some real subset files do)."""
    root = Path(root)
    k = 0
    for split, count in (("train", n_seq), ("val", 1)):
        base = 0
        for s in range(count):
            for cam in ("left", "right"):
                w = synthetic_world("things", k, n_frames, seed)
                k += 1
                for t in range(n_frames):
                    f = base + t
                    frame = w.frame(t)
                    _save_png(root / split / "image_clean" / cam / f"{f:07d}.png", frame)
                    _save_png(root / split / "image_final" / cam / f"{f:07d}.png", final_pass(frame, k * 1000 + t))
                    for direction, dt in (("into_future", 1), ("into_past", -1)):
                        if 0 <= t + dt < n_frames:
                            flow = w.flow(t, t + dt)[0].copy()
                            if (split, cam, direction, f) == ("train", "left", "into_future", 0):
                                flow[:2, :3] = np.nan
                            path = root / split / "flow" / cam / direction / f"{f:07d}.flo"
                            path.parent.mkdir(parents=True, exist_ok=True)
                            eval_flow.write_flo(path, flow)
            base += n_frames
    return root


def write_synthetic_sintel(root, n_seq: int, n_frames: int, seed: int = 0) -> Path:
    """MPI-Sintel: `training/{clean,final}/seq_K/frame_NNNN.png` (1-based), `training/flow/
    seq_K/frame_NNNN.flo` (N -> N+1), and one test sequence `test/{clean,final}/test_0/`."""
    root = Path(root)
    for split, names in (("training", [f"seq_{i}" for i in range(n_seq)]), ("test", ["test_0"])):
        for j, name in enumerate(names):
            w = synthetic_world("sintel" if split == "training" else "sintel_test", j, n_frames, seed)
            for t in range(n_frames):
                frame = w.frame(t)
                _save_png(root / split / "clean" / name / f"frame_{t + 1:04d}.png", frame)
                _save_png(root / split / "final" / name / f"frame_{t + 1:04d}.png", final_pass(frame, j * 1000 + t))
                if split == "training" and t + 1 < n_frames:
                    path = root / "training" / "flow" / name / f"frame_{t + 1:04d}.flo"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    eval_flow.write_flo(path, w.flow(t, t + 1)[0])
    return root


def write_synthetic_kitti(root, n_train: int, n_test: int, seed: int = 0, empty: bool = True) -> Path:
    """KITTI-2015: `{training,testing}/image_2/NNNNNN_{10,11}.png` at three sizes,
    `training/flow_occ/NNNNNN_10.png` with ~40% valid pixels; with `empty`, pair 1 has none."""
    root = Path(root)
    for split, count in (("training", n_train), ("testing", n_test)):
        for i in range(count):
            w = synthetic_world("kitti" if split == "training" else "kitti_test", i, 2, seed,
                                KITTI_SIZES[i % 3])
            _save_png(root / split / "image_2" / f"{i:06d}_10.png", w.frame(0))
            _save_png(root / split / "image_2" / f"{i:06d}_11.png", w.frame(1))
            if split == "training":
                flow = w.flow(0, 1)[0]
                valid = _sparse_valid(flow.shape[:2], seed + i) & (i != 1 or not empty)
                path = root / "training" / "flow_occ" / f"{i:06d}_10.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                eval_flow.write_kitti_png(path, np.where(valid[..., None], flow, 0.0), valid)
    return root


def write_synthetic_hd1k(root, n_frames: int, seed: int = 0) -> Path:
    """HD1K: `hd1k_input/image_2/000000_FFFF.png`, `hd1k_flow_gt/flow_occ/000000_FFFF.png`."""
    root = Path(root)
    w = synthetic_world("hd1k", 0, n_frames, seed)
    for t in range(n_frames):
        _save_png(root / "hd1k_input" / "image_2" / f"000000_{t:04d}.png", w.frame(t))
        if t + 1 < n_frames:
            flow = w.flow(t, t + 1)[0]
            valid = _sparse_valid(flow.shape[:2], seed + 77 + t)
            path = root / "hd1k_flow_gt" / "flow_occ" / f"000000_{t:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            eval_flow.write_kitti_png(path, np.where(valid[..., None], flow, 0.0), valid)
    return root


def write_synthetic(out, scale: str = "test", seed: int = 0) -> dict:
    """All layouts under `out`: FlyingChairs, FlyingThings3D (full), FlyingThings3D_subset,
    Sintel, KITTI2015, HD1K. Returns {dataset: root}."""
    n = SYNTH_SCALES[scale]
    out = Path(out)
    return {"chairs": write_synthetic_chairs(out / "FlyingChairs", *n["chairs"], seed=seed),
            "things": write_synthetic_things(out / "FlyingThings3D", *n["things"], seed=seed),
            "things_subset": write_synthetic_things_subset(out / "FlyingThings3D_subset", *n["things"], seed=seed),
            "sintel": write_synthetic_sintel(out / "Sintel", *n["sintel"], seed=seed),
            "kitti": write_synthetic_kitti(out / "KITTI2015", *n["kitti"], seed=seed, empty=n["empty_kitti"]),
            "hd1k": write_synthetic_hd1k(out / "HD1K", n["hd1k"], seed=seed)}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="one stage of the C -> T -> S -> K schedule")
    tr.add_argument("--stage", required=True, choices=list(STAGES))
    tr.add_argument("--model", default="base", choices=sorted(FLOW_PRESETS))
    for name in DATA_ARGS:
        tr.add_argument(f"--{name}", default="", help=f"{name} root in its official layout")
    tr.add_argument("--chairs-split", default="", help="default: <chairs>/chairs_split.txt")
    tr.add_argument("--pretrained", default="", help="backbone: DropMAE / TwinMAE / MAE / ours")
    tr.add_argument("--init", default="", help="the previous stage's flow checkpoint or run folder")
    tr.add_argument("--output", required=True, help="run folder (config, log.jsonl, checkpoints)")
    tr.add_argument("--resume", default="", help="'auto' (latest in --output) or a path")
    tr.add_argument("--steps", type=dropmae.positive_int, default=None, help="default: the stage's")
    tr.add_argument("--lr", type=float, default=None, help="absolute lr at the effective batch")
    tr.add_argument("--head-lr-mult", type=float, default=1.0)
    tr.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 1000)")
    tr.add_argument("--effective-batch", type=dropmae.positive_int, default=None, help="default 8")
    tr.add_argument("--batch-size", type=dropmae.positive_int, default=8, help="per process")
    tr.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"))
    tr.add_argument("--corr-radius", type=int, default=None,
                    help="local correlation of the stride-16 tokens, radius in tokens (0: off, "
                         "the main table; default: the preset's)")
    tr.add_argument("--corr-groups", type=dropmae.positive_int, default=None,
                    help="channel groups of that correlation (default: the preset's)")
    tr.add_argument("--corr-match", action="store_const", const=True, default=None,
                    help="add the correlation's soft-argmax flow to the head's (needs --corr-radius)")
    tr.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="log2 scale range of the spatial augmentation (default: the stage's)")
    tr.add_argument("--aug", nargs="+", default=None, metavar="KEY=VALUE",
                    help="AugParams overrides, e.g. eraser_prob=0 stretch_prob=0 colour=0")
    tr.add_argument("--workers", type=int, default=4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--val-every", type=int, default=5000, help="0: no validation")
    tr.add_argument("--val-pairs", type=int, default=0, help="0: the whole split")
    tr.add_argument("--save-every", type=dropmae.positive_int, default=5000)
    tr.add_argument("--keep-last", type=int, default=2, help="numbered checkpoints kept (0: all)")
    tr.add_argument("--log-every", type=dropmae.positive_int, default=50)
    tr.add_argument("--max-steps", type=dropmae.positive_int, default=None,
                    help="stop at this step and save, keeping the stage's schedule (a --resume "
                         "auto continues exactly)")
    tr.add_argument("--no-amp", action="store_true", help="fp32 on GPU (bf16 autocast by default)")
    tr.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    tr.add_argument("--cpu", action="store_true")

    te = sub.add_parser("test", help="predict a dataset, write official files, score, FPS")
    te.add_argument("--dataset", required=True, nargs="+", choices=TEST_DATASETS,
                    help="one or more; with several, each writes under <output>/<dataset>/")
    te.add_argument("--data-path", required=True, nargs="+", help="the root of each dataset")
    te.add_argument("--ckpt", default="", help="flow checkpoint or run folder")
    te.add_argument("--zero-flow", action="store_true", help="score the zero-flow baseline")
    te.add_argument("--output", required=True)
    te.add_argument("--overlap", type=float, default=0.9)
    te.add_argument("--inference", choices=("tiled", "full"), default="tiled")
    te.add_argument("--downscale", type=float, default=1.0, help="predict at 1/f, upsample x f")
    te.add_argument("--tile-batch", type=int, default=16)
    te.add_argument("--max-pairs", type=int, default=0, help="first N pairs per pass (0: all)")
    te.add_argument("--device", default="")
    te.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")

    sy = sub.add_parser("synthetic", help="write the dataset layouts from the synthetic world")
    sy.add_argument("--out", required=True)
    sy.add_argument("--scale", choices=sorted(SYNTH_SCALES), default="test")
    sy.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "test":
        return test(args)
    roots = write_synthetic(args.out, args.scale, args.seed)
    print("wrote " + ", ".join(str(r) for r in roots.values()))
    return roots


if __name__ == "__main__":
    main()
