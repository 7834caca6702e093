"""Speed of DropMAE-TAP (tasks/tap.py): training pairs/s and points tracked/s, `base` at 256.

No paper number to compare with (the extended paper's TAP model is not public; specs/tap.md).
What is measured, side by side in one process on random weights (speed does not depend on them):
    train      optimisation steps of `pairs` (query, target) pairs at 256^2 with `queries`
               queries each (forward, the tapnet losses, backward, AdamW); reported as pairs/s
               and as clips/s (a clip = 4 target pairs, the recipe's unit)
    track      `tasks.tap.track_queries` on a video of `frames` frames with `queries` queries on
               frame 0: (frames - 1) joint passes, `pair_batch` targets per pass; points/s =
               queries x frames / seconds
    track_q16  the same with 16 queries: the ratio track / track_q16 shows how far sharing one
               pass among every query of a frame pays (the ViT pass dominates; the readout
               grows with the queries)
Ratios are printed because wall-clock numbers on a shared machine move; ratios measured in one
run do not (much).

Command (a few minutes on 2 CPU cores; the GPU rows appear when CUDA is present):
    python -m reproduce.bench_tap [--model base] [--pairs 2] [--steps 2] [--frames 4] \
        [--queries 256] [--threads N] [--out runs/bench/tap.json]
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reproduce.timing import sync  # noqa: E402
from tasks import tap  # noqa: E402



def bench_train(model, device, pairs: int, queries: int, steps: int, warmup: int, amp: str) -> float:
    """Training pairs/s."""
    S = model.tap.size
    g = torch.Generator().manual_seed(0)
    img_q, img_t = (torch.randn(pairs, 3, S, S, generator=g).to(device) for _ in range(2))
    qxy = (torch.rand(pairs, queries, 2, generator=g) * S).to(device)
    gxy = (qxy + torch.randn(pairs, queries, 2, generator=g).to(device) * 4)
    gocc = torch.zeros(pairs, queries, dtype=torch.bool, device=device)
    valid = torch.ones_like(gocc)
    model.train()
    opt = torch.optim.AdamW(tap.param_groups(model, 1e-4, 0.1, 0.05, verbose=False), betas=(0.9, 0.95))
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            out = model.forward_points(img_q, img_t, qxy)
        loss, _ = tap.tap_loss(out, gxy, gocc, valid, tap.EVAL_SIZE / S)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    model.eval()
    return pairs * steps / (time.perf_counter() - start)


def bench_track(model, device, frames: int, queries: int, pair_batch: int, amp: bool, repeats: int) -> float:
    """Points tracked/s of `track_queries` (queries on frame 0, every frame computed)."""
    S = model.tap.size
    g = torch.Generator().manual_seed(1)
    video = torch.randn(frames, 3, S, S, generator=g)
    rng = np.random.default_rng(0)
    qp = np.stack([np.zeros(queries), rng.uniform(0, S, queries), rng.uniform(0, S, queries)], -1)
    tap.track_queries(model, video, qp, pair_batch=pair_batch, amp=amp)         # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        tap.track_queries(model, video, qp, pair_batch=pair_batch, amp=amp)
    sync(device)
    return queries * frames * repeats / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description="DropMAE-TAP training and tracking speed")
    parser.add_argument("--model", default="base", choices=sorted(tap.TAP_PRESETS))
    parser.add_argument("--pairs", type=int, default=2, help="pairs per training step on CPU")
    parser.add_argument("--gpu-pairs", type=int, default=32, help="pairs per step on GPU (the recipe)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--frames", type=int, default=4, help="frames of the tracked video (CPU)")
    parser.add_argument("--gpu-frames", type=int, default=50)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--pair-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/bench/tap.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = tap.build_model(args.model)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        model.to(device)
        gpu = device.type == "cuda"
        pairs, frames = (args.gpu_pairs, args.gpu_frames) if gpu else (args.pairs, args.frames)
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "off"
        threads = torch.get_num_threads()
        row = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu ({threads} threads)",
               "precision": amp, "pairs_per_step": pairs, "frames": frames, "queries": args.queries}
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        row["train_pairs_per_s"] = bench_train(model, device, pairs, args.queries,
                                               args.steps * (5 if gpu else 1), 3 if gpu else 1, amp)
        row["train_clips_per_s"] = row["train_pairs_per_s"] / 4
        if gpu:
            row["train_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        repeats = 3 if gpu else 1
        row["track_points_per_s"] = bench_track(model, device, frames, args.queries, args.pair_batch, gpu, repeats)
        row["track_q16_points_per_s"] = bench_track(model, device, frames, 16, args.pair_batch, gpu, repeats)
        row["ratio_q256_over_q16"] = row["track_points_per_s"] / row["track_q16_points_per_s"]
        row["ratio_track_pairs_over_train_pairs"] = (
            row["track_points_per_s"] / (args.queries * frames) * (frames - 1) / row["train_pairs_per_s"])
        rows.append(row)
        print(f"  {row['device']:<24} {amp:<5} train {row['train_pairs_per_s']:8.2f} pairs/s "
              f"({row['train_clips_per_s']:.2f} clips/s)   track {row['track_points_per_s']:10.0f} points/s "
              f"(Q={args.queries}), {row['track_q16_points_per_s']:8.0f} (Q=16): x{row['ratio_q256_over_q16']:.1f}; "
              f"inference pass / training pair x{row['ratio_track_pairs_over_train_pairs']:.1f}", flush=True)
    print(f"\nDropMAE-TAP {args.model}: {model.tap}")
    print("| device | precision | train pairs/s | points/s (Q=256) | points/s (Q=16) | Q256/Q16 | "
          "inference pass / train pair |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['train_pairs_per_s']:.2f} | {r['track_points_per_s']:.0f} | "
              f"{r['track_q16_points_per_s']:.0f} | {r['ratio_q256_over_q16']:.1f} | "
              f"{r['ratio_track_pairs_over_train_pairs']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "tap": tap.dataclasses.asdict(model.tap), "rows": rows,
                               "torch": torch.__version__, "platform": platform.platform()}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
