"""Speed of DropMAE pre-training: ASAD per decoder layer, TwinMAE vs DropMAE step, data decoding.

Not a paper table: a benchmark of this implementation at the paper's ViT-B/16 shape (two 224x224
frames, 392 tokens, decoder 8 x 512 wide with 16 heads, mask ratio 0.75), on this machine.

Measured, in one run:
1. per decoder layer (B x 16 heads x 392 x 392 logits):
   - `asad_mask` alone (P 0.1: K = 7448 drops per sample and head);
   - the same draw as the official code makes it, one `torch.multinomial(W, K, replacement=False)`
     per (sample, head) in a Python loop, for reference (fewer repeats);
   - a decoder `Block` forward in training mode with P 0 and with P 0.1;
2. one full training step (forward, backward, AdamW; bf16 autocast on a GPU) of TwinMAE (P 0)
   and DropMAE (P 0.1), repeats interleaved, medians; samples/s; peak memory of the step
   (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS of the process during the step from
   /proc/self/status VmHWM, reset before each step through /proc/self/clear_refs);
3. `data.py` frame-pair rate (decode two frames + two RandomResizedCrops, one process) on clips
   written by `data.write_synthetic_clips`: tiny 160x120 2 s clips and (not with --quick)
   Kinetics-like 340x256 10 s 30 fps clips.
Batch: 8 on CPU, 64 (the paper's per-GPU batch) on a GPU.

Target: ASAD adds at most 10 % to a TwinMAE step on the CPU and at most 3 % on a GPU. For
scale, the official implementation's ASAD alone costs about 0.5 s per decoder layer at batch 8
on 2 CPU cores, about 4 s of an 11-13 s step. The load average is recorded; timings taken while
other jobs run are labelled "under load".

Commands:
    python -m reproduce.bench_pretrain --out runs/bench_pretrain.json          # ~5 min on 2 cores
    python -m reproduce.bench_pretrain --quick --out runs/bench_pretrain.json  # ~2 min
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from data import bench_decode, write_synthetic_clips
from dropmae import Block, DropMAE, asad_mask, asad_num_drops, get_config, param_groups

TARGET = {"cpu": 0.10, "cuda": 0.03}              # max ASAD overhead on a TwinMAE step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Seconds of one call of fn()."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def official_style_asad(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The official sampling pattern: W built per the spec, then a Python loop over (sample,
    head) with one `torch.multinomial(W.flatten(), K, replacement=False)` each. (B, H, L, L)."""
    B, H, L, _ = logits.shape
    h = L // 2
    k = asad_num_drops(L, p)
    attn = logits.float().softmax(-1)
    f_tem = torch.cat([attn[..., :h, h:].amax(-1), attn[..., h:, :h].amax(-1)], -1) + 1e-6
    own = torch.cat([attn[..., :h, :h], attn[..., h:, h:]], dim=-2) + 1e-6   # (B, H, L, h)
    rows = torch.arange(L, device=logits.device)
    own[..., rows, rows % h] = 0.0
    w = f_tem.unsqueeze(-1) * own / own.sum(-1, keepdim=True)
    drop = torch.zeros(B * H, L * h, dtype=torch.bool, device=logits.device)
    for n, weights in enumerate(w.reshape(B * H, L * h)):
        drop[n, torch.multinomial(weights, k, replacement=False)] = True
    return drop


def vmhwm_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM), or None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_decoder_layer(batch: int, device, repeats: int) -> dict:
    """Seconds per decoder layer at (batch, 16 heads, 392, 392): ASAD alone, official-style loop,
    Block forward (train) with P 0 and P 0.1."""
    torch.manual_seed(0)
    logits = torch.randn(batch, 16, 392, 392, device=device) * 2.0
    block = Block(512, 16).to(device).train()
    x = torch.randn(batch, 392, 512, device=device)
    times = {"asad_mask": [], "block_P0": [], "block_P0.1": []}
    with torch.no_grad():
        asad_mask(logits, 0.1)                                             # warm-up
        block(x, 0.1)
        for _ in range(repeats):                                           # interleaved
            times["asad_mask"].append(timed(lambda: asad_mask(logits, 0.1), device))
            times["block_P0"].append(timed(lambda: block(x, 0.0), device))
            times["block_P0.1"].append(timed(lambda: block(x, 0.1), device))
        official = [timed(lambda: official_style_asad(logits, 0.1), device)
                    for _ in range(max(1, min(2, repeats)))]
    out = {k: statistics.median(v) for k, v in times.items()}
    out["official_style_loop"] = statistics.median(official)
    return out


def bench_steps(batch: int, device, repeats: int) -> dict:
    """TwinMAE (P 0) vs DropMAE (P 0.1) training steps at ViT-B, interleaved; medians."""
    torch.manual_seed(0)
    cfg = get_config("base")
    model = DropMAE(cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05, verbose=False), lr=1e-4, betas=(0.9, 0.95))
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
    img_x = torch.randn(batch, 3, 224, 224, device=device)
    img_z = torch.randn(batch, 3, 224, 224, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = model(img_x, img_z, 0.75)[0]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    variants = {"TwinMAE (P 0)": 0.0, "DropMAE (P 0.1)": 0.1}
    times = {name: [] for name in variants}
    memory = {name: 0 for name in variants}
    memory_kind = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS - RSS before"
    for name, p in variants.items():                                      # warm-up, memory
        model.cfg.P = p
        step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            memory[name] = torch.cuda.max_memory_allocated()
        elif reset_peak_rss():
            before = vmhwm_bytes()
            step()
            memory[name] = vmhwm_bytes() - before
        else:
            memory_kind, memory[name] = "unavailable (no /proc/self/clear_refs)", None
    for _ in range(repeats):
        for name, p in variants.items():
            model.cfg.P = p
            times[name].append(timed(step, device))
    out = {}
    for name in variants:
        t = statistics.median(times[name])
        out[name] = {"step_s": t, "samples_per_s": batch / t, "all_s": times[name],
                     "peak_memory_bytes": memory[name]}
    twin, drop = (out[n]["step_s"] for n in variants)
    out["asad_overhead"] = drop / twin - 1.0
    out["memory_kind"] = memory_kind
    return out


def bench_data(quick: bool, n_pairs: int) -> dict:
    """Frame pairs per second of data.py (one process) on generated clips."""
    settings = {"tiny 160x120 2s 15fps": dict(num_classes=3, per_class=4, seconds=2.0, fps=15,
                                             size=(160, 120))}
    if not quick:
        settings["K400-like 340x256 10s 30fps"] = dict(num_classes=2, per_class=2, seconds=10.0,
                                                      fps=30, size=(340, 256))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in settings.items():
            root = os.path.join(tmp, name.split()[0])
            write_synthetic_clips(root, **kw)
            bench_decode(root, 4)                                           # index, warm cache
            out[name] = bench_decode(root, n_pairs)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_pretrain.json", help="JSON result file")
    parser.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on GPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--pairs", type=int, default=None, help="decode pairs (default 200; quick 60)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, small clips only")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even with a GPU")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    batch = args.batch or (64 if device.type == "cuda" else 8)
    repeats = args.repeats or (2 if args.quick else 5)
    pairs = args.pairs or (60 if args.quick else 200)
    load_before = os.getloadavg()
    hardware = (torch.cuda.get_device_name(0) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                     f"{torch.get_num_threads()} torch threads")
    print(f"bench_pretrain: ViT-B/16 two-frame MAE, batch {batch}, device {device} ({hardware}), "
          f"{repeats} repeats; load average {load_before[0]:.2f}")

    t0 = time.perf_counter()
    layer = bench_decoder_layer(batch, device, repeats)
    steps = bench_steps(batch, device, repeats)
    decode = bench_data(args.quick, pairs)
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)

    twin, drop = steps["TwinMAE (P 0)"], steps["DropMAE (P 0.1)"]
    target = TARGET[device.type]
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    lines = [
        f"per decoder layer (B={batch}, 16 heads, 392x392)        median s",
        f"  asad_mask (vectorised, P 0.1)                       {layer['asad_mask']:.4f}",
        f"  official-style loop (multinomial per sample, head)  {layer['official_style_loop']:.4f}",
        f"  decoder Block forward, P 0                          {layer['block_P0']:.4f}",
        f"  decoder Block forward, P 0.1                        {layer['block_P0.1']:.4f}",
        f"training step (ViT-B, B={batch})    median s   samples/s   peak memory ({steps['memory_kind']})",
        f"  TwinMAE (P 0)                   {twin['step_s']:8.3f}   {twin['samples_per_s']:9.2f}   {gib(twin['peak_memory_bytes'])}",
        f"  DropMAE (P 0.1)                 {drop['step_s']:8.3f}   {drop['samples_per_s']:9.2f}   {gib(drop['peak_memory_bytes'])}",
        f"  ASAD overhead: {100 * steps['asad_overhead']:+.1f} % (target <= {100 * target:.0f} % on "
        f"{device.type}: {'met' if steps['asad_overhead'] <= target else 'NOT met'})",
        "data.py frame pairs/s (decode 2 frames + 2 crops, 1 process)",
        *[f"  {name:<32s} {rate:8.1f}" for name, rate in decode.items()],
        f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} cores"
        + ("  (measured under load: timings are noisy)" if busy else ""),
    ]
    print("\n".join(lines))
    result = {"device": str(device), "hardware": hardware, "batch": batch, "repeats": repeats,
              "decoder_layer_s": layer, "steps": steps, "target_overhead": target,
              "target_met": steps["asad_overhead"] <= target, "decode_pairs_per_s": decode,
              "load_average": {"before": load_before, "after": load_after, "under_load": busy},
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "wall_s": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
