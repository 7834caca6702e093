"""Tracking speed of DropTrack (OSTrack-384 with candidate elimination), base model at 384.

What the paper side reports: OSTrack-384 runs at 58.1 FPS on one RTX 2080Ti (OSTrack paper,
Table 1); DropTrack is the same network. The official DropTrack runner also fills ~6 GB of GPU
memory with a dummy tensor every frame "to improve gpu utility" (specs/vot.md A.0); we do not,
so the peak memory printed here is what the tracker needs.

Two numbers per device / precision:
    tracker  frames/s of `Tracker.track` on a synthetic 640x480 video: crop + normalise +
             forward + Hann window + decode + map back (frame decoding excluded, as the
             official runner's per-frame times)
    forward  model forward passes/s on fixed 192/384 inputs (batch 1)
Weights are random unless --ckpt is given: speed does not depend on them (the candidate
elimination keeps a fixed 576 -> 404 -> 283 -> 199 tokens).

Command (a few minutes on a CPU; the GPU rows appear when CUDA is present):
    python -m reproduce.bench_vot [--model base] [--frames 10] [--gpu-frames 200] [--amp] \
        [--threads N] [--ckpt CKPT] [--out runs/bench_vot.json]
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reproduce.timing import sync  # noqa: E402
from tasks import vot  # noqa: E402
from tasks import vot_data as vd  # noqa: E402



def bench_tracker(model, device, amp: bool, frames: int, warmup: int) -> dict:
    """Frames/s of the full tracker step on a synthetic video (decoding excluded)."""
    video, boxes, _, _ = vd.synthetic_sequence(("bench-vot", 0), T=frames + warmup + 1, size=(640, 480))
    tracker = vot.Tracker(model, device, amp)
    tracker.initialize(video[0], boxes[0].tolist())
    for t in range(1, warmup + 1):
        tracker.track(video[t])
    sync(device)
    start = time.perf_counter()
    for t in range(warmup + 1, warmup + 1 + frames):
        tracker.track(video[t])
    sync(device)
    return {"fps": frames / (time.perf_counter() - start)}


@torch.no_grad()
def bench_forward(model, device, amp: bool, frames: int, warmup: int) -> dict:
    t = model.track
    z = torch.randn(1, 3, t.template_size, t.template_size, device=device)
    x = torch.randn(1, 3, t.search_size, t.search_size, device=device)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=dtype, enabled=amp):
        for _ in range(warmup):
            model(z, x)
        sync(device)
        start = time.perf_counter()
        for _ in range(frames):
            model(z, x)
        sync(device)
    return {"fps": frames / (time.perf_counter() - start)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="DropTrack tracker FPS (base at 384)")
    parser.add_argument("--model", default="base", choices=sorted(vot.TRACK_PRESETS))
    parser.add_argument("--ckpt", default=None, help="a tracker checkpoint (default: random weights)")
    parser.add_argument("--frames", type=int, default=10, help="timed frames on CPU")
    parser.add_argument("--gpu-frames", type=int, default=200, help="timed frames on GPU")
    parser.add_argument("--amp", action="store_true", help="also time autocast (bf16 CPU, fp16 GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="runs/bench_vot.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = vot.load_tracker_checkpoint(args.ckpt) if args.ckpt else vot.build_model(args.model).eval()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    threads = torch.get_num_threads()
    for device in devices:
        model.to(device)
        n, warm = (args.frames, 2) if device.type == "cpu" else (args.gpu_frames, 20)
        for amp in ([False, True] if args.amp else [False]):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            row = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                   f"cpu ({threads} thread{'s' if threads > 1 else ''})",
                   "precision": (("bf16" if device.type == "cpu" else "fp16") + " autocast") if amp else "fp32",
                   "tracker_fps": bench_tracker(model, device, amp, n, warm)["fps"],
                   "forward_fps": bench_forward(model, device, amp, n, warm)["fps"], "frames": n}
            if device.type == "cuda":
                row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
            rows.append(row)
            print(f"  {row['device']:<28} {row['precision']:<15} tracker {row['tracker_fps']:7.2f} FPS   "
                  f"forward {row['forward_fps']:7.2f} FPS" + (f"   peak {row['peak_mem_mib']:.0f} MiB"
                                                              if "peak_mem_mib" in row else ""), flush=True)
    t = model.track
    print(f"\nDropTrack {args.model}: template {t.template_size}, search {t.search_size}, CE at {list(t.ce_loc)} "
          f"keep {t.ce_keep}")
    print("| device | precision | tracker FPS | forward FPS |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['tracker_fps']:.2f} | {r['forward_fps']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "track": vot.dataclasses.asdict(t), "rows": rows,
                               "torch": torch.__version__, "platform": platform.platform()}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
