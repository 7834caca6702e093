"""DropMAE: a two-frame masked autoencoder with adaptive spatial-attention dropout (ASAD).

Reference implementation of Wu et al., "DropMAE: Masked Autoencoders with Spatial-Attention
Dropout for Tracking Tasks" (CVPR 2023). The file reads bottom-up: configuration, the small
ViT pieces, ASAD, the block, the encoder that every downstream task uses, the two-frame MAE,
checkpoint import, the run infrastructure every training command shares (distributed init, run
folder, atomic checkpoints, RNG state), and last the `pretrain` command.

State-dict keys are those of the official model (github jimmy-dq/DropMAE, `models_mae.py`), so
`load_checkpoint(official_ckpt)["model"]` loads into `DropMAE` with `strict=True`.

Frame naming, as in the official code: `x` is the earlier frame and `z` the later one in
pre-training. Each frame adds the same spatial sin-cos table plus its own learned frame vector
(`temporal_pos_embed_x` / `temporal_pos_embed_z`). Downstream tasks choose which vector goes
to which input (DropTrack puts `_z` on the template and `_x` on the search region).

Commands:
    # CPU smoke run (tiny model, in-memory synthetic videos; ~15 s on 2 cores)
    python dropmae.py pretrain --model tiny --data synthetic --num-synthetic 64 --batch-size 16 \\
        --epochs 2 --warmup-epochs 1 --lr 1e-3 --num-workers 2 --output runs/smoke
    # the same on tiny real mp4 clips in the K400 layout
    python data.py make-clips --out runs/k400_tiny
    python dropmae.py pretrain --model tiny --data k400 --data-path runs/k400_tiny --batch-size 4 \\
        --epochs 2 --warmup-epochs 1 --lr 1e-3 --num-workers 2 --output runs/smoke_mp4
    # the paper: DropMAE ViT-B/16, K400, 400 epochs, 64 GPUs x batch 64 (TwinMAE: --P 0)
    torchrun --nproc_per_node=8 --nnodes=8 --node_rank=$RANK --master_addr=$ADDR \\
        dropmae.py pretrain --model base --data k400 --data-path /data/k400/train \\
        --batch-size 64 --epochs 400 --P 0.1 --output runs/dropmae_k400_400e --resume auto
    # the same effective batch 4096 on one node of 8 GPUs: --accum-iter 8
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class Config:
    """Model shape and the two method knobs (P and norm_pix_loss)."""
    img_size: int = 224            # pre-training input side; fixes the stored position table
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True
    P: float = 0.1                 # ASAD dropout ratio; 0 gives TwinMAE
    drop_path: float = 0.0         # stochastic depth of the encoder (0 in pre-training)


PRESETS = {
    # tiny: 6x6 patches per frame, runs a training step in milliseconds on a CPU.
    "tiny": Config(img_size=96, embed_dim=96, depth=4, num_heads=3,
                   decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    "base": Config(),                                                  # mae_vit_base_patch16
    "large": Config(embed_dim=1024, depth=24, num_heads=16),          # mae_vit_large_patch16
    "huge": Config(patch_size=14, embed_dim=1280, depth=32, num_heads=16),  # mae_vit_huge_patch14
}


def get_config(name: str, **overrides) -> Config:
    """A named preset, with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# Small ViT pieces
# --------------------------------------------------------------------------------------------

def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position table, as MAE's `get_2d_sincos_pos_embed`.

    The first half of the channels encodes the column (x) coordinate and the second half the row
    (y) coordinate, each as [sin, cos] over dim/4 frequencies 1/10000^(k/(dim/4)). Computed in
    float64 and cast to float32, as the official numpy code. Returns (1, [1 +] grid_h*grid_w, dim);
    with `cls_token` a zero row 0 is prepended (the official tables keep that unused slot).
    """
    assert dim % 4 == 0, "sin-cos embedding needs dim divisible by 4"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))   # (dim/4,)

    def one_axis(pos):                                                  # (M,) -> (M, dim/2)
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid_w), np.arange(grid_h))     # each (grid_h, grid_w)
    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)   # (h*w, dim)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def resize_pos_embed(table: torch.Tensor, new_hw: tuple[int, int],
                     old_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize a (1, h*w, D) spatial table to (1, H*W, D), bicubic, align_corners=False.

    This is how OSTrack and DropSeg adapt the 14x14 pre-training table to 12x12, 24x24 or any
    480p grid. `old_hw` defaults to a square grid. The table must not hold a cls row.
    """
    n, dim = table.shape[1], table.shape[2]
    if old_hw is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position rows; pass old_hw")
        old_hw = (side, side)
    if tuple(new_hw) == tuple(old_hw):
        return table
    grid = table.reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)   # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], dim)


class PatchEmbed(nn.Module):
    """Image to patch tokens with one strided conv; any image size divisible by the patch."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, D), row-major patch order."""
        self.grid(img.shape[-2], img.shape[-1])
        return self.proj(img).flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (ViTDet's, eps 1e-6): the necks and
    pyramids of the dense tasks (tasks/vos.py, tasks/tap.py)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


# --------------------------------------------------------------------------------------------
# ASAD: adaptive spatial-attention dropout
# --------------------------------------------------------------------------------------------

def asad_num_drops(L: int, p: float) -> int:
    """K = int(p * (L/2 - 1)) * L, the number of logits ASAD drops per (sample, head)."""
    return int(p * (L // 2 - 1)) * L


def frame_blocks(a: torch.Tensor, own: bool) -> torch.Tensor:
    """The two (L/2, L/2) blocks of each (L, L) matrix of a contiguous (M, L, L) tensor, as one
    (M, 2, L/2, L/2) view: own=True the same-frame blocks (x->x, z->z), False the cross-frame
    ones (x->z, z->x). Row i of frame f is [:, f, i]; no copy."""
    M, L, _ = a.shape
    h = L // 2
    step = h * L + h if own else h * L - h                                    # block 0 -> block 1
    return a.as_strided((M, 2, h, h), (L * L, step, L, 1), a.storage_offset() + (0 if own else h))


def asad_weights(attn: torch.Tensor) -> torch.Tensor:
    """The spec's sampling weights W from attention probabilities. (..., L, L) -> (..., L, L/2).

    Row i holds i's weights over the keys of its own frame (column c is key c of that frame):
      f_tem(i) = max_j A[i, j] over keys j of the other frame, + 1e-6   (temporal matching prob.)
      s(i, j)  = A[i, j] + 1e-6 over keys j of i's own frame, 0 for j = i, normalised to sum 1
      W[i, j]  = f_tem(i) * s(i, j) = r(i) * (A[i, j] + 1e-6), r(i) = f_tem(i) / sum_j (A[i, j] + 1e-6)
    Frame x holds tokens 0..L/2-1 and frame z tokens L/2..L-1.
    """
    L = attn.shape[-1]
    h = L // 2
    a = attn.reshape(-1, L, L).contiguous()
    own = frame_blocks(a, own=True)                                           # (M, 2, h, h)
    f_tem = frame_blocks(a, own=False).amax(-1).add_(1e-6)                    # (M, 2, h)
    diag = own.diagonal(dim1=-2, dim2=-1)                                     # (M, 2, h): A[i, i]
    r = f_tem.div_(own.sum(-1).add_((h - 1) * 1e-6).sub_(diag)).unsqueeze(-1)   # j != i
    w = torch.addcmul(r * 1e-6, own, r)                                       # (M, 2, h, h)
    w.diagonal(dim1=-2, dim2=-1).zero_()
    return w.view(*attn.shape[:-1], h)


RACE_KERNEL = True     # False: the torch ops path on the CPU too (tests compare the two)
RACE_KERNEL_FLAGS = (                                          # tried in order
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"],  # x86: 512-bit loops
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native"],                                  # no OpenMP: Python threads
    ["-O3"],
)
_KERNEL: dict = {}


def _race_kernel():
    """The fused CPU draw (`asad_race.c`, beside this file) as a ctypes library, or None.

    Compiled on first use with the C compiler ($CC, default cc) for this machine into
    $DROPMAE_CACHE (default ~/.cache/dropmae), under a name hashing the source, the flags, the
    host and its CPU flags, and loaded with ctypes (no Python package needed). None, and the
    torch ops path runs instead (the same algorithm and law, other random numbers), when there
    is no compiler, the build fails, or DROPMAE_KERNEL=0. It computes, per (sample, head), the
    steps of `asad_weights`, `race_threshold` and `race_top_k` in one pass over the logits, with
    a counter-based generator seeded from torch's (the argument is in the file's header).
    RACE_KERNEL_FLAGS are tried in order: first with OpenMP, so that `_kernel_run` splits the
    matrices on torch's own OpenMP threads, then without (Python threads instead)."""
    if "lib" in _KERNEL:
        return _KERNEL["lib"]
    _KERNEL["lib"] = None
    src = Path(__file__).with_name("asad_race.c")
    cc = shutil.which(os.environ.get("CC", "cc"))
    if os.environ.get("DROPMAE_KERNEL", "1") == "0" or cc is None or not src.exists():
        return None
    cache = Path(os.environ.get("DROPMAE_CACHE", Path.home() / ".cache" / "dropmae"))
    for flags in RACE_KERNEL_FLAGS:
        args = [*flags, "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c11",
                "-shared", "-fPIC"]
        tag = hashlib.sha256(src.read_bytes() + repr((cc, args, platform.node(), platform.machine(),
                                                     _cpu_flags())).encode()).hexdigest()[:16]
        lib_path = cache / f"asad_race-{tag}.so"
        try:
            if not lib_path.exists():
                cache.mkdir(parents=True, exist_ok=True)
                tmp = lib_path.with_name(f"{lib_path.name}.{os.getpid()}.tmp")
                subprocess.run([cc, *args, str(src), "-o", str(tmp), "-lm"], check=True,
                               capture_output=True, timeout=120)
                os.replace(tmp, lib_path)                                  # atomic: ranks may race
            lib = ctypes.CDLL(str(lib_path))
        except (OSError, subprocess.SubprocessError):
            continue
        i64, u64, ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p
        lib.race_rows.argtypes = [ptr, i64, i64, ptr, u64, i64, i64, ptr]
        lib.asad_rows.argtypes = [ptr, i64, i64, u64, ctypes.c_int, i64, i64, ptr]
        lib.race_rows_par.argtypes = [ptr, i64, i64, ptr, u64, i64, ctypes.c_int, ptr]
        lib.asad_rows_par.argtypes = [ptr, i64, i64, u64, ctypes.c_int, i64, ctypes.c_int, ptr]
        lib.openmp = bool(lib.race_openmp())
        _KERNEL["lib"] = lib
        break
    return _KERNEL["lib"]


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so that a cache shared by other CPUs holds one build each."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _kernel_seed(generator) -> int:
    """One 64-bit seed for the kernel's generator, drawn from torch's (so manual_seed fixes it)."""
    return int(torch.empty((), dtype=torch.int64).random_(-2 ** 63, None, generator=generator)) % 2 ** 64


def _kernel_run(lib, name: str, rows: int, *args):
    """lib.<name>(*args, m0, m1, out) over row ranges [m0, m1) split among torch's threads.
    Built with OpenMP, the kernel splits them itself (`<name>_par`) on the OpenMP threads that
    torch's libgomp already runs; otherwise this thread takes the first range and the threads
    of `_kernel_pool` the others (ctypes releases the GIL). The draw of each row depends on the
    seed and the row only, not on the split, so every thread count gives the same result."""
    threads = min(torch.get_num_threads(), rows)
    if lib.openmp:
        codes = [getattr(lib, name + "_par")(*args[:-1], rows, threads, args[-1])]
    else:
        fn = getattr(lib, name)
        cuts = [rows * i // threads for i in range(threads + 1)]
        calls = [(*args[:-1], cuts[i], cuts[i + 1], args[-1]) for i in range(threads)]
        others = [_kernel_pool(threads - 1).submit(fn, *a) for a in calls[1:]] if threads > 1 else []
        codes = [fn(*calls[0])] + [f.result() for f in others]
    if any(codes):
        raise MemoryError("asad_race.c: out of memory")


def _kernel_pool(workers: int):
    """A thread pool of `workers` threads kept between calls (a decoder layer makes one call
    per block of the batch; starting threads anew for each cost ~1.5 ms a call, a third of the
    draw at batch 8 on 2 cores), made anew after a fork or a change of size."""
    from concurrent.futures import ThreadPoolExecutor
    key = (os.getpid(), workers)
    if _KERNEL.get("pool_key") != key:
        _KERNEL["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="asad")
        _KERNEL["pool_key"] = key
    return _KERNEL["pool"]


RACE_LEVELS = 256      # resolution of the coarse uniforms that pre-filter the race (one byte)
RACE_STRIDE = 17       # the threshold is estimated on every 17th weight
RACE_MARGIN = 3.0      # ... for k + 3 sd(estimate) keys below it, so a fallback is rare
RACE_NEWTON_STEPS = 4


def race_threshold(w: torch.Tensor, k: int, margin: float = RACE_MARGIN) -> torch.Tensor:
    """A key threshold t per row with about k + margin * sqrt(RACE_STRIDE * k) keys E/w < t.

    w: (M, n) weights >= 0 -> (M,). The expected count of keys below t is
    G(t) = sum_j (1 - exp(-w_j t)), estimated on every RACE_STRIDE-th weight (sd about
    sqrt(RACE_STRIDE * k)); G is concave, so Newton from t0 = target / sum(w), where G <= target,
    climbs to the root from below. t only decides how much work the exact selection does, never
    what it selects (see `race_top_k`); where the target exceeds the weights present, t = inf.
    """
    sub = w[:, ::RACE_STRIDE].float().contiguous()                            # (M, n / stride)
    scale = w.shape[1] / sub.shape[1]
    target = (k + margin * math.sqrt(RACE_STRIDE * k)) / scale
    t = target / sub.sum(1).clamp_min(1e-30)
    for _ in range(RACE_NEWTON_STEPS):
        e = torch.exp(-sub * t.unsqueeze(1))
        t = t + (target - sub.shape[1] + e.sum(1)) / (sub * e).sum(1).clamp_min(1e-30)
    reachable = (sub > 0).sum(1) > target
    return torch.where(reachable & (t > 0), t, torch.full_like(t, float("inf")))


def race_levels(shape, generator=None, device=None) -> torch.Tensor:
    """Independent uniform integers in [0, 256) (uint8): the eight bytes of full-range 64-bit
    random words (`random_(-2**63, None)` draws all 64 bits, so every byte is uniform)."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    return words.random_(-2 ** 63, None, generator=generator).view(torch.uint8)[:n].view(shape)


def race_top_k(w: torch.Tensor, k: int, generator: torch.Generator | None = None,
               t: torch.Tensor | None = None) -> torch.Tensor:
    """k indices per row drawn without replacement with probability proportional to w.

    w: (M, n) weights >= 0 with at least k positive per row -> (M, k) int64, unordered. Same
    law as `torch.multinomial(w[m], k, replacement=False)` for every row m; no loop over rows.
    t: (M,) key thresholds, default `race_threshold(w, k)`; any t gives the same law (tests use
    t = inf, the plain race, and tiny t, which sends every row down step 4).

    The exponential race (Efraimidis-Spirakis; Gumbel top-k): with independent E_j ~ Exp(1),
    the k smallest keys E_j / w_j are a draw of that law, since E_j / w_j ~ Exp(rate w_j) and
    the first of independent exponential clocks is j with probability w_j / sum(w), then the
    first of the rest, and so on. Computing all n keys (a uniform and a log each, then a top-k
    over n) is what costs; this computes the same keys where they matter:
    1. E_j = -log(1 - u_j) with u_j = (b_j + v_j) / 256, b_j a uniform byte and v_j ~ U(0, 1)
       independent: u_j is exactly uniform, so E_j is exactly Exp(1). (In float32, as
       `torch.multinomial`'s own keys: u_j is uniform to 2^-24, finer near 0, where the small
       keys that get drawn lie; the rounding is that of the official draw.)
    2. E_j >= u_j >= b_j / 256. For a threshold t (`race_threshold`), key_j < t needs
       E_j < w_j t, hence b_j < 256 w_j t: only those candidates (about 1.4 k of n = 10.3 k at
       the ViT-B shape) get a v_j, a log and a key; the rest keep only their byte.
    3. If at least k candidates of a row have key < t, the k smallest keys of the row are all
       below t, so all are candidates: the top-k over the candidates is the top-k over every
       key, the exact draw. (The test uses t (1 - 1e-4), covering the float rounding of
       256 w_j t.) t may be any function of w; it changes the cost, never the result.
    4. A row with fewer (rare: t is set 3 estimated sd above the count needed) completes the
       same race: its candidates keep their v_j, the others draw theirs now (v is independent of
       everything seen so far, which is only their byte b_j), and it takes the top-k over all
       n keys. So every row is the top-k of the full race.
    On a CPU with the fused kernel (`_race_kernel`, RACE_KERNEL) the same steps run in C, one
    row at a time: other random numbers (a counter-based generator seeded from `generator`),
    u_j and the keys in double precision, the exact selection by buckets and a radix select
    instead of a top-k; the same law (the argument above; asad_race.c's header has the details).
    """
    M, n = w.shape
    dev = w.device
    if k == 0:
        return torch.zeros(M, 0, dtype=torch.long, device=dev)
    lib = _race_kernel() if dev.type == "cpu" and RACE_KERNEL else None
    if lib is not None:                                                       # the fused kernel
        w = w.detach().float().contiguous()
        tt = None if t is None else t.detach().double().contiguous()
        out = torch.empty(M, k, dtype=torch.long)
        _kernel_run(lib, "race_rows", M, w.data_ptr(), n, k, None if tt is None else tt.data_ptr(),
                    _kernel_seed(generator), out.data_ptr())
        return out
    t = race_threshold(w, k) if t is None else t                              # (M,)
    levels = race_levels((M, n), generator, dev)                              # (M, n) uint8
    flat = torch.nonzero(torch.lt(levels, w * (RACE_LEVELS * t).unsqueeze(1)).view(-1)).squeeze(1)
    rows = flat.div(n, rounding_mode="floor")                                 # (S,), sorted
    starts = torch.searchsorted(flat, torch.arange(M + 1, device=dev) * n)    # row boundaries
    u = torch.rand(flat.shape, generator=generator, device=dev)                # float32
    u.add_(levels.view(-1)[flat]).div_(RACE_LEVELS)                           # exactly U(0, 1)
    key = u.neg().log1p_().neg_().div_(w.view(-1)[flat])                      # E / w, (S,)
    width = max(k, int((starts[1:] - starts[:-1]).max()))
    keys = torch.full((M, width), float("inf"), device=dev)
    cols = torch.arange(flat.numel(), device=dev).sub_(starts[rows])          # place in its row
    keys[rows, cols] = key                                                    # (M, width), padded
    below = (keys < (t * (1 - 1e-4)).unsqueeze(1)).sum(1)                     # (M,)
    pick = torch.topk(keys, k, dim=1, largest=False, sorted=False).indices
    pick = (pick + starts[:-1, None]).clamp_(max=max(flat.numel() - 1, 0))
    chosen = flat[pick] - torch.arange(M, device=dev)[:, None] * n if flat.numel() else pick
    short = torch.nonzero(below < k).squeeze(1)                               # step 4
    if short.numel():
        back = torch.full((M,), -1, dtype=torch.long, device=dev)
        back[short] = torch.arange(short.numel(), device=dev)
        u_all = torch.rand((short.numel(), n), generator=generator, device=dev)
        u_all.add_(levels[short]).div_(RACE_LEVELS)
        mine = torch.nonzero(back[rows] >= 0).squeeze(1)                       # their candidates
        u_all.view(-1)[back[rows[mine]] * n + flat[mine] - rows[mine] * n] = u[mine]       # keep v
        ws = w[short].float()
        key_all = torch.log1p(-u_all).neg_().div_(ws).masked_fill_(ws == 0, float("inf"))
        chosen[short] = torch.topk(key_all, k, dim=1, largest=False, sorted=False).indices
    return chosen


ASAD_BLOCK_BYTES = {"cpu": 16 * 2 ** 20, "cuda": 2 ** 30}   # float32 logits per block


def _blocks(count: int, item_bytes: int, device: torch.device) -> list[slice]:
    """Slices of `count` items (samples, or (sample, head) matrices) of `item_bytes` of float32
    logits each, about ASAD_BLOCK_BYTES per slice: on the CPU the temporaries of the draw then
    stay in cache and are reused from the heap rather than paged in anew; on a GPU the slices
    bound the transient memory. Each matrix's draw is independent, so blocking does not change
    the law; a fixed seed gives the same draw for the same shapes."""
    step = max(1, ASAD_BLOCK_BYTES.get(device.type, 2 ** 30) // item_bytes)
    return [slice(s, min(count, s + step)) for s in range(0, count, step)]


@torch.no_grad()
def asad_draw(attn: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """ASAD's drops from attention probabilities A = softmax(logits): (..., L, L) -> (..., K)
    flat indices into the last two dims. The law is `asad_drop_indices`'."""
    L = attn.shape[-1]
    h = L // 2
    lead = attn.shape[:-2]
    w = asad_weights(attn.float()).reshape(-1, L * h)                         # (M, L * h)
    c = race_top_k(w, asad_num_drops(L, p), generator).view(*lead, -1)
    row, col = c // h, c % h                                                  # in the (L, h) matrix
    return row * L + col + (row >= h) * h                                     # into the (L, L) one


@torch.no_grad()
def asad_drop_indices(logits: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The positions ASAD drops, as flat indices into the last two dims. (..., L, L) -> (..., K).

    With A = softmax(logits) and the spec's weights W = `asad_weights(A)` (an L x L/2 matrix per
    sample and head, 0 on the diagonal, defined only within a frame), K = int(p * (L/2 - 1)) * L
    positions are drawn without replacement from the whole W matrix with probability
    proportional to W: the law of the official `torch.multinomial(W.flatten(), K,
    replacement=False)`, which loops over batch x heads. Here every (sample, head) is drawn at
    once by `race_top_k`, the exponential race (the K smallest of E / W, E ~ Exp(1)), which is
    exact for sampling without replacement. What it computes, and why each step keeps the law:
    - W from A in one pass over views of A's same-frame and cross-frame blocks
      (`frame_blocks`): the same numbers as the spec's formula, no copies.
    - One random byte b per position (eight per full-range 64-bit word of the generator) is the
      leading part of the position's uniform u = (b + v) / 256; since the key E / W with
      E = -log(1 - u) >= u is at least b / (256 W), a position whose byte already puts its key
      above a threshold t (from every 17th weight, set so that about K + 3 sd keys fall below
      it) can never be among the K smallest when K keys fall below t. Only the other positions
      (about 1.4 K of the 10.3 K at ViT-B) get their v, a log and a place in the top-k.
    - When K candidate keys do lie below t, the K smallest candidate keys are the K smallest of
      all keys; a (sample, head) with fewer (rare) completes its race over all positions with
      the same bytes and v's. So the result is always the top-K of the full race, for any t:
      exact, not an approximation; t only sets the cost (the argument in full is in
      `race_top_k`; tests check the joint law against exact without-replacement
      probabilities, and each branch separately).
    W, the uniforms and the keys are float32, as in the official `torch.multinomial` (itself a
    race of float32 exponential keys): the same law up to the same rounding.
    On a CPU these steps run fused, one (sample, head) matrix at a time, in the C kernel
    asad_race.c (`_race_kernel`; ~14x the official loop's speed at ViT-B on one CPU thread,
    where the torch ops below reach ~3x): the softmax and W from the logits in one pass over
    each row, the threshold, the bytes, the candidates, their keys and an exact selection (equal
    buckets of [0, t), then a radix select), all within the cache.
    It is the same algorithm with the same exactness argument; what differs is the arithmetic
    and the random numbers: a uniform u_j = k_j 2^-53 from a 53-bit integer k_j whose top 8 bits
    are the byte b_j (so u_j >= b_j / 256 again, the pruning bound), 1 - u_j exact and the keys
    in double; the words from a counter-based generator (splitmix64) keyed by one 64-bit seed
    drawn from `generator` per block, so `torch.manual_seed` still fixes every draw, and every
    uniform is a function of its position, so the rare completion of a race recomputes exactly
    the uniforms the pruned pass used. The two paths draw from the same law (tested: exact set
    probabilities on both, and the kernel against the torch path at the ViT-B shape), not the
    same masks. Where the kernel cannot be built (no C compiler) or RACE_KERNEL is False, and on
    GPUs, the torch ops below run.
    The matrices are processed in blocks along dim 0 (`_blocks`); the draw is fixed by the
    generator's state (`torch.manual_seed`) and the shape (and, with the kernel, the same for
    every thread count). No gradient flows: the logits are detached.
    """
    L = logits.shape[-1]
    if L % 2:
        raise ValueError(f"ASAD needs two frames of equal length; got L = {L}")
    k = asad_num_drops(L, p)
    lib = _race_kernel() if logits.device.type == "cpu" and RACE_KERNEL and k else None
    lg = logits.detach().reshape((-1,) + logits.shape[-3:] if logits.dim() > 3 else (-1, L, L))
    idx = torch.empty(lg.shape[:-2] + (k,), dtype=torch.long, device=lg.device)
    for s in _blocks(lg.shape[0], 4 * lg[0].numel(), lg.device):           # along dim 0
        if lib is not None:                                                   # the fused kernel
            _kernel_drops(lib, lg[s], k, _kernel_seed(generator), out=idx[s])
        else:
            idx[s] = asad_draw(lg[s].softmax(dim=-1, dtype=torch.float32), p, generator)
    return idx.view(logits.shape[:-2] + (-1,))


def _kernel_drops(lib, logits: torch.Tensor, k: int, seed: int, upto: int = 6,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """`asad_rows` of asad_race.c: (..., L, L) CPU logits -> (..., k) int64 flat drop indices
    (into out, contiguous, when given). upto < 6 stops after a stage (profiling; out unwritten)."""
    L = logits.shape[-1]
    lg = logits.detach().reshape(-1, L, L).float().contiguous()
    res = out if out is not None and out.is_contiguous() else \
        torch.empty(logits.shape[:-2] + (k,), dtype=torch.long)
    _kernel_run(lib, "asad_rows", lg.shape[0], lg.data_ptr(), L, k, seed, upto, res.data_ptr())
    return res if out is None or out is res else out.copy_(res)


@torch.no_grad()
def asad_mask(logits: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Positions ASAD drops, True = dropped. (..., L, L) logits -> (..., L, L) bool.

    Exactly K = int(p * (L/2 - 1)) * L drops per (sample, head), drawn as `asad_drop_indices`
    describes; never on the diagonal, never across frames.
    """
    if logits.shape[-1] % 2:
        raise ValueError(f"ASAD needs two frames of equal length; got L = {logits.shape[-1]}")
    drop = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    if asad_num_drops(logits.shape[-1], p) == 0:
        return drop
    idx = asad_drop_indices(logits, p, generator)
    return drop.flatten(-2).scatter_(-1, idx, True).view(logits.shape)


ASAD_CPU_KERNEL = True     # False: the CPU takes the generic path too (tests compare the two)


def _explicit_forward(q: torch.Tensor) -> bool:
    """Whether `_attend` takes the explicit CPU form (and so needs a `probs` buffer)."""
    return q.device.type == "cpu" and ASAD_CPU_KERNEL


def _attend(q, k, v, logits, idx, scale, probs=None):
    """softmax(q k^T * scale, -inf at the drops idx) v for one block, (b, heads, N, hd) ->
    (out, logsumexp), where `logits` holds q k^T * scale and is overwritten.

    CPU: the official explicit form, since the logits are already computed for the draw: -inf
    written at the drops in place, one fused softmax into `probs` (a reused buffer), then
    probs @ v; the logsumexp that the CPU flash kernel's backward needs is m - log(max_j P),
    m the masked row max (P's largest entry is at least 1 / N, so its log is as accurate as a
    logsumexp). This forward costs about half the flash kernel with a float mask at ViT-B.
    Elsewhere: `logits` becomes the additive mask (0, -inf at the drops) of SDPA, which picks
    its own backend (memory-efficient with a mask on a GPU); logsumexp None, and backward
    recomputes the block.
    """
    flat = _flat_drops(idx, logits.shape[-1] ** 2)
    if _explicit_forward(q):
        logits.view(-1).index_fill_(0, flat, float("-inf"))
        p = torch.softmax(logits, dim=-1, out=probs)
        lse = logits.amax(-1).sub_(p.amax(-1).log_())
        return torch.matmul(p, v), lse
    mask = logits.zero_()
    mask.view(-1).index_fill_(0, flat, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None


def _attend_backward(dout, q, k, v, out, lse, mask, scale):
    """Gradients (dq, dk, dv) of `_attend` for one block."""
    if lse is not None:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return torch.autograd.grad(o, (q, k, v), dout)


def _flat_drops(idx: torch.Tensor, size: int) -> torch.Tensor:
    """(b, H, K) drop indices into each (N, N) matrix -> (b * H * K,) indices into the whole
    contiguous (b, H, N, N) tensor, for `index_fill_` (much cheaper than a scatter along -1)."""
    offset = torch.arange(idx.shape[0] * idx.shape[1], device=idx.device) * size
    return (idx.long().view(offset.shape[0], -1) + offset.unsqueeze(1)).view(-1)


class ASADAttention(torch.autograd.Function):
    """softmax(q k^T * scale, -inf at ASAD's drops) v, the drops drawn from the same logits.

    q, k, v: (B, heads, N, hd) -> (B, heads, N, hd). Block by block over the batch, the logits
    are computed once into one reused buffer and serve the draw; then (`_attend`) on a CPU the
    explicit masked softmax is taken on them in place, elsewhere the buffer becomes the
    additive mask (0, and -inf at the drops) of SDPA. For
    backward only the drop indices are kept (K int32 per (sample, head): 3.8 MB per ViT-B
    decoder layer at batch 8) besides what SDPA keeps (q, k, v, output, logsumexp); backward
    rebuilds the mask one block at a time in one reused buffer. (SDPA with an additive float
    mask keeps the whole (B, heads, N, N) mask for backward instead: 79 MB per layer.)
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float, p: float):
        B, H, N, _ = q.shape
        if N % 2:
            raise ValueError(f"ASAD needs two frames of equal length; got {N} tokens")
        out = torch.empty_like(q.transpose(1, 2)).transpose(1, 2)            # SDPA's layout
        lse = []
        drops = torch.empty(B, H, asad_num_drops(N, p), dtype=torch.int32, device=q.device)
        blocks = _blocks(B, 4 * H * N * N, q.device)
        buf = q.new_empty(blocks[0].stop - blocks[0].start, H, N, N)         # the logits
        probs = torch.empty_like(buf) if _explicit_forward(q) else None
        for s in blocks:
            b = s.stop - s.start
            logits = torch.matmul(q[s], k[s].transpose(-2, -1), out=buf[:b])
            idx = asad_drop_indices(logits.mul_(scale), p)                      # (b, H, K)
            o, l = _attend(q[s], k[s], v[s], logits, idx, scale, None if probs is None else probs[:b])
            out[s] = o
            lse.append(l)
            drops[s] = idx
        lse = None if lse[0] is None else torch.cat(lse)
        ctx.save_for_backward(q, k, v, out, lse, drops)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, drops = ctx.saved_tensors
        B, H, N, _ = q.shape
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        blocks = _blocks(B, 4 * H * N * N, q.device)
        buf = q.new_zeros(blocks[0].stop - blocks[0].start, H, N, N)         # reused: 0 but drops
        for s in blocks:
            flat = _flat_drops(drops[s], N * N)
            mask = buf[:s.stop - s.start]
            mask.view(-1).index_fill_(0, flat, float("-inf"))
            dq[s], dk[s], dv[s] = _attend_backward(
                dout[s], q[s], k[s], v[s], out[s], None if lse is None else lse[s], mask, ctx.scale)
            mask.view(-1).index_fill_(0, flat, 0.0)
        return dq, dk, dv, None, None


def asad_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, p: float) -> torch.Tensor:
    """Attention with ASAD: (B, heads, N, hd) q, k, v -> (B, heads, N, hd); see ASADAttention."""
    return ASADAttention.apply(q, k, v, scale, p)


# --------------------------------------------------------------------------------------------
# Attention and block
# --------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention (timm key names: qkv, proj), with optional ASAD.

    With `drop_p > 0` the ASAD mask is drawn from the detached logits and applied as -inf before
    the softmax (the official `Attention_Dec`), by `asad_attention`, which keeps only the drop
    indices for backward; without ASAD, `F.scaled_dot_product_attention`. `return_attn=True`
    computes the softmax explicitly (same draw) and also returns it (B, h, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, drop_p: float = 0.0, return_attn: bool = False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if return_attn:
            logits = (q @ k.transpose(-2, -1)) * self.scale                  # (B, h, N, N)
            if drop_p > 0:
                logits = logits.masked_fill(asad_mask(logits, drop_p), float("-inf"))
            attn = logits.softmax(dim=-1)
            out = attn @ v
        elif drop_p > 0:
            out = asad_attention(q, k, v, self.scale, drop_p)                 # (B, h, N, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return (out, attn) if return_attn else out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, drop_p: float = 0.0, return_attn: bool = False):
        if return_attn:
            y, attn = self.attn(self.norm1(x), drop_p, return_attn=True)
        else:
            y, attn = self.attn(self.norm1(x), drop_p), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x


def init_vit_weights(module: nn.Module):
    """MAE's init: Linear xavier-uniform with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Encoder: the piece every downstream task uses
# --------------------------------------------------------------------------------------------

FRAME_IDS = ("x", "z")


class ViTEncoder(nn.Module):
    """The DropMAE encoder: patch embedding, fixed sin-cos table, two frame vectors, blocks, norm.

    Keys: `patch_embed.proj.*`, `pos_embed` (1, 1 + g*g, D; row 0 the unused cls slot, not
    trained), `temporal_pos_embed_x`, `temporal_pos_embed_z` (1, 1, D), `blocks.{i}.*`, `norm.*`
    (the encoder subset of the official checkpoint).

    Downstream use: `embed(img, frame)` gives tokens for any image size (the table is resized
    bicubically to the image's grid, as OSTrack does); `forward_tokens` runs the blocks jointly on
    any concatenation of frames; `forward(img_a, img_b, ..., frames=("z", "x"))` does both.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.grid_size = (cfg.img_size // cfg.patch_size,) * 2
        table = sincos_pos_embed_2d(cfg.embed_dim, *self.grid_size, cls_token=True)
        self.pos_embed = nn.Parameter(table, requires_grad=False)             # fixed, as official
        self.temporal_pos_embed_x = nn.Parameter(torch.randn(1, 1, cfg.embed_dim))   # std 1
        self.temporal_pos_embed_z = nn.Parameter(torch.randn(1, 1, cfg.embed_dim))
        dpr = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, dpr[i])
                                    for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self._init_encoder()

    def _init_encoder(self):
        for m in self.modules():
            init_vit_weights(m)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))                       # like a Linear

    def spatial_pos_embed(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The sin-cos table (cls row dropped) resized to grid_hw: (1, gh*gw, D)."""
        return resize_pos_embed(self.pos_embed[:, 1:], grid_hw, self.grid_size)

    def frame_embed(self, frame: str | None) -> torch.Tensor | float:
        """The learned frame vector (1, 1, D) for frame 'x' or 'z'; 0 for None."""
        if frame is None:
            return 0.0
        if frame not in FRAME_IDS:
            raise ValueError(f"frame must be 'x', 'z' or None, not {frame!r}")
        return self.temporal_pos_embed_x if frame == "x" else self.temporal_pos_embed_z

    def embed(self, img: torch.Tensor, frame: str | None = "x") -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, D): patches + frame vector + resized spatial table.

        Summed in the official order (frame vector first), so the tokens are bit-identical.
        """
        grid = self.patch_embed.grid(img.shape[-2], img.shape[-1])
        return self.patch_embed(img) + self.frame_embed(frame) + self.spatial_pos_embed(grid)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D): all blocks (joint attention over every token), then norm."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, *imgs: torch.Tensor, frames: tuple[str | None, ...] | None = None) -> torch.Tensor:
        """Encode one or more frames jointly. Returns (B, sum_i N_i, D), tokens in input order.

        `frames` names the frame vector per input; the default is ('x', 'z')[:len(imgs)].
        """
        if frames is None:
            frames = FRAME_IDS[:len(imgs)]
        if len(frames) != len(imgs):
            raise ValueError("give one frame id per image")
        tokens = torch.cat([self.embed(img, f) for img, f in zip(imgs, frames)], dim=1)
        return self.forward_tokens(tokens)


# --------------------------------------------------------------------------------------------
# The two-frame masked autoencoder (TwinMAE when P = 0, DropMAE when P > 0)
# --------------------------------------------------------------------------------------------

class DropMAE(ViTEncoder):
    """Two-frame MAE. The encoder keys sit at the top level (it subclasses ViTEncoder), the
    decoder adds `decoder_embed`, `mask_token`, `decoder_pos_embed`,
    `decoder_temporal_pos_embed_{x,z}`, `decoder_blocks.{i}`, `decoder_norm`, `decoder_pred`.

    ASAD runs in every decoder block while training. Unlike the official `Attention_Dec`, which
    also drops in eval mode, we treat it like dropout and switch it off in eval mode, so
    reconstructions and the attention analysis see the full attention; a model in train mode
    (and under no_grad, if wanted) reproduces the official eval behaviour.
    """

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        d = cfg.decoder_embed_dim
        self.decoder_embed = nn.Linear(cfg.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        table = sincos_pos_embed_2d(d, *self.grid_size, cls_token=True)
        self.decoder_pos_embed = nn.Parameter(table, requires_grad=False)
        self.decoder_temporal_pos_embed_x = nn.Parameter(torch.randn(1, 1, d))
        self.decoder_temporal_pos_embed_z = nn.Parameter(torch.randn(1, 1, d))
        self.decoder_blocks = nn.ModuleList(Block(d, cfg.decoder_num_heads, cfg.mlp_ratio)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, cfg.patch_size ** 2 * cfg.in_chans)
        for m in [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            m.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3), pixels of a patch in (row, col, channel) order."""
        p = self.cfg.patch_size
        B, C, H, W = imgs.shape
        x = imgs.reshape(B, C, H // p, p, W // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*3) -> (B, 3, H, W) for the pre-training grid."""
        p, (gh, gw), C = self.cfg.patch_size, self.grid_size, self.cfg.in_chans
        x = x.reshape(x.shape[0], gh, gw, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, gh * p, gw * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """MAE's per-sample shuffle: keep the tokens with the smallest noise.

        x: (B, L, D); noise: (B, L) in [0, 1) or None. Returns the kept tokens (B, L_keep, D)
        in shuffled order, mask (B, L) with 0 = kept and 1 = removed, in original order, and
        ids_restore (B, L) that unshuffles. Here L spans both frames, so the masking is joint.
        """
        B, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)                             # ascend: small kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(self, img_x, img_z, mask_ratio: float, noise=None):
        """Both frames (B, 3, H, W) -> kept tokens (B, L_keep, D), mask (B, 2N), ids_restore.
        With img_z None, the one-frame image MAE: no frame vector, L = N."""
        if img_z is None:
            tokens = self.embed(img_x, None)                                  # (B, N, D)
        else:
            tokens = torch.cat([self.embed(img_x, "x"), self.embed(img_z, "z")], dim=1)  # (B, 2N, D)
        tokens, mask, ids_restore = self.random_masking(tokens, mask_ratio, noise)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens), mask, ids_restore

    def forward_decoder(self, latent, ids_restore, return_attn: bool = False):
        """(B, L_keep, D) -> pixel predictions (B, 2N, p*p*3) [, per-layer attention list]."""
        x = self.decoder_embed(latent)                                        # (B, L_keep, d)
        B, L = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, L - x.shape[1], -1)
        x = torch.cat([x, mask_tokens], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        pos = self.decoder_pos_embed[:, 1:]
        if L == self.num_patches:                                             # image MAE
            x, drop_p = x + pos, 0.0
        else:
            n = L // 2
            x = torch.cat([x[:, :n] + self.decoder_temporal_pos_embed_x + pos,   # official order
                           x[:, n:] + self.decoder_temporal_pos_embed_z + pos], dim=1)
            drop_p = self.cfg.P if self.training else 0.0
        attns = []
        for blk in self.decoder_blocks:
            if return_attn:
                x, attn = blk(x, drop_p, return_attn=True)
                attns.append(attn)
            else:
                x = blk(x, drop_p)
        pred = self.decoder_pred(self.decoder_norm(x))
        return (pred, attns) if return_attn else pred

    def forward_loss(self, img_x, img_z, pred, mask):
        """Mean squared error on the removed patches of both frames (per-patch normalised).

        img_x, img_z: (B, 3, H, W); pred: (B, 2N, p*p*3); mask: (B, 2N), 1 = removed -> scalar.
        """
        target = self.patchify(img_x)                                         # (B, N, ppc)
        if img_z is not None:
            target = torch.cat([target, self.patchify(img_z)], dim=1)         # (B, 2N, ppc)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)                            # unbiased, as MAE
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target) ** 2).mean(dim=-1)                    # (B, 2N)
        return (loss * mask).sum() / mask.sum()

    def forward(self, img_x, img_z, mask_ratio: float = 0.75, noise=None):
        """img_x, img_z: (B, 3, H, W), x the earlier frame. Returns (loss, pred (B, 2N, ppc),
        mask (B, 2N)). `noise` (B, 2N) fixes the joint masking (argsort, as MAE).
        img_z None trains the one-frame image MAE (MAE itself: L = N, no frame vectors, no
        ASAD), used for the paper's image-MAE baseline row."""
        latent, mask, ids_restore = self.forward_encoder(img_x, img_z, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(img_x, img_z, pred, mask), pred, mask

    @torch.no_grad()
    def decoder_attention(self, img_x, img_z, mask_ratio: float = 0.75, noise=None) -> list[torch.Tensor]:
        """Per decoder layer, the attention maps (B, heads, 2N, 2N) for the paper's analysis."""
        latent, _, ids_restore = self.forward_encoder(img_x, img_z, mask_ratio, noise)
        return self.forward_decoder(latent, ids_restore, return_attn=True)[1]


# --------------------------------------------------------------------------------------------
# Reading checkpoint files: the one reader every command uses
# --------------------------------------------------------------------------------------------
#
# `load_checkpoint` is the only place in the suite that calls torch.load (eval/tapvid.py has
# its own small pickle reader with the same trust rule, since eval/ imports nothing of ours).
# The trust rule: a checkpoint is read with `weights_only=True` (tensors, plain containers and
# argparse.Namespace, which official MAE/DropMAE files store); a file that pickles other Python
# objects (official OSTrack/DropTrack `.pth.tar`) can run code when loaded, so it is read only
# with `trust_pickle=True` (the `--trust-pickle` flag of every command that reads one).
# Every error names the path and says which of these it is:
#   | the file                                   | error                                     |
#   |--------------------------------------------|-------------------------------------------|
#   | does not exist / is not a file             | FileNotFoundError "no such checkpoint"    |
#   | is empty, truncated, or not a torch file   | CheckpointError "truncated" / "corrupt"   |
#   | pickles objects, trust_pickle not given    | CheckpointError "... pass --trust-pickle" |
#   | is the wrong kind for the command          | CheckpointError naming both kinds         |

CHECKPOINT_KINDS = {
    "pretrain": "a pre-training checkpoint (dropmae.py pretrain)",
    "dropmae": "an official DropMAE pre-training checkpoint",
    "mae": "an MAE ImageNet pre-training checkpoint",
    "droptrack": "a DropTrack checkpoint (tasks/vot.py train)",
    "ostrack": "an official DropTrack/OSTrack checkpoint",
    "dropseg": "a DropSeg checkpoint (tasks/vos.py train)",
    "unknown": "an unrecognised checkpoint",
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def load_checkpoint(path, trust_pickle: bool = False) -> dict:
    """Read a checkpoint file (a dict) on the CPU, by the trust rule above; errors name `path`."""
    name = str(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{name}: not a regular file, cannot be a checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{name}: empty file (0 bytes), not a checkpoint (an interrupted copy?)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{name}: truncated checkpoint ({size} bytes): a torch zip file "
                              f"without its end (an interrupted write or copy?)")

    def corrupt(err):
        detail = (str(err).strip().splitlines() or ["no detail"])[0][:200]
        return CheckpointError(f"{name}: corrupt or not a torch checkpoint ({size} bytes; "
                               f"{type(err).__name__}: {detail})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if not found:
            raise corrupt(err) from None
        if not trust_pickle:
            raise CheckpointError(f"{name}: the file pickles Python objects ({found.group(1)}), which "
                                  f"can run code when loaded (official OSTrack/DropTrack files do): "
                                  f"pass --trust-pickle if you trust this file") from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise corrupt(err2) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def describe_checkpoint(ckpt: dict) -> str:
    """The kind of a checkpoint dict: a key of CHECKPOINT_KINDS, from its entries."""
    state = ckpt.get("model", ckpt)
    config = ckpt.get("config")
    if "track" in ckpt:
        return "droptrack"
    if "net" in ckpt:
        return "ostrack"
    if isinstance(state, dict) and "mask_patch_embed.proj.weight" in state:
        return "dropseg"                               # its mask encoder (tasks/vos.py)
    if isinstance(config, dict) and "decoder_depth" in config:
        return "pretrain"
    if isinstance(state, dict) and "temporal_pos_embed_x" in state:
        return "dropmae"
    if isinstance(state, dict) and "cls_token" in state:
        return "mae"
    return "unknown"


def expect_kind(ckpt: dict, kinds, name, command: str) -> str:
    """The checkpoint's kind; CheckpointError naming the file when it is not one of `kinds`."""
    kind = describe_checkpoint(ckpt)
    if kind not in kinds:
        wanted = " or ".join(CHECKPOINT_KINDS[k] for k in kinds if k != "unknown")
        raise CheckpointError(f"{name}: this is {CHECKPOINT_KINDS[kind]} (entries "
                              f"{sorted(ckpt)[:6]}); {command} needs {wanted}")
    return kind


# --------------------------------------------------------------------------------------------
# Checkpoint import
# --------------------------------------------------------------------------------------------
#
# One loader for three sources, each with its key table:
#   | source                          | detected by                  | vs. our encoder / DropMAE      |
#   |---------------------------------|------------------------------|--------------------------------|
#   | official DropMAE pre-training   | `temporal_pos_embed_x` key   | identical names; into an        |
#   |   `{"model": sd, ...}`          |                              | encoder, decoder_* and          |
#   |                                 |                              | mask_token are dropped          |
#   | MAE ImageNet (`mae_pretrain_*`) | `cls_token` key              | cls_token dropped (no cls       |
#   |                                 |                              | here); the frame vectors are    |
#   |                                 |                              | missing: they keep their init   |
#   | ours (`pretrain` checkpoints)   | a `config` entry             | identical names                 |
# Anything else missing or unexpected is an error that names the file and the keys.

def read_checkpoint(src) -> tuple[dict, dict, str]:
    """Path or dict -> (state_dict, whole checkpoint, source name)."""
    if isinstance(src, dict):
        ckpt, name = src, "<state dict>"
    else:
        name = str(src)
        ckpt = load_checkpoint(src)                        # errors name the file
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{name}: no state dict found (expected a 'model' entry of tensors)")
    return state, ckpt, name


def checkpoint_kind(state: dict, ckpt: dict) -> str:
    """'ours', 'dropmae' or 'mae' (see the key table above)."""
    if "config" in ckpt:
        return "ours"
    if "temporal_pos_embed_x" in state:
        return "dropmae"
    if "cls_token" in state:
        return "mae"
    raise ValueError("unrecognised checkpoint: neither DropMAE keys (temporal_pos_embed_x) nor "
                     f"MAE keys (cls_token); first keys: {list(state)[:5]}")


def load_pretrained(src, model: nn.Module, expect_missing=(), expect_unexpected=(),
                    verbose: bool = True) -> dict:
    """Load a DropMAE, MAE or our checkpoint into a ViTEncoder or DropMAE (or a subclass).

    `expect_missing` / `expect_unexpected` name further keys the caller expects (a task's new
    parameters, say); every other difference from the key table raises. Shapes are asserted.
    Returns a report {kind, loaded, missing, dropped} and prints it when `verbose`.
    """
    state, ckpt, name = read_checkpoint(src)
    expect_kind(ckpt, ("pretrain", "dropmae", "mae", "unknown"), name, "loading a pre-trained backbone")
    kind = checkpoint_kind(state, ckpt)
    own = model.state_dict()
    decoder = {k for k in state if k.startswith("decoder_") or k == "mask_token"}
    allowed_unexpected = set(expect_unexpected)
    allowed_missing = set(expect_missing)
    if not isinstance(model, DropMAE):
        allowed_unexpected |= decoder                     # encoders drop the decoder
    if kind == "mae":
        allowed_unexpected.add("cls_token")
        allowed_missing |= {"temporal_pos_embed_x", "temporal_pos_embed_z"}
        if isinstance(model, DropMAE):                   # MAE has no decoder frame vectors; an
            allowed_missing |= {k for k in own if k.startswith("decoder_") or k == "mask_token"}
            allowed_missing -= decoder                    # encoder-only file has no decoder
            allowed_missing |= {"decoder_temporal_pos_embed_x", "decoder_temporal_pos_embed_z"}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_missing = [k for k in missing if k not in allowed_missing]
    bad_unexpected = [k for k in unexpected if k not in allowed_unexpected]
    if bad_missing or bad_unexpected:
        raise KeyError(f"{name} ({kind} checkpoint) does not match {type(model).__name__}: "
                       f"missing {bad_missing[:10]}{' ...' if len(bad_missing) > 10 else ''}, "
                       f"unexpected {bad_unexpected[:10]}{' ...' if len(bad_unexpected) > 10 else ''}")
    loaded = {k: v for k, v in state.items() if k in own}
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in loaded.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{name}: shape mismatch (another model size?): " + "; ".join(wrong[:5]))
    model.load_state_dict(loaded, strict=False)           # every difference was checked above
    report = {"kind": kind, "loaded": len(loaded), "missing": missing, "dropped": unexpected}
    if verbose:
        print(f"loaded {len(loaded)} tensors from {name} ({kind}); "
              f"dropped {len(unexpected)} ({', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}); "
              f"missing, kept at init: {missing if missing else 'none'}")
    return report


# --------------------------------------------------------------------------------------------
# Run infrastructure shared by every training command (pretrain here, tasks/ import it)
# --------------------------------------------------------------------------------------------

def init_distributed() -> tuple[int, int, int, torch.device]:
    """Join the torchrun process group if its environment is set; else one process.

    Returns (rank, world_size, local_rank, device). NCCL when CUDA is present, gloo on CPU.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            torch.distributed.init_process_group("nccl", device_id=device)
        else:
            device = torch.device("cpu")
            torch.distributed.init_process_group("gloo")
        return rank, world, local_rank, device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return 0, 1, 0, device


def is_main() -> bool:
    """True on rank 0 (or without a process group): the only rank that prints and saves."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def environment_info() -> dict:
    """Versions and hardware, for the run folder."""
    import av
    import PIL
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "av": av.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def make_run_dir(out_dir, config: dict) -> Path:
    """Create the self-describing run folder (rank 0 writes; every rank gets the path).

    Writes `config.json` (the resolved config and the command line), `git.txt` (commit and
    `git status`), `git.diff` (the uncommitted diff) and `env.json` (versions, hardware).
    """
    run = Path(out_dir)
    if is_main():
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({**config, "argv": sys.argv}, indent=2, default=str))
        (run / "git.txt").write_text(f"commit {_git('rev-parse', 'HEAD').strip()}\n"
                                     + _git("status", "--short"))
        (run / "git.diff").write_text(_git("diff", "HEAD"))
        (run / "env.json").write_text(json.dumps(environment_info(), indent=2))
    return run


class JsonlLogger:
    """One JSON object per line in `<run>/log.jsonl`; a no-op off rank 0."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "log.jsonl"

    def log(self, **record):
        if is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")


def save_checkpoint(path, state: dict):
    """Write atomically on rank 0: a temp file in the same folder, then rename over `path`.

    A crash while writing leaves the previous checkpoint intact.
    """
    if not is_main():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:             # torch's writer raises RuntimeError
        tmp.unlink(missing_ok=True)                    # never leave a partial file on a full disk
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) \
            or (isinstance(err, RuntimeError) and free is not None and free < 64 << 20)
        kept = "the previous checkpoint is intact" if path.exists() else "no previous checkpoint"
        if full:
            raise OSError(errno.ENOSPC, f"{path}: the disk is full, the checkpoint was not saved "
                          f"({kept}; the partial {tmp.name} was removed). Free some space and "
                          f"rerun with --resume auto") from None
        raise OSError(getattr(err, "errno", None) or errno.EIO,
                      f"{path}: cannot save the checkpoint ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); {kept}") from None


def latest_checkpoint(out_dir, pattern: str = "checkpoint-*.pth") -> Path | None:
    """The checkpoint with the highest number in out_dir (`checkpoint-<epoch>.pth`), or None."""
    def number(p: Path) -> int:
        digits = "".join(c for c in p.stem.rsplit("-", 1)[-1] if c.isdigit())
        return int(digits) if digits else -1
    found = sorted(Path(out_dir).glob(pattern), key=number)
    return found[-1] if found else None


def resume_checkpoint(out_dir, resume: str | None, required=("model", "optimizer"),
                      pattern: str = "checkpoint-*.pth") -> tuple[Path | None, dict | None]:
    """The checkpoint a training command continues from -> (path, checkpoint) or (None, None).

    `resume` 'auto': the newest readable checkpoint in out_dir; a newer one that is corrupt or
    lacks a `required` entry is moved aside to `<name>.corrupt` (kept for inspection) with a
    message naming it, and the previous one is used; none readable -> SystemExit naming them.
    Any other non-empty `resume` is a path that must read; '' / None: no resume.
    """
    if not resume:
        return None, None
    if resume != "auto":
        ckpt = load_checkpoint(resume)
        missing = [k for k in required if k not in ckpt]
        if missing:
            raise CheckpointError(f"{resume}: cannot resume from it: no {missing} entries "
                                  f"(entries {sorted(ckpt)[:8]})")
        return Path(resume), ckpt
    def number(p: Path) -> int:
        digits = "".join(c for c in p.stem.rsplit("-", 1)[-1] if c.isdigit())
        return int(digits) if digits else -1
    bad = []
    for path in sorted(Path(out_dir).glob(pattern), key=number, reverse=True):
        try:
            ckpt = load_checkpoint(path)
            missing = [k for k in required if k not in ckpt]
            if missing:
                raise CheckpointError(f"{path}: no {missing} entries, cannot resume from it")
        except CheckpointError as err:
            aside = path.with_name(path.name + ".corrupt")
            if is_main():
                os.replace(path, aside)
            print(f"--resume auto: {err}; moved it aside to {aside.name}", file=sys.stderr)
            bad.append(str(path))
            continue
        if bad:
            print(f"--resume auto: continuing from the previous good checkpoint {path}", file=sys.stderr)
        return path, ckpt
    if bad:
        raise SystemExit(f"--resume auto: no readable checkpoint in {out_dir}: "
                         f"{', '.join(bad)} are corrupt (moved aside to *.corrupt)")
    return None, None


def rng_state() -> dict:
    """Every random generator's state, as tensors and plain types (loads with weights_only)."""
    _, mt, gauss_next = random.getstate()              # (version, 625 words incl. position, gauss)
    _, words, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(mt), "python_gauss": gauss_next,
             "numpy": torch.from_numpy(words.astype(np.int64)), "numpy_pos": int(pos),
             "numpy_gauss": [int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what `rng_state` saved (checkpoints before `python_gauss` named it `python_pos`)."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state.get("python_gauss", state.get("python_pos"))))
    has_gauss, cached = state.get("numpy_gauss", (0, 0.0))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Pre-training command
# --------------------------------------------------------------------------------------------
#
# `python dropmae.py pretrain ...` runs one process (CPU or one GPU); under `torchrun` the same
# code runs DDP, one process per GPU. Flags and defaults are the official recipe
# (DM:README.md launch line, main_pretrain_kinetics.py, engine_pretrain.py, util/lr_sched.py):
#   batch 64 per GPU, lr = blr * (batch * accum_iter * world) / 256 with blr 1.5e-4,
#   AdamW (0.9, 0.95), weight decay 0.05 (see `param_groups`), 40 warmup epochs then half-cycle
#   cosine per iteration on the fractional epoch (`lr_at`), 400 epochs, mask ratio 0.75, P 0.1,
#   frame gap 50, norm_pix_loss on, mixed precision, no gradient clipping, a checkpoint every
#   20 epochs (epoch % 20 == 0) and at the last one, a non-finite loss stops the run.
# Our additions: the masking noise of each sample is a pure function of (seed, epoch, sample
# index) (`mask_noise`), so neither a resume nor the number of processes changes the masks;
# every checkpoint also holds `step`, `iteration` (of its epoch), the model `config` and every
# rank's RNG state, so `--max-steps` may stop mid-epoch and a resume continues at the next
# iteration exactly; the gradient norm the official scaler computes (and drops) is logged as
# `grad_norm`; the non-finite check runs on the all-reduced loss, so every rank stops together;
# skipped videos are reported once per epoch.

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(lo: float = 0.0, hi: float = 1.0, lo_closed: bool = True, hi_closed: bool = False):
    """argparse type: a float in [lo, hi) (or (lo, hi], ... by the two flags), with a message
    that gives the range. Every probability and ratio flag of every command uses one."""
    def parse(text: str) -> float:
        value = float(text)
        ok = (value >= lo if lo_closed else value > lo) and (value <= hi if hi_closed else value < hi)
        if not ok:                                     # NaN fails both comparisons
            span = f"{'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value
    parse.__name__ = "fraction"                       # argparse names the type in its message
    return parse


def add_pretrain_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `pretrain` flags; defaults are the official DropMAE recipe (ViT-B, K400, 64 GPUs)."""
    from data import PRESETS as DATA_PRESETS
    g = p.add_argument_group("model")
    g.add_argument("--model", default="base", choices=list(PRESETS), help="size preset")
    g.add_argument("--input-size", type=int, default=None,
                   help="frame side in pixels (default: the preset's img_size; 224 for base)")
    g.add_argument("--P", type=fraction(), default=0.1,
                   help="ASAD dropout ratio in [0, 1); 0 gives TwinMAE")
    g.add_argument("--mask-ratio", type=fraction(), default=0.75,
                   help="masked share of the patches of both frames, in [0, 1)")
    g.add_argument("--image-mae", action="store_true",
                   help="one-frame image MAE on the earlier frame of each pair (baseline row)")
    g.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=True)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=64, help="per process (per GPU)")
    g.add_argument("--accum-iter", type=positive_int, default=1,
                   help="gradient accumulation steps (one update per N iterations)")
    g.add_argument("--epochs", type=positive_int, default=400)
    g.add_argument("--warmup-epochs", type=float, default=40)
    g.add_argument("--blr", type=float, default=1.5e-4, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--amp", choices=["bf16", "fp16", "off"], default=None,
                   help="mixed precision (default: bf16 on a GPU that has it, else fp16; "
                        "off on the CPU)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="k400", choices=DATA_PRESETS, help="dataset layout (data.py)")
    g.add_argument("--data-path", default=None, help="dataset root (not for synthetic)")
    g.add_argument("--index-cache", default=None,
                   help="video index cache (default: <output>/video_index.json)")
    g.add_argument("--num-synthetic", type=int, default=256, help="videos of --data synthetic")
    g.add_argument("--frame-gap", type=int, default=50, help="pair gap in 1..frame_gap-1 frames")
    g.add_argument("--num-workers", type=int, default=8, help="data loader processes per rank")
    g = p.add_argument_group("run")
    g.add_argument("--output", default="runs/pretrain",
                   help="run folder: config, logs, checkpoints")
    g.add_argument("--seed", type=int, default=0, help="rank r seeds torch/numpy with seed + r")
    g.add_argument("--save-every", type=positive_int, default=20,
                   help="checkpoint when epoch %% N == 0")
    g.add_argument("--resume", default="", help="'auto' (latest checkpoint in --output) or a path")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many iterations in all and save a checkpoint, mid-epoch "
                        "if need be (a resume continues at the next iteration)")
    g.add_argument("--log-every", type=positive_int, default=20,
                   help="iterations between log.jsonl lines")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is present")
    g.add_argument("--debug-nan-at-step", type=int, default=None,
                   help="(testing) make the loss NaN at this iteration to exercise the stop")
    return p


def lr_at(epoch: float, args) -> float:
    """Learning rate at a fractional epoch (MAE's `util/lr_sched.adjust_learning_rate`).

    Linear warmup from 0 to `args.lr` over `args.warmup_epochs`, then a half-cycle cosine from
    `args.lr` to `args.min_lr` at `args.epochs`: min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2,
    t = (epoch - warmup) / (epochs - warmup). `epoch` = epoch + iteration / iterations_per_epoch.
    """
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    t = (epoch - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-12)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: nn.Module, weight_decay: float, verbose: bool = True) -> list[dict]:
    """AdamW parameter groups of the MAE / DropMAE pre-training recipe.

    Reproduces timm 0.3.2 `optim_factory.add_weight_decay(model, weight_decay)` with no skip
    list, as `main_pretrain_kinetics.py` calls it: a trainable tensor with ndim == 1 or a name
    ending in `.bias` gets weight decay 0 (biases, LayerNorm weights); every other one gets
    `weight_decay`, the 1x1xD tokens included (mask_token, the four temporal_pos_embed vectors).
    Frozen tensors (the sin-cos tables pos_embed, decoder_pos_embed) are left out.
    Returns [{no decay}, {decay}] (timm's order), each with a `names` list.
    """
    decay, no_decay, frozen = {}, {}, []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
        elif p.ndim == 1 or name.endswith(".bias"):
            no_decay[name] = p
        else:
            decay[name] = p
    if verbose:
        count = lambda d: sum(p.numel() for p in d.values())
        print(f"param groups (MAE/DropMAE pre-training: timm 0.3.2 add_weight_decay, no skip "
              f"list): weight decay {weight_decay} on {len(decay)} tensors ({count(decay):,} "
              f"params, tokens included); 0 on {len(no_decay)} 1-D/bias tensors "
              f"({count(no_decay):,} params); frozen, not optimised: {', '.join(frozen) or 'none'}")
    return [{"params": list(no_decay.values()), "names": list(no_decay), "weight_decay": 0.0},
            {"params": list(decay.values()), "names": list(decay), "weight_decay": weight_decay}]


def mask_noise(seed: int, epoch: int, indices, length: int) -> torch.Tensor:
    """Uniform noise (B, length) for the joint random masking of the samples `indices`.

    The official code draws torch.rand(B, L) on each GPU. The law here is the same (iid
    uniform), but row b is a pure function of (seed, epoch, indices[b]), so the masks do not
    depend on the number of processes, the per-process batch size or a resume.
    """
    rows = []
    for i in indices:
        state = np.random.SeedSequence([seed, epoch, int(i), 1]).generate_state(1, np.uint64)[0]
        rows.append(torch.rand(length, generator=torch.Generator().manual_seed(int(state))))
    return torch.stack(rows)


def resolve_amp(requested: str | None, device: torch.device) -> str:
    """'bf16' | 'fp16' | 'off'. Default: bf16 on a GPU that supports it, else fp16; off on CPU."""
    if requested is None:
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a GPU (use bf16 or off on the CPU)")
    return requested


def _gather(obj, world: int) -> list:
    """[obj of rank 0, obj of rank 1, ...] (every rank gets the list)."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def pretrain(args: argparse.Namespace) -> Path:
    """Pre-train DropMAE (or TwinMAE with --P 0). Returns the run folder.

    Order: config, distributed init, data, model, optimizer, resume, loop, save.
    Logging step `step` is the global iteration index (0-based, over all epochs); a checkpoint's
    `step` is the number of iterations done, its `iteration` the number done in its `epoch`
    (`epoch_iterations` when the epoch is complete). `--max-steps` counts iterations (not
    updates).
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    from data import EpochOrder, FramePairDataset, collate_pairs, count_skips, summarize_skipped

    # ---- config and distributed init
    rank, world, local_rank, device = init_distributed()
    if args.cpu:
        if world > 1 and device.type == "cuda":
            raise ValueError("--cpu under torchrun on a GPU machine: set CUDA_VISIBLE_DEVICES= "
                             "instead")
        device = torch.device("cpu")
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    if args.data != "synthetic" and not args.data_path:
        raise ValueError(f"--data {args.data} needs --data-path (or use --data synthetic)")
    overrides = {"P": args.P, "norm_pix_loss": args.norm_pix_loss}
    if args.input_size is not None:
        overrides["img_size"] = args.input_size
    cfg = get_config(args.model, **overrides)
    args.input_size = cfg.img_size
    args.amp = resolve_amp(args.amp, device)
    args.world_size = world
    args.eff_batch = args.batch_size * args.accum_iter * world
    if args.lr is None:
        args.lr = args.blr * args.eff_batch / 256
    config = {"config": dataclasses.asdict(cfg), "args": dict(vars(args))}
    say(json.dumps(config, indent=2))
    say(f"lr {args.lr:.4g} = blr {args.blr:.4g} x effective batch {args.eff_batch} / 256 "
        f"(batch {args.batch_size} x accum {args.accum_iter} x {world} processes); "
        f"device {device}, amp {args.amp}")
    run = make_run_dir(args.output, config)
    logger = JsonlLogger(run)
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---- data (rank 0 indexes first and writes the cache; the others then read it)
    def make_dataset():
        cache = args.index_cache or str(run / "video_index.json")
        cache = None if args.data == "synthetic" else cache
        return FramePairDataset(args.data, args.data_path, frame_gap=args.frame_gap,
                                input_size=cfg.img_size, cache_path=cache, seed=args.seed,
                                num_synthetic=args.num_synthetic)
    if world > 1 and not main_rank:
        torch.distributed.barrier()
    dataset = make_dataset()
    if world > 1 and main_rank:
        torch.distributed.barrier()
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed)
    iters = len(sampler) // args.batch_size            # iterations per epoch (drop_last)
    if iters == 0:
        raise ValueError(f"{len(dataset)} videos give no full batch of {args.batch_size} per "
                         f"process with {world} processes")
    where = f" at {args.data_path}" if args.data_path else ""
    say(f"data: {args.data}{where}: {len(dataset)} videos, {iters} iterations per epoch "
        f"per process")

    # One loader for the whole run; each epoch sets its order (this rank's samples, in batch
    # order) on the sampler. The workers persist across epochs. The loader's own generator
    # keeps its worker seed from drawing on the global RNG, whose stream ASAD uses.
    epoch_order = EpochOrder()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=epoch_order, num_workers=args.num_workers,
        collate_fn=collate_pairs, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=args.num_workers > 0, generator=torch.Generator().manual_seed(args.seed))

    # ---- model and optimizer
    model = DropMAE(cfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, verbose=main_rank),
                                  lr=args.lr, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=args.image_mae)        # the image MAE leaves frame vectors unused
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16

    # ---- resume: after a whole epoch at the next one (official); after --max-steps stopped
    # mid-epoch at the next iteration of that epoch
    start_epoch, start_iter, step = 0, 0, 0
    resume, ckpt = resume_checkpoint(run, args.resume,
                                     required=("model", "optimizer", "epoch", "step"))
    if args.resume == "auto" and resume is None:
        say(f"--resume auto: no checkpoint in {run}, starting from scratch")
    if resume is not None:
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler.is_enabled() and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        done, of = ckpt.get("iteration"), ckpt.get("epoch_iterations")
        if done is not None and done < of:                 # saved mid-epoch by --max-steps
            if of == iters:
                start_epoch, start_iter = ckpt["epoch"], done
            else:
                say(f"{resume} stopped after iteration {done} of {of} of epoch {ckpt['epoch']}, "
                    f"but this run has {iters} iterations per epoch: starting the next epoch")
        rngs = ckpt.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            say(f"checkpoint has RNG states of {len(rngs)} processes, this run has {world}: "
                f"keeping the fresh seeds (ASAD draws will differ from an uninterrupted run)")
        say(f"resumed from {resume}: {step} iterations done; starting epoch {start_epoch} at "
            f"iteration {start_iter}")

    def save(epoch: int, iteration: int) -> Path:
        """Every rank calls this (RNG states are gathered); rank 0 writes atomically.
        `iteration` iterations of `epoch` are done (== iters for a whole epoch)."""
        path = run / f"checkpoint-{epoch}.pth"
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch, "step": step, "iteration": iteration,
                               "epoch_iterations": iters, "scaler": scaler.state_dict(),
                               "args": dict(vars(args)), "config": dataclasses.asdict(cfg),
                               "rng": _gather(rng_state(), world)})
        say(f"saved {path}")
        return path

    # ---- loop
    global_batch = args.batch_size * world
    frames = 1 if args.image_mae else 2
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = None                                   # of the last update
    stopped = False
    t_start = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        skip = start_iter if epoch == start_epoch else 0
        net.train()
        sampler.set_epoch(epoch)
        order = list(sampler)[:iters * args.batch_size]   # this rank's samples, batch order
        epoch_order.set(epoch, order[skip * args.batch_size:])
        optimizer.zero_grad(set_to_none=True)          # as official: no accumulation across epochs
        bar = tqdm(total=iters, initial=skip, desc=f"epoch {epoch}", disable=not main_rank,
                   dynamic_ncols=True)
        skipped_epoch, losses, lrs = [], [], []
        t_epoch = t_log = t_fetch = time.perf_counter()
        data_time, since_log, skipped_since_log = 0.0, 0, 0
        for it, (img_x, img_z, skipped) in enumerate(loader, start=skip):
            data_time += time.perf_counter() - t_fetch
            # per update, on the fractional epoch of its first iteration (official lr_sched)
            lr = lr_at(epoch + (it - it % args.accum_iter) / iters, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = order[it * args.batch_size:(it + 1) * args.batch_size]
            noise = mask_noise(args.seed, epoch, indices, frames * model.num_patches).to(device)
            img_x = img_x.to(device, non_blocking=True)
            img_z = img_z.to(device, non_blocking=True)
            update = (it + 1) % args.accum_iter == 0
            with net.no_sync() if world > 1 and not update else nullcontext():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp != "off"):
                    second = None if args.image_mae else img_z
                    loss, _, _ = net(img_x, second, args.mask_ratio, noise)
                if args.debug_nan_at_step == step:
                    loss = loss * float("nan")
                local = loss.item()
                stats = torch.tensor([local, count_skips(skipped)], dtype=torch.float64, device=device)
                if world > 1:
                    torch.distributed.all_reduce(stats)   # sum over ranks
                mean_loss, n_skipped = stats[0].item() / world, int(stats[1].item())
                if not math.isfinite(mean_loss):
                    if not math.isfinite(local):
                        last = latest_checkpoint(run)
                        print(f"non-finite loss {local} on rank {rank} at epoch {epoch}, step "
                              f"{step} (iteration {it} of {iters}): stopping. Last good "
                              f"checkpoint: {last if last else 'none yet'}", flush=True)
                    raise SystemExit(1)
                scaler.scale(loss / args.accum_iter).backward()
            if update:                                 # the official NativeScalerWithGradNormCount:
                scaler.unscale_(optimizer)             # unscale, the total L2 norm, no clipping
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            skipped_epoch += skipped
            losses.append(mean_loss)
            lrs.append(lr)
            since_log += 1
            skipped_since_log += n_skipped
            if step % args.log_every == 0 or it == iters - 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                logger.log(epoch=epoch, step=step, loss=mean_loss, lr=lr,
                           grad_norm=None if grad_norm is None else grad_norm.item(),
                           samples_per_s=since_log * global_batch / (now - t_log),
                           data_time_s=data_time / since_log, skipped=skipped_since_log)
                t_log, data_time, since_log, skipped_since_log = now, 0.0, 0, 0
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
            bar.update()
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                stopped = True
                if not update:
                    say(f"--max-steps stops inside a gradient accumulation: the gradients of "
                        f"{(it + 1) % args.accum_iter} iterations are not saved")
                break
            t_fetch = time.perf_counter()
        bar.close()

        # ---- end of epoch: skipped videos of every rank, the epoch line, the checkpoint
        skipped_all = [s for part in _gather(skipped_epoch, world) for s in part]
        summary = summarize_skipped(skipped_all)
        say(f"epoch {epoch}: loss {np.mean(losses):.4f}, lr {np.mean(lrs):.4g}, "
            f"{time.perf_counter() - t_epoch:.1f} s; {summary}")
        logger.log(epoch=epoch, train_loss=float(np.mean(losses)), train_lr=float(np.mean(lrs)),
                   iterations=len(losses), epoch_time_s=time.perf_counter() - t_epoch,
                   skipped=count_skips(skipped_all), skipped_videos=summary)
        # a resumed partial epoch is saved at its end too, over its partial checkpoint
        if stopped or skip or epoch % args.save_every == 0 or epoch + 1 == args.epochs:
            save(epoch, it + 1)
        if stopped:
            say(f"--max-steps {args.max_steps} reached in epoch {epoch} (iteration {it + 1} of "
                f"{iters}); `--resume auto` continues from there")
            break
    say(f"done: {step} iterations, {time.perf_counter() - t_start:.1f} s; run folder {run}")
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dropmae.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_pretrain_args(sub.add_parser("pretrain", help="pre-train DropMAE / TwinMAE on videos"))
    args = parser.parse_args(argv)
    try:
        pretrain(args)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()      # no rank tears gloo down while another still talks to it
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
