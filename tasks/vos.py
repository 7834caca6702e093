"""DropSeg: one-shot video object segmentation with a DropMAE ViT and an STCN-style decoder.

Reproduces the paper's VOS model (specs/vos.md, section B; github jimmy-dq/DropSeg, an STCN fork):
DAVIS-16 val J&F 92.1 and DAVIS-17 val J&F 83.0 with the K700 ViT-B/16 DropMAE checkpoint
(Table 3), after 210k iterations at batch 32 on 8 GPUs. Each frame t of a video is segmented
from (frame 0 RGB, frame 0 mask) -> frame t alone: no memory bank, predictions never fed back.

The file reads top to bottom along the data flow:
  1. model: the ViT over [reference tokens (RGB + mask patch embedding + `_z` frame vector),
     query tokens (RGB + `_x` frame vector)], one frozen spatial table shared by both frames,
     the ViTDet-style pyramid from the last layer, the STCN decoder, STM soft aggregation;
  2. checkpoint import (DropMAE / MAE / our pre-training files) with the expected key table,
     and the conversion of released fine-tuned DropSeg files (their key table);
  3. schedules and the bootstrapped cross-entropy, pure functions of the iteration;
  4. datasets in the official layouts (DAVIS 2016/2017, YouTube-VOS 2019), pair sampling and
     the augmentations (PIL + torch; no torchvision);
  5. `train`: config, distributed init, data, model, optimizer, loop, atomic checkpoints;
  6. `test`: one-shot inference at 480p, PNGs in the official layouts, local scoring;
  7. `synthetic`: tiny DAVIS / YouTube-VOS folders of the synthetic world (`data.World`).

Frame vectors: DropSeg gives the reference ("memory") frame `temporal_pos_embed_z` and the query
frame `temporal_pos_embed_x`, loaded by name from the DropMAE checkpoint.

Commands:
    # tiny CPU smoke run on generated data (a few minutes)
    python tasks/vos.py synthetic --out /tmp/vos_synth
    python -c "import torch, dropmae; torch.save({'model': dropmae.DropMAE(
        dropmae.get_config('tiny')).state_dict()}, '/tmp/tiny_dropmae.pth')"
    python tasks/vos.py train --model tiny --data-path /tmp/vos_synth/DAVIS \\
        --ytvos-path /tmp/vos_synth/YouTubeVOS --pretrained /tmp/tiny_dropmae.pth \\
        --output runs/vos_tiny --iterations 200 --batch-size 4 --size 96 --lr 1e-4
    python tasks/vos.py test --dataset davis17_val --data-path /tmp/vos_synth/DAVIS \\
        --ckpt runs/vos_tiny/checkpoint-200.pth --output runs/vos_tiny/davis17_val --resolution 0

    # the paper: 8 GPUs x batch 4, 210k iterations (yv_subset.txt: DropSeg's util/yv_subset.txt,
    # 3464 train videos; without it every video of train/meta.json is used)
    torchrun --nproc_per_node=8 tasks/vos.py train --model base --data-path DAVIS2017_trainval \\
        --ytvos-path YouTubeVOS2019 --ytvos-subset yv_subset.txt \\
        --pretrained dropmae_k700_800e.pth --output runs/dropseg
    python tasks/vos.py test --dataset davis17_val --data-path DAVIS2017_trainval \\
        --ckpt runs/dropseg/checkpoint-210000.pth --output runs/dropseg/davis17_val
    python tasks/vos.py test --dataset davis16_val --data-path DAVIS2017_trainval \\
        --ckpt runs/dropseg/checkpoint-210000.pth --output runs/dropseg/davis16_val
    python tasks/vos.py test --dataset davis17_testdev --data-path DAVIS2017_testdev ...
    python tasks/vos.py test --dataset ytvos19_valid --data-path YouTubeVOS2019 ...
    # a released DropSeg file (github jimmy-dq/DropSeg, bare state dict) loads as it is:
    python tasks/vos.py test --dataset davis17_val --data-path DAVIS2017_trainval \
        --ckpt <id>_210000.pth --output runs/dropseg_released/davis17_val

Layouts read:
  DAVIS (2017 trainval or test-dev): JPEGImages/480p/<seq>/<frame>.jpg,
      Annotations/480p/<seq>/<frame>.png (palette PNGs; 255 = void), ImageSets/2017/<split>.txt,
      ImageSets/2016/<split>.txt (DAVIS-2016 = the 2017 folder with the 2016 lists, objects
      merged, as the usual scorer does). Training uses ImageSets/2017/train.txt (60 videos).
  YouTube-VOS 2019: <root>/<split>/JPEGImages/<vid>/<frame>.jpg (every 5th frame),
      <root>/<split>/Annotations/<vid>/<frame>.png, <root>/<split>/meta.json.
Written by `test`: <output>/<seq>/<frame>.png for DAVIS (the toolkit's results folder; 2017 as
palette PNGs with the annotation's palette, 2016 as 0/255 grey PNGs since the 2016 scorer
binarises with > 128), plus <output>/submission.zip for DAVIS test-dev (<seq>/<frame>.png) and
YouTube-VOS (Annotations/<vid>/<frame>.png); <output>/timing.json; and, where annotations
exist, the eval/davis.py CSVs and JSON.

Known differences from the original code, on purpose: the augmentations are our PIL ports
(same parameter ranges, same shared/per-frame split; not bit-identical to torchvision);
randomness per item is a pure function of (seed, epoch, index); a resumed run starts a new epoch
(the data order of the interrupted epoch is not replayed); YouTube-VOS training frames are read
at their own size (DropSeg reads STCN's 480p copy `train_480p`; the crop is relative to the
frame, so only the interpolation differs); annotation id 255 (void) is never a training object.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import (World, item_generator, normalize, random_resized_crop_box, sample_pair,  # noqa: E402
                  world_knob, world_seed)
from eval.davis import VOID_ID, read_sequence_list  # noqa: E402
from eval.output import write_atomic  # noqa: E402

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

# encoder preset, drop_path of the ViT, pyramid/decoder widths (c16 = compress out, c8 = fpn2
# out = skip of up_16_8, c4 = fpn1 out = skip of up_8_4 = decoder width), training crop side.
VOS_PRESETS = {
    "base": dict(encoder="base", drop_path=0.1, c16=512, c8=512, c4=256, size=384),  # DropSeg
    "tiny": dict(encoder="tiny", drop_path=0.0, c16=64, c8=64, c4=32, size=96),     # tests
}
SEED = 14159265                  # DropSeg's seed, on every rank
IM_MEAN = (124, 116, 104)        # fill of the per-frame affine (STCN's im_mean)
DATASETS = ("davis17_val", "davis16_val", "davis17_testdev", "ytvos19_valid")


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map: 768 ints, index i coloured by the bits of i
    (1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), 255 -> (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


# --------------------------------------------------------------------------------------------
# 1. Model: pyramid pieces, STCN decoder, the DropSeg ViT, soft aggregation
# --------------------------------------------------------------------------------------------

LayerNorm2d = dropmae.LayerNorm2d           # one definition, in the core's ViT pieces


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """STCN's pre-activation residual block: x' = skip(x) + conv2(relu(conv1(relu(x)))), with
    skip a 3x3 conv when the width changes (else identity)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv3x3(cin, cout)
        self.conv2 = conv3x3(cout, cout)
        self.downsample = conv3x3(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class UpsampleBlock(nn.Module):
    """STCN's UpsampleBlock(skip_c, up_c, out_c): skip 3x3 conv + bilinear x2 of the coarser
    map, then a ResBlock. (B, skip_c, 2h, 2w), (B, up_c, h, w) -> (B, out_c, 2h, 2w)."""

    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv = conv3x3(skip_c, up_c)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = self.skip_conv(skip) + F.interpolate(up, scale_factor=2, mode="bilinear",
                                                 align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """STCN decoder: compress ResBlock(D -> c16), up 16->8 with the m8 skip, up 8->4 with the m4
    skip, 3x3 conv to one logit on ReLU, bilinear x4 to the input size."""

    def __init__(self, dim: int, c16: int, c8: int, c4: int):
        super().__init__()
        self.compress = ResBlock(dim, c16)
        self.up_16_8 = UpsampleBlock(c8, c16, c4)
        self.up_8_4 = UpsampleBlock(c4, c4, c4)
        self.pred = conv3x3(c4, 1)

    def forward(self, m16, m8, m4) -> torch.Tensor:
        """m16 (B, D, h, w), m8 (B, c8, 2h, 2w), m4 (B, c4, 4h, 4w) -> logit (B, 1, 16h, 16w)."""
        x = self.compress(m16)
        x = self.up_16_8(m8, x)
        x = self.up_8_4(m4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


class DropSeg(dropmae.ViTEncoder):
    """The DropMAE encoder plus a mask patch embedding, the frozen two-frame table, the
    ViTDet-style pyramid and the STCN decoder.

    Keys beyond the encoder's (all new at fine-tuning): `mask_patch_embed.proj.*` (a 1-channel
    16x16 patch conv, summed into the reference tokens), `pos_embed_two_frame` (1, g*g, D: the
    pre-training table bicubic-resized once to the training grid g = size/16 and frozen, as
    DropSeg does after loading), `fpn1.*`, `fpn2.*`, `stcn_decoder.*`. At any other input size
    the two-frame table is resized again (bicubic) from the training grid, as in DropSeg's
    inference, so a 480p sequence sees 14x14 -> 24x24 -> (H/16, W/16).
    """

    NEW_PREFIXES = ("mask_patch_embed.", "pos_embed_two_frame", "fpn1.", "fpn2.", "stcn_decoder.")

    def __init__(self, cfg: dropmae.Config, c16: int, c8: int, c4: int, size: int):
        super().__init__(cfg)
        dim = cfg.embed_dim
        self.mask_patch_embed = dropmae.PatchEmbed(cfg.patch_size, 1, dim)
        self.two_frame_grid = self.patch_embed.grid(size, size)
        self.pos_embed_two_frame = nn.Parameter(self.spatial_pos_embed(self.two_frame_grid).clone(),
                                                requires_grad=False)
        self.fpn2 = nn.ConvTranspose2d(dim, c8, kernel_size=2, stride=2)              # -> m8
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                                  LayerNorm2d(dim), nn.GELU(),
                                  nn.ConvTranspose2d(dim, c4, kernel_size=2, stride=2))  # -> m4
        self.stcn_decoder = Decoder(dim, c16, c8, c4)

    @torch.no_grad()
    def freeze_two_frame_table(self):
        """Recompute `pos_embed_two_frame` from the (just loaded) pre-training table."""
        self.pos_embed_two_frame.copy_(self.spatial_pos_embed(self.two_frame_grid))

    def two_frame_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, gh*gw, D): the frozen table resized (bicubic) to the input grid."""
        return dropmae.resize_pos_embed(self.pos_embed_two_frame, grid, self.two_frame_grid)

    def forward(self, ref_img, ref_mask, query_img) -> torch.Tensor:
        """One object: ref_img, query_img (B, 3, H, W) normalised, ref_mask (B, 1, H, W) in
        {0, 1}, H and W multiples of 16 -> logit (B, 1, H, W) of that object on the query."""
        B, _, H, W = query_img.shape
        grid = self.patch_embed.grid(H, W)
        pos = self.two_frame_pos(grid)
        ref = (self.patch_embed(ref_img) + self.mask_patch_embed(ref_mask.to(ref_img.dtype))
               + pos + self.temporal_pos_embed_z)                                  # (B, N, D)
        query = self.patch_embed(query_img) + pos + self.temporal_pos_embed_x      # (B, N, D)
        tokens = self.forward_tokens(torch.cat([ref, query], dim=1))               # (B, 2N, D)
        m16 = tokens[:, ref.shape[1]:].transpose(1, 2).reshape(B, -1, *grid)       # (B, D, h, w)
        return self.stcn_decoder(m16, self.fpn2(m16), self.fpn1(m16))


def build_model(name: str, size: int | None = None) -> DropSeg:
    """A DropSeg preset; `size` overrides the training crop (it fixes the two-frame table)."""
    if name not in VOS_PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(VOS_PRESETS)}")
    p = VOS_PRESETS[name]
    cfg = dropmae.get_config(p["encoder"], drop_path=p["drop_path"])
    return DropSeg(cfg, p["c16"], p["c8"], p["c4"], size or p["size"])


def soft_aggregate(prob: torch.Tensor) -> torch.Tensor:
    """STM soft aggregation. prob (B, K, H, W) per-object sigmoids -> logits (B, K+1, H, W)
    over [background, object 1..K]: q = [prod_k (1 - p_k), p_1, ..., p_K] clamped to
    [1e-7, 1 - 1e-7], logits = log(q / (1 - q)); softmax of them is the joint probability."""
    bg = torch.prod(1 - prob, dim=1, keepdim=True)
    q = torch.cat([bg, prob], dim=1).clamp(1e-7, 1 - 1e-7)
    return torch.log(q / (1 - q))


def segment_objects(net, ref_img, ref_masks, query_img, selector=None) -> torch.Tensor:
    """All objects of a batch, one backbone pass per object (the objects are stacked on the
    batch axis). ref_img, query_img (B, 3, H, W); ref_masks (B, K, H, W); selector (B, K) 1/0
    for present/absent objects -> aggregated logits (B, K+1, H, W), float32."""
    B, K, H, W = ref_masks.shape
    logits = net(ref_img.repeat_interleave(K, 0), ref_masks.reshape(B * K, 1, H, W),
                 query_img.repeat_interleave(K, 0))                               # (B*K, 1, H, W)
    prob = torch.sigmoid(logits.float()).view(B, K, H, W)
    if selector is not None:
        prob = prob * selector.view(B, K, 1, 1).float()
    return soft_aggregate(prob)


# --------------------------------------------------------------------------------------------
# 2. Checkpoint import
# --------------------------------------------------------------------------------------------
#
#   | pre-training key                 | DropSeg key           | note                           |
#   |----------------------------------|-----------------------|--------------------------------|
#   | patch_embed, blocks.*, norm      | same                  | loaded                         |
#   | temporal_pos_embed_z / _x        | same                  | reference / query frame vector |
#   | pos_embed (1, 1+14*14, D)        | pos_embed             | loaded; then resized to the    |
#   |                                  | pos_embed_two_frame   | training grid and frozen       |
#   | decoder_*, mask_token            | -                     | dropped                        |
#   | (MAE) cls_token                  | -                     | dropped; frame vectors at init |
#   | -                                | mask_patch_embed,     | new, random init               |
#   |                                  | fpn1, fpn2, stcn_decoder |                             |

def new_keys(model: DropSeg) -> list[str]:
    """State-dict keys DropSeg adds to the encoder (missing from any pre-training file)."""
    return sorted(k for k in model.state_dict() if k.startswith(DropSeg.NEW_PREFIXES))


def load_backbone(src, model: DropSeg, verbose: bool = True) -> dict:
    """Load a DropMAE, MAE or our pre-training checkpoint into DropSeg's encoder.

    Exactly `new_keys(model)` may be missing (the core loader raises on anything else); the
    decoder of a DropMAE file is dropped. Then the two-frame table is rebuilt from pos_embed.
    Returns the loader's report {kind, loaded, missing, dropped}.
    """
    report = dropmae.load_pretrained(src, model, expect_missing=new_keys(model), verbose=verbose)
    model.freeze_two_frame_table()
    return report


# Released fine-tuned DropSeg files (github jimmy-dq/DropSeg: `<id>_210000.pth`, the bare
# state dict of its timm-0.3.2 `VisionTransformer` subclass, which its eval scripts load with
# strict=True; or `<id>_checkpoint.pth` = {it, network, optimizer, scheduler}) -> our keys.
# g = training grid (24 for 384 crops), D = width (768), c8 / c4 = pyramid widths (512 / 256):
#   | official key (shape)                         | ours                    | rule              |
#   |----------------------------------------------|-------------------------|-------------------|
#   | patch_embed, blocks.*, norm, pos_embed        | same                    | as is             |
#   |   (1, 1+14*14, D), temporal_pos_embed_x / _z |                         |                   |
#   | mask_patch_embed.proj.*, stcn_decoder.*       | same                    | as is (STCN names)|
#   | fpn1.0.*, fpn1.3.* (ConvTranspose2d)          | same                    | as is             |
#   | fpn1.1.ln.{weight,bias} (D,)                  | fpn1.1.{weight,bias}    | their Norm2d wraps|
#   |                                              |                         | an nn.LayerNorm   |
#   | fpn2.0.{weight (D, c8, 2, 2), bias}           | fpn2.{weight,bias}      | their fpn2 is a   |
#   |                                              |                         | 1-layer Sequential|
#   | pos_embed_two_frame (1, 1 + 2*g*g, D)         | pos_embed_two_frame     | cls slot dropped; |
#   |                                              |   (1, g*g, D)           | the two frames'   |
#   |                                              |                         | copies must match |
#   | pos_embed_three_frame (1, 1 + 3*g*g, D)       | -                       | dropped: 2-memory |
#   |                                              |                         | frames, never used|
#   | cls_token (1,1,D), head.* (1000, D), fc_norm.*| -                       | dropped: unused by|
#   |                                              |                         | the segmentation  |
# Every other key must be one of ours with our shape (the strict load in `load_finetuned`).

OFFICIAL_RENAMED = {"fpn1.1.ln.weight": "fpn1.1.weight", "fpn1.1.ln.bias": "fpn1.1.bias",
                    "fpn2.0.weight": "fpn2.weight", "fpn2.0.bias": "fpn2.bias"}
OFFICIAL_DROPPED = ("cls_token", "head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias",
                    "pos_embed_three_frame")


def is_official_dropseg(state: dict) -> bool:
    """A released DropSeg state dict (its pyramid is named `fpn2.0.*`)."""
    return "fpn2.0.weight" in state


def convert_official_dropseg(state: dict, name: str = "<state dict>") -> tuple[dict, dict]:
    """A released DropSeg state dict -> (our state dict, config {model, size}), by the table
    above. The preset is the one whose encoder and pyramid widths match the file's; the crop
    side is 16 * g from the two-frame table. Raises ValueError naming the file on any key or
    shape that the table does not expect (CheckpointError, a ValueError)."""
    lacking = [k for k in (*OFFICIAL_RENAMED, *OFFICIAL_DROPPED, "pos_embed_two_frame",
                           "patch_embed.proj.weight", "fpn1.3.weight",
                           "stcn_decoder.compress.conv1.weight") if k not in state]
    if lacking:
        raise dropmae.CheckpointError(f"{name}: not a released DropSeg state dict: lacks {lacking}")
    D = state["patch_embed.proj.weight"].shape[0]
    two = state["pos_embed_two_frame"]
    n = (two.shape[1] - 1) // 2 if two.dim() == 3 else 0
    g = math.isqrt(n)
    if two.dim() != 3 or two.shape[0] != 1 or two.shape[2] != D or two.shape[1] != 1 + 2 * g * g or g == 0:
        raise dropmae.CheckpointError(f"{name}: pos_embed_two_frame has shape {tuple(two.shape)}, expected "
                         f"(1, 1 + 2*g*g, {D}) (a cls slot, then the g x g table for each frame)")
    c8, c4 = state["fpn2.0.weight"].shape[1], state["fpn1.3.weight"].shape[1]
    c16 = state["stcn_decoder.compress.conv1.weight"].shape[0]
    expected = {"cls_token": (1, 1, D), "fc_norm.weight": (D,), "fc_norm.bias": (D,),
                "head.weight": (state["head.bias"].shape[0], D),
                "pos_embed_three_frame": (1, 1 + 3 * g * g, D),
                "fpn1.1.ln.weight": (D,), "fpn1.1.ln.bias": (D,),
                "fpn2.0.weight": (D, c8, 2, 2), "fpn2.0.bias": (c8,)}
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise dropmae.CheckpointError(f"{name}: {key} has shape {tuple(state[key].shape)}, expected {shape}")
    first, second = two[:, 1:1 + g * g], two[:, 1 + g * g:]
    if not torch.equal(first, second):
        raise dropmae.CheckpointError(f"{name}: the two frames' halves of pos_embed_two_frame differ (DropSeg "
                         "freezes one table for both frames); cannot convert exactly")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    preset = next((p for p, v in VOS_PRESETS.items()
                   if (v["c16"], v["c8"], v["c4"]) == (c16, c8, c4)
                   and (dropmae.get_config(v["encoder"]).embed_dim,
                        dropmae.get_config(v["encoder"]).depth) == (D, depth)), None)
    if preset is None:
        raise dropmae.CheckpointError(f"{name}: width {D}, {depth} blocks, pyramid {c16}/{c8}/{c4} match no "
                         f"preset of {sorted(VOS_PRESETS)}")
    ours = {OFFICIAL_RENAMED.get(k, k): v for k, v in state.items() if k not in OFFICIAL_DROPPED}
    ours["pos_embed_two_frame"] = first.clone()
    return ours, {"model": preset, "size": 16 * g, "source": f"released DropSeg file {name}"}


# --------------------------------------------------------------------------------------------
# 3. Schedules and the bootstrapped cross-entropy (pure functions of the iteration)
# --------------------------------------------------------------------------------------------

def bootstrap_ratio(it: int, start: int = 20000, end: int = 70000, top_p: float = 0.15) -> float:
    """Fraction of the hardest pixels kept by the loss at iteration `it` (0-based): 1 before
    `start` (plain CE), then linear from 1 at `start` to `top_p` at `end`, `top_p` after."""
    if it < start:
        return 1.0
    if it > end:
        return top_p
    return top_p + (1.0 - top_p) * (end - it) / (end - start)


def bootstrapped_ce(logits: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """Mean cross-entropy over the int(p * n) largest per-pixel losses of the whole batch.
    logits (B, C, H, W), target (B, H, W) class ids; p = 1 is plain mean CE."""
    if p >= 1.0:
        return F.cross_entropy(logits, target)
    raw = F.cross_entropy(logits, target, reduction="none").flatten()
    return torch.topk(raw, max(1, int(raw.numel() * p)), sorted=False).values.mean()


def learning_rate(it: int, base_lr: float, steps=(125000,), gamma: float = 0.1) -> float:
    """MultiStepLR stepped every iteration: base_lr * gamma^(number of steps <= it)."""
    return base_lr * gamma ** sum(it >= s for s in steps)


# --------------------------------------------------------------------------------------------
# 4. Data: readers for the official layouts, pair sampling, augmentation
# --------------------------------------------------------------------------------------------

def read_image(path) -> Image.Image:
    """A frame as a loaded PIL RGB image; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: frame missing")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode image ({err})") from err


def read_mask(path) -> tuple[np.ndarray, list[int]]:
    """A palette-indexed annotation PNG -> (ids (H, W) uint8, palette as 768 ints).
    Anything else (RGB, grey, undecodable) is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation missing")
    try:
        with Image.open(path) as im:
            if im.mode != "P":
                raise ValueError(f"{path}: annotation must be a palette-indexed PNG (PIL mode "
                                 f"'P', one object id per pixel), got mode {im.mode!r}")
            palette = (im.getpalette() or []) + [0] * 768
            return np.array(im, dtype=np.uint8), palette[:768]
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode PNG ({err})") from err


def write_index_png(path, ids: np.ndarray, palette: list[int] | None):
    """(H, W) uint8 ids -> indexed PNG with `palette`, or a grey PNG when palette is None."""
    im = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))  # mode L
    if palette is not None:
        im.putpalette(palette)                                    # 'L' becomes 'P', ids kept
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def davis_sequences(root, year: int, split: str) -> list[str]:
    """Sequence names of `ImageSets/<year>/<split>.txt` as the scorer reads them (file order,
    duplicates once: `eval.davis.read_sequence_list`); every listed sequence must have a
    `JPEGImages/480p/<seq>` folder (the error names the list file and line)."""
    names = read_sequence_list(root, split, year)
    path = Path(root) / "ImageSets" / str(year) / f"{split}.txt"
    if not names:
        raise ValueError(f"{path}: no sequence listed")
    for name in names:
        folder = Path(root) / "JPEGImages" / "480p" / name
        if not folder.is_dir():
            lineno = [line.strip() for line in path.read_text().splitlines()].index(name) + 1
            raise FileNotFoundError(f"{path}:{lineno}: sequence {name!r} is listed but its "
                                    f"frame folder {folder} does not exist")
    return names


def check_annotated(frames: list[Path], ann_dir: Path, img_dir: Path) -> list[Path]:
    """One annotation PNG per frame, same names -> the PNG paths; else an error naming both
    folders and the first frame without an annotation (or annotation without a frame)."""
    pngs = sorted(ann_dir.glob("*.png"))
    if [p.stem for p in pngs] != [p.stem for p in frames]:
        missing = sorted({p.stem for p in frames} - {p.stem for p in pngs})
        extra = sorted({p.stem for p in pngs} - {p.stem for p in frames})
        what = (f"first frame without annotation: {ann_dir / (missing[0] + '.png')}" if missing
                else f"first annotation without frame: {ann_dir / (extra[0] + '.png')}")
        raise ValueError(f"{ann_dir}: {len(pngs)} annotations for {len(frames)} frames in "
                         f"{img_dir}; {what}")
    return pngs


def davis_frames(root, seq: str, all_annotated: bool) -> tuple[list[Path], list[Path]]:
    """Frame JPEGs of a DAVIS sequence and its annotation PNGs (all of them when
    `all_annotated`, as in trainval; else only frame 0's, as in test-dev)."""
    img_dir = Path(root) / "JPEGImages" / "480p" / seq
    ann_dir = Path(root) / "Annotations" / "480p" / seq
    frames = sorted(img_dir.glob("*.jpg"))
    if not frames:
        raise FileNotFoundError(f"{img_dir}: no .jpg frames")
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: annotation folder of sequence {seq} missing")
    if all_annotated:
        return frames, check_annotated(frames, ann_dir, img_dir)
    first = ann_dir / f"{frames[0].stem}.png"
    if not first.is_file():
        raise FileNotFoundError(f"{first}: first-frame annotation missing")
    return frames, [first]


def read_meta(path) -> dict:
    """YouTube-VOS meta.json -> its 'videos' dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: meta.json missing (YouTube-VOS layout)")
    try:
        videos = json.loads(path.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a YouTube-VOS meta.json ({err!r})") from err
    return videos


@dataclass
class Video:
    """A training video: frame and mask paths (same length) and its max frame jump."""
    name: str
    frames: list
    masks: list
    max_jump: int


def davis_train_videos(root, split: str = "train", max_jump: int = 25) -> list[Video]:
    """DAVIS-2017 training videos (ImageSets/2017/<split>.txt, every frame annotated)."""
    videos = []
    for seq in davis_sequences(root, 2017, split):
        frames, masks = davis_frames(root, seq, all_annotated=True)
        videos.append(Video(f"davis/{seq}", [str(p) for p in frames], [str(p) for p in masks],
                            max_jump))
    return videos


def read_subset(path, known) -> list[str]:
    """A video list, one name per line (DropSeg's `util/yv_subset.txt`, 3464 YouTube-VOS train
    videos) -> sorted names; every name must be in `known` (else an error naming the file and
    line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: subset list missing")
    names = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if name and name not in known:
            raise ValueError(f"{path}:{lineno}: video {name!r} is not in the dataset's meta.json")
        if name:
            names.append(name)
    return sorted(set(names))


def ytvos_train_videos(root, max_jump: int = 5, subset=None) -> list[Video]:
    """YouTube-VOS 2019 train videos listed in train/meta.json (only those of the `subset`
    file when given). Its JPEGs are every 5th frame of the video, so max_jump 25 // 5 = 5
    keeps DAVIS's time span. Videos of one frame are left out (a pair needs two), as DropSeg
    does."""
    split = Path(root) / "train"
    names = sorted(read_meta(split / "meta.json"))
    if subset:
        names = read_subset(subset, set(names))
    videos = []
    for vid in names:
        img_dir, ann_dir = split / "JPEGImages" / vid, split / "Annotations" / vid
        frames = sorted(img_dir.glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"{img_dir}: no .jpg frames for video {vid} of "
                                    f"{split / 'meta.json'}")
        masks = check_annotated(frames, ann_dir, img_dir)
        if len(frames) >= 2:
            videos.append(Video(f"ytvos/{vid}", [str(p) for p in frames],
                                [str(p) for p in masks], max_jump))
    return videos


def pair_frames(n: int, max_jump: int, g) -> tuple[int, int]:
    """(reference, query) frame indices of an n-frame video, DropSeg's rule: start ~ U[0, n-2],
    later ~ U[start+1, min(n, start+max_jump) - 1] (`data.sample_pair`; the upper bound is
    exclusive, so the gap is 1..max_jump-1), then the order is reversed with p 0.5 (the
    reference may come after the query)."""
    start, later = sample_pair(n, max_jump, g)
    if torch.rand(1, generator=g).item() < 0.5:
        return later, start                                                  # time reversal
    return start, later


def color_jitter_params(g, brightness: float, contrast: float, saturation: float):
    """ColorJitter's draw: factors ~ U[1-x, 1+x] and a random order of the three ops."""
    factors = [torch.empty(1).uniform_(max(0.0, 1 - x), 1 + x, generator=g).item()
               for x in (brightness, contrast, saturation)]
    order = torch.randperm(3, generator=g).tolist()
    return factors, order


def apply_color_jitter(img: Image.Image, params) -> Image.Image:
    """PIL brightness / contrast / saturation enhancers in the drawn order."""
    factors, order = params
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for k in order:
        img = enhancers[k](img).enhance(factors[k])
    return img


def affine_params(g, degrees: float = 15.0, shear: float = 10.0) -> tuple[float, float]:
    """RandomAffine's draw: rotation ~ U(-degrees, degrees), x-shear ~ U(-shear, shear)."""
    angle = torch.empty(1).uniform_(-degrees, degrees, generator=g).item()
    sx = torch.empty(1).uniform_(-shear, shear, generator=g).item()
    return angle, sx


def apply_affine(img: Image.Image, angle: float, shear: float, resample, fill) -> Image.Image:
    """Rotate by `angle` degrees after an x-shear of `shear` degrees, about the image centre.
    PIL's AFFINE transform wants the output -> input map, i.e. the inverse matrix."""
    w, h = img.size
    cx, cy = 0.5 * w, 0.5 * h
    a, s = math.radians(angle), math.radians(shear)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    fwd = rot @ np.array([[1.0, math.tan(s)], [0.0, 1.0]])
    inv = np.linalg.inv(fwd)
    coeffs = (inv[0, 0], inv[0, 1], cx - inv[0, 0] * cx - inv[0, 1] * cy,
              inv[1, 0], inv[1, 1], cy - inv[1, 0] * cx - inv[1, 1] * cy)
    return img.transform((w, h), Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def augment_pair(images, masks, size: int, g):
    """DropSeg's augmentation of a reference/query pair (PIL images, masks as 'L' ids).

    Shared by both frames: horizontal flip (p 0.5), RandomResizedCrop(size, scale 0.36-1,
    ratio 3/4-4/3; bicubic images, nearest masks), ColorJitter(0.1, 0.03, 0.03, 0),
    grayscale (p 0.05). Per frame: RandomAffine(15 deg, shear 10; fill IM_MEAN / 0),
    ColorJitter(0.01, 0.01, 0.01). -> images (2, 3, size, size) normalised, masks (2, size,
    size) uint8 ids.
    """
    width, height = images[0].size
    flip = torch.rand(1, generator=g).item() < 0.5
    top, left, h, w = random_resized_crop_box(height, width, (0.36, 1.0), (3 / 4, 4 / 3), g)
    shared_jitter = color_jitter_params(g, 0.1, 0.03, 0.03)
    gray = torch.rand(1, generator=g).item() < 0.05
    out_img, out_mask = [], []
    for img, mask in zip(images, masks):
        if flip:
            img, mask = (x.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for x in (img, mask))
        box = (left, top, left + w, top + h)
        img = img.crop(box).resize((size, size), Image.Resampling.BICUBIC)
        mask = mask.crop(box).resize((size, size), Image.Resampling.NEAREST)
        img = apply_color_jitter(img, shared_jitter)
        if gray:
            img = img.convert("L").convert("RGB")
        angle, shear = affine_params(g)
        img = apply_affine(img, angle, shear, Image.Resampling.BICUBIC, IM_MEAN)
        mask = apply_affine(mask, angle, shear, Image.Resampling.NEAREST, 0)
        img = apply_color_jitter(img, color_jitter_params(g, 0.01, 0.01, 0.01))
        out_img.append(normalize(img))
        out_mask.append(torch.from_numpy(np.array(mask, dtype=np.uint8)))
    return torch.stack(out_img), torch.stack(out_mask)


class PairDataset(torch.utils.data.Dataset):
    """One (reference, query) pair per item; item i is video i (the list repeats DAVIS 5x).

    Frames: `pair_frames`. Objects: a random id present in the augmented reference mask, plus a
    second random one when there is one (selector [1, 1], else [1, 0]); up to 5 draws of frames
    when the reference shows no object, then an all-background item that still has selector
    [1, 0], as in DropSeg (object 1 is an empty mask whose target is all background). All
    randomness comes from `item_generator(seed, epoch, index)`.

    Item: ref_img, query_img (3, S, S); ref_masks (2, S, S) float 0/1; label (S, S) int64
    (0 bg, 1 first object, 2 second object); selector (2,) float (1 = object slot used).
    """

    def __init__(self, videos: list[Video], size: int, seed: int = SEED, trials: int = 5):
        self.videos, self.size, self.seed, self.trials = videos, size, seed, trials
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def load(self, video: Video, k: int) -> tuple[Image.Image, Image.Image]:
        img = read_image(video.frames[k])
        ids, _ = read_mask(video.masks[k])
        if ids.shape != (img.height, img.width):
            raise ValueError(f"{video.masks[k]}: annotation is {ids.shape[1]}x{ids.shape[0]}, "
                             f"frame {video.frames[k]} is {img.width}x{img.height}")
        return img, Image.fromarray(ids)

    def __getitem__(self, index: int) -> dict:
        g = item_generator(self.seed, self.epoch, index)
        video = self.videos[index]
        for _ in range(self.trials):
            i, j = pair_frames(len(video.frames), video.max_jump, g)
            (img_a, mask_a), (img_b, mask_b) = self.load(video, i), self.load(video, j)
            imgs, masks = augment_pair([img_a, img_b], [mask_a, mask_b], self.size, g)
            ids = [int(v) for v in torch.unique(masks[0]) if 0 < v < VOID_ID]
            if ids:
                break
        chosen = []
        if ids:
            chosen.append(ids.pop(int(torch.randint(len(ids), (1,), generator=g))))
        if ids:
            chosen.append(ids[int(torch.randint(len(ids), (1,), generator=g))])
        ref_masks = torch.zeros(2, self.size, self.size)
        label = torch.zeros(self.size, self.size, dtype=torch.int64)
        selector = torch.tensor([1.0, float(len(chosen) == 2)])
        for k, obj in enumerate(chosen):
            ref_masks[k] = (masks[0] == obj).float()
            label[masks[1] == obj] = k + 1
        return {"ref_img": imgs[0], "query_img": imgs[1], "ref_masks": ref_masks,
                "label": label, "selector": selector}


# --------------------------------------------------------------------------------------------
# 5. Training
# --------------------------------------------------------------------------------------------

def train_step(net, batch: dict, optimizer, scaler, p: float, device, amp: bool) -> dict:
    """One optimisation step on a batch -> {'loss', 'iou'} (iou of the argmax on the query's
    foreground vs the label's, a cheap progress signal)."""
    ref_img, query_img = batch["ref_img"].to(device), batch["query_img"].to(device)
    ref_masks, selector = batch["ref_masks"].to(device), batch["selector"].to(device)
    label = batch["label"].to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        logits = segment_objects(net, ref_img, ref_masks, query_img, selector)    # (B, 3, H, W)
    loss = bootstrapped_ce(logits, label, p)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        pred, gt = logits.argmax(1) > 0, label > 0
        iou = ((pred & gt).sum() / (pred | gt).sum().clamp(min=1)).item()
    return {"loss": loss.item(), "iou": iou}


def train(args):
    """The `train` command: DAVIS x davis_repeat + YouTube-VOS pairs, Adam, bootstrapped CE."""
    # config
    preset = VOS_PRESETS[args.model]
    args.size = args.size or preset["size"]
    if args.max_jump < 2 or (args.ytvos_path and args.max_jump // 5 < 2):
        raise SystemExit(f"--max-jump {args.max_jump}: the frame gap bound must be >= 2 "
                         f"(>= 10 with YouTube-VOS, which gets max_jump // 5)")
    rank, world, local_rank, device = dropmae.init_distributed()
    amp = device.type == "cuda" and not args.no_amp
    torch.manual_seed(args.seed)
    # data: DAVIS train x davis_repeat + YouTube-VOS train, one item per video per epoch
    videos = []
    if args.data_path:
        videos += davis_train_videos(args.data_path, args.davis_split,
                                     args.max_jump) * args.davis_repeat
    if args.ytvos_path:               # its JPEGs are every 5th frame: the same span in time
        videos += ytvos_train_videos(args.ytvos_path, args.max_jump // 5, args.ytvos_subset)
    if not videos:
        raise SystemExit("give --data-path (DAVIS-2017 trainval) and/or --ytvos-path")
    dataset = PairDataset(videos, args.size, args.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed, drop_last=True)
    loader_kw = dict(batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                     drop_last=True, pin_memory=device.type == "cuda")
    if len(sampler) < args.batch_size:
        raise SystemExit(f"{len(dataset)} training items over {world} ranks give fewer than "
                         f"one batch of {args.batch_size}")
    config = {**vars(args), "world_size": world, "effective_batch": args.batch_size * world,
              "train_items": len(dataset), "amp": amp, "device": str(device)}
    run_dir = dropmae.make_run_dir(args.output, config)
    logger = dropmae.JsonlLogger(run_dir)
    if dropmae.is_main():
        print(json.dumps(config, indent=1, default=str))
    # model
    model = build_model(args.model, args.size)
    resume, ckpt = dropmae.resume_checkpoint(args.output, args.resume,
                                             required=("model", "optimizer", "scaler", "it", "rng"))
    if args.pretrained and not resume:
        load_backbone(args.pretrained, model, verbose=dropmae.is_main())
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    it, epoch = 0, 0
    if resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        it, epoch = ckpt["it"], ckpt["epoch"] + 1
        dropmae.set_rng_state(ckpt["rng"])
        if dropmae.is_main():
            print(f"resumed from {resume} at iteration {it}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(          # no buffers to broadcast
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    if dropmae.is_main():
        print(f"DropSeg-{args.model}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable "
              f"parameters; {len(dataset)} items, batch {args.batch_size} x {world} ranks")
    # loop
    model.train()
    tic = time.time()
    while it < args.iterations:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, **loader_kw)
        for batch in loader:
            lr = learning_rate(it, args.lr, args.lr_steps, args.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            p = bootstrap_ratio(it, args.bootstrap_start, args.bootstrap_end, args.bootstrap_p)
            stats = train_step(net, batch, optimizer, scaler, p, device, amp)
            it += 1
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss is {stats['loss']} at iteration {it}")
            if it % args.print_freq == 0 or it == args.iterations:
                sec = (time.time() - tic) / args.print_freq
                tic = time.time()
                logger.log(it=it, epoch=epoch, lr=lr, bootstrap_p=p, sec_per_it=sec, **stats)
                if dropmae.is_main():
                    print(f"it {it}/{args.iterations} loss {stats['loss']:.4f} iou "
                          f"{stats['iou']:.3f} p {p:.3f} lr {lr:.2e} {sec:.3f}s/it", flush=True)
            if it % args.save_every == 0 or it == args.iterations:
                save(args, model, optimizer, scaler, it, epoch, config)
            if it >= args.iterations:
                break
        epoch += 1
    if world > 1:
        torch.distributed.destroy_process_group()


def save(args, model, optimizer, scaler, it: int, epoch: int, config: dict):
    """Atomic `checkpoint-<it>.pth`; keeps the newest `--keep-last` of them."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "it": it, "epoch": epoch,
             "config": json.loads(json.dumps(config, default=str)), "rng": dropmae.rng_state()}
    dropmae.save_checkpoint(Path(args.output) / f"checkpoint-{it}.pth", state)
    if dropmae.is_main() and args.keep_last > 0:
        old = sorted(Path(args.output).glob("checkpoint-*.pth"),
                     key=lambda q: int(q.stem.split("-")[-1]))[:-args.keep_last]
        for q in old:
            q.unlink()


# --------------------------------------------------------------------------------------------
# 6. Inference: one-shot from the reference frame, 480p, padded to multiples of 16
# --------------------------------------------------------------------------------------------

def pad_divide_by(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims up to multiples of d, split as evenly as possible (the
    extra pixel at the bottom / right) -> (padded, (left, right, top, bottom))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % d, (-w) % d
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad) if any(pad) else x), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of `pad_divide_by` on the last two dims."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def processing_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side = short_side, the longer one int(short_side * long / short)
    (truncated, as torchvision's Resize(480) that STCN's test datasets use: 720x1280 ->
    480x853); 0 keeps (h, w)."""
    if short_side <= 0 or min(h, w) == short_side:
        return h, w
    if h <= w:
        return short_side, int(short_side * w / h)
    return int(short_side * h / w), short_side


@dataclass
class Target:
    """One object to segment: its output id, the frame where its mask is given, that mask."""
    obj_id: int
    start: int
    mask: np.ndarray             # (H0, W0) bool at the annotation's size


def davis_targets(mask_path, year: int) -> list[Target]:
    """Objects of a DAVIS first frame: 2017 ids 1..max id (void 255 is background; a missing
    id in between is still an object with an empty mask, like the scorer); 2016 one object,
    the union of all ids, written as 255."""
    ids, _ = read_mask(mask_path)
    ids = np.where(ids == VOID_ID, 0, ids)
    if year == 2016:
        return [Target(255, 0, ids > 0)] if ids.any() else []
    return [Target(k, 0, ids == k) for k in range(1, int(ids.max()) + 1)]


def ytvos_targets(split_dir: Path, vid: str, objects: dict, frame_names: list[str]) -> list[Target]:
    """YouTube-VOS valid: each object from meta.json, given at its first listed frame."""
    targets = []
    for key, obj in sorted(objects.items(), key=lambda kv: int(kv[0])):
        first = obj["frames"][0]
        path = split_dir / "Annotations" / vid / f"{first}.png"
        if first not in frame_names:
            raise ValueError(f"{split_dir / 'meta.json'}: object {key} of {vid} starts at frame "
                             f"{first}, which is not in {split_dir / 'JPEGImages' / vid}")
        ids, _ = read_mask(path)
        if targets and ids.shape != targets[0].mask.shape:
            raise ValueError(f"{path}: annotation is {ids.shape[1]}x{ids.shape[0]}, the first "
                             f"one of {vid} is {targets[0].mask.shape[1]}x"
                             f"{targets[0].mask.shape[0]}")
        targets.append(Target(int(key), frame_names.index(first), ids == int(key)))
    return targets


def inference_jobs(dataset: str, root) -> tuple[list, bool]:
    """-> ([(name, frame paths, targets, palette or None, output subfolder)], scorable)."""
    root = Path(root)
    jobs = []
    if dataset.startswith("davis"):
        year = 2016 if dataset == "davis16_val" else 2017
        split = "test-dev" if dataset == "davis17_testdev" else "val"
        scorable = split == "val"
        for seq in davis_sequences(root, year, split):
            frames, anns = davis_frames(root, seq, all_annotated=scorable)
            palette = None if year == 2016 else read_mask(anns[0])[1]
            jobs.append((seq, frames, davis_targets(anns[0], year), palette, Path(seq)))
        return jobs, scorable
    split_dir = root / "valid"
    meta = read_meta(split_dir / "meta.json")
    for vid in sorted(meta):
        img_dir = split_dir / "JPEGImages" / vid
        frames = sorted(img_dir.glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"{img_dir}: no .jpg frames for video {vid} of "
                                    f"{split_dir / 'meta.json'}")
        targets = ytvos_targets(split_dir, vid, meta[vid]["objects"], [p.stem for p in frames])
        first_png = split_dir / "Annotations" / vid / f"{frames[targets[0].start].stem}.png" \
            if targets else None
        palette = read_mask(first_png)[1] if first_png else davis_palette()
        jobs.append((vid, frames, targets, palette, Path("Annotations") / vid))
    return jobs, False


@torch.no_grad()
def segment_sequence(model, frame_paths: list, targets: list[Target], short_side: int, device,
                     amp: bool = False):
    """Yield (t, ids (H0, W0) uint8) for every frame: each object k is segmented from
    (its reference frame, its mask) -> frame t for t > start_k, one backbone pass per object
    and frame, and is absent before; on a frame where masks are given they override the
    prediction (frame 0 of DAVIS is its GT). Frames are resized to `short_side` (bicubic;
    masks nearest), padded to multiples of 16; the aggregated probabilities are unpadded,
    resized bilinearly to the annotation size and argmax'ed. `amp`: fp16 autocast (CUDA)."""
    size0 = targets[0].mask.shape if targets else None
    first = read_image(frame_paths[0])
    H0, W0 = size0 or (first.height, first.width)
    h, w = processing_size(H0, W0, short_side)

    def load(t):
        img = first if t == 0 else read_image(frame_paths[t])
        if (img.height, img.width) != (H0, W0):
            raise ValueError(f"{frame_paths[t]}: frame is {img.width}x{img.height}, the "
                             f"annotation is {W0}x{H0}")
        if (h, w) != (H0, W0):
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        return pad_divide_by(normalize(img).unsqueeze(0))[0].to(device)          # (1, 3, Hp, Wp)

    masks = []
    for tg in targets:
        m = Image.fromarray(tg.mask.astype(np.uint8))
        if (h, w) != (H0, W0):
            m = m.resize((w, h), Image.Resampling.NEAREST)
        masks.append(torch.from_numpy(np.array(m, dtype=np.float32)))
    ref_imgs = {t: load(t) for t in sorted({tg.start for tg in targets})}
    pad = None
    if targets:
        ref_img = torch.cat([ref_imgs[tg.start] for tg in targets])                 # (K, 3, ...)
        ref_mask, pad = pad_divide_by(torch.stack(masks)[:, None])                  # (K, 1, ...)
        ref_mask = ref_mask.to(device)
    labels = torch.tensor([0] + [tg.obj_id for tg in targets], dtype=torch.uint8)
    amp = amp and device.type == "cuda"
    for t in range(len(frame_paths)):
        active = [k for k, tg in enumerate(targets) if tg.start < t]
        ids = np.zeros((H0, W0), np.uint8)
        if active:
            query = ref_imgs[t] if t in ref_imgs else load(t)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(ref_img[active], ref_mask[active],
                               query.expand(len(active), -1, -1, -1))           # (A, 1, Hp, Wp)
            prob = torch.zeros(len(targets), *ref_mask.shape[-2:], device=device)
            prob[active] = torch.sigmoid(logits.float())[:, 0]                   # (K, Hp, Wp)
            prob = unpad(soft_aggregate(prob[None]).softmax(1), pad)             # (1, K+1, h, w)
            if (h, w) != (H0, W0):
                prob = F.interpolate(prob, size=(H0, W0), mode="bilinear", align_corners=False)
            ids = labels[prob[0].argmax(0).cpu()].numpy()
        for tg in targets:
            if tg.start == t:
                ids[tg.mask] = tg.obj_id
        yield t, ids


def load_finetuned(path, device) -> tuple[DropSeg, dict]:
    """Our fine-tuned checkpoint, or a released DropSeg file (converted by
    `convert_official_dropseg`) -> (model in eval mode, its config); strict key match."""
    ckpt = dropmae.load_checkpoint(path)                  # errors name the file and the problem
    official = ckpt.get("network", ckpt)                  # <id>_checkpoint.pth: {it, network, ...}
    if is_official_dropseg(official):
        state, config = convert_official_dropseg(official, str(path))
        ckpt = {"model": state, "config": config}
    dropmae.expect_kind(ckpt, ("dropseg",), path, "tasks/vos.py test")
    config = ckpt["config"]
    if "model" not in ckpt or config.get("model") not in VOS_PRESETS:
        raise dropmae.CheckpointError(f"{path}: a DropSeg checkpoint needs a 'model' entry and "
                                      f"config['model'] in {sorted(VOS_PRESETS)}")
    model = build_model(config["model"], config.get("size"))
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), config


def inference(args):
    """The `test` command: PNGs in the official layout, timing.json, the submission zip (test-dev,
    YouTube-VOS) or the eval.davis scores (val) -> the eval.davis result dict or None."""
    from tqdm import tqdm
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config = load_finetuned(args.ckpt, device)
    jobs, scorable = inference_jobs(args.dataset, args.data_path)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    n_frames, tic = 0, time.time()
    bar = tqdm(total=sum(len(j[1]) for j in jobs), unit="frame", desc=args.dataset)
    for name, frames, targets, palette, sub in jobs:
        bar.set_postfix_str(name)
        for t, ids in segment_sequence(model, frames, targets, args.resolution, device, args.amp):
            path = out / sub / f"{frames[t].stem}.png"
            write_index_png(path, ids, palette)
            written.append(path)
            n_frames += 1
            bar.update(1)
    bar.close()
    seconds = time.time() - tic
    timing = {"frames": n_frames, "sequences": len(jobs), "seconds": seconds,
              "fps": n_frames / max(seconds, 1e-9), "device": str(device), "ckpt": str(args.ckpt),
              "model": config["model"]}
    write_atomic(out / "timing.json", json.dumps(timing, indent=1) + "\n")
    print(f"{args.dataset}: {n_frames} frames of {len(jobs)} sequences in {seconds:.1f} s "
          f"({timing['fps']:.2f} frames/s on {device})")
    if args.dataset in ("davis17_testdev", "ytvos19_valid"):
        with zipfile.ZipFile(out / "submission.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for path in written:
                zf.write(path, path.relative_to(out).as_posix())
        print(f"wrote {out / 'submission.zip'} ({len(written)} PNGs)")
    result = None
    if scorable:
        from eval.davis import evaluate_davis, summary_line, write_outputs
        year = 2016 if args.dataset == "davis16_val" else 2017
        result = evaluate_davis(args.data_path, out, "val", year)
        tiny = config["model"] == "tiny"
        print(summary_line(result) + ("  [tiny model: tiny scale, not comparable with the paper]" if tiny else ""))
        write_outputs(result, out)                      # after the score is printed, atomically
    return result


# --------------------------------------------------------------------------------------------
# 7. Synthetic data in the official layouts (tests and smoke runs)
# --------------------------------------------------------------------------------------------

def synthetic_clip(seed_parts, n_frames: int = 6, size=(64, 96), n_objects: int = 3,
                   leaving: bool = False, attempts: int = 1000, **world):
    """A clip of the synthetic world (`data.World`, size (H, W), n_objects sprites, knobs
    `world`): the first world of the streams world_seed(*seed_parts, a), a = 0, 1, ..., in which
    every object shows at least 0.5% of the frame at frame 0. With `leaving` (n_frames >= 2), the
    front-most object also drifts sideways, out through the nearer side edge by the last frame.
    -> frames (T, H, W, 3) uint8, ids (T, H, W) uint8 (k + 1 = object k, later ones in front)."""
    H, W = size
    n_objects = world.pop("num_objects", n_objects)
    if leaving and n_frames < 2:
        raise ValueError(f"an object can leave the frame only in a clip of >= 2 frames, got {n_frames}")
    for a in range(attempts):
        w = World(world_seed(*seed_parts, a), (W, H), n_frames, num_objects=n_objects, **world)
        if (w.masks(0).sum(axis=(1, 2)) < 0.005 * H * W).any():
            continue
        if leaving:
            last = w.sprites[-1]
            reach = math.exp(last.zoom) * math.hypot(*last.radii) + 1    # past every shape point
            x0, x_end = w.poses[-1, 0, 0], w.poses[-1, -1, 0]
            gap = (W - 0.5 + reach - x_end) if x0 >= W / 2 else -(x_end + 0.5 + reach)
            drift = replace(last, velocity=(gap / (n_frames - 1), last.velocity[1]))
            w = World(world_seed(*seed_parts, a), (W, H), n_frames, sprites=w.sprites[:-1] + [drift],
                      **world)
            assert not w.visible(n_frames - 1)[-1]
        ids = np.stack([w.label_map(t) for t in range(n_frames)]).astype(np.uint8)
        return w.video(), ids
    raise RuntimeError(f"no synthetic world {seed_parts} in {attempts} attempts shows all "
                       f"{n_objects} objects at frame 0 ({W}x{H}); use larger frames or fewer objects")


def write_synthetic_davis(root, sequences=("blobs-a", "blobs-b", "blobs-c"), n_frames: int = 6,
                          size=(64, 96), seed: int = 0, val_sequences=None, **world) -> Path:
    """A DAVIS-2017 trainval-layout folder: JPEGImages/480p, Annotations/480p (DAVIS palette),
    ImageSets/2017 and 2016 {train,val}.txt; each sequence a `synthetic_clip` of frames
    (H, W) = size, stream ("davis", seed, name), knobs `world`. With `val_sequences`, train.txt
    lists `sequences` and val.txt `val_sequences` (disjoint, as the official split); without,
    both list `sequences` (the unit tests' one-folder form)."""
    root = Path(root)
    palette = davis_palette()
    splits = ({"train": list(sequences), "val": list(sequences)} if val_sequences is None else
              {"train": list(sequences), "val": list(val_sequences)})
    if set(splits["train"]) & set(splits["val"]) and val_sequences is not None:
        raise ValueError(f"DAVIS train and val sequences overlap: {sorted(set(splits['train']) & set(splits['val']))}")
    for seq in dict.fromkeys(splits["train"] + splits["val"]):
        frames, ids = synthetic_clip(("davis", seed, seq), n_frames, size, **world)
        for t in range(n_frames):
            (root / "JPEGImages" / "480p" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frames[t]).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg",
                                            quality=95)
            write_index_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", ids[t], palette)
    for year in ("2016", "2017"):
        (root / "ImageSets" / year).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            (root / "ImageSets" / year / f"{split}.txt").write_text("\n".join(splits[split]) + "\n")
    return root


def write_synthetic_ytvos(root, videos=("vid0", "vid1"), n_frames: int = 6, size=(64, 96),
                          seed: int = 1, **world) -> Path:
    """A YouTube-VOS 2019 layout: train/ (every frame annotated) and valid/ (each object
    annotated only at its first frame; the time-reversed clip makes the leaving object an
    entering one), frames named 00000, 00005, ... (the 5-frame stride), meta.json for both.
    Each video is a `synthetic_clip` (stream ("ytvos", seed, name), knobs `world`) in which an
    object leaves the frame."""
    root = Path(root)
    palette = davis_palette()
    for split in ("train", "valid"):
        meta = {}
        for vid in videos:
            frames, ids = synthetic_clip(("ytvos", seed, vid), n_frames, size, leaving=True, **world)
            if split == "valid":
                frames, ids = frames[::-1], ids[::-1]
            names = [f"{5 * t:05d}" for t in range(n_frames)]
            objects = {}
            for k in sorted(set(np.unique(ids).tolist()) - {0}):
                present = [t for t in range(n_frames) if (ids[t] == k).any()]
                objects[str(k)] = {"category": "blob", "frames": names[present[0]:]}
            meta[vid] = {"objects": objects}
            for t, name in enumerate(names):
                (root / split / "JPEGImages" / vid).mkdir(parents=True, exist_ok=True)
                Image.fromarray(frames[t]).save(root / split / "JPEGImages" / vid / f"{name}.jpg",
                                                quality=95)
                given = ids[t]
                if split == "valid":                                  # first appearances only
                    keep = [int(k) for k, o in objects.items() if o["frames"][0] == name]
                    if not keep:
                        continue
                    given = np.where(np.isin(ids[t], keep), ids[t], 0).astype(np.uint8)
                write_index_png(root / split / "Annotations" / vid / f"{name}.png", given, palette)
        (root / split / "meta.json").write_text(json.dumps({"videos": meta}, indent=1))
    return root


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="fine-tune DropSeg on DAVIS-2017 train + YouTube-VOS")
    tr.add_argument("--data-path", default="", help="DAVIS-2017 trainval root")
    tr.add_argument("--ytvos-path", default="", help="YouTube-VOS 2019 root (with train/)")
    tr.add_argument("--pretrained", default="", help="DropMAE / MAE / our pre-training ckpt")
    tr.add_argument("--output", required=True, help="run folder (config, log.jsonl, ckpts)")
    tr.add_argument("--model", default="base", choices=sorted(VOS_PRESETS))
    tr.add_argument("--iterations", type=int, default=210000)
    tr.add_argument("--batch-size", type=int, default=4, help="per GPU (paper: 4 x 8 GPUs)")
    tr.add_argument("--size", type=int, default=0, help="crop side (0: preset, 384 for base)")
    tr.add_argument("--lr", type=float, default=2e-5)
    tr.add_argument("--weight-decay", type=float, default=1e-7)
    tr.add_argument("--lr-steps", type=int, nargs="*", default=[125000])
    tr.add_argument("--lr-gamma", type=dropmae.fraction(0, 1, lo_closed=False, hi_closed=True),
                    default=0.1, help="lr factor at each --lr-steps milestone, in (0, 1]")
    tr.add_argument("--bootstrap-start", type=int, default=20000)
    tr.add_argument("--bootstrap-end", type=int, default=70000)
    tr.add_argument("--bootstrap-p", type=dropmae.fraction(0, 1, lo_closed=False, hi_closed=True),
                    default=0.15, help="share of the hardest pixels the loss keeps, in (0, 1]")
    tr.add_argument("--davis-split", default="train", help="ImageSets/2017/<split>.txt")
    tr.add_argument("--davis-repeat", type=int, default=5, help="DAVIS copies in the mix")
    tr.add_argument("--ytvos-subset", default="",
                    help="file of YouTube-VOS train videos to use (DropSeg: util/yv_subset.txt)")
    tr.add_argument("--max-jump", type=int, default=25,
                    help="DAVIS frame gap bound (exclusive); YouTube-VOS gets max_jump // 5")
    tr.add_argument("--workers", type=int, default=8, help="data loader workers per rank")
    tr.add_argument("--seed", type=int, default=SEED)
    tr.add_argument("--no-amp", action="store_true", help="fp32 on GPU (AMP is on by default)")
    tr.add_argument("--print-freq", type=int, default=100)
    tr.add_argument("--save-every", type=int, default=10000)
    tr.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (0: all)")
    tr.add_argument("--resume", default="", help="'auto' (latest in --output) or a path")

    te = sub.add_parser("test", help="one-shot inference, PNGs in the official layout")
    te.add_argument("--dataset", required=True, choices=DATASETS)
    te.add_argument("--data-path", required=True,
                    help="DAVIS-2017 trainval (val sets) / test-dev root, or YouTube-VOS root")
    te.add_argument("--ckpt", required=True,
                    help="checkpoint written by `train`, or a released DropSeg .pth")
    te.add_argument("--output", required=True)
    te.add_argument("--resolution", type=int, default=480,
                    help="shorter side the model sees (480p; 0 = the frames' own size)")
    te.add_argument("--device", default="", help="default: cuda when available")
    te.add_argument("--amp", action="store_true",
                    help="fp16 autocast, GPU only (off by default, as in DropSeg's scripts)")

    sy = sub.add_parser("synthetic", help="write tiny DAVIS and YouTube-VOS folders")
    sy.add_argument("--out", required=True)
    sy.add_argument("--frames", type=int, default=12)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--davis-train", type=int, default=3,
                    help="DAVIS train sequences (train-000, ...)")
    sy.add_argument("--davis-val", type=int, default=3,
                    help="DAVIS val sequences (val-000, ...), disjoint from the train ones")
    sy.add_argument("--ytvos-videos", type=int, default=2, help="YouTube-VOS train (and valid) videos")
    sy.add_argument("--world", type=world_knob, action="append", default=[], metavar="KEY=VALUE",
                    help="a knob of the synthetic data.World, e.g. speed=0.05 (repeatable)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "test":
        try:
            return inference(args)
        except (dropmae.CheckpointError, FileNotFoundError) as err:   # names the file
            raise SystemExit(f"error: {err}") from None
    for flag in ("davis_train", "davis_val", "ytvos_videos"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    davis = write_synthetic_davis(Path(args.out) / "DAVIS", n_frames=args.frames, seed=args.seed,
                                  sequences=[f"train-{i:03d}" for i in range(args.davis_train)],
                                  val_sequences=[f"val-{i:03d}" for i in range(args.davis_val)],
                                  **dict(args.world))
    ytvos = write_synthetic_ytvos(Path(args.out) / "YouTubeVOS", n_frames=args.frames,
                                  seed=args.seed + 1, videos=[f"vid{i}" for i in range(args.ytvos_videos)],
                                  **dict(args.world))
    print(f"wrote {davis} and {ytvos}")


if __name__ == "__main__":
    main()
