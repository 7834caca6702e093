"""Speed of DropMAE pre-training: ASAD sampler, TwinMAE / DropMAE steps against the official
style, peak memory, data decoding per core, end-to-end `pretrain` with 0, 1, 2 loader workers.

Not a paper table: a benchmark of this implementation at the paper's ViT-B/16 shape (two 224x224
frames, 392 tokens, decoder 8 x 512 wide with 16 heads, mask ratio 0.75), on this machine.

Measured in one run (the five rows of issue 16, then data):
1. a training step (forward, backward, AdamW; bf16 autocast on a GPU) of
   - the official style: explicit softmax attention everywhere (timm's `Attention`) and, in
     the decoder, ASAD drawn by a Python loop over (sample, head) with one
     `torch.multinomial(W, K, replacement=False)` each (written here from the spec);
   - ours: SDPA everywhere, ASAD by `dropmae.asad_attention`;
   each with P 0.1 (DropMAE) and P 0 (TwinMAE); all four interleaved, medians; ASAD overhead
   = DropMAE step / TwinMAE step - 1;
2. the sampler per decoder layer (B x 16 heads x 392 x 392 logits, K = 7448 drops per
   (sample, head)): `asad_drop_indices` against the official-style loop, from the same logits;
   on a CPU where the fused kernel (asad_race.c) builds, also the torch ops path it replaces,
   and the kernel's time stage by stage;
3. the peak memory of a step over the memory held when it starts. GPU:
   torch.cuda.max_memory_allocated. CPU: the peak of the bytes held by PyTorch's CPU allocator
   during the step, from torch.profiler's memory events (profile_memory=True: every allocation
   and free, with the running total), minus the total at the start. Not the RSS of the process
   (the allocator keeps freed pages, and RSS peaks are per process, not per step);
4. data.py frame pairs per second per CPU core (decode both frames + both RandomResizedCrops,
   one process, one torch thread; per core = pairs per CPU second of the process) on generated
   K400-like 340x256 30 fps clips and 568x320 (320p) clips;
5. end-to-end `dropmae.py pretrain` samples/s (log.jsonl, median after warm-up) with 0, 1 and
   2 loader workers on the 340x256 clips, against the step alone and the decoding rate, and
   which side bounds it.
Batch: 8 on CPU, 64 (the paper's per-GPU batch) on a GPU. The load average is recorded;
timings taken while other jobs run are labelled "under load" (ratios measured side by side
still hold roughly; absolute times do not).

Targets (issue 16): ASAD overhead <= 10 % on a CPU; sampler >= 10x the official-style loop;
DropMAE peak memory <= TwinMAE + 10 %; ours >= 1.5x faster than the official style (DropMAE).

Commands:
    python -m reproduce.bench_pretrain --out runs/bench/pretrain.json          # ~25 min on 2 cores
    python -m reproduce.bench_pretrain --quick --out runs/bench/pretrain.json  # ~10 min
    # on a shared machine: one thread, CPU seconds of that thread (make ... CPU_TIME=1)
    OMP_NUM_THREADS=1 python -m reproduce.bench_pretrain --cpu-time --out runs/bench/pretrain.json
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
import types
from pathlib import Path

import torch

from data import bench_decode, write_synthetic_clips
import dropmae
from dropmae import (Attention, DropMAE, asad_drop_indices, asad_num_drops, asad_weights,
                     get_config, param_groups, race_threshold, race_top_k)

TARGET = {"cpu": 0.10, "cuda": 0.03}              # max ASAD overhead on a TwinMAE step
ROOT = Path(__file__).resolve().parents[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = {"clock": time.perf_counter}   # --cpu-time: time.thread_time (with one torch thread)


def timed(fn, device) -> float:
    """Seconds of one call of fn(): wall seconds, or with --cpu-time the CPU seconds of this
    (only) thread, which other processes sharing the cores do not inflate (cache and memory
    contention still do, a little)."""
    sync(device)
    t0 = CLOCK["clock"]()
    fn()
    sync(device)
    return CLOCK["clock"]() - t0


# --------------------------------------------------------------------------------------------
# The official style, from the spec (not the official code)

def official_style_asad(logits: torch.Tensor, p: float) -> torch.Tensor:
    """ASAD as the official code draws it: W per the spec, then a Python loop over (sample,
    head) with one `torch.multinomial(W.flatten(), K, replacement=False)` each.
    (B, H, L, L) logits -> (B, H, L, L) bool, True = dropped."""
    B, H, L, _ = logits.shape
    h = L // 2
    k = asad_num_drops(L, p)
    w = asad_weights(logits.detach().float().softmax(-1)).reshape(B * H, L * h)
    drop = torch.zeros(B * H, L, L, dtype=torch.bool, device=logits.device)
    for n, weights in enumerate(w):
        flat = torch.multinomial(weights, k, replacement=False)
        row, col = flat // h, flat % h
        drop[n, row, col + (row >= h) * h] = True
    return drop.view(B, H, L, L)


def official_style_attention(self, x, drop_p: float = 0.0, return_attn: bool = False):
    """timm's explicit attention (logits, softmax, times v), with the official ASAD loop."""
    B, N, C = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1)) * self.scale                             # (B, h, N, N)
    if drop_p > 0:
        attn = attn.masked_fill(official_style_asad(attn, drop_p), float("-inf"))
    attn = attn.softmax(dim=-1)
    out = self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    return (out, attn) if return_attn else out


def set_style(model, style: str):
    """'official': every Attention runs `official_style_attention`; 'ours': the model's own."""
    for m in model.modules():
        if isinstance(m, Attention):
            if style == "official":
                m.forward = types.MethodType(official_style_attention, m)
            elif "forward" in m.__dict__:
                del m.forward


# --------------------------------------------------------------------------------------------
# Peak memory of one step

def cpu_step_peak_bytes(fn) -> int:
    """Peak bytes held by PyTorch's CPU allocator during fn(), over those held at its start:
    the running total of torch.profiler's memory events (profile_memory=True)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        events = json.loads(Path(trace).read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    return max([0] + totals)


def step_peak_bytes(fn, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_step_peak_bytes(fn)


# --------------------------------------------------------------------------------------------
# 1-3: steps, sampler, memory

VARIANTS = {"official DropMAE (P 0.1)": ("official", 0.1), "official TwinMAE (P 0)": ("official", 0.0),
            "ours DropMAE (P 0.1)": ("ours", 0.1), "ours TwinMAE (P 0)": ("ours", 0.0)}


def bench_steps(batch: int, device, repeats: int) -> dict:
    """The four variants of VARIANTS on one ViT-B model and optimizer, interleaved; medians."""
    torch.manual_seed(0)
    model = DropMAE(get_config("base")).to(device).train()
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

    times = {name: [] for name in VARIANTS}
    memory = {}
    for name, (style, p) in VARIANTS.items():                             # warm-up, memory
        set_style(model, style)
        model.cfg.P = p
        step()
        memory[name] = step_peak_bytes(step, device)
    for _ in range(repeats):
        for name, (style, p) in VARIANTS.items():
            set_style(model, style)
            model.cfg.P = p
            times[name].append(timed(step, device))
    set_style(model, "ours")
    out = {name: {"step_s": statistics.median(times[name]), "all_s": times[name],
                  "samples_per_s": batch / statistics.median(times[name]),
                  "peak_memory_bytes": memory[name]} for name in VARIANTS}
    for style in ("official", "ours"):
        drop, twin = out[f"{style} DropMAE (P 0.1)"], out[f"{style} TwinMAE (P 0)"]
        out[f"{style} asad_overhead"] = drop["step_s"] / twin["step_s"] - 1.0
        out[f"{style} memory_ratio"] = drop["peak_memory_bytes"] / max(1, twin["peak_memory_bytes"])
    out["speedup_dropmae"] = out["official DropMAE (P 0.1)"]["step_s"] / out["ours DropMAE (P 0.1)"]["step_s"]
    out["memory_kind"] = ("cuda max_memory_allocated - allocated at start" if device.type == "cuda"
                          else "CPU allocator peak over start (torch.profiler memory events)")
    return out


KERNEL_STAGES = ["weights W (softmax, f_tem, r)", "threshold", "random bytes",
                 "candidates (byte test, compaction)", "keys (uniform, log, divide)", "exact selection"]


def bench_sampler(batch: int, device, repeats: int) -> dict:
    """Seconds per decoder layer (batch, 16 heads, 392, 392) of the sampler alone, from logits:
    ours vs the official-style loop, interleaved; medians. On a CPU with the fused kernel
    (asad_race.c) also our torch ops path (the fallback without a C compiler). And where our
    time goes, stage by stage, on one sample (its blocks hold one sample on a CPU) times the
    batch, medians: with the kernel, its cumulative stops after each stage (`upto`), differenced;
    without, each torch stage alone (softmax, W, threshold, race)."""
    torch.manual_seed(0)
    logits = torch.randn(batch, 16, 392, 392, device=device) * 2.0
    k = asad_num_drops(392, 0.1)
    one = logits[:1].reshape(16, 392, 392)
    kernel = dropmae._race_kernel() if device.type == "cpu" and dropmae.RACE_KERNEL else None
    if kernel is not None:
        stages = {name: (lambda u=u: dropmae._kernel_drops(kernel, one, k, 1, upto=u))
                  for u, name in enumerate(KERNEL_STAGES, 1)}
    else:
        probs = one.softmax(-1)
        w = asad_weights(probs).reshape(16, -1)
        t = race_threshold(w, k)
        stages = {"softmax": lambda: one.softmax(-1), "weights W": lambda: asad_weights(probs),
                  "threshold": lambda: race_threshold(w, k), "race (levels, candidates, top-k)":
                  lambda: race_top_k(w, k, t=t)}

    def torch_path():
        dropmae.RACE_KERNEL = False
        try:
            asad_drop_indices(logits, 0.1)
        finally:
            dropmae.RACE_KERNEL = True
    ours, official, fallback, parts = [], [], [], {name: [] for name in stages}
    asad_drop_indices(logits, 0.1)                                         # warm-up
    for _ in range(repeats):
        ours.append(timed(lambda: asad_drop_indices(logits, 0.1), device))
        official.append(timed(lambda: official_style_asad(logits, 0.1), device))
        ours.append(timed(lambda: asad_drop_indices(logits, 0.1), device))
        if kernel is not None:
            fallback.append(timed(torch_path, device))
        for name, fn in stages.items():
            parts[name].append(timed(fn, device))
    stage_s = {name: batch * statistics.median(x) for name, x in parts.items()}
    if kernel is not None:                                                 # cumulative -> each
        cum = list(stage_s.values())
        stage_s = {name: max(0.0, c - (cum[i - 1] if i else 0.0))
                   for i, (name, c) in enumerate(zip(stage_s, cum))}
    out = {"ours_s": statistics.median(ours), "official_style_s": statistics.median(official),
           "speedup": statistics.median(official) / statistics.median(ours),
           "path": "fused CPU kernel (asad_race.c)" if kernel is not None else "torch ops",
           "stages_s": stage_s, "all_ours_s": ours, "all_official_s": official}
    if fallback:
        out.update(torch_path_s=statistics.median(fallback), all_torch_path_s=fallback,
                   torch_path_speedup=statistics.median(official) / statistics.median(fallback))
    return out


# --------------------------------------------------------------------------------------------
# 4-5: data and end to end

CLIPS = {"K400-like 340x256": (340, 256), "320p 568x320": (568, 320)}


def make_clips(root: str, quick: bool) -> dict:
    """Generated clips per setting of CLIPS (30 fps; 4 x 10 s, --quick 2 x 5 s): folders."""
    folders = {}
    for name, size in CLIPS.items():
        folder = os.path.join(root, name.split()[0])
        write_synthetic_clips(folder, num_classes=2, per_class=1 if quick else 2,
                              seconds=5.0 if quick else 10.0, fps=30, size=size)
        folders[name] = folder
    return folders


def bench_decode_per_core(folder: str, n_pairs: int) -> dict:
    """Frame pairs/s of one process with one torch thread, and pairs per CPU second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench_decode(folder, 4)                                             # index, warm cache
        cpu0 = time.process_time()
        rate = bench_decode(folder, n_pairs)
        cpu = time.process_time() - cpu0
    finally:
        torch.set_num_threads(threads)
    return {"pairs_per_s": rate, "pairs_per_cpu_s": n_pairs / cpu}


def bench_end_to_end(model: str, batch: int, steps: int, workers: list[int], quick: bool) -> dict:
    """`dropmae.py pretrain` (P 0.1, CPU) on 2 x batch generated K400-like 340x256 30 fps clips
    (2 s, or 4 s without --quick): median samples/s of log.jsonl after the first two steps, per
    number of loader workers; and the step alone on random tensors."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "clips")
        write_synthetic_clips(folder, num_classes=2, per_class=batch, seconds=2.0 if quick else 4.0,
                              fps=30, size=CLIPS["K400-like 340x256"])
        for nw in workers:
            run = os.path.join(tmp, f"w{nw}")
            cmd = [sys.executable, str(ROOT / "dropmae.py"), "pretrain", "--model", model, "--data", "k400",
                   "--data-path", folder, "--batch-size", str(batch), "--epochs", "1000",
                   "--warmup-epochs", "1", "--lr", "1e-4", "--num-workers", str(nw), "--cpu",
                   "--max-steps", str(steps), "--log-every", "1", "--save-every", "1000",
                   "--output", run]
            done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode:
                raise RuntimeError(f"end-to-end run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
            rows = [json.loads(line) for line in Path(run, "log.jsonl").read_text().splitlines()]
            rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][2:]
            out[f"{nw} workers"] = statistics.median(rates) if rates else None
    torch.manual_seed(0)
    net = DropMAE(get_config(model)).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    size = net.cfg.img_size
    x, z = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)

    def step():
        net(x, z, 0.75)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    wall = []
    for _ in range(3):                                  # wall seconds, as the runs' samples/s
        t0 = time.perf_counter()
        step()
        wall.append(time.perf_counter() - t0)
    out["step alone"] = batch / statistics.median(wall)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench/pretrain.json", help="JSON result file")
    parser.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on GPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--pairs", type=int, default=None, help="decode pairs (default 200; quick 40)")
    parser.add_argument("--e2e-model", default=None,
                        help="model of the end-to-end runs (default base; --quick tiny)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter clips, tiny e2e")
    parser.add_argument("--skip", nargs="*", default=[], choices=["steps", "sampler", "data", "e2e"],
                        help="leave parts out")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even with a GPU")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU only: one torch thread, and time steps and sampler in CPU seconds "
                             "of that thread instead of wall seconds (for a machine shared with "
                             "other jobs, where wall-clock ratios are noise)")
    args = parser.parse_args(argv)
    if args.cpu_time:
        torch.set_num_threads(1)
        CLOCK["clock"] = time.thread_time

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    batch = args.batch or (64 if device.type == "cuda" else 8)
    repeats = args.repeats or (2 if args.quick else 5)
    pairs = args.pairs or (40 if args.quick else 200)
    e2e_model = args.e2e_model or ("tiny" if args.quick else "base")
    load_before = os.getloadavg()
    hardware = (torch.cuda.get_device_name(0) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                     f"{torch.get_num_threads()} torch threads")
    if args.cpu_time and device.type != "cpu":
        parser.error("--cpu-time times the CPU; add --cpu on a GPU machine")
    clock = "CPU seconds of one thread" if args.cpu_time else "wall seconds"
    print(f"bench_pretrain: ViT-B/16 two-frame MAE, batch {batch}, device {device} ({hardware}), "
          f"{repeats} repeats, timed in {clock}; load average {load_before[0]:.2f}", flush=True)

    t0 = time.perf_counter()
    result = {"device": str(device), "hardware": hardware, "batch": batch, "repeats": repeats, "clock": clock,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    lines = []
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    if "steps" not in args.skip:
        steps = result["steps"] = bench_steps(batch, device, repeats)
        target = TARGET[device.type]
        lines += [f"training step (ViT-B, B={batch})      median s   samples/s   peak memory increase ({steps['memory_kind']})"]
        for name in VARIANTS:
            r = steps[name]
            lines.append(f"  {name:<28s} {r['step_s']:8.3f}   {r['samples_per_s']:9.2f}   {gib(r['peak_memory_bytes'])}")
        ov = steps["ours asad_overhead"]
        lines += [f"  ASAD overhead over TwinMAE: official style {100 * steps['official asad_overhead']:+.1f} %, "
                  f"ours {100 * ov:+.1f} % (target <= {100 * target:.0f} %: {'met' if ov <= target else 'NOT met'})",
                  f"  DropMAE step, ours vs official style: {steps['speedup_dropmae']:.2f}x faster "
                  f"(target >= 1.5x: {'met' if steps['speedup_dropmae'] >= 1.5 else 'NOT met'})",
                  f"  peak memory DropMAE / TwinMAE: ours {steps['ours memory_ratio']:.3f} "
                  f"(target <= 1.10: {'met' if steps['ours memory_ratio'] <= 1.10 else 'NOT met'}), "
                  f"official style {steps['official memory_ratio']:.3f}"]
        result["target_met"] = {"overhead": ov <= target, "memory": steps["ours memory_ratio"] <= 1.10,
                                "speedup": steps["speedup_dropmae"] >= 1.5}
        print("\n".join(lines), flush=True)
    if "sampler" not in args.skip:
        s = result["sampler"] = bench_sampler(batch, device, repeats)
        new = [f"ASAD sampler per decoder layer (B={batch}, 16 heads, 392x392, K=7448), median s",
               f"  official-style loop (multinomial per sample, head)  {s['official_style_s']:.4f}",
               f"  ours (asad_drop_indices, {s['path']})  {s['ours_s']:.4f}"
               f"   {s['speedup']:.1f}x (target >= 10x: {'met' if s['speedup'] >= 10 else 'NOT met'})"]
        if "torch_path_s" in s:
            new.append(f"  ours, torch ops path (the fallback without a C compiler)  {s['torch_path_s']:.4f}"
                       f"   {s['torch_path_speedup']:.1f}x")
        new.append("  where ours goes (s per layer, on one sample x B): " + ", ".join(
            f"{name} {sec:.4f}" for name, sec in s["stages_s"].items()))
        lines += new
        result.setdefault("target_met", {})["sampler"] = s["speedup"] >= 10
        print("\n".join(new), flush=True)
    if "data" not in args.skip or "e2e" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            folders = make_clips(tmp, args.quick)
            if "data" not in args.skip:
                dec = result["decode"] = {name: bench_decode_per_core(f, pairs) for name, f in folders.items()}
                lines.append("data.py frame pairs (decode 2 frames + 2 crops, 1 process, 1 torch thread)")
                lines += [f"  {name:<22s} {r['pairs_per_s']:7.1f} pairs/s   {r['pairs_per_cpu_s']:7.1f} per CPU second"
                          for name, r in dec.items()]
                print("\n".join(lines[-3:]), flush=True)
            if "e2e" not in args.skip:
                e2e_batch = batch
                e2e = result["end_to_end"] = bench_end_to_end(
                    e2e_model, e2e_batch, 6 if args.quick else 8, [0, 1, 2], args.quick)
                rate_data = result.get("decode", {}).get("K400-like 340x256", {}).get("pairs_per_cpu_s")
                best = max(v for k, v in e2e.items() if k != "step alone" and v)
                bound = "step" if best >= 0.8 * e2e["step alone"] else "data"
                e2e["bound"] = bound
                lines.append(f"end-to-end pretrain ({e2e_model}, batch {e2e_batch}, P 0.1, CPU), samples/s "
                             f"(median of log.jsonl after 2 warm-up steps)")
                lines += [f"  {k:<12s} {v:8.2f}" for k, v in e2e.items() if k != "bound" and v is not None]
                lines.append(f"  bound by the {bound}"
                             + (f" (decoding {rate_data:.1f} pairs per CPU second)" if rate_data else ""))
                print("\n".join(lines[-6:]), flush=True)
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)
    lines.append(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} cores"
                 + ("  (measured under load: timings are noisy)" if busy else ""))
    print(lines[-1])
    result.update(load_average={"before": load_before, "after": load_after, "under_load": busy},
                  wall_s=time.perf_counter() - t0, table="\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
