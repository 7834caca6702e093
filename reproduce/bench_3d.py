"""Speed of Point-DropTrack (tasks/pointcloud.py): training samples/s and tracking FPS.

What the anchors report (their papers, one GPU): M2-Track 57 FPS (RTX 3090), BAT 57 FPS,
P2B 40 FPS (1080Ti), CXTrack 34 FPS. Our base model runs 12 ViT-B blocks on 2 x 128 point
tokens, plus a plain-torch farthest-point sampling loop (128 steps per frame, no pointnet2
kernels), so it is expected to be slower than those on the same GPU.

Rows per device (CPU always; CUDA when present) and precision (fp32; with --amp also bf16
autocast):
    data         training pairs/s of `TrainPairs` alone (augment + crops + resampling), 1 process
    train        optimisation steps/s x batch = samples/s of forward + loss + backward + AdamW
    track        frames/s of `PointTracker.track` on the synthetic test tracklets (crop,
                 resample, forward; scans are read before the clock starts)
    tokeniser %  share of one forward pass spent in FPS + kNN + mini-PointNet (same run)
The tokeniser share and data-to-train ratio are ratios measured side by side in one process, so
they hold on a shared machine where absolute numbers do not. Weights are random: speed does not
depend on them.

    python -m reproduce.bench_3d [--model base] [--batch 16] [--steps 3] [--frames 20] [--amp] \\
        [--out runs/bench/3d.json]
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reproduce.timing import seconds_per_call, sync  # noqa: E402
from tasks import pointcloud as P  # noqa: E402




def main(argv=None):
    parser = argparse.ArgumentParser(description="Point-DropTrack training samples/s and tracking FPS")
    parser.add_argument("--model", default="base", choices=sorted(P.POINT_PRESETS))
    parser.add_argument("--batch", type=int, default=16, help="training batch on CPU (GPU: 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps on CPU (GPU: 20)")
    parser.add_argument("--frames", type=int, default=20, help="timed tracking frames on CPU (GPU: 200)")
    parser.add_argument("--amp", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/bench/3d.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = P.POINT_PRESETS[args.model]
    tc = P.resolve_train_config("Car", args.model, {})
    with tempfile.TemporaryDirectory() as tmp:
        root = P.write_synthetic(tmp, seed=0, frames=(10, 12))
        train_ds = P.KittiTracking(root, "Car", "train")
        pairs = P.TrainPairs(P.TrackletCache(train_ds, tc["preload_offset"], None, verbose=False), cfg, tc)
        test_ds = P.KittiTracking(root, "Car", "test")
        scans = {(t.scene, f): test_ds.scan(t.scene, f) for t in test_ds.tracklets for f in t.frames}
    test_ds.scan = lambda scene, frame, line=None: scans[(scene, int(frame))]   # in memory

    n_data = 64
    t0 = time.perf_counter()
    items = [pairs[i % len(pairs)] for i in range(n_data)]
    data_rate = n_data / (time.perf_counter() - t0)
    print(f"data: {data_rate:.1f} training pairs/s (1 process, {cfg.num_points} points per frame)")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, threads = [], torch.get_num_threads()
    for device in devices:
        gpu = device.type == "cuda"
        batch, steps, frames = (64, 20, 200) if gpu else (args.batch, args.steps, args.frames)
        b = P.collate([items[i % n_data] for i in range(batch)])
        b = {k: v.to(device) for k, v in b.items()}
        for amp in ([False, True] if args.amp else [False]):
            torch.manual_seed(0)
            model = P.PointDropTrack(cfg).to(device)
            opt = torch.optim.AdamW(model.parameters(), 1e-4)
            ctx = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)  # noqa: E731

            def step():
                with ctx():
                    out = model(b["z"], b["x"])
                loss, _ = P.compute_loss(out, b, tc)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            train_rate = batch / seconds_per_call(step, steps, 1 if not gpu else 3, device)
            model.eval()
            z1, x1 = b["z"][:1], b["x"][:1]
            with torch.no_grad(), ctx():
                fwd = seconds_per_call(lambda: model(z1, x1), max(frames // 2, 3), 2, device)
                tok = seconds_per_call(lambda: (model.tokenizer(z1), model.tokenizer(x1)), max(frames // 2, 3), 2, device)
            tracker = P.PointTracker(model, device=device)
            done, seconds = 0, 0.0
            with ctx():
                tracker.track(test_ds, test_ds.tracklets[0])                   # warm-up
                for t in test_ds.tracklets * 100:
                    if done >= frames:
                        break
                    _, sec = tracker.track(test_ds, t)
                    done += len(sec) - 1
                    seconds += float(sec.sum())
            row = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu ({threads} threads)",
                   "precision": "bf16 autocast" if amp else "fp32", "batch": batch,
                   "train_samples_per_s": train_rate, "track_fps": done / seconds,
                   "forward_fps": 1 / fwd, "tokeniser_share": tok / fwd, "data_pairs_per_s": data_rate,
                   "data_to_train_ratio": data_rate / train_rate}
            if gpu:
                row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
            rows.append(row)
            print(f"  {row['device']:<26} {row['precision']:<14} train {train_rate:8.2f} samples/s (batch {batch})  "
                  f"track {row['track_fps']:7.2f} FPS  forward {row['forward_fps']:7.2f}/s  "
                  f"tokeniser {100 * row['tokeniser_share']:.0f}% of forward  data/train x{row['data_to_train_ratio']:.1f}",
                  flush=True)
    print(f"\nPoint-DropTrack {args.model}: {cfg.num_points} points, {cfg.groups} groups of {cfg.group_size} "
          f"per frame, ViT preset {cfg.encoder}")
    print("| device | precision | train samples/s | track FPS | tokeniser share | data/train |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['train_samples_per_s']:.2f} | {r['track_fps']:.2f} | "
              f"{100 * r['tokeniser_share']:.0f}% | {r['data_to_train_ratio']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "point": P.dataclasses.asdict(cfg), "rows": rows,
                               "torch": torch.__version__, "platform": platform.platform()}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
