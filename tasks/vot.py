"""DropTrack: OSTrack-384 (one-stream ViT-B/16 with candidate elimination) on DropMAE weights.

Reproduces the visual-object-tracking results of DropMAE (Wu et al., CVPR 2023; the fine-tuning
code is github jimmy-dq/DropTrack, an OSTrack fork). Exact behaviour: specs/vot.md. The file
reads in data-flow order: configs, candidate elimination, backbone, center head, model, losses
and schedules, checkpoint import, training, the tracker, inference and its official formats,
the command line. Datasets, crops and training pairs live in `tasks/vot_data.py`.

Commands:
    # CPU smoke run on synthetic data written in the GOT-10k and LaSOT layouts
    python tasks/vot.py synth --out /tmp/vot_synth            # GOT-10k: 32 train, 8 val sequences
    #   (of the synthetic data.World; its knobs as --world KEY=VALUE, e.g. --world num_objects=2)
    python tasks/vot.py train --config got10k --model tiny --data-path /tmp/vot_synth/got10k \\
        --epochs 2 --samples-per-epoch 64 --batch-size 8 --workers 0 --output runs/vot_smoke
    python tasks/vot.py test --dataset got10k_val --data-path /tmp/vot_synth/got10k \\
        --ckpt runs/vot_smoke/checkpoint-0002.pth --output runs/vot_smoke/test --workers 2

    # the tiny recipe (TINY_TRAIN: 150 epochs x 64 pairs, batch 8, lr 1e-3; ~2 min on 2 CPU
    # cores, no pre-training): synthetic val AO 11 vs 23 for a box that stays at the init box
    # (tiny scale; see TINY_TRAIN: the recipe is not yet tuned for the synthetic world).
    # One thread: two OpenMP threads on a 2-core machine shared with other jobs stall (6x slower)
    OMP_NUM_THREADS=1 python tasks/vot.py train --config got10k --model tiny \\
        --data-path /tmp/vot_synth/got10k --workers 0 --output runs/vot_tiny
    python tasks/vot.py test --dataset got10k_val --data-path /tmp/vot_synth/got10k \\
        --ckpt runs/vot_tiny/checkpoint-0150.pth --output runs/vot_tiny/test --workers 2

    # the paper: 4 GPUs x batch 32; GOT-10k one-shot protocol (100 epochs, ~6 h on 4 A100)
    torchrun --nproc_per_node=4 tasks/vot.py train --config got10k \\
        --data-path got10k=/data/got10k --pretrained dropmae_k700_vitb.pth --output runs/droptrack_got10k
    # all data (LaSOT, GOT-10k vottrain, COCO 2017, TrackingNet; 300 epochs); a bare root
    # means /data/{lasot,got10k,coco,trackingnet}
    torchrun --nproc_per_node=4 tasks/vot.py train --config full --data-path /data \\
        --pretrained dropmae_k700_vitb.pth --output runs/droptrack_full
    # add --resume auto to continue a run from its latest checkpoint

    python tasks/vot.py test --dataset got10k_test --data-path /data/got10k \\
        --ckpt runs/droptrack_got10k/checkpoint-0100.pth --output results --workers 4
    python tasks/vot.py test --dataset lasot|lasot_ext|tnl2k|trackingnet --data-path ROOT \\
        --ckpt runs/droptrack_full/checkpoint-0300.pth --output results --workers 4
    # an official DropTrack/OSTrack `.pth.tar` also loads (`--trust-pickle`: it pickles objects)

Published (DropTrack-K700, README): GOT-10k AO 75.9, LaSOT AUC 71.8, LaSOT_ext 52.7,
TrackingNet 84.1, TNL2K 56.9.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import world_knob  # noqa: E402
from dropmae import ViTEncoder, get_config  # noqa: E402

try:                                    # run as `python tasks/vot.py` or imported as `tasks.vot`
    from tasks import vot_data as vd
except ImportError:                     # pragma: no cover
    import vot_data as vd


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class TrackConfig:
    """Model and crop geometry (specs/vot.md A.1-A.3)."""
    encoder: str = "base"              # dropmae preset of the backbone
    template_size: int = 192           # 12x12 tokens
    search_size: int = 384             # 24x24 tokens
    template_factor: float = 2.0       # crop side = ceil(sqrt(w*h) * factor)
    search_factor: float = 5.0
    ce_loc: tuple = (3, 6, 9)          # 0-based blocks with candidate elimination
    ce_keep: float = 0.7               # search tokens kept at each of them (inference)
    head_channels: int = 256           # center head widths 256, 128, 64, 32
    drop_path: float = 0.1             # stochastic depth while fine-tuning


TRACK_PRESETS = {
    "base": TrackConfig(),                                           # the paper (OSTrack-384)
    "tiny": TrackConfig(encoder="tiny", template_size=64, search_size=128, ce_loc=(1, 2),
                        head_channels=32, drop_path=0.0),            # tests and CPU smoke runs
}

# The two official configs (`experiments/ostrack/vitb_384_mae_ce_32x4_{got10k_ep100,ep300}.yaml`).
COMMON = dict(lr=2.5e-4, backbone_mult=0.1, weight_decay=1e-4, batch_size=32, samples_per_epoch=60000,
              val_samples=10000, val_every=20, grad_clip=0.1, ce_start=20, max_gap=200, seed=42,
              giou_weight=2.0, l1_weight=5.0, focal_weight=1.0)
TRAIN_PRESETS = {
    "got10k": dict(COMMON, train_sets={"got10k_train": 1}, val_set="got10k_val",
                   epochs=100, lr_drop=80, ce_warm=50),
    "full": dict(COMMON, train_sets={"lasot_train": 1, "got10k_vottrain": 1, "coco17": 1, "trackingnet": 1},
                 val_set="got10k_votval", epochs=300, lr_drop=240, ce_warm=80),
}
MILESTONES = ("lr_drop", "ce_start", "ce_warm")   # in epochs; they scale with the run's length

# The tiny model's smoke-scale recipe (`--model tiny`, CPU, the synthetic data of `synth`, no
# pre-training): 150 epochs x 64 pairs at batch 8, ~2 min on 2 CPU cores. On the renderer that
# preceded data.World (one pastel block of a fixed 28x22 size, no distractors) it reached
# synthetic GOT-10k val AO 56.1 / 72.5 (seeds 42 / 1) vs 18.6 for a box that stays at the init
# box. On the synthetic world (32 train / 8 val sequences of 24 frames, default knobs: 2-5
# sprites of varying size, spin and zoom) it reaches val AO 11.0 (seed 42, train-pair IoU 0.3)
# vs 22.8 for the static box; with --world num_objects=1 (no distractors) 10.8 vs 26.6: it does
# not learn to track there yet and is to be re-tuned. 24 epochs x 64 pairs were far too few on
# the old data (AO ~4), and 2 training sequences were memorised (val AO 5).
TINY_TRAIN = dict(epochs=150, samples_per_epoch=64, batch_size=8, lr=1e-3, val_samples=64)


def resolve_train_config(config: str, model: str, overrides: dict) -> dict:
    """Training config = the paper preset, then TINY_TRAIN for `--model tiny`, then the
    command-line `overrides` (None = not given).

    The epoch milestones (lr_drop, ce_start, ce_warm) are the paper's for the preset's epochs
    E0 (100 or 300); a run of E epochs scales each to round(m * E / E0) unless it is given, so a
    shortened run keeps the paper's shape: candidate elimination trained from 20 % of the run,
    keep rate 0.7 from 70 %, lr drop after 80 % (got10k). Unscaled, a run shorter than
    ce_start + ce_warm never trains at the keep rate the tracker uses (0.7 at every CE block),
    and a tiny model trained only with keep 1.0 loses the target once tokens are eliminated.
    """
    preset = TRAIN_PRESETS[config]
    cfg = dict(preset, **(TINY_TRAIN if model == "tiny" else {}))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for key in MILESTONES:
        if overrides.get(key) is None:
            cfg[key] = round(preset[key] * cfg["epochs"] / preset["epochs"])
    if cfg["lr_drop"] < 1:
        raise ValueError(f"--lr-drop {cfg['lr_drop']}: the StepLR step size must be >= 1 epoch")
    return cfg


# --------------------------------------------------------------------------------------------
# Candidate elimination (OSTrack `layers/attn_blocks.py::CEBlock`, `candidate_elimination`)
# --------------------------------------------------------------------------------------------

def eliminate(tokens: torch.Tensor, lens_t: int, index: torch.Tensor, score: torch.Tensor, keep: int):
    """Keep the `keep` search tokens with the highest score.

    tokens (B, lens_t + Ls, D), template first; index (B, Ls) original grid position of each
    search token; score (B, Ls). Returns tokens (B, lens_t + keep, D) and index (B, keep), the
    kept search tokens in descending score order (as the official `torch.sort`).
    """
    order = torch.sort(score, dim=1, descending=True).indices[:, :keep]            # (B, keep)
    search = tokens[:, lens_t:].gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[2]))
    return torch.cat([tokens[:, :lens_t], search], dim=1), index.gather(1, order)


def restore_tokens(search: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """Kept search tokens (B, L_keep, D) back to their positions in a zero grid (B, length, D)."""
    B, _, D = search.shape
    out = search.new_zeros(B, length, D)
    return out.scatter(1, index.unsqueeze(-1).expand(-1, -1, D), search)


def template_centre_index(g: int) -> int:
    """Token index of the template's centre (`CE_TEMPLATE_RANGE='CTR_POINT'`) on a g x g grid.

    `ce_utils.py::generate_mask_cond` lists row = col = 3, 5, 3, 6 for g = 8, 12, 7, 14 (and
    raises otherwise): (g - 1) // 2, the upper-left of the four centre cells for an even g.
    """
    c = (g - 1) // 2
    return c * g + c


def ce_block(blk, tokens, lens_t: int, index, keep_rate: float, ctr: int):
    """One block with candidate elimination between attention and MLP.

    The score of a search token is the attention the template's centre token (index `ctr`,
    `CE_TEMPLATE_RANGE='CTR_POINT'`) pays to it, averaged over heads; ceil(keep_rate * Ls)
    tokens survive. Only that one attention row is formed explicitly; the block's output uses
    the fused attention. Returns tokens (B, lens_t + L_keep, D), index (B, L_keep).
    """
    B, N, C = tokens.shape
    attn = blk.attn
    q, k, v = attn.qkv(blk.norm1(tokens)).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)                                  # (B, h, N, hd)
    tokens = tokens + blk.drop_path(attn.proj(out.transpose(1, 2).reshape(B, N, C)))
    Ls = N - lens_t
    keep = math.ceil(keep_rate * Ls)
    if keep < Ls:
        with torch.no_grad():                  # the ranking is not differentiated (as official)
            row = ((q[:, :, ctr:ctr + 1] @ k.transpose(-2, -1)) * attn.scale).softmax(-1)  # (B, h, 1, N)
            score = row[:, :, 0, lens_t:].mean(dim=1)                              # (B, Ls)
        tokens, index = eliminate(tokens, lens_t, index, score, keep)
    return tokens + blk.drop_path(blk.mlp(blk.norm2(tokens))), index


def ce_keep_rate(epoch: int, start: int = 20, warm: int = 50, base: float = 0.7) -> float:
    """Training keep rate of epoch `epoch` (1-based, as the official trainer counts).

    epoch < start: 1.0 (no elimination); then a cosine from 1.0 down to `base` over `warm`
    epochs; afterwards `base` (`ce_utils.py::adjust_keep_rate` with ITERS_PER_EPOCH=1).
    """
    if epoch < start:
        return 1.0
    if epoch >= start + warm:
        return base
    return base + (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / warm))


# --------------------------------------------------------------------------------------------
# Backbone: the DropMAE encoder with trainable 12x12 / 24x24 tables and candidate elimination
# --------------------------------------------------------------------------------------------

class CEViT(ViTEncoder):
    """ViTEncoder + `pos_embed_z` (1, gz*gz, D) and `pos_embed_x` (1, gx*gx, D).

    Both new tables start as the loaded 14x14 table resized bicubically (`finetune_track`,
    call it again after loading pre-trained weights) and are trained; `pos_embed` itself is
    then unused. Key names equal OSTrack's `backbone.*` (minus its unused `cls_token`).
    """

    def __init__(self, cfg, track: TrackConfig):
        super().__init__(cfg)
        p = cfg.patch_size
        self.grid_z, self.grid_x = track.template_size // p, track.search_size // p
        self.ce_loc, self.ce_keep = tuple(track.ce_loc), track.ce_keep
        self.ctr_index = template_centre_index(self.grid_z)
        self.pos_embed_z = nn.Parameter(torch.zeros(1, self.grid_z ** 2, cfg.embed_dim))
        self.pos_embed_x = nn.Parameter(torch.zeros(1, self.grid_x ** 2, cfg.embed_dim))
        self.finetune_track()

    @torch.no_grad()
    def finetune_track(self):
        """pos_embed (cls row dropped, g x g) -> bicubic -> pos_embed_z, pos_embed_x."""
        self.pos_embed_z.copy_(self.spatial_pos_embed((self.grid_z, self.grid_z)))
        self.pos_embed_x.copy_(self.spatial_pos_embed((self.grid_x, self.grid_x)))

    def forward(self, z: torch.Tensor, x: torch.Tensor, keep_rate: float | None = None):
        """z (B, 3, Sz, Sz), x (B, 3, Sx, Sx) -> search features (B, gx*gx, D) on the full grid
        (eliminated positions are zeros, filled after the final norm) and the kept index (B, L_keep).

        keep_rate None: each CE block keeps `ce_keep` (inference); a number overrides all of
        them (the training schedule; 1.0 disables elimination).
        """
        # Frame vectors as DropTrack maps them: `_z` on the template, `_x` on the search region.
        # (In DropMAE pre-training `_x` was the earlier frame; DropTrack swaps the roles in time.)
        z = self.patch_embed(z) + self.pos_embed_z + self.temporal_pos_embed_z       # (B, Nz, D)
        x = self.patch_embed(x) + self.pos_embed_x + self.temporal_pos_embed_x       # (B, Nx, D)
        lens_t, Nx = z.shape[1], x.shape[1]
        tokens = torch.cat([z, x], dim=1)                                            # z first
        index = torch.arange(Nx, device=x.device).expand(x.shape[0], -1)
        for i, blk in enumerate(self.blocks):
            if i in self.ce_loc:
                rate = self.ce_keep if keep_rate is None else keep_rate
                tokens, index = ce_block(blk, tokens, lens_t, index, rate, self.ctr_index)
            else:
                tokens = blk(tokens)
        tokens = self.norm(tokens)
        return restore_tokens(tokens[:, lens_t:], index, Nx), index


# --------------------------------------------------------------------------------------------
# Center head (OSTrack `layers/head.py::CenterPredictor`)
# --------------------------------------------------------------------------------------------

def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CenterHead(nn.Module):
    """Three branches (ctr, offset, size), each 4 x (Conv3x3+BN+ReLU) D->C->C/2->C/4->C/8, then 1x1.

    Module names `conv{1..5}_{ctr,offset,size}` are OSTrack's, so its `box_head.*` keys load.
    """

    def __init__(self, inplanes: int, channels: int, feat_sz: int):
        super().__init__()
        self.feat_sz = feat_sz
        widths = [inplanes, channels, channels // 2, channels // 4, channels // 8]
        for branch, n_out in (("ctr", 1), ("offset", 2), ("size", 2)):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{branch}", conv_bn_relu(widths[i], widths[i + 1]))
            setattr(self, f"conv5_{branch}", nn.Conv2d(widths[4], n_out, 1))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _branch(self, x, name):
        for i in range(1, 6):
            x = getattr(self, f"conv{i}_{name}")(x)
        return x

    def forward(self, feat: torch.Tensor):
        """feat (B, D, g, g) -> score (B, 1, g, g), size (B, 2, g, g) (w, h of the crop), offset (B, 2, g, g)."""
        score = self._branch(feat, "ctr").sigmoid().clamp(1e-4, 1 - 1e-4)
        size = self._branch(feat, "size").sigmoid().clamp(1e-4, 1 - 1e-4)
        return score, size, self._branch(feat, "offset")


def decode_boxes(score: torch.Tensor, size: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Box at the score argmax (`cal_bbox`) -> (B, 4) (cx, cy, w, h) in [0, 1] of the crop.

    cx = (col + dx) / g, cy = (row + dy) / g, (w, h) = size at that cell.
    """
    B, _, g, _ = score.shape
    idx = score.flatten(1).argmax(dim=1)                                             # (B,)
    gather = lambda m: m.flatten(2).gather(2, idx.view(B, 1, 1).expand(-1, m.shape[1], 1))[..., 0]
    off, wh = gather(offset), gather(size)                                           # (B, 2)
    cx = ((idx % g).to(off.dtype) + off[:, 0]) / g
    cy = (torch.div(idx, g, rounding_mode="floor").to(off.dtype) + off[:, 1]) / g
    return torch.cat([cx[:, None], cy[:, None], wh], dim=1)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class DropTrack(nn.Module):
    """`backbone` (CEViT) + `box_head` (CenterHead); the state dict matches OSTrack's `net`."""

    def __init__(self, track: TrackConfig):
        super().__init__()
        self.track = track
        enc = get_config(track.encoder, drop_path=track.drop_path)
        self.backbone = CEViT(enc, track)
        self.box_head = CenterHead(enc.embed_dim, track.head_channels, track.search_size // enc.patch_size)

    def forward(self, template: torch.Tensor, search: torch.Tensor, keep_rate: float | None = None) -> dict:
        """template (B, 3, Sz, Sz), search (B, 3, Sx, Sx), normalised -> dict of score_map
        (B, 1, g, g), size_map, offset_map (B, 2, g, g), pred_boxes (B, 4) cxcywh in [0, 1]
        decoded at the predicted argmax (also while training), kept_index (B, L_keep)."""
        feat, kept = self.backbone(template, search, keep_rate)                      # (B, g*g, D)
        g = self.box_head.feat_sz
        feat = feat.transpose(1, 2).reshape(feat.shape[0], -1, g, g)                 # (B, D, g, g)
        score, size, offset = self.box_head(feat)
        return {"score_map": score, "size_map": size, "offset_map": offset,
                "pred_boxes": decode_boxes(score, size, offset), "kept_index": kept}


def build_model(name: str = "base", **overrides) -> DropTrack:
    return DropTrack(dataclasses.replace(TRACK_PRESETS[name], **overrides))


# --------------------------------------------------------------------------------------------
# Losses (OSTrack `actors/ostrack.py`, `utils/focal_loss.py`, `utils/heapmap_utils.py`)
# --------------------------------------------------------------------------------------------

def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired GIoU and IoU of (N, 4) xyxy boxes -> (N,), (N,) (no epsilon, as the official)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    area = hull[:, 0] * hull[:, 1]
    return iou - (area - union) / area, iou


def gaussian_radius(w: torch.Tensor, h: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CornerNet radius (min of its three quadratic roots, with the original code's `/ 2`)."""
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.min(r1, torch.min(r2, r3))


def gaussian_target(box_norm: torch.Tensor, g: int) -> torch.Tensor:
    """Focal-loss target: box_norm (B, 4) xywh / crop side -> (B, g, g).

    Centre cell = round((x + w/2) g, (y + h/2) g) (round half to even, torch); radius r =
    int(max(gaussian_radius(w g, h g), 0)); value exp(-d^2 / (2 sigma^2)), sigma = (2r + 1) / 6,
    on the (2r+1)^2 square around the centre clipped to the grid, 0 elsewhere; exactly 1 at the
    centre only (a centre outside the grid gives no peak).
    """
    box = box_norm.detach().float().cpu() * g
    centre = (box[:, :2] + box[:, 2:] / 2).round()                                   # (B, 2)
    r = gaussian_radius(box[:, 2], box[:, 3]).clamp(min=0).to(torch.int64).double()  # (B,)
    sigma = (2 * r + 1) / 6
    cells = torch.arange(g, dtype=torch.float64)
    dx = cells[None, :] - centre[:, :1].double()                                     # (B, g)
    dy = cells[None, :] - centre[:, 1:].double()
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2                                   # (B, g, g)
    inside = (dy.abs()[:, :, None] <= r[:, None, None]) & (dx.abs()[:, None, :] <= r[:, None, None])
    return (torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)) * inside).float().to(box_norm.device)


def focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2, beta: float = 4) -> torch.Tensor:
    """CenterNet focal loss, summed and divided by the number of target cells equal to 1."""
    pos = target.eq(1).float()
    neg = target.lt(1).float()
    pred = pred.clamp(min=1e-12)
    pos_loss = (torch.log(pred) * (1 - pred) ** alpha * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred ** alpha * (1 - target) ** beta * neg).sum()
    n = pos.sum()
    return -neg_loss if n == 0 else -(pos_loss + neg_loss) / n


def compute_losses(out: dict, search_box: torch.Tensor, weights=(1.0, 2.0, 5.0)) -> tuple[torch.Tensor, dict]:
    """weights (focal, GIoU, L1) = (1, 2, 5): focal + 2 GIoU + 5 L1. search_box (B, 4) xywh / crop
    side. GIoU and L1 compare the box decoded at the predicted argmax with the ground truth
    clamped to [0, 1] (both xyxy); the focal target is the unclamped box. -> total, stats (floats)."""
    pred = vd.cxcywh_to_xyxy(out["pred_boxes"])
    if torch.isnan(pred).any():
        raise ValueError("the network predicted NaN boxes")
    gt = vd.xywh_to_xyxy(search_box).clamp(0.0, 1.0)
    giou, iou = generalized_iou(pred, gt)
    l_giou = (1 - giou).mean()
    l_l1 = F.l1_loss(pred, gt)
    target = gaussian_target(search_box, out["score_map"].shape[-1]).unsqueeze(1)
    l_loc = focal_loss(out["score_map"], target)
    total = weights[0] * l_loc + weights[1] * l_giou + weights[2] * l_l1
    stats = {"loss": total.item(), "giou": l_giou.item(), "l1": l_l1.item(),
             "location": l_loc.item(), "iou": iou.detach().mean().item()}
    return total, stats


def lr_at(epoch: int, base: float, drop: int) -> float:
    """StepLR(step_size=drop, gamma=0.1) stepped after each epoch: epoch e (1-based) runs at
    base * 0.1 ** ((e - 1) // drop), i.e. epochs 1..drop at base, drop+1..2 drop at 0.1 base, ..."""
    return base * 0.1 ** ((epoch - 1) // drop)


def param_groups(model: DropTrack, lr: float, backbone_mult: float, weight_decay: float, verbose=True):
    """OSTrack's two groups: every name containing 'backbone' (blocks, patch embedding, the
    pos/frame tables) at lr * backbone_mult; the head at lr. Weight decay on everything."""
    head = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
    back = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    if verbose:
        print(f"param groups: head {len(head)} tensors at lr {lr:g}, backbone {len(back)} tensors at "
              f"lr {lr * backbone_mult:g}; weight decay {weight_decay:g} on all")
    return [{"params": head, "lr_mult": 1.0, "lr": lr, "weight_decay": weight_decay},
            {"params": back, "lr_mult": backbone_mult, "lr": lr * backbone_mult, "weight_decay": weight_decay}]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
#   | source                                 | detected by   | into DropTrack                        |
#   |----------------------------------------|---------------|---------------------------------------|
#   | DropMAE / MAE / our pre-training       | --pretrained  | dropmae.load_pretrained on `backbone`,|
#   |                                        |               | new: pos_embed_z, pos_embed_x          |
#   | ours (`train` here)                    | `track` entry | strict                                |
#   | official DropTrack/OSTrack `.pth.tar`  | `net` entry   | strict but `backbone.cls_token`       |

def load_pretrained_backbone(src, model: DropTrack, verbose: bool = True) -> dict:
    """DropMAE/MAE/our pre-training checkpoint -> model.backbone; then re-derive the 12x12 / 24x24
    tables from the loaded 14x14 one. Decoder keys and mask_token are dropped (asserted)."""
    report = dropmae.load_pretrained(src, model.backbone, expect_missing=("pos_embed_z", "pos_embed_x"),
                                     verbose=verbose)
    model.backbone.finetune_track()
    return report


TINY_TAG = "  [tiny model: tiny scale, not comparable with the paper]"


def load_tracker_checkpoint(path, model_name: str | None = None, trust_pickle: bool = False) -> DropTrack:
    """Our training checkpoint or an official DropTrack/OSTrack one -> DropTrack (eval mode)."""
    ckpt = path if isinstance(path, dict) else dropmae.load_checkpoint(path, trust_pickle)
    name = "<state dict>" if isinstance(path, dict) else str(path)
    dropmae.expect_kind(ckpt, ("droptrack", "ostrack"), name, "tasks/vot.py test")
    if "track" in ckpt and "model" in ckpt:
        track = TrackConfig(**{**ckpt["track"], "ce_loc": tuple(ckpt["track"]["ce_loc"])})
        model = DropTrack(track)
        model.load_state_dict(ckpt["model"], strict=True)
        return model.eval()
    if "net" in ckpt:
        model = build_model(model_name or "base")
        state = dict(ckpt["net"])
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own) - {"backbone.cls_token"})
        if missing or unexpected:
            raise KeyError(f"{path}: official checkpoint does not match DropTrack({model_name or 'base'}): "
                           f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        state.pop("backbone.cls_token", None)
        model.load_state_dict(state, strict=True)
        return model.eval()
    raise ValueError(f"{path}: neither our tracker checkpoint ('model' + 'track') nor an official "
                     f"one ('net'); keys {list(ckpt)[:6]}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

DATA_NAMES = {"got10k_train": "got10k", "got10k_val": "got10k", "got10k_vottrain": "got10k",
              "got10k_votval": "got10k", "lasot_train": "lasot", "coco17": "coco", "trackingnet": "trackingnet"}


def resolve_data_paths(items: list[str], needed: set[str]) -> dict:
    """`--data-path` items: `name=path` pairs, or one root holding <name>/ folders (a GOT-10k
    root itself when only got10k is needed). -> {name: Path}."""
    paths = {}
    for item in items:
        if "=" in item:
            name, path = item.split("=", 1)
            paths[name] = Path(path)
        else:
            root = Path(item)
            for name in needed:
                if name == "got10k" and needed == {"got10k"} and (root / "train" / "list.txt").is_file():
                    paths[name] = root
                else:
                    paths.setdefault(name, root / name)
    lacking = needed - set(paths)
    if lacking:
        raise ValueError(f"--data-path gives no folder for {sorted(lacking)}")
    return paths


def build_dataset(key: str, paths: dict):
    root = paths[DATA_NAMES[key]]
    if key.startswith("got10k_"):
        return vd.GOT10k(root, key.split("_", 1)[1])
    if key == "lasot_train":
        return vd.LaSOT(root, "train")
    if key == "coco17":
        return vd.COCO17(root)
    return vd.TrackingNet(root)


def train_step(model, batch, optimizer, keep_rate: float, grad_clip: float, device,
               weights=(1.0, 2.0, 5.0)) -> dict:
    """One optimisation step on a collated batch -> stats. weights: (focal, GIoU, L1)."""
    out = model(batch["template"].to(device, non_blocking=True), batch["search"].to(device, non_blocking=True),
                keep_rate=keep_rate)
    loss, stats = compute_losses(out, batch["search_box"].to(device), weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return stats


def _reduce(values: dict, device) -> dict:
    """Sum a dict of numbers over ranks."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def run_epoch(model, loader, optimizer, keep_rate, cfg, device, train: bool, print_freq: int, epoch: int) -> dict:
    """One pass; returns the means of the stats plus data_errors and rejected counts (all ranks)."""
    model.train(train)
    sums = {"loss": 0.0, "giou": 0.0, "l1": 0.0, "location": 0.0, "iou": 0.0, "n": 0,
            "data_errors": 0, "rejected": 0}
    shown = 0
    weights = (cfg["focal_weight"], cfg["giou_weight"], cfg["l1_weight"])
    for step, batch in enumerate(loader):
        if batch["errors"] and shown < 5:          # show a few, count all
            for e in batch["errors"][:5 - shown]:
                print(f"[rank {os.environ.get('RANK', 0)}] data error (resampled): {e}", file=sys.stderr)
            shown += len(batch["errors"][:5 - shown])
        if train:
            stats = train_step(model, batch, optimizer, keep_rate, cfg["grad_clip"], device, weights)
        else:
            with torch.no_grad():
                out = model(batch["template"].to(device), batch["search"].to(device), keep_rate=keep_rate)
                stats = compute_losses(out, batch["search_box"].to(device), weights)[1]
        B = batch["template"].shape[0]
        for k in ("loss", "giou", "l1", "location", "iou"):
            sums[k] += stats[k] * B
        sums["n"] += B
        sums["data_errors"] += len(batch["errors"])
        sums["rejected"] += batch["rejected"]
        if dropmae.is_main() and print_freq and (step + 1) % print_freq == 0:
            print(f"{'train' if train else 'val'} epoch {epoch} [{step + 1}/{len(loader)}] "
                  + " ".join(f"{k} {stats[k]:.4f}" for k in ("loss", "giou", "l1", "location", "iou")))
    sums = _reduce(sums, device)
    n = max(sums.pop("n"), 1)
    return {**{k: sums[k] / n for k in ("loss", "giou", "l1", "location", "iou")},
            "data_errors": int(sums["data_errors"]), "rejected": int(sums["rejected"]), "samples": int(n)}


def train(args):
    keys = ("epochs", "batch_size", "samples_per_epoch", "val_samples", "val_every", "lr", "seed") + MILESTONES
    cfg = resolve_train_config(args.config, args.model, {k: getattr(args, k) for k in keys})
    track = TRACK_PRESETS[args.model]
    rank, world, local_rank, device = dropmae.init_distributed()
    torch.manual_seed(cfg["seed"] + rank)
    np.random.seed(cfg["seed"] + rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = dropmae.make_run_dir(args.output, {"config": args.config, "model": args.model, "train": cfg,
                                             "track": dataclasses.asdict(track), "world_size": world,
                                             "pretrained": args.pretrained})
    logger = dropmae.JsonlLogger(run)
    if dropmae.is_main():
        print(json.dumps({"train": cfg, "track": dataclasses.asdict(track), "world_size": world}, default=str))
        print(f"schedule: lr {cfg['lr']:g} for epochs 1-{cfg['lr_drop']}, then x0.1; candidate elimination "
              f"from epoch {cfg['ce_start']}, keep {track.ce_keep} from epoch {cfg['ce_start'] + cfg['ce_warm']} "
              f"of {cfg['epochs']}")

    # data
    needed = {DATA_NAMES[k] for k in cfg["train_sets"]} | ({DATA_NAMES[cfg["val_set"]]} if cfg["val_every"] else set())
    paths = resolve_data_paths(args.data_path, needed)
    geometry = dict(sizes=(track.template_size, track.search_size),
                    factors=(track.template_factor, track.search_factor), max_gap=cfg["max_gap"], seed=cfg["seed"])
    train_set = vd.TrackingPairs([build_dataset(k, paths) for k in cfg["train_sets"]],
                                 list(cfg["train_sets"].values()), cfg["samples_per_epoch"], train=True, **geometry)
    loaders = {"train": (train_set, _loader(train_set, cfg, args.workers, world, rank, device))}
    if cfg["val_every"]:
        val_set = vd.TrackingPairs([build_dataset(cfg["val_set"], paths)], [1], cfg["val_samples"],
                                   train=False, **{**geometry, "seed": geometry["seed"] + 1})
        loaders["val"] = (val_set, _loader(val_set, cfg, args.workers, world, rank, device))

    # model and optimizer
    model = DropTrack(track)
    if args.pretrained:
        load_pretrained_backbone(args.pretrained, model, verbose=dropmae.is_main())
    model.to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["lr"], cfg["backbone_mult"], cfg["weight_decay"],
                                               verbose=dropmae.is_main()), lr=cfg["lr"],
                                  weight_decay=cfg["weight_decay"])
    start = 1
    resume, ckpt = dropmae.resume_checkpoint(args.output, args.resume,
                                             required=("model", "optimizer", "epoch", "rng"))
    if resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        dropmae.set_rng_state(ckpt["rng"])
        start = ckpt["epoch"] + 1
        if dropmae.is_main():
            print(f"resumed from {resume} (epoch {ckpt['epoch']})")

    # loop
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.time()
        lr = lr_at(epoch, cfg["lr"], cfg["lr_drop"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        keep = ce_keep_rate(epoch, cfg["ce_start"], cfg["ce_warm"], track.ce_keep)
        record = {"epoch": epoch, "lr": lr, "keep_rate": keep}
        for split, (ds, loader) in loaders.items():
            if split == "val" and epoch % cfg["val_every"]:
                continue
            ds.set_epoch(epoch)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            stats = run_epoch(net, loader, optimizer, keep, cfg, device, split == "train", args.print_freq, epoch)
            record.update({f"{split}_{k}": v for k, v in stats.items()})
        record["epoch_time_s"] = time.time() - t0
        logger.log(**record)
        if dropmae.is_main():
            print(json.dumps(record))
            if record["train_data_errors"]:
                print(f"epoch {epoch}: {record['train_data_errors']} data errors (files that failed to "
                      "load were resampled; see the messages above)", file=sys.stderr)
        dropmae.save_checkpoint(run / f"checkpoint-{epoch:04d}.pth", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "track": dataclasses.asdict(track), "config": {"train": cfg, "config": args.config},
            "rng": dropmae.rng_state()})
        if dropmae.is_main():
            _prune(run, epoch, cfg["epochs"], args.keep_last, args.save_every)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run


def _loader(ds, cfg, workers, world, rank, device):
    sampler = (torch.utils.data.distributed.DistributedSampler(ds, world, rank, shuffle=False)
               if world > 1 else None)
    return torch.utils.data.DataLoader(ds, batch_size=cfg["batch_size"], sampler=sampler, shuffle=False,
                                       num_workers=workers, collate_fn=vd.collate_pairs, drop_last=True,
                                       pin_memory=device.type == "cuda")


def _prune(run: Path, epoch: int, last: int, keep_last: int, save_every: int):
    """Keep the newest `keep_last` checkpoints, every `save_every`-th epoch and the final one."""
    for p in run.glob("checkpoint-*.pth"):
        e = int(p.stem.split("-")[1])
        if e <= epoch - keep_last and e != last and not (save_every and e % save_every == 0):
            p.unlink()


# --------------------------------------------------------------------------------------------
# The tracker (OSTrack `lib/test/tracker/ostrack.py`)
# --------------------------------------------------------------------------------------------

def hann1d(n: int) -> torch.Tensor:
    """0.5 * (1 - cos(2 pi k / (n + 1))), k = 1..n."""
    k = torch.arange(1, n + 1, dtype=torch.float32)
    return 0.5 * (1 - torch.cos((2 * math.pi / (n + 1)) * k))


def hann2d(n: int) -> torch.Tensor:
    """Outer product of two hann1d(n) -> (1, 1, n, n)."""
    w = hann1d(n)
    return (w[:, None] * w[None, :])[None, None]


class Tracker:
    """First-frame template, search crop around the previous box, Hann-windowed score map."""

    def __init__(self, model: DropTrack, device="cpu", amp: bool = False):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.cfg = model.track
        self.window = hann2d(model.box_head.feat_sz).to(self.device)
        self.amp = amp

    @torch.no_grad()
    def initialize(self, image: np.ndarray, box) -> None:
        crop, _ = vd.sample_target(image, box, self.cfg.template_factor, self.cfg.template_size)
        self.template = vd.normalize_image(crop.to(self.device))[None]
        self.state = [float(v) for v in box]

    @torch.no_grad()
    def track(self, image: np.ndarray) -> list[float]:
        """image (H, W, 3) uint8 RGB -> [x, y, w, h] in image pixels."""
        H, W = image.shape[:2]
        S = self.cfg.search_size
        crop, scale = vd.sample_target(image, self.state, self.cfg.search_factor, S)
        search = vd.normalize_image(crop.to(self.device))[None]
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            out = self.model(self.template, search)
        response = self.window * out["score_map"].float()                       # plain product
        box = decode_boxes(response, out["size_map"].float(), out["offset_map"].float())[0]
        box = (box * S / scale).tolist()                                        # crop px, image scale
        self.state = vd.clip_box(vd.map_box_back(box, self.state, scale, S), H, W, margin=10)
        return self.state


# --------------------------------------------------------------------------------------------
# Inference over a benchmark: official output formats, workers, resume, scoring
# --------------------------------------------------------------------------------------------
#   | dataset       | files in <output>/<dataset>/                              | then            |
#   |---------------|-----------------------------------------------------------|-----------------|
#   | got10k_*      | <seq>/<seq>_001.txt "x,y,w,h" %d, <seq>/<seq>_time.txt %f | <dataset>.zip   |
#   | lasot(_ext),  | <seq>.txt "x\ty\tw\th" %d, <seq>_time.txt %f               | eval.sot        |
#   |   tnl2k       |                                                           |                 |
#   | trackingnet   | <seq>.txt "x,y,w,h" %d, <seq>_time.txt %f                 | zip of <seq>.txt|
# %d is a cast to int (truncation toward zero), as np.savetxt(fmt='%d') on the float boxes.

TEST_DATASETS = {
    "got10k_test": (lambda root: vd.GOT10k(root, "test"), "got10k"),
    "got10k_val": (lambda root: vd.GOT10k(root, "val"), "got10k"),
    "lasot": (lambda root: vd.LaSOT(root, "test"), "ope"),
    "lasot_ext": (lambda root: vd.LaSOT(root, "all"), "ope"),
    "tnl2k": (lambda root: vd.TNL2K(root), "ope"),
    "trackingnet": (lambda root: vd.TrackingNet(root, ("TEST",)), "trackingnet"),
}


def track_sequence(tracker, seq: vd.TestSequence) -> tuple[np.ndarray, np.ndarray]:
    """Run a tracker over a sequence -> boxes (T, 4) (frame 0 = the init box), seconds (T,).

    Times exclude reading the frame; frame 0's time is the initialisation, as the official runner.
    """
    boxes, times = [], []
    for t, path in enumerate(seq.frames):
        image = vd.read_image(path)
        start = time.perf_counter()
        if t == 0:
            tracker.initialize(image, seq.init_box)
            box = seq.init_box
        else:
            box = tracker.track(image)
        times.append(time.perf_counter() - start)
        boxes.append([float(v) for v in box])
    return np.asarray(boxes, dtype=np.float64), np.asarray(times, dtype=np.float64)


def _box_lines(boxes: np.ndarray, sep: str) -> str:
    return "".join(sep.join("%d" % int(v) for v in b) + "\n" for b in boxes)


def _write_atomic(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def result_path(fmt: str, out_dir, name: str) -> Path:
    out_dir = Path(out_dir)
    return out_dir / name / f"{name}_001.txt" if fmt == "got10k" else out_dir / f"{name}.txt"


def time_path(fmt: str, out_dir, name: str) -> Path:
    out_dir = Path(out_dir)
    return out_dir / name / f"{name}_time.txt" if fmt == "got10k" else out_dir / f"{name}_time.txt"


def write_sequence_results(fmt: str, out_dir, name: str, boxes: np.ndarray, times: np.ndarray):
    """Write one sequence in the official format; the box file last (it marks the sequence done)."""
    _write_atomic(time_path(fmt, out_dir, name), "".join("%f\n" % t for t in times))
    _write_atomic(result_path(fmt, out_dir, name), _box_lines(boxes, "\t" if fmt == "ope" else ","))


def zip_results(fmt: str, out_dir, zip_path) -> Path:
    """GOT-10k: every <seq>/ folder (boxes + times); TrackingNet: the <seq>.txt files only."""
    out_dir, zip_path = Path(out_dir), Path(zip_path)
    files = sorted(out_dir.glob("*/*.txt")) if fmt == "got10k" else \
        sorted(p for p in out_dir.glob("*.txt") if not p.name.endswith("_time.txt"))
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(out_dir).as_posix())
    return zip_path


_WORKER = {}


def _worker_init(ckpt, model_name, device, threads, amp, trust_pickle):
    """Build this process's tracker. A pool respawns a worker whose initializer raises, forever,
    so a failure is kept and raised by the worker's first job instead: the parent gets it once
    from `imap_unordered` and leaving the `with Pool` block terminates the pool."""
    try:
        torch.set_num_threads(threads)
        model = load_tracker_checkpoint(ckpt, model_name, trust_pickle) if not isinstance(ckpt, nn.Module) else ckpt
        _WORKER["tracker"] = Tracker(model, device, amp)
    except Exception as err:                           # re-raised by _worker_run
        _WORKER["error"] = err


def _worker_run(job):
    if "error" in _WORKER:
        raise _WORKER["error"]
    seq, fmt, out_dir = job
    boxes, times = track_sequence(_WORKER["tracker"], seq)
    write_sequence_results(fmt, out_dir, seq.name, boxes, times)
    return seq.name, len(times), float(times.sum())


def run_dataset(seqs: list, fmt: str, out_dir, tracker_args: tuple, workers: int = 1) -> dict:
    """Track every unfinished sequence (finished ones = box file present are skipped) with
    `workers` processes. tracker_args = (ckpt path or model, model name, device, threads, amp,
    trust_pickle). -> {name: {frames, seconds, fps}} for all sequences (times read back)."""
    from tqdm import tqdm
    todo = [s for s in seqs if not result_path(fmt, out_dir, s.name).is_file()]
    if len(todo) < len(seqs):
        print(f"{len(seqs) - len(todo)} of {len(seqs)} sequences already done, skipped")
    jobs = [(s, fmt, out_dir) for s in todo]
    bar = tqdm(total=len(jobs), desc="sequences", unit="seq")
    if workers <= 1:
        _worker_init(*tracker_args)
        if "error" in _WORKER:
            raise _WORKER.pop("error")
        for job in jobs:
            name, n, sec = _worker_run(job)
            bar.set_postfix_str(f"{name} {n / sec:.1f} fps")
            bar.update()
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers, _worker_init, tracker_args) as pool:
            for name, n, sec in pool.imap_unordered(_worker_run, jobs):
                bar.set_postfix_str(f"{name} {n / sec:.1f} fps")
                bar.update()
    bar.close()
    stats = {}
    for s in seqs:
        t = np.asarray([float(v) for v in time_path(fmt, out_dir, s.name).read_text().split()])
        stats[s.name] = {"frames": len(t), "seconds": float(t.sum()), "fps": len(t) / max(float(t.sum()), 1e-12)}
    return stats


def score_results(dataset: str, out_dir, data_root) -> dict | None:
    """Local scores with eval.sot where the annotations are public; None otherwise."""
    from eval import sot
    if dataset == "got10k_val":
        return sot.score_got10k(out_dir, data_root, "val")
    if dataset in ("lasot", "lasot_ext", "tnl2k"):
        return sot.score_ope(out_dir, data_root, dataset)
    return None


def file_sha256(path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def claim_results(out_dir: Path, fmt: str, seqs: list, producer: dict) -> None:
    """Results in out_dir belong to what produced them (`producer`: checkpoint hash and the
    test settings, kept in `<out_dir>/producer.json`). Finished sequences are reused only when
    it matches; results of another producer (or of none recorded) are removed, with a message,
    and tracked again."""
    record = out_dir / "producer.json"
    old = json.loads(record.read_text()) if record.is_file() else None
    done = [s for s in seqs if result_path(fmt, out_dir, s.name).is_file()]
    if old != producer and done:
        was = (f"checkpoint {old.get('ckpt')} (sha256 {str(old.get('ckpt_sha256'))[:12]}), "
               f"settings {({k: v for k, v in old.items() if not k.startswith('ckpt')})}"
               if old else "an unrecorded checkpoint")
        print(f"{out_dir}: the {len(done)} finished sequences there were tracked with {was}, not "
              f"with {producer['ckpt']} (sha256 {producer['ckpt_sha256'][:12]}) and these "
              f"settings: removing them and tracking again", file=sys.stderr)
        for s in seqs:
            result_path(fmt, out_dir, s.name).unlink(missing_ok=True)
            time_path(fmt, out_dir, s.name).unlink(missing_ok=True)
    _write_atomic(record, json.dumps(producer, indent=1) + "\n")


def test(args):
    make_dataset, fmt = TEST_DATASETS[args.dataset]
    seqs = vd.test_sequences(make_dataset(args.data_path))
    out_root = Path(args.output)
    out_dir = out_root / args.dataset
    # the checkpoint is read here, before any worker starts: a bad file is one clear error
    model = load_tracker_checkpoint(args.ckpt, args.model, args.trust_pickle)
    tiny = model.track.encoder == "tiny"
    producer = {"ckpt": str(Path(args.ckpt).resolve()), "ckpt_sha256": file_sha256(args.ckpt),
                "dataset": args.dataset, "model": args.model, "amp": args.amp}
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_results(out_dir, fmt, seqs, producer)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = max(1, (os.cpu_count() or 1) // max(args.workers, 1)) if device == "cpu" else 1
    if args.workers <= 1:
        threads = torch.get_num_threads()
    source = model if args.workers <= 1 else args.ckpt    # worker processes read the file again
    stats = run_dataset(seqs, fmt, out_dir, (source, args.model, device, threads, args.amp, args.trust_pickle),
                        args.workers)
    del model, source
    frames = sum(s["frames"] for s in stats.values())
    seconds = sum(s["seconds"] for s in stats.values())
    summary = {"dataset": args.dataset, "sequences": len(stats), "frames": frames,
               "fps_overall": frames / max(seconds, 1e-12),
               "fps_mean_per_sequence": float(np.mean([s["fps"] for s in stats.values()])),
               "device": device, "workers": args.workers, "producer": producer,
               "per_sequence": stats}
    if fmt in ("got10k", "trackingnet"):
        summary["zip"] = str(zip_results(fmt, out_dir, out_root / f"{args.dataset}.zip"))
        server = {"got10k_test": " (upload it to the GOT-10k server)",
                  "trackingnet": " (upload it to the TrackingNet server)"}.get(args.dataset, "")
        print(f"wrote {summary['zip']}{server}")
    print(f"{args.dataset}: {len(stats)} sequences, {frames} frames, {summary['fps_overall']:.1f} FPS overall "
          f"({summary['fps_mean_per_sequence']:.1f} mean per sequence)")
    scores = score_results(args.dataset, out_dir, args.data_path)
    if scores is not None:
        from eval import sot
        summary["scores"] = {k: v for k, v in scores.items() if not isinstance(v, (list, dict))}
        print(sot.summary_line(scores) + (TINY_TAG if tiny else ""))
    _write_atomic(out_root / f"{args.dataset}_summary.json", json.dumps(summary, indent=1, default=str))
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="DropTrack: train, test, synthetic data.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="fine-tune DropTrack (torchrun for several GPUs)")
    tr.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS))
    tr.add_argument("--model", default="base", choices=sorted(TRACK_PRESETS))
    tr.add_argument("--data-path", nargs="+", required=True, help="ROOT or name=path (got10k, lasot, coco, trackingnet)")
    tr.add_argument("--pretrained", default=None, help="DropMAE / MAE / our pre-training checkpoint")
    tr.add_argument("--output", required=True)
    tr.add_argument("--resume", default=None, help="'auto' (latest in --output) or a checkpoint path; "
                    "give the same --epochs (the milestones scale with it)")
    tr.add_argument("--epochs", type=int, help="100 / 300 in the paper, 150 for --model tiny; the "
                    "lr-drop and candidate-elimination epochs scale with it")
    tr.add_argument("--batch-size", type=int, help="per GPU (32 in the paper)")
    tr.add_argument("--samples-per-epoch", type=int)
    tr.add_argument("--val-samples", type=int)
    tr.add_argument("--val-every", type=int, help="epochs between validations, 0 = none")
    tr.add_argument("--lr", type=float)
    tr.add_argument("--seed", type=int)
    tr.add_argument("--lr-drop", type=int, help="last epoch at the full lr (80 / 240 in the paper; "
                    "default: scaled with --epochs)")
    tr.add_argument("--ce-start", type=int, help="first epoch of candidate elimination while training "
                    "(20 in the paper; default: scaled with --epochs)")
    tr.add_argument("--ce-warm", type=int, help="epochs of the cosine from keep 1.0 down to 0.7 "
                    "(50 / 80 in the paper; default: scaled with --epochs)")
    tr.add_argument("--workers", type=int, default=8, help="data-loader processes per GPU")
    tr.add_argument("--print-freq", type=int, default=50)
    tr.add_argument("--keep-last", type=int, default=2, help="newest checkpoints kept")
    tr.add_argument("--save-every", type=int, default=40, help="also keep every N-th epoch")
    te = sub.add_parser("test", help="track a benchmark, write the official formats, score")
    te.add_argument("--dataset", required=True, choices=sorted(TEST_DATASETS))
    te.add_argument("--data-path", required=True)
    te.add_argument("--ckpt", required=True)
    te.add_argument("--output", required=True)
    te.add_argument("--workers", type=int, default=1, help="tracker processes over sequences")
    te.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    te.add_argument("--model", default=None, choices=sorted(TRACK_PRESETS), help="preset of an official checkpoint")
    te.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on GPU)")
    te.add_argument("--trust-pickle", action="store_true", help="allow loading pickled objects (official files)")
    sy = sub.add_parser("synth", help="write tiny synthetic GOT-10k and LaSOT folders")
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--train-seqs", type=int, default=32, help="GOT-10k train sequences (a tracker that "
                    "generalises to val needs tens; 2 are memorised)")
    sy.add_argument("--val-seqs", type=int, default=8, help="GOT-10k val sequences")
    sy.add_argument("--frames", type=int, default=24, help="frames per sequence (training needs >= 20)")
    sy.add_argument("--world", type=world_knob, action="append", default=[], metavar="KEY=VALUE",
                    help="a knob of the synthetic data.World, e.g. num_objects=2 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "test":
        try:
            return test(args)
        except (dropmae.CheckpointError, FileNotFoundError) as err:   # names the file
            raise SystemExit(f"error: {err}") from None
    print(vd.write_synthetic(args.out, seed=args.seed, T=args.frames, n_train=args.train_seqs,
                             n_val=args.val_seqs, **dict(args.world)))


if __name__ == "__main__":
    main()
