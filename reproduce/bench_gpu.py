"""GPU benchmark of pre-training and of the two downstream models: what a lent GPU should measure.

Not a paper table. Refuses (exit status 2, with a message) where no CUDA device is present; safe
on any CUDA machine (it only reads and writes a temporary folder and --out). Measured:
1. pre-training at the paper's per-GPU batch 64, bf16 autocast, ViT-B/16 two frames: samples/s
   and model FLOPs utilisation (MFU: `mae_train_flops` per step / step time / the GPU's dense
   bf16 peak, from PEAK_BF16_TFLOPS or --peak-tflops) of TwinMAE (P 0) and DropMAE (P 0.1),
   interleaved, medians; the ASAD overhead (paper: 1.9 %, 21.1 h vs 20.7 h on 64 A100s);
   peak GPU memory of a step (torch.cuda.max_memory_allocated);
2. the SDPA backend each attention runs on (flash / memory-efficient / cudnn / math), for the
   encoder and for the decoder with and without ASAD, read from the profiler's op names;
3. optionally (--compile) the same steps through torch.compile;
4. DropTrack-384 (OSTrack-384 with candidate elimination, tasks/vot.py): forward passes/s in
   fp32 and bf16, and the full tracker's frames/s (fp32 and its fp16 autocast); OSTrack-384
   reports 58.1 FPS on an RTX 2080 Ti;
5. DropSeg (tasks/vos.py) frames/s at 480p (854x480, one object), fp32 and bf16;
6. end-to-end `dropmae.py pretrain` (base, batch 64, P 0.1) on generated K400-like 340x256
   clips with one loader worker per spare CPU core, against the step alone, and which side
   (data or step) bounds it. The official pipeline ran at about 20 samples/s per GPU (400 epochs
   x 237,568 clips in 21.1 h on 64 A100s); the goal is at least 10x that.
Prints a table and writes JSON.

Command (about 10 minutes on one A100/H100):
    python -m reproduce.bench_gpu --out runs/bench/gpu.json [--compile] [--skip e2e ...]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dropmae import Config, DropMAE, get_config, param_groups  # noqa: E402

PEAK_BF16_TFLOPS = {"A100": 312, "H100": 989, "H200": 989, "H800": 989, "A800": 312, "L40S": 362,
                    "L40": 181, "A10G": 125, "A10": 125, "L4": 121, "RTX 4090": 165, "RTX 3090": 71}
PAPER = {"asad_overhead": 21.1 / 20.7 - 1, "official_samples_per_s_per_gpu": 400 * 237568 / (21.1 * 3600) / 64}


def mae_forward_flops(cfg: Config, batch: int, mask_ratio: float = 0.75, frames: int = 2) -> int:
    """Model FLOPs of one forward of the two-frame MAE (2 per multiply-add; matmuls, the patch
    convolution and the attention products; norms, softmax and ASAD's sampling not counted):
      patch embedding  2 L (3 p^2) D over all L = frames * N tokens
      encoder block    T (24 D^2 + 4 T D) on the T = int(L (1 - mask_ratio)) kept tokens
                       (qkv 6 D^2, proj 2 D^2, MLP 16 D^2 per token; q k^T and attn v 2 T D each)
      decoder embed    2 T D d;  decoder block  L (24 d^2 + 4 L d);  prediction 2 L d (p^2 3)
    Per sample, times batch."""
    n = (cfg.img_size // cfg.patch_size) ** 2
    L = frames * n
    T = int(L * (1 - mask_ratio))
    D, d, pp3 = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_size ** 2 * 3
    r = cfg.mlp_ratio
    block = lambda tokens, width: tokens * (2 * (3 + 1 + 2 * r) * width ** 2 + 4 * tokens * width)
    per_sample = (2 * L * pp3 * D + cfg.depth * block(T, D) + 2 * T * D * d
                  + cfg.decoder_depth * block(L, d) + 2 * L * d * pp3)
    return int(batch * per_sample)


def mae_train_flops(cfg: Config, batch: int, mask_ratio: float = 0.75, frames: int = 2) -> int:
    """Forward + backward: 3x the forward (the backward costs two matmuls per forward one)."""
    return 3 * mae_forward_flops(cfg, batch, mask_ratio, frames)


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by (a substring of) its name; None if unknown."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def require_cuda() -> str | None:
    """None when a CUDA device is usable, else the reason."""
    if not torch.cuda.is_available():
        return ("bench_gpu: no CUDA device (torch.cuda.is_available() is False; torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine; "
                "the CPU benchmarks are `make bench`.")
    return None


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


SDPA_OPS = {"flash": "_scaled_dot_product_flash_attention", "memory-efficient": "_scaled_dot_product_efficient_attention",
            "cudnn": "_scaled_dot_product_cudnn_attention", "math": "_scaled_dot_product_attention_math"}


def backends(fn) -> list[str]:
    """The SDPA backends fn() runs on, from the profiler's aten op names."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    found = [b for b, op in SDPA_OPS.items() if any(op in n for n in names)]
    return found or ["none (no SDPA op)"]


def bench_pretrain_steps(batch: int, repeats: int, compile_: bool) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda")
    cfg = get_config("base")
    model = DropMAE(cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05, verbose=False), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x, z = (torch.randn(batch, 3, 224, 224, device=device) for _ in range(2))
    net = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(x, z, 0.75)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {"TwinMAE (P 0)": 0.0, "DropMAE (P 0.1)": 0.1}
    times, memory = {v: [] for v in variants}, {}
    for name, p in variants.items():
        model.cfg.P = p
        for _ in range(3):
            step()                                                            # warm-up / compile
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        memory[name] = torch.cuda.max_memory_allocated() - base
    for _ in range(repeats):
        for name, p in variants.items():
            model.cfg.P = p
            times[name].append(timed(step))
    flops = mae_train_flops(cfg, batch)
    peak = peak_tflops(torch.cuda.get_device_name(0))
    out = {}
    for name in variants:
        t = statistics.median(times[name])
        out[name] = {"step_s": t, "samples_per_s": batch / t, "peak_memory_bytes": memory[name],
                     "model_tflops_per_s": flops / t / 1e12,
                     "mfu": None if peak is None else flops / t / 1e12 / peak}
    out["asad_overhead"] = out["DropMAE (P 0.1)"]["step_s"] / out["TwinMAE (P 0)"]["step_s"] - 1
    if not compile_:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            latent, _, ids = model.forward_encoder(x, z, 0.75)
            out["backend"] = {"encoder": backends(lambda: model.forward_encoder(x, z, 0.75))}
            model.cfg.P = 0.0
            out["backend"]["decoder, P 0"] = backends(lambda: model.forward_decoder(latent, ids))
            model.cfg.P = 0.1                                                 # training mode: ASAD on
            out["backend"]["decoder, ASAD"] = backends(lambda: model.forward_decoder(latent, ids))
    out["train_flops_per_step"] = flops
    out["peak_bf16_tflops"] = peak
    return out


def bench_track(frames: int) -> dict:
    from reproduce.bench_vot import bench_tracker
    from tasks import vot
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = vot.build_model("base").eval().to(device)
    t = model.track
    zt = torch.randn(1, 3, t.template_size, t.template_size, device=device)
    xs = torch.randn(1, 3, t.search_size, t.search_size, device=device)
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(20):
                model(zt, xs)
            out[f"forward {name}"] = frames / timed(lambda: [model(zt, xs) for _ in range(frames)])
    out["tracker fp32"] = bench_tracker(model, device, False, frames, 20)["fps"]
    out["tracker fp16 autocast"] = bench_tracker(model, device, True, frames, 20)["fps"]
    return out


def bench_seg(frames: int) -> dict:
    from tasks import vos
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = vos.build_model("base").eval().to(device)
    ref, query = (torch.randn(1, 3, 480, 854, device=device) for _ in range(2))
    masks = (torch.rand(1, 1, 480, 854, device=device) > 0.5).float()
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(5):
                vos.segment_objects(net, ref, masks, query)
            out[f"480p {name}"] = frames / timed(lambda: [vos.segment_objects(net, ref, masks, query)
                                                          for _ in range(frames)])
    return out


def bench_end_to_end(batch: int, steps: int, step_samples_per_s: float | None) -> dict:
    from data import write_synthetic_clips
    workers = max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        clips = os.path.join(tmp, "clips")
        write_synthetic_clips(clips, num_classes=4, per_class=4, seconds=10.0, fps=30, size=(340, 256))
        run = os.path.join(tmp, "run")
        cmd = [sys.executable, str(ROOT / "dropmae.py"), "pretrain", "--model", "base", "--data", "k400",
               "--data-path", clips, "--batch-size", str(batch), "--epochs", "1000", "--warmup-epochs", "1",
               "--num-workers", str(workers), "--max-steps", str(steps), "--log-every", "1",
               "--save-every", "1000", "--output", run]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in Path(run, "log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][3:]
    data_time = [r["data_time_s"] for r in rows if "data_time_s" in r][3:]
    rate = statistics.median(rates) if rates else None
    bound = None
    if rate and step_samples_per_s:
        bound = "step" if rate >= 0.8 * step_samples_per_s else "data"
    return {"loader_workers": workers, "samples_per_s": rate, "data_wait_s_per_step": statistics.median(data_time)
            if data_time else None, "step_alone_samples_per_s": step_samples_per_s, "bound": bound,
            "vs_official_pipeline": None if not rate else rate / PAPER["official_samples_per_s_per_gpu"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench/gpu.json")
    parser.add_argument("--batch", type=int, default=64, help="per GPU (the paper's 64)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--frames", type=int, default=200, help="timed frames of the tracker / VOS")
    parser.add_argument("--e2e-steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for the MFU")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pretrain", "track", "seg", "e2e"])
    args = parser.parse_args(argv)
    reason = require_cuda()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    if args.peak_tflops:
        PEAK_BF16_TFLOPS[torch.cuda.get_device_name(0)] = args.peak_tflops
    torch.backends.cuda.matmul.allow_tf32 = False                             # fp32 means fp32
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cpu_cores": os.cpu_count(), "platform": platform.platform(), "batch": args.batch, "paper": PAPER}
    lines = [f"bench_gpu: {result['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}, batch {args.batch}"]
    print(lines[0], flush=True)
    if "pretrain" not in args.skip:
        runs = {"eager": bench_pretrain_steps(args.batch, args.repeats, False)}
        if args.compile:
            try:
                runs["compile"] = bench_pretrain_steps(args.batch, args.repeats, True)
            except Exception as e:                                            # noqa: BLE001
                result["compile_error"] = f"{type(e).__name__}: {e}"[:2000]
                lines.append(f"  torch.compile failed: {result['compile_error'][:200]}")
        result["pretrain"] = runs
        lines.append("pre-training step (ViT-B/16, bf16)   samples/s   MFU     peak memory")
        for mode, r in runs.items():
            for name in ("TwinMAE (P 0)", "DropMAE (P 0.1)"):
                v = r[name]
                mfu = "n/a" if v["mfu"] is None else f"{100 * v['mfu']:.1f} %"
                lines.append(f"  {mode:<7s} {name:<18s} {v['samples_per_s']:9.1f}   {mfu:>7s}   "
                             f"{v['peak_memory_bytes'] / 2**30:.2f} GiB")
            lines.append(f"  {mode:<7s} ASAD overhead {100 * r['asad_overhead']:+.1f} % (paper {100 * PAPER['asad_overhead']:.1f} %)")
        lines += [f"  SDPA backend, {k}: {', '.join(v)}" for k, v in runs["eager"]["backend"].items()]
        print("\n".join(lines[1:]), flush=True)
    if "track" not in args.skip:
        result["track"] = bench_track(args.frames)
        lines.append("DropTrack-384 frames/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["track"].items()))
        print(lines[-1], flush=True)
    if "seg" not in args.skip:
        result["seg"] = bench_seg(max(10, args.frames // 4))
        lines.append("DropSeg frames/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seg"].items()))
        print(lines[-1], flush=True)
    if "e2e" not in args.skip:
        step_rate = result.get("pretrain", {}).get("eager", {}).get("DropMAE (P 0.1)", {}).get("samples_per_s")
        e = result["end_to_end"] = bench_end_to_end(args.batch, args.e2e_steps, step_rate)
        lines.append(f"end-to-end pretrain, {e['loader_workers']} loader workers: {e['samples_per_s']} samples/s "
                     f"(step alone {step_rate}); bound by the {e['bound']}; "
                     f"vs the official pipeline's ~{PAPER['official_samples_per_s_per_gpu']:.0f}/s: "
                     f"{e['vs_official_pipeline']}")
        print(lines[-1], flush=True)
    result["table"] = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
