"""DropMAE-TAP: tracking any point with the pre-trained two-frame ViT (our design, specs/tap.md).

The extended DropMAE paper's point-tracking model and numbers are not public, so the model is
ours, in the paper's spirit: the pre-trained two-frame ViT loaded unchanged through
`dropmae.load_pretrained`, a light TAP-Net/TAPIR-style readout, and only the initialisation
differs between the rows of `reproduce/table_tap.py`. Scoring is `eval/tapvid.py` (AJ,
delta_avg, OA; specs/metrics-dense.md section 2).

The file reads top to bottom along the data flow:
  1. model: one joint pass over (query frame `_z`, target frame `_x`), a ViTDet simple-pyramid
     neck to stride 8 (or 4), L2-normalised features, the query feature sampled bilinearly from
     the query frame's map, cosine cost against the target map, a 3x3-conv position head with a
     softmax at temperature tau and a soft-argmax in a local window, occlusion and expected-
     distance logits from the same hidden map;
  2. the tapnet losses (Huber on visible points, occlusion BCE, expected-distance BCE), and
     an optional heatmap cross-entropy (`--heatmap-loss`, ours: a deviation from specs/tap.md,
     off by default, on in the tiny table's recipe);
  3. checkpoint import with the expected key list;
  4. data: the Kubric export layout (CoTracker's MOVi-F / CoTracker3_Kubric) and the TAP-Vid
     pickles (DAVIS, RGB-Stacking, Kinetics shards), both behind `--trust-pickle`;
  5. `train`: config, distributed init, data, model, optimizer, loop, atomic checkpoints;
  6. `test`: every query through every frame, `<video>.npz` in eval/tapvid.py's layout, scores
     (`--visibility tapir`, the spec's rule, or `occlusion`, TAP-Net's: the tiny table's);
  7. `synthetic`: the synthetic world's point tracks (`data.World.tracks`) in both layouts.

Coordinates (tapnet's raster convention, `TN:README` "A Note on Coordinates"): pixel (row i,
col j) has its centre at (x, y) = (j + 0.5, i + 0.5); queries are (t, y, x), tracks (x, y).
The synthetic world puts pixel centres at (j, i), so its tracks get + 0.5 when written.

Commands:
    # tiny CPU run on the synthetic world (close to the tiny table's recipe, which also uses
    # 96 clips and 128^2 TAP-Vid videos: reproduce/table_tap.py; ~1000 steps, minutes)
    python tasks/tap.py synthetic --out /tmp/tap_synth
    python tasks/tap.py train --model tiny --size 128 --stride 8 --trust-pickle \\
        --data-path /tmp/tap_synth/kubric/train --steps 1000 --batch-size 4 --num-queries 16 \\
        --lr 2e-3 --backbone-mult 1 --warmup 30 --heatmap-loss 1 --workers 1 --output runs/tap_tiny
    python tasks/tap.py test --dataset davis --query-mode first --trust-pickle \\
        --data-path /tmp/tap_synth/tapvid_davis/tapvid_davis.pkl --visibility occlusion \\
        --ckpt runs/tap_tiny/checkpoint-1000.pth --output runs/tap_tiny/davis_first
    python tasks/tap.py test ... --baseline zero-motion --output runs/tap_tiny/zero_first

    # the main recipe (specs/tap.md section 3): 8 GPUs x 8 clips x 4 targets, 100k steps, 256^2
    torchrun --nproc_per_node=8 tasks/tap.py train --model base --data-path movi_f_export \\
        --kubric-variant movi_f --trust-pickle --pretrained dropmae_k700_vitb.pth \\
        --output runs/tap_dropmae      # add --resume auto to continue
    python tasks/tap.py test --dataset davis --query-mode strided --trust-pickle \\
        --data-path tapvid_davis/tapvid_davis.pkl --ckpt runs/tap_dropmae/checkpoint-100000.pth \\
        --output runs/tap_dropmae/davis_strided
    python tasks/tap.py test --dataset kinetics --query-mode first --trust-pickle \\
        --data-path tapvid_kinetics/ --kinetics-csv tapvid_kinetics.csv ...

`--trust-pickle`: the Kubric export's `.npy` is `np.save` of a dict and the TAP-Vid files are
pickles; unpickling can run code, so both readers refuse without the flag and name the file.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import item_generator, normalize  # noqa: E402
from eval import tapvid  # noqa: E402

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TapConfig:
    """Model shape and readout knobs (specs/tap.md section 1)."""
    encoder: str = "base"          # dropmae preset of the ViT
    size: int = 256                # input side the model sees (16x16 tokens per frame at 256)
    stride: int = 8                # feature stride of the neck output: 8 or 4
    neck_dim: int = 256            # channels of the L2-normalised feature map
    hidden: int = 16               # channels of the position head's hidden map
    temperature: float = 20.0      # softmax temperature tau (TAPIR; TAP-Net uses 10)
    radius: float = 5.0            # soft-argmax window, in cells (strict <)
    frame_ids: str = "zx"          # frame vectors of (query, target); "xz" is the swap ablation
    drop_path: float = 0.1


TAP_PRESETS = {
    "base": TapConfig(),
    # tests and the tiny table: a 64-px input, 4x4 tokens per frame, a 16x16 map at stride 4
    "tiny": TapConfig(encoder="tiny", size=64, stride=4, neck_dim=32, drop_path=0.0),
}
TINY_TAG = "  [tiny model: tiny scale, not comparable with the paper]"
EVAL_SIZE = tapvid.EVAL_SIZE   # 256: the TAP-Vid protocol frame
QUERY_CHUNK = 16               # queries read out per kernel call at inference (see forward_points)


def get_tap_config(name: str, **overrides) -> TapConfig:
    if name not in TAP_PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(TAP_PRESETS)}")
    return dataclasses.replace(TAP_PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# 1. Model
# --------------------------------------------------------------------------------------------

LayerNorm2d = dropmae.LayerNorm2d           # one definition, in the core's ViT pieces


def sample_features(fmap: torch.Tensor, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear read of a feature map at raster points (tapnet's `interp`).

    fmap (B, C, h, w) covering an (H, W) = size image; xy (B, Q, 2) (x, y) raster pixels, pixel
    (i, j) centred at (j + 0.5, i + 0.5) -> (B, Q, C). With align_corners=False, u = 2x/W - 1
    puts cell (i, j) of the map at its centre ((j + 0.5) W/w, (i + 0.5) H/h); outside the
    image the border cell is repeated.
    """
    H, W = size
    grid = torch.stack([2 * xy[..., 0] / W - 1, 2 * xy[..., 1] / H - 1], dim=-1)   # (B, Q, 2)
    out = F.grid_sample(fmap, grid[:, :, None].to(fmap.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)                # (B, C, Q, 1)
    return out[..., 0].transpose(1, 2)


def soft_argmax_window(logits: torch.Tensor, radius: float) -> torch.Tensor:
    """Softmax over the cells, then the weighted mean of cell centres within `radius` cells
    (Euclidean, strict <) of the argmax cell, renormalised (`TN:heatmaps_to_points`).

    logits (..., h, w) (already multiplied by the temperature) -> (..., 2) (x, y) in cell
    units, cell (i, j) centred at (j + 0.5, i + 0.5). Multiply by the stride for pixels.
    """
    *lead, h, w = logits.shape
    prob = logits.flatten(-2).float().softmax(-1)                                  # (..., h*w)
    ys, xs = torch.meshgrid(torch.arange(h, device=logits.device),
                            torch.arange(w, device=logits.device), indexing="ij")
    centres = torch.stack([xs.flatten() + 0.5, ys.flatten() + 0.5], -1).float()     # (h*w, 2)
    peak = centres[prob.argmax(-1)]                                                # (..., 2)
    near = ((centres - peak[..., None, :]) ** 2).sum(-1) < radius ** 2             # (..., h*w)
    weight = prob * near
    return (weight[..., None] * centres).sum(-2) / weight.sum(-1, keepdim=True)


class DropMAETAP(dropmae.ViTEncoder):
    """The DropMAE encoder plus the neck and the point readout.

    Keys beyond the encoder's (all new at fine-tuning, `NEW_PREFIXES`): `neck.*` (ConvT pyramid
    and the 1x1 projection), `cost_conv1.*`, `cost_conv2.*` (position head), `occ_conv.*`,
    `occ_fc1.*`, `occ_fc2.*` (occlusion / expected-distance head).
    """

    NEW_PREFIXES = ("neck.", "cost_conv1.", "cost_conv2.", "occ_conv.", "occ_fc1.", "occ_fc2.")

    def __init__(self, tap: TapConfig):
        super().__init__(dropmae.get_config(tap.encoder, drop_path=tap.drop_path))
        if tap.stride not in (4, 8) or tap.size % self.cfg.patch_size:
            raise ValueError(f"stride must be 4 or 8 and size a multiple of "
                             f"{self.cfg.patch_size}: {tap}")
        if sorted(tap.frame_ids) != ["x", "z"]:
            raise ValueError(f"frame_ids must be 'zx' or 'xz', not {tap.frame_ids!r}")
        self.tap = tap
        D = self.cfg.embed_dim
        if tap.stride == 8:       # ViTDet simple pyramid, as DropSeg's fpn2 / fpn1
            up = [nn.ConvTranspose2d(D, D, 2, 2)]
            width = D
        else:
            up = [nn.ConvTranspose2d(D, D, 2, 2), LayerNorm2d(D), nn.GELU(),
                  nn.ConvTranspose2d(D, D // 2, 2, 2)]
            width = D // 2
        self.neck = nn.Sequential(*up, nn.Conv2d(width, tap.neck_dim, 1))
        self.cost_conv1 = nn.Conv2d(1, tap.hidden, 3, padding=1)
        self.cost_conv2 = nn.Conv2d(tap.hidden, 1, 3, padding=1)
        self.occ_conv = nn.Conv2d(tap.hidden, 32, 3, stride=2, padding=1)
        self.occ_fc1 = nn.Linear(32, 16)
        self.occ_fc2 = nn.Linear(16, 2)

    def encode_pair(self, img_q: torch.Tensor, img_t: torch.Tensor):
        """One joint pass. img_q, img_t (B, 3, S, S) normalised -> (query map, target map),
        each (B, C, S/stride, S/stride) L2-normalised over channels."""
        B, _, H, W = img_q.shape
        g = self.patch_embed.grid(H, W)
        tokens = self.forward(img_q, img_t, frames=tuple(self.tap.frame_ids))        # (B, 2N, D)
        maps = tokens.transpose(1, 2).reshape(B, -1, 2, *g)                        # (B, D, 2, gh, gw)
        both = torch.cat([maps[:, :, 0], maps[:, :, 1]], 0)                        # (2B, D, gh, gw)
        feats = F.normalize(self.neck(both), dim=1)                                # (2B, C, h, w)
        return feats[:B], feats[B:]

    def readout(self, cost: torch.Tensor):
        """Per-query heads on the cost maps. cost (B, Q, h, w) -> (position logits x tau
        (B, Q, h, w), occlusion logit (B, Q), expected-distance logit (B, Q)). Each query's
        map goes through the convolutions on its own (queries are batch rows)."""
        B, Q, h, w = cost.shape
        hidden = F.relu(self.cost_conv1(cost.reshape(B * Q, 1, h, w)))             # (BQ, 16, h, w)
        pos = self.cost_conv2(hidden).reshape(B, Q, h, w) * self.tap.temperature
        occ = F.relu(self.occ_conv(hidden)).mean((2, 3))                           # (BQ, 32)
        occ = self.occ_fc2(F.relu(self.occ_fc1(occ))).reshape(B, Q, 2)
        return pos, occ[..., 0], occ[..., 1]

    def read_points(self, fq: torch.Tensor, ft: torch.Tensor, query_xy: torch.Tensor,
                    size: tuple[int, int]) -> dict:
        """The per-query part: query features, cost, heads, soft-argmax. fq, ft (B, C, h, w)
        from `encode_pair`; query_xy (B, Q, 2) -> see `forward_points`."""
        feat = sample_features(fq, query_xy, size)                                 # (B, Q, C)
        cost = torch.einsum("bqc,bchw->bqhw", feat, ft)                            # (B, Q, h, w)
        pos, occ, expd = self.readout(cost)
        scale = torch.tensor([size[1] / ft.shape[-1], size[0] / ft.shape[-2]], device=pos.device)
        points = soft_argmax_window(pos, self.tap.radius) * scale
        return {"points": points, "occ_logit": occ.float(), "expd_logit": expd.float(),
                "heatmap": pos}

    def forward_points(self, img_q: torch.Tensor, img_t: torch.Tensor, query_xy: torch.Tensor,
                       chunk: int | None = None) -> dict:
        """img_q, img_t (B, 3, S, S); query_xy (B, Q, 2) (x, y) raster pixels of img_q ->
        {'points' (B, Q, 2) (x, y) raster pixels of img_t, 'occ_logit' (B, Q), 'expd_logit'
        (B, Q), 'heatmap' (B, Q, h, w) position logits}.

        `chunk` (inference): the queries are zero-padded to a multiple of `chunk` and read out
        `chunk` at a time, so every kernel sees the same shapes whatever the number of queries.
        Matmul and convolution kernels pick their summation order from the shapes, so without
        this a query's output moves by float rounding when other queries are added (the
        TAP-Vid independence rule; tested bit-exactly on CPU). Training reads all at once.
        """
        fq, ft = self.encode_pair(img_q, img_t)
        size = tuple(img_q.shape[-2:])
        if chunk is None:
            return self.read_points(fq, ft, query_xy, size)
        Q = query_xy.shape[1]
        padded = F.pad(query_xy, (0, 0, 0, (-Q) % chunk))
        parts = [self.read_points(fq, ft, padded[:, i:i + chunk], size)
                 for i in range(0, padded.shape[1], chunk)]
        return {k: torch.cat([p[k] for p in parts], 1)[:, :Q] for k in parts[0]}


VISIBILITY_RULES = ("tapir", "occlusion")


def predicted_visible(occ_logit: torch.Tensor, expd_logit: torch.Tensor,
                      rule: str = "tapir") -> torch.Tensor:
    """'tapir' (the spec's): visible iff (1 - sigmoid(occ)) (1 - sigmoid(expd)) > 0.5
    (`TN:postprocess_occlusions`). 'occlusion' (TAP-Net's, which has no expected-distance
    head): visible iff sigmoid(occ) < 0.5. The tapir rule also hides every point the model
    expects to miss by more than 6 px, which for a weak tracker is nearly all of them (the
    tiny table, README), while AJ counts a visible guess as a hit at the thresholds it meets."""
    if rule == "occlusion":
        return torch.sigmoid(occ_logit) < 0.5
    if rule != "tapir":
        raise ValueError(f"visibility rule {rule!r}: choose from {VISIBILITY_RULES}")
    return (1 - torch.sigmoid(occ_logit)) * (1 - torch.sigmoid(expd_logit)) > 0.5


def build_model(name: str, **overrides) -> DropMAETAP:
    return DropMAETAP(get_tap_config(name, **overrides))


# --------------------------------------------------------------------------------------------
# 2. Losses (`TN:utils/model_utils.py::tapnet_loss`, errors in 256-px units)
# --------------------------------------------------------------------------------------------

def huber(d2: torch.Tensor, delta: float = 4.0) -> torch.Tensor:
    """tapnet's Huber on a squared distance: d2/2 if d < delta else delta (d - delta/2), with
    d = sqrt(d2 + 1e-12)."""
    d = torch.sqrt(d2 + 1e-12)
    return torch.where(d < delta, d2 / 2, delta * (d - delta / 2))


def heatmap_target(gt_xy: torch.Tensor, shape: tuple[int, int], cell: float,
                   sigma: float) -> torch.Tensor:
    """A Gaussian of `sigma` cells around each GT point on the (h, w) cost grid, summing to 1.

    gt_xy (B, Q, 2) raster pixels of the input; cell = input pixels per cell (the stride) ->
    (B, Q, h, w). Cell (i, j) is centred at ((j + 0.5) cell, (i + 0.5) cell), the centres
    `soft_argmax_window` uses, so the target's mean is the GT point (up to the grid's edges).
    """
    h, w = shape
    ys = (torch.arange(h, device=gt_xy.device, dtype=torch.float32) + 0.5)[:, None]   # (h, 1)
    xs = (torch.arange(w, device=gt_xy.device, dtype=torch.float32) + 0.5)[None]      # (1, w)
    g = gt_xy.float() / cell                                                       # (B, Q, 2)
    d2 = (xs - g[..., 0, None, None]) ** 2 + (ys - g[..., 1, None, None]) ** 2      # (B, Q, h, w)
    logit = -d2 / (2 * sigma ** 2)
    return logit.flatten(-2).softmax(-1).reshape(logit.shape)


def tap_loss(out: dict, gt_xy: torch.Tensor, gt_occ: torch.Tensor, valid: torch.Tensor,
             to_256: float, position_weight: float = 0.05, huber_delta: float = 4.0,
             expd_threshold: float = 6.0, heatmap_weight: float = 0.0,
             heatmap_sigma: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The three tapnet terms, each averaged over all valid (pair, query) entries, plus an
    optional fourth (ours, off by default: the spec's loss has three).

    out: `forward_points` output; gt_xy (B, Q, 2) raster pixels of the input; gt_occ (B, Q)
    bool; valid (B, Q) bool (padding queries are False); to_256 = 256 / input side.
    position: 0.05 x Huber(delta 4) on GT-visible entries; occlusion: BCE of occ_logit vs GT
    occluded; expected distance: BCE of expd_logit vs [d^2 > 6^2] on stop-gradient positions,
    on GT-visible entries.
    heatmap (`heatmap_weight` > 0; a deviation from specs/tap.md, PIPs/CoTracker-style dense
    supervision): cross-entropy of the full softmax over the cost grid (out['heatmap'], the
    position logits x tau) against `heatmap_target` (a Gaussian of `heatmap_sigma` cells at the
    GT point), on GT-visible entries. The soft-argmax only passes gradient to the cells within
    its window around the argmax; this term reaches every cell, the GT's included.
    -> (total, {name: float}).
    """
    valid = valid.float()
    n = valid.sum().clamp(min=1)
    visible = (~gt_occ).float() * valid
    d2 = ((out["points"].float() - gt_xy) * to_256).pow(2).sum(-1)                 # (B, Q)
    position = (huber(d2, huber_delta) * visible).sum() / n * position_weight
    occlusion = (F.binary_cross_entropy_with_logits(out["occ_logit"], gt_occ.float(),
                                                    reduction="none") * valid).sum() / n
    far = (d2.detach() > expd_threshold ** 2).float()
    expected = (F.binary_cross_entropy_with_logits(out["expd_logit"], far, reduction="none")
                * visible).sum() / n
    total = position + occlusion + expected
    stats = {}
    if heatmap_weight > 0:
        logits = out["heatmap"].float()                                            # (B, Q, h, w)
        cell = 256.0 / to_256 / logits.shape[-1]                                   # input px per cell
        target = heatmap_target(gt_xy, logits.shape[-2:], cell, heatmap_sigma)
        ce = -(target * logits.flatten(-2).log_softmax(-1).reshape(logits.shape)).sum((-2, -1))
        heatmap = (ce * visible).sum() / n * heatmap_weight
        total = total + heatmap
        stats["heatmap"] = heatmap.item()
    with torch.no_grad():
        err = (torch.sqrt(d2) * visible).sum() / visible.sum().clamp(min=1)
    return total, {"loss": total.item(), "position": position.item(),
                   "occlusion": occlusion.item(), "expected_dist": expected.item(), **stats,
                   "err_px256": err.item()}


# --------------------------------------------------------------------------------------------
# 3. Checkpoint import
# --------------------------------------------------------------------------------------------
#
#   | pre-training key               | DropMAE-TAP key   | note                                |
#   |--------------------------------|-------------------|-------------------------------------|
#   | patch_embed, blocks.*, norm    | same              | loaded                              |
#   | pos_embed (1, 1+g*g, D)        | same              | loaded; resized per input grid      |
#   | temporal_pos_embed_z / _x      | same              | query / target frame vector         |
#   | decoder_*, mask_token          | -                 | dropped (asserted by the core)      |
#   | (MAE) cls_token                | -                 | dropped; frame vectors stay at init |
#   | -                              | NEW_PREFIXES      | new, random init                    |

def new_keys(model: DropMAETAP) -> list[str]:
    """State-dict keys the TAP model adds to the encoder (missing from any pre-training file)."""
    return sorted(k for k in model.state_dict() if k.startswith(DropMAETAP.NEW_PREFIXES))


def load_backbone(src, model: DropMAETAP, verbose: bool = True) -> dict:
    """A DropMAE, MAE or our pre-training checkpoint into the encoder: exactly `new_keys` may
    be missing (the core raises on any other difference, with the file name)."""
    return dropmae.load_pretrained(src, model, expect_missing=new_keys(model), verbose=verbose)


def load_tap_checkpoint(path, device="cpu") -> tuple[DropMAETAP, dict]:
    """A `train` checkpoint (or a dict) -> (model in eval mode, its stored config); strict."""
    ckpt = path if isinstance(path, dict) else dropmae.load_checkpoint(path)   # errors name the file
    if not isinstance(ckpt, dict) or "model" not in ckpt or "tap" not in ckpt:
        raise ValueError(f"{path}: not a tasks/tap.py checkpoint (needs 'model' and 'tap')")
    model = DropMAETAP(TapConfig(**ckpt["tap"]))
    own, state = set(model.state_dict()), set(ckpt["model"])
    if own != state:
        raise KeyError(f"{path}: checkpoint keys do not match DropMAETAP({ckpt['tap']}): missing "
                       f"{sorted(own - state)[:8]}, unexpected {sorted(state - own)[:8]}")
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), ckpt


# --------------------------------------------------------------------------------------------
# 4. Data: the Kubric export layout and the TAP-Vid pickles
# --------------------------------------------------------------------------------------------

TRUST_HINT = ("unpickling can run arbitrary code; pass --trust-pickle (trust_pickle=True) if "
              "you trust this file")


def _check_tracks(coords, occluded, where: str, n_frames: int | None = None):
    """(N, T, 2) finite float tracks and an (N, T) occlusion flag, else a ValueError."""
    coords = np.asarray(coords)
    occluded = np.asarray(occluded)
    if coords.ndim != 3 or coords.shape[-1] != 2 or occluded.shape != coords.shape[:2]:
        raise ValueError(f"{where}: tracks {coords.shape} / occlusion {occluded.shape}, expected "
                         f"(N, T, 2) / (N, T)")
    if n_frames is not None and coords.shape[1] != n_frames:
        raise ValueError(f"{where}: tracks have {coords.shape[1]} frames, the video {n_frames}")
    if not np.issubdtype(coords.dtype, np.floating) and not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"{where}: tracks of dtype {coords.dtype}, expected numbers")
    if not np.isfinite(coords).all():
        bad = np.argwhere(~np.isfinite(coords))[0]
        raise ValueError(f"{where}: non-finite track coordinate at track {bad[0]}, frame {bad[1]}")
    if occluded.dtype != bool and not np.isin(occluded, (0, 1)).all():
        raise ValueError(f"{where}: occlusion flags must be bool or 0/1")
    return coords.astype(np.float32), occluded.astype(bool)


def read_kubric_annotation(path, trust_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A Kubric export `<seq>/<seq>.npy` (CoTracker's `np.save` of a dict) -> (coords (N, T, 2)
    float32 (x, y) raster pixels of the frames, occluded (N, T) bool).

    The dict's `visibility` key holds the **occluded** flag (CoTracker wrote
    `{"coords": target_points, "visibility": occluded}`, co-tracker#152, and its loader
    negates it), so it is returned as is, as `occluded`. Extra keys (depth, camera) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation missing (Kubric export layout "
                                f"<root>/<seq>/<seq>.npy)")
    try:
        arr = np.load(path, allow_pickle=False)       # reads the header only for object arrays
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise ValueError(f"{path}: cannot read .npy ({err})") from err
        if not trust_pickle:
            raise PermissionError(f"{path}: the annotation is a pickled dict (np.save of a "
                                  f"dict); {TRUST_HINT}") from None
        arr = np.load(path, allow_pickle=True)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read .npy ({err})") from err
    data = arr.item() if arr.dtype == object and arr.shape == () else arr
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict with 'coords' and 'visibility', got "
                         f"{type(data).__name__} {getattr(data, 'shape', '')}")
    missing = [k for k in ("coords", "visibility") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; has {sorted(data)}")
    return _check_tracks(data["coords"], data["visibility"], str(path))


def kubric_frames(seq_dir) -> list[Path]:
    """Sorted `<seq>/frames/*.png`; an error naming the folder if there are none."""
    folder = Path(seq_dir) / "frames"
    frames = sorted(folder.glob("*.png"))
    if not frames:
        raise FileNotFoundError(f"{folder}: no .png frames (Kubric export layout)")
    return frames


def kubric_sequences(root) -> list[Path]:
    """Sequence folders of a Kubric export root: every `<root>/<seq>/` with a `frames/` folder
    and a `<seq>.npy` (a folder with frames but no annotation is an error naming it)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Kubric export root missing")
    seqs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d / "frames").is_dir():
            if not (d / f"{d.name}.npy").is_file():
                raise FileNotFoundError(f"{d / (d.name + '.npy')}: annotation missing for the "
                                        f"frames in {d / 'frames'}")
            seqs.append(d)
    if not seqs:
        raise FileNotFoundError(f"{root}: no <seq>/frames/ + <seq>/<seq>.npy sequences")
    return seqs


def read_frame(path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode image ({err})") from err


def load_pickle(path, trust_pickle: bool):
    """Unpickle a TAP-Vid file only when trusted; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TAP-Vid pickle missing")
    if not trust_pickle:
        raise PermissionError(f"{path}: TAP-Vid annotations are pickles; {TRUST_HINT}")
    try:                                   # the suite's trusted pickle reader (eval/tapvid.py)
        return tapvid.read_pickle(path, trust_pickle=True)
    except ValueError as err:
        raise ValueError(f"{path}: cannot unpickle ({err})") from err


def decode_video(video, where: str) -> np.ndarray:
    """A TAP-Vid `video` entry -> (T, H, W, 3) uint8: a uint8 array, or (Kinetics) a sequence
    of JPEG bytes decoded with Pillow."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{where}: video {video.shape}, expected (T, H, W, 3) uint8")
        return video
    if len(video) and isinstance(video[0], (bytes, bytearray, np.bytes_)):
        frames = []
        for t, blob in enumerate(video):
            try:
                with Image.open(io.BytesIO(bytes(blob))) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except (OSError, SyntaxError) as err:
                raise ValueError(f"{where}: frame {t} is not a decodable JPEG ({err})") from err
        if len({f.shape for f in frames}) != 1:
            raise ValueError(f"{where}: frames of different sizes")
        return np.stack(frames)
    raise ValueError(f"{where}: video must be a (T, H, W, 3) uint8 array or a list of JPEG "
                     f"bytes, got {type(video).__name__}")


def read_tapvid(path, trust_pickle: bool = False, decode: bool = True) -> dict:
    """TAP-Vid pickle(s) -> {name: (video (T, H, W, 3) uint8 or None, points (N, T, 2)
    normalised (x, y), occluded (N, T) bool)}, names as `eval.tapvid.read_tapvid_gt`: dict keys
    (DAVIS, some Kinetics shards), "{index:04d}" for a list (RGB-Stacking), or
    "{file stem}_{index:04d}" for the lists of a folder of shards (Kinetics)."""
    path = Path(path)
    files = sorted(path.glob("*.pkl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .pkl files")
    videos = {}
    for f in files:
        data = load_pickle(f, trust_pickle)
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, (list, tuple)):
            prefix = f"{f.stem}_" if path.is_dir() else ""
            items = [(f"{prefix}{i:04d}", v) for i, v in enumerate(data)]
        else:
            raise ValueError(f"{f}: expected a dict or a list of examples, got {type(data).__name__}")
        for name, ex in items:
            where = f"{f}: video {name!r}"
            if not isinstance(ex, dict):
                raise ValueError(f"{where}: expected a dict, got {type(ex).__name__}")
            missing = [k for k in ("video", "points", "occluded") if k not in ex]
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}")
            if name in videos:
                raise ValueError(f"{f}: video {name!r} appears twice")
            video = decode_video(ex["video"], where) if decode else None
            points, occluded = _check_tracks(ex["points"], ex["occluded"], where,
                                             None if video is None else len(video))
            videos[name] = (video, points, occluded)
    return videos


def kinetics_csv_count(path) -> int:
    """Distinct clips (youtube_id, start, end) of `tapvid_kinetics.csv` (one row per track)."""
    with open(path, newline="") as f:
        return len({tuple(row[:3]) for row in csv.reader(f) if row})


def resize_video(video: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3), ignoring the aspect ratio (the TAP-Vid
    readers' rule); Pillow bilinear, antialiased when shrinking."""
    if video.shape[1:3] == (size, size):
        return video
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
                     for f in video])


# -------- training clips

@dataclass
class Augment:
    """Photometric / flip augmentation (ours, from CoTracker's ranges; specs/tap.md section 3)."""
    jitter_p: float = 0.25        # per frame: ColorJitter(0.2, 0.2, 0.2, hue 0.25/pi)
    blur_p: float = 0.25          # per frame: Gaussian blur, sigma ~ U(0.1, 2)
    flip_p: float = 0.5           # one horizontal flip shared by both frames
    shift: int = 0                # per frame: a random translation of up to +-shift pixels per
                                  # axis (CoTracker-style crop jitter; 0 = off, the main recipe)


def uniform(g, lo: float, hi: float) -> float:
    return torch.empty(1).uniform_(lo, hi, generator=g).item()


def photometric(img: Image.Image, aug: Augment, g) -> Image.Image:
    """Per-frame ColorJitter (brightness, contrast, saturation in [0.8, 1.2], hue shift in
    +-0.25/pi of a turn, applied in that order) with probability jitter_p, then a blur."""
    if torch.rand(1, generator=g).item() < aug.jitter_p:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(uniform(g, 0.8, 1.2))
        shift = int(round(uniform(g, -0.25 / math.pi, 0.25 / math.pi) * 255))
        h, s, v = img.convert("HSV").split()
        h = h.point(lambda p: (p + shift) % 256)
        img = Image.merge("HSV", (h, s, v)).convert("RGB")
    if torch.rand(1, generator=g).item() < aug.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(uniform(g, 0.1, 2.0)))
    return img


class KubricClips(torch.utils.data.Dataset):
    """One training clip per item: a query frame q (uniform), up to `num_queries` tracks visible
    at q, `num_targets` other frames (uniform without replacement), all resized to `size`
    (coordinates scaled by size / W, size / H, as a MOVi-F export at 512 is read at 256 with
    coords x 0.5), a shared flip, per-frame photometric changes; a point outside [0, size)^2
    after the spatial change is occluded. Randomness: `item_generator(seed, epoch, index)`.

    Item: query_img (3, S, S); target_imgs (K, 3, S, S); query_xy (Nq, 2); target_xy
    (K, Nq, 2); target_occ (K, Nq) bool; valid (Nq,) bool (False for padding queries, when
    fewer than Nq tracks are visible at q).
    """

    def __init__(self, root, size: int, num_queries: int = 256, num_targets: int = 4,
                 trust_pickle: bool = False, seed: int = 0, aug: Augment | None = None):
        self.seqs = kubric_sequences(root)
        self.size, self.nq, self.k, self.seed = size, num_queries, num_targets, seed
        self.trust_pickle, self.aug = trust_pickle, aug or Augment()
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, index: int) -> dict:
        g = item_generator(self.seed, self.epoch, index)
        seq = self.seqs[index]
        frames = kubric_frames(seq)
        coords, occ = read_kubric_annotation(seq / f"{seq.name}.npy", self.trust_pickle)
        T = len(frames)
        if coords.shape[1] != T:
            raise ValueError(f"{seq / (seq.name + '.npy')}: tracks have {coords.shape[1]} "
                             f"frames, {seq / 'frames'} has {T}")
        if T <= self.k:
            raise ValueError(f"{seq / 'frames'}: {T} frames, a clip needs more than "
                             f"{self.k} (the targets)")
        first = read_frame(frames[0])
        W, H = first.size
        flip = torch.rand(1, generator=g).item() < self.aug.flip_p
        xy = coords * np.array([self.size / W, self.size / H], np.float32)         # (N, T, 2)
        if flip:
            xy[..., 0] = self.size - xy[..., 0]          # x' = W - x in raster coordinates
        offset = np.zeros((T, 2), np.int64)
        if self.aug.shift:                          # every frame moved on its own: a point's
            offset = torch.randint(-self.aug.shift, self.aug.shift + 1, (T, 2), generator=g).numpy()
            xy = xy + offset[None].astype(np.float32)   # motion then differs from frame to frame
        occ = occ | (xy < 0).any(-1) | (xy >= self.size).any(-1)
        for _ in range(5):                          # a query frame with visible tracks
            q = int(torch.randint(T, (1,), generator=g))
            visible = np.flatnonzero(~occ[:, q])
            if len(visible):
                break
        pick = visible[torch.randperm(len(visible), generator=g)[:self.nq].numpy()]
        others = [t for t in range(T) if t != q]
        targets = [others[i] for i in torch.randperm(T - 1, generator=g)[:self.k].tolist()]
        xy, out_occ = xy[pick], occ[pick]

        def load(t, img=None):
            img = img or read_frame(frames[t])
            if img.size != (W, H):
                raise ValueError(f"{frames[t]}: frame is {img.size}, the first one {(W, H)}")
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if offset[t].any():                     # content moves by +offset, black fill
                dx, dy = (int(v) for v in offset[t])
                img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy),
                                    resample=Image.Resampling.NEAREST)
            return normalize(photometric(img, self.aug, g))

        n = len(pick)
        query_xy = np.zeros((self.nq, 2), np.float32)
        query_xy[:n] = xy[:, q]
        target_xy = np.zeros((self.k, self.nq, 2), np.float32)
        target_xy[:, :n] = xy[:, targets].transpose(1, 0, 2)
        target_occ = np.ones((self.k, self.nq), bool)
        target_occ[:, :n] = out_occ[:, targets].T
        valid = np.zeros(self.nq, bool)
        valid[:n] = True
        return {"query_img": load(q, first if q == 0 else None), "target_imgs": torch.stack([load(t) for t in targets]),
                "query_xy": torch.from_numpy(query_xy), "target_xy": torch.from_numpy(target_xy),
                "target_occ": torch.from_numpy(target_occ), "valid": torch.from_numpy(valid)}


def flatten_pairs(batch: dict) -> tuple[torch.Tensor, ...]:
    """A collated batch of B clips x K targets -> B*K pairs: (img_q, img_t (BK, 3, S, S),
    query_xy, gt_xy (BK, Nq, 2), gt_occ, valid (BK, Nq))."""
    B, K = batch["target_imgs"].shape[:2]
    img_q = batch["query_img"].repeat_interleave(K, 0)
    img_t = batch["target_imgs"].flatten(0, 1)
    query_xy = batch["query_xy"].repeat_interleave(K, 0)
    return (img_q, img_t, query_xy, batch["target_xy"].flatten(0, 1),
            batch["target_occ"].flatten(0, 1), batch["valid"].repeat_interleave(K, 0))


# --------------------------------------------------------------------------------------------
# 5. Training
# --------------------------------------------------------------------------------------------

def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 over `warmup` steps, then cosine to 0 at `total` (step 0-based)."""
    if step < warmup:
        return base * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: DropMAETAP, lr: float, backbone_mult: float, weight_decay: float,
                 verbose: bool = True) -> list[dict]:
    """Four AdamW groups: the ViT (every key not in NEW_PREFIXES) at lr x backbone_mult (0.1,
    DropTrack's multiplier), the neck and heads at lr; weight decay on matrices and conv
    kernels (ndim >= 2, the frame vectors included), 0 on biases and norm weights. Frozen
    tensors (pos_embed) are left out."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(DropMAETAP.NEW_PREFIXES)
        decay = p.ndim >= 2
        key = ("head" if head else "backbone", decay)
        groups.setdefault(key, []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        mult = 1.0 if part == "head" else backbone_mult
        out.append({"params": params, "lr_mult": mult, "lr": lr * mult,
                    "weight_decay": weight_decay if decay else 0.0, "name": f"{part}/{'decay' if decay else 'no_decay'}"})
    if verbose:
        print("param groups: " + "; ".join(
            f"{g['name']} {len(g['params'])} tensors ({sum(p.numel() for p in g['params']):,}) "
            f"lr x{g['lr_mult']:g} wd {g['weight_decay']:g}" for g in out))
    return out


def train_step(net, batch: dict, optimizer, scaler, amp: str, device, to_256: float,
               grad_clip: float, heatmap_weight: float = 0.0, heatmap_sigma: float = 1.0) -> dict:
    """One optimisation step on B clips x K targets -> the loss terms."""
    img_q, img_t, qxy, gxy, gocc, valid = (x.to(device, non_blocking=True) for x in flatten_pairs(batch))
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
        out = net(img_q, img_t, qxy)
    loss, stats = tap_loss(out, gxy, gocc, valid, to_256, heatmap_weight=heatmap_weight,
                           heatmap_sigma=heatmap_sigma)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
        [p for g in optimizer.param_groups for p in g["params"]], grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return stats


class _Points(nn.Module):
    """DDP wraps `forward`; this routes it to `forward_points`."""

    def __init__(self, model: DropMAETAP):
        super().__init__()
        self.model = model

    def forward(self, img_q, img_t, query_xy):
        return self.model.forward_points(img_q, img_t, query_xy)


def train(args) -> Path:
    """The `train` command: Kubric-layout clips, AdamW, warm-up + cosine, the tapnet losses."""
    # config
    tap = get_tap_config(args.model, **{k: v for k, v in (("size", args.size), ("stride", args.stride),
                                                          ("frame_ids", args.frame_ids),
                                                          ("radius", args.radius),
                                                          ("temperature", args.temperature)) if v})
    rank, world, local_rank, device = dropmae.init_distributed()
    amp = dropmae.resolve_amp(args.amp, device)
    torch.manual_seed(args.seed + rank)
    # data
    dataset = KubricClips(args.data_path, tap.size, args.num_queries, args.num_targets,
                          args.trust_pickle, args.seed, Augment(shift=args.shift))
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed, drop_last=True)
    if len(sampler) < args.batch_size:
        raise SystemExit(f"{len(dataset)} clips over {world} ranks give fewer than one batch of "
                         f"{args.batch_size}")
    loader_kw = dict(batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                     drop_last=True, pin_memory=device.type == "cuda")
    first = kubric_frames(dataset.seqs[0])
    seq0 = dataset.seqs[0]                     # fail now (trust flag, format), not in a worker
    read_kubric_annotation(seq0 / f"{seq0.name}.npy", args.trust_pickle)
    with Image.open(first[0]) as im:
        native = im.size
    config = {"args": vars(args), "tap": dataclasses.asdict(tap), "world_size": world,
              "pairs_per_step": args.batch_size * args.num_targets * world, "amp": amp,
              "device": str(device),
              "data": {"variant": args.kubric_variant, "videos": len(dataset),
                       "resolution": list(native), "frames": len(first)}}
    run_dir = dropmae.make_run_dir(args.output, config)
    logger = dropmae.JsonlLogger(run_dir)
    if dropmae.is_main():
        print(json.dumps(config, indent=1, default=str))
    # model
    model = DropMAETAP(tap)
    # the newest readable checkpoint (a corrupt newer one is moved aside, named) or --resume PATH
    resume, ckpt = dropmae.resume_checkpoint(args.output, args.resume,
                                             required=("model", "optimizer", "scaler", "step", "epoch", "rng"))
    if args.pretrained and not resume:
        load_backbone(args.pretrained, model, verbose=dropmae.is_main())
    model.to(device)
    net = _Points(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[local_rank] if device.type == "cuda" else None)
    # optimizer
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.backbone_mult, args.weight_decay,
                                               verbose=dropmae.is_main()),
                                  lr=args.lr, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    step, epoch = 0, 0
    if resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch = ckpt["step"], ckpt["epoch"] + 1
        dropmae.set_rng_state(ckpt["rng"])
        if dropmae.is_main():
            print(f"resumed from {resume} at step {step}")
    # loop
    from tqdm import tqdm
    bar = tqdm(total=args.steps, initial=step, unit="step", disable=not dropmae.is_main())
    model.train()
    to_256 = EVAL_SIZE / tap.size
    tic = time.time()
    while step < args.steps:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in torch.utils.data.DataLoader(dataset, **loader_kw):
            lr = lr_at(step, args.lr, args.warmup, args.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            stats = train_step(net, batch, optimizer, scaler, amp, device, to_256, args.clip,
                               args.heatmap_loss, args.heatmap_sigma)
            step += 1
            bar.update(1)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss is {stats['loss']} at step {step}")
            if step % args.print_freq == 0 or step == args.steps:
                sec = (time.time() - tic) / args.print_freq
                tic = time.time()
                pairs = args.batch_size * args.num_targets * world
                logger.log(step=step, epoch=epoch, lr=lr, sec_per_step=sec,
                           pairs_per_s=pairs / max(sec, 1e-9), **stats)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", err=f"{stats['err_px256']:.1f}")
                if dropmae.is_main() and not sys.stderr.isatty():     # a log file: plain lines
                    print(f"step {step}/{args.steps} loss {stats['loss']:.4f} err "
                          f"{stats['err_px256']:.2f} px256 lr {lr:.2e} {sec:.3f}s/step", flush=True)
            if step % args.save_every == 0 or step == args.steps:
                save(args, model, optimizer, scaler, step, epoch, config)
            if step >= args.steps:
                break
        epoch += 1
    bar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return run_dir


def save(args, model, optimizer, scaler, step: int, epoch: int, config: dict):
    """Atomic `checkpoint-<step>.pth`; keeps the newest `--keep-last` of them."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
             "tap": dataclasses.asdict(model.tap),
             "config": json.loads(json.dumps(config, default=str)), "rng": dropmae.rng_state()}
    dropmae.save_checkpoint(Path(args.output) / f"checkpoint-{step}.pth", state)
    if dropmae.is_main() and args.keep_last > 0:
        old = sorted(Path(args.output).glob("checkpoint-*.pth"),
                     key=lambda q: int(q.stem.split("-")[-1]))[:-args.keep_last]
        for q in old:
            q.unlink()


# --------------------------------------------------------------------------------------------
# 6. Inference and scoring
# --------------------------------------------------------------------------------------------

def frames_to_tensor(video: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (T, 3, S, S) ImageNet-normalised."""
    return torch.stack([normalize(Image.fromarray(f)) for f in video])


@torch.no_grad()
def track_queries(model: DropMAETAP, frames: torch.Tensor, query_points: np.ndarray,
                  mode: str = "strided", skip_unscored: bool = False, pair_batch: int = 8,
                  amp: bool = False, visibility: str = "tapir") -> tuple[np.ndarray, np.ndarray]:
    """Track every query through every frame.

    frames (T, 3, S, S) normalised; query_points (Q, 3) (t, y, x) raster pixels of the S x S
    frames -> tracks (Q, T, 2) (x, y), occluded (Q, T) bool. One joint pass per (query frame,
    target frame), shared by all queries on that query frame (the passes never see other query
    points, so a query's output does not depend on the others). The query frame returns the
    query verbatim, visible. `skip_unscored` (mode 'first'): frames before the query frame are
    not computed and get the query point, occluded. `visibility`: see `predicted_visible`.
    """
    device = next(model.parameters()).device
    T = frames.shape[0]
    qp = np.asarray(query_points, np.float64)
    Q = len(qp)
    tracks = np.repeat(qp[:, None, [2, 1]], T, axis=1).astype(np.float32)          # (Q, T, 2)
    occluded = np.zeros((Q, T), bool)
    qframe = np.round(qp[:, 0]).astype(int)
    for q in np.unique(qframe):
        idx = np.flatnonzero(qframe == q)
        xy = torch.from_numpy(qp[idx][:, [2, 1]]).float().to(device)                # (n, 2)
        targets = [t for t in range(T) if t != q]
        if skip_unscored and mode == "first":
            occluded[idx[:, None], np.arange(q)[None]] = True
            targets = [t for t in targets if t > q]
        for k in range(0, len(targets), pair_batch):
            chunk = targets[k:k + pair_batch]
            n = len(chunk)
            img_q = frames[q:q + 1].to(device).expand(n, -1, -1, -1)
            img_t = frames[chunk].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                out = model.forward_points(img_q, img_t, xy[None].expand(n, -1, -1), QUERY_CHUNK)
            vis = predicted_visible(out["occ_logit"], out["expd_logit"], visibility)   # (n, Qq)
            tracks[idx[:, None], np.array(chunk)[None]] = out["points"].float().cpu().numpy().transpose(1, 0, 2)
            occluded[idx[:, None], np.array(chunk)[None]] = ~vis.cpu().numpy().T
    return tracks, occluded


def zero_motion(query_points: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The zero-motion baseline: every point stays at its query position, always visible."""
    qp = np.asarray(query_points, np.float64)
    return np.repeat(qp[:, None, [2, 1]], n_frames, axis=1), np.zeros((len(qp), n_frames), bool)


def write_prediction(path, tracks, occluded, query_points, size: int):
    """`<video>.npz` in eval/tapvid.py's layout: tracks (Q, T, 2) (x, y), occluded (Q, T),
    resolution (size, size), query_points (Q, 3) (t, y, x), all at the model's frame size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, tracks=np.asarray(tracks, np.float32), occluded=np.asarray(occluded, bool),
             resolution=np.array([size, size]), query_points=np.asarray(query_points, np.float32))
    tmp.replace(path)


def evaluate_folder(videos: dict, pred_dir, mode: str) -> dict:
    """Score `<name>.npz` predictions against the GT of `read_tapvid` (eval.tapvid.evaluate)."""
    gt = {name: (points, occ) for name, (_, points, occ) in videos.items()}
    return tapvid.evaluate(gt, tapvid.read_predictions(pred_dir, list(gt)), mode)


def run_tapvid(predict, videos: dict, mode: str, out_dir, size: int, desc: str = "tapvid") -> dict:
    """Predict every video of `read_tapvid` output with `predict(frames (T, 3, size, size),
    query_points at size) -> (tracks, occluded)`, write `<name>.npz`, score. Frames are
    resized to the 256 x 256 protocol (aspect ignored), then to `size` when the model runs at
    another size (a pure scale; the scorer rescales back). -> the evaluate dict + timing."""
    from tqdm import tqdm
    out_dir = Path(out_dir)
    n_points, seconds = 0, 0.0
    for name, (video, points, occ) in tqdm(videos.items(), desc=desc, unit="video"):
        qp, _, _, _ = tapvid.sample_queries(points * EVAL_SIZE, occ, mode)        # 256 raster
        frames = resize_video(resize_video(video, EVAL_SIZE), size)
        qp_model = qp * np.array([1.0, size / EVAL_SIZE, size / EVAL_SIZE])
        tic = time.time()
        tracks, pred_occ = predict(frames_to_tensor(frames), qp_model)
        seconds += time.time() - tic
        n_points += len(qp) * len(frames)
        write_prediction(out_dir / f"{name}.npz", tracks, pred_occ, qp_model, size)
    result = evaluate_folder(videos, out_dir, mode)
    result.update(query_mode=mode, points_tracked=n_points, predict_seconds=seconds,
                  points_per_s=n_points / max(seconds, 1e-9))
    return result


def summary_line(dataset: str, result: dict, tiny: bool = False) -> str:
    m = result["mean"]
    return (f"tapvid_{dataset} {result['query_mode']}: {result['n_videos']} videos, "
            f"{result['n_queries']} queries  AJ {100 * m['average_jaccard']:.2f}  "
            f"<d_avg {100 * m['average_pts_within_thresh']:.2f}  "
            f"OA {100 * m['occlusion_accuracy']:.2f}  ({result['points_per_s']:.0f} points/s)"
            + (TINY_TAG if tiny else ""))


def test(args) -> dict:
    """The `test` command: read the TAP-Vid pickles, track, write `<name>.npz`, score."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if bool(args.ckpt) == bool(args.baseline):
        raise ValueError("give either --ckpt or --baseline zero-motion")
    videos = read_tapvid(args.data_path, args.trust_pickle)
    if args.max_videos:
        videos = dict(list(videos.items())[:args.max_videos])
    if args.baseline:               # every point stays at its query position, visible
        model, size, tiny = None, args.size or EVAL_SIZE, False

        def predict(frames, qp):
            return zero_motion(qp, len(frames))
    else:
        model, _ = load_tap_checkpoint(args.ckpt, device)
        size, tiny = args.size or model.tap.size, model.tap.encoder == "tiny"

        def predict(frames, qp):
            return track_queries(model, frames, qp, args.query_mode, args.skip_unscored,
                                 args.pair_batch, args.amp, args.visibility)

    result = run_tapvid(predict, videos, args.query_mode, args.output, size, args.dataset)
    result.update(dataset=args.dataset, ckpt=str(args.ckpt), baseline=args.baseline, size=size,
                  visibility=None if args.baseline else args.visibility,
                  device=str(device))
    if args.kinetics_csv:
        result["csv_clips"] = kinetics_csv_count(args.kinetics_csv)
        print(f"kinetics: evaluated {result['n_videos']} of {result['csv_clips']} clips in "
              f"{args.kinetics_csv}")
    out = Path(args.output)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    tag = f" [{size}x{size} input]" if size != EVAL_SIZE else ""
    if not args.baseline and args.visibility != "tapir":
        tag += f" [visibility: {args.visibility} rule]"
    print(summary_line(args.dataset, result, tiny) + tag
          + (f"  [{args.baseline} baseline]" if args.baseline else ""))
    return result


# --------------------------------------------------------------------------------------------
# 7. The synthetic world's tracks in the Kubric and TAP-Vid layouts
# --------------------------------------------------------------------------------------------

def world_clip(seed: int, size=(64, 64), num_frames: int = 12, num_tracks: int = 64, **knobs):
    """A synthetic-world video and point tracks in tapnet's raster convention.

    Query points (t, y, x) are drawn uniformly (t over frames, x, y over the frame), tracked by
    `data.World.tracks`, and shifted by + 0.5 (the world centres pixel (i, j) at (j, i), tapnet
    at (j + 0.5, i + 0.5)). -> frames (T, H, W, 3) uint8, coords (N, T, 2) float32 (x, y),
    occluded (N, T) bool.
    """
    from data import World
    W, H = size
    world = World(seed, size=(W, H), num_frames=num_frames, **knobs)
    rng = np.random.default_rng([seed, 7])
    qp = np.stack([rng.integers(0, num_frames, num_tracks).astype(np.float64),
                   rng.uniform(0, H - 1, num_tracks), rng.uniform(0, W - 1, num_tracks)], -1)
    tracks, occluded = world.tracks(qp)
    frames = np.stack([world.frame(t) for t in range(num_frames)])
    return frames, np.asarray(tracks, np.float32) + 0.5, np.asarray(occluded, bool)


def write_kubric_sequence(root, name: str, frames, coords, occluded) -> Path:
    """`<root>/<name>/frames/{t:03d}.png` and `<root>/<name>/<name>.npy` = np.save of
    {'coords', 'visibility'} with **visibility = occluded**, as CoTracker's export does."""
    seq = Path(root) / name
    (seq / "frames").mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(seq / "frames" / f"{t:03d}.png")
    np.save(seq / f"{name}.npy", {"coords": np.asarray(coords, np.float32),
                                  "visibility": np.asarray(occluded, bool)})
    return seq


def tapvid_example(frames, coords, occluded, jpeg: bool = False) -> dict:
    """A TAP-Vid example: points normalised by (W, H); video as uint8 or (Kinetics) JPEG bytes."""
    H, W = frames.shape[1:3]
    points = (np.asarray(coords, np.float64) / [W, H]).astype(np.float32 if not jpeg else np.float64)
    if jpeg:
        blobs = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=95)
            blobs.append(buf.getvalue())
        video = np.array(blobs, dtype=object)
    else:
        video = np.asarray(frames, np.uint8)
    return {"video": video, "points": points, "occluded": np.asarray(occluded, bool)}


def write_synthetic(out, train_videos: int = 24, val_videos: int = 6, kubric_size: int = 128,
                    tapvid_size=(80, 48), num_frames: int = 12, num_tracks: int = 64,
                    seed: int = 0, knobs: dict | None = None) -> dict:
    """Synthetic-world tracks in the official layouts (specs/tap.md section 6):
    kubric/{train,val}/<seq>/ (PNG frames at kubric_size^2, the `.npy` dict with visibility =
    occluded); tapvid_davis/tapvid_davis.pkl (dict, non-square tapvid_size frames);
    tapvid_rgb_stacking/tapvid_rgb_stacking.pkl (list); tapvid_kinetics/000{0,1}_of_0010.pkl
    (lists with JPEG-byte frames) and tapvid_kinetics.csv. The TAP-Vid sets are the val
    videos (seeds disjoint from train). `knobs`: World motion settings. -> {layout: path}."""
    out, knobs = Path(out), knobs or {}
    for k in range(train_videos):
        write_kubric_sequence(out / "kubric" / "train", f"{k:05d}",
                              *world_clip(seed * 10000 + k, (kubric_size,) * 2, num_frames, num_tracks,
                                          **knobs))
    val = [world_clip(seed * 10000 + 5000 + k, tapvid_size, num_frames, num_tracks, **knobs)
           for k in range(val_videos)]
    for k in range(val_videos):
        write_kubric_sequence(out / "kubric" / "val", f"{k:05d}",
                              *world_clip(seed * 10000 + 5000 + k, (kubric_size,) * 2, num_frames,
                                          num_tracks, **knobs))
    paths = {"kubric_train": out / "kubric" / "train", "kubric_val": out / "kubric" / "val"}
    davis = {f"world-{k:02d}": tapvid_example(*v) for k, v in enumerate(val)}
    paths["davis"] = _dump(out / "tapvid_davis" / "tapvid_davis.pkl", davis)
    paths["rgb_stacking"] = _dump(out / "tapvid_rgb_stacking" / "tapvid_rgb_stacking.pkl",
                                  [tapvid_example(*v) for v in val])
    half = (len(val) + 1) // 2
    for shard, part in enumerate((val[:half], val[half:])):
        _dump(out / "tapvid_kinetics" / f"{shard:04d}_of_0010.pkl",
              [tapvid_example(*v, jpeg=True) for v in part])
    paths["kinetics"] = out / "tapvid_kinetics"
    with open(out / "tapvid_kinetics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for k, (frames, coords, occ) in enumerate(val):
            H, W = frames.shape[1:3]
            for n in range(len(coords)):
                row = [f"world{k:05d}", k, k + 10]
                for t in range(coords.shape[1]):
                    row += [coords[n, t, 0] / W, coords[n, t, 1] / H, int(occ[n, t])]
                writer.writerow(row)
    paths["kinetics_csv"] = out / "tapvid_kinetics.csv"
    return paths


def _dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train DropMAE-TAP on Kubric-layout clips")
    tr.add_argument("--data-path", required=True, help="Kubric export root (<seq>/frames, <seq>.npy)")
    tr.add_argument("--kubric-variant", default="movi_f",
                    help="recorded in the run config: movi_e | movi_f | cotracker3 | synthetic")
    tr.add_argument("--trust-pickle", action="store_true", help="allow the pickled .npy dicts")
    tr.add_argument("--pretrained", default="", help="DropMAE / MAE / our pre-training ckpt")
    tr.add_argument("--output", required=True, help="run folder (config, log.jsonl, ckpts)")
    tr.add_argument("--model", default="base", choices=sorted(TAP_PRESETS))
    tr.add_argument("--size", type=int, default=0, help="input side (0: preset, 256 for base)")
    tr.add_argument("--stride", type=int, default=0, choices=(0, 4, 8), help="0: preset")
    tr.add_argument("--shift", type=int, default=0,
                    help="per-frame random translation, up to +-SHIFT input pixels (0: off)")
    tr.add_argument("--radius", type=float, default=0,
                    help="soft-argmax window in cells (0: preset, 5 as TAPIR)")
    tr.add_argument("--temperature", type=float, default=0,
                    help="softmax temperature tau (0: preset, 20 as TAPIR)")
    tr.add_argument("--frame-ids", default="", choices=("", "zx", "xz"),
                    help="frame vectors of (query, target); '' = preset 'zx'")
    tr.add_argument("--heatmap-loss", type=float, default=0.0,
                    help="weight of the cross-entropy of the cost softmax against a Gaussian at "
                         "the GT (ours, not in the spec; 0: off, the spec's three terms)")
    tr.add_argument("--heatmap-sigma", type=float, default=1.0,
                    help="that Gaussian's sigma, in cells of the cost grid")
    tr.add_argument("--steps", type=int, default=100000)
    tr.add_argument("--batch-size", type=int, default=8, help="clips per GPU")
    tr.add_argument("--num-targets", type=int, default=4, help="target frames per clip")
    tr.add_argument("--num-queries", type=int, default=256)
    tr.add_argument("--lr", type=float, default=1e-4, help="neck and heads")
    tr.add_argument("--backbone-mult", type=float, default=0.1)
    tr.add_argument("--weight-decay", type=float, default=0.05)
    tr.add_argument("--warmup", type=int, default=1000)
    tr.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    tr.add_argument("--amp", default=None, choices=("bf16", "fp16", "off"),
                    help="default: bf16 on a GPU that has it, off on CPU")
    tr.add_argument("--workers", type=int, default=8)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--print-freq", type=int, default=50)
    tr.add_argument("--save-every", type=int, default=5000)
    tr.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (0: all)")
    tr.add_argument("--resume", default="", help="'auto' (latest in --output) or a path")

    te = sub.add_parser("test", help="TAP-Vid inference and scoring")
    te.add_argument("--dataset", required=True, choices=("davis", "kinetics", "rgb_stacking"))
    te.add_argument("--query-mode", required=True, choices=("first", "strided"))
    te.add_argument("--data-path", required=True, help="TAP-Vid pickle, or the Kinetics shard folder")
    te.add_argument("--trust-pickle", action="store_true", help="allow unpickling the TAP-Vid files")
    te.add_argument("--ckpt", default="", help="checkpoint written by `train`")
    te.add_argument("--baseline", default="", choices=("", "zero-motion"),
                    help="score a baseline instead of a model (zero-motion: points stay put)")
    te.add_argument("--output", required=True, help="folder for <video>.npz and metrics.json")
    te.add_argument("--size", type=int, default=0,
                    help="model input side (0: the checkpoint's; != 256 is another category)")
    te.add_argument("--pair-batch", type=int, default=8, help="target frames per forward pass")
    te.add_argument("--visibility", default="tapir", choices=VISIBILITY_RULES,
                    help="tapir (the spec's): (1 - s(occ))(1 - s(expd)) > 0.5; occlusion "
                         "(TAP-Net's): s(occ) < 0.5, ignoring the expected-distance head")
    te.add_argument("--skip-unscored", action="store_true",
                    help="first mode: do not compute frames before the query frame")
    te.add_argument("--kinetics-csv", default="", help="tapvid_kinetics.csv, to print the count")
    te.add_argument("--max-videos", type=int, default=0)
    te.add_argument("--device", default="")
    te.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")

    sy = sub.add_parser("synthetic", help="write synthetic-world tracks in both layouts")
    sy.add_argument("--out", required=True)
    sy.add_argument("--train-videos", type=int, default=24)
    sy.add_argument("--val-videos", type=int, default=6)
    sy.add_argument("--frames", type=int, default=12)
    sy.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "test":
            return test(args)
    except (FileNotFoundError, PermissionError, ValueError, KeyError) as err:
        raise SystemExit(f"error: {err}") from err
    paths = write_synthetic(args.out, args.train_videos, args.val_videos, num_frames=args.frames,
                            seed=args.seed)
    print("wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()))
    return paths


if __name__ == "__main__":
    main()
