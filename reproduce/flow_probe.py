"""Tiny flow recipe probe: does the `tiny` DropMAE-Flow model learn flow on the synthetic world?

The tiny table (`make table-flow`) reports its numbers on the synthetic val splits (Chairs val,
Sintel, KITTI). A recipe must not be chosen on those, so this probe trains on worlds drawn fresh
from `data.World` (seed stream 1,000,000 + i, a new world for every sample, so there is nothing
to memorise) and scores a held-out set of training-distribution worlds (seed stream
10,000,000 + k; the table's synthetic files use seeds below 20,000 for seed 0). It prints the
held-out EPE beside the zero-flow EPE of the same pairs, the spread of the per-pair mean
predicted flow against that of the GT (a model that ignores frame 2 predicts the same mean
flow for every pair) and the correlation of the two.

Model, loss and optimiser are tasks/flow.py's (the `tiny` preset, the bounded Laplacian, CroCo's
AdamW groups, the warm-up + cosine schedule); the data path is simpler than the table's (a
random crop and a horizontal flip, no RAFT augmentation), so that only the learning problem
is measured.

`--control brightness` replaces the motion by a trivially visible cross-frame signal: frame 2
is frame 1 with u and v (N(0, 2) per pair) added as an offset of `--control-gain` grey levels
per pixel to its red and green channels, and the target flow is (u, v) everywhere. The tiny model learns
that within ~100 steps, so the two-frame plumbing (frame 2 reaches the frame-1 tokens and the
head) works; what it does not learn at this budget without `--corr-match` is a shift.

    OMP_NUM_THREADS=1 python -m reproduce.flow_probe --steps 600            # scratch
    OMP_NUM_THREADS=1 python -m reproduce.flow_probe --steps 400 --corr-radius 1 --corr-match
                                                                # the tiny table's model
    OMP_NUM_THREADS=1 python -m reproduce.flow_probe --init BACKBONE.pth    # a pre-trained backbone
    OMP_NUM_THREADS=1 python -m reproduce.flow_probe --control brightness --steps 200

Measured (2026-12-02, one thread on the shared 2-core machine; tiny scale, not comparable with
anything published): see README, "Optical flow", the tiny probe.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import World  # noqa: E402
from tasks import flow  # noqa: E402

TRAIN_SEEDS = 1_000_000          # fresh training worlds: TRAIN_SEEDS + sample number
HELD_OUT_SEEDS = 10_000_000      # held-out worlds: HELD_OUT_SEEDS + k


def make_pair(seed: int, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(img1, img2, flow (H, W, 2)) of one world; with --control brightness, the offset pair."""
    w = World(seed, size=tuple(args.size), num_frames=2, speed=args.speed, pan_speed=args.pan_speed,
              max_freq=args.max_freq, num_objects=None if args.objects < 0 else args.objects)
    img1 = w.frame(0)
    if args.control == "brightness":
        u, v = np.random.default_rng(seed).normal(0, 2, 2)
        shift = args.control_gain * np.array([u, v, 0.0])
        img2 = np.clip(np.round(img1 + shift), 0, 255).astype(np.uint8)
        return img1, img2, np.broadcast_to(np.float32([u, v]), img1.shape[:2] + (2,)).copy()
    return img1, w.frame(1), w.flow(0, 1)[0].astype(np.float32)


def crop_tensors(img1, img2, f, y: int, x: int, c: int):
    sl = (slice(y, y + c), slice(x, x + c))
    return (flow.to_tensor(img1[sl]), flow.to_tensor(img2[sl]),
            torch.from_numpy(np.ascontiguousarray(f[sl])).permute(2, 0, 1))


def held_out(args):
    """Centre crops of the held-out worlds: (img1, img2, flow) batched."""
    W, H = args.size
    c = args.crop
    items = [crop_tensors(*make_pair(HELD_OUT_SEEDS + k, args), (H - c) // 2, (W - c) // 2, c)
             for k in range(args.held_out)]
    return [torch.stack([t[i] for t in items]) for i in range(3)]


@torch.no_grad()
def score(model, x1, x2, gt) -> dict:
    model.eval()
    out = torch.cat([model(x1[i:i + 16], x2[i:i + 16]) for i in range(0, len(x1), 16)])
    model.train()
    mean_pred, mean_gt = out[:, :2].mean((2, 3)), gt.mean((2, 3))
    corr = [float(np.corrcoef(mean_pred[:, i].numpy(), mean_gt[:, i].numpy())[0, 1]) for i in (0, 1)]
    return {"epe": (out[:, :2] - gt).norm(dim=1).mean().item(), "zero_epe": gt.norm(dim=1).mean().item(),
            "mean_flow_std_pred": mean_pred.std(0).mean().item(), "mean_flow_std_gt": mean_gt.std(0).mean().item(),
            "mean_flow_corr": float(np.nanmean(corr)),
            "laplacian_scale": (3.75 * torch.sigmoid(out[:, 2]) + 0.25).mean().item()}


def run(args) -> list[dict]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    W, H = args.size
    c = args.crop
    x1v, x2v, gtv = held_out(args)
    model = flow.build_model("tiny", crop=(c, c), corr_radius=args.corr_radius, corr_groups=args.corr_groups,
                             corr_match=args.corr_match)
    if args.init:
        flow.load_backbone(args.init, model, verbose=False)
    optimizer = torch.optim.AdamW(flow.param_groups(model, args.wd, verbose=False), lr=args.lr,
                                  betas=flow.OPTIM["betas"], eps=1e-8)
    records, tic = [], time.time()
    for step in range(args.steps):
        for g in optimizer.param_groups:
            g["lr"] = flow.lr_at_step(step, args.lr, args.warmup, args.steps)
        batch = []
        for b in range(args.batch):
            img1, img2, f = make_pair(TRAIN_SEEDS + step * args.batch + b, args)
            if args.control != "brightness" and rng.random() < 0.5:       # h-flip negates u
                img1, img2, f = img1[:, ::-1], img2[:, ::-1], f[:, ::-1] * np.float32([-1, 1])
            batch.append(crop_tensors(img1, img2, f, int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1)), c))
        x1, x2, gt = (torch.stack([t[i] for t in batch]) for i in range(3))
        pred = model(x1, x2)
        valid = torch.ones(gt.shape[0], c, c, dtype=torch.bool)
        loss = (flow.laplacian_loss(pred, gt, valid) if args.loss == "laplacian"
                else (pred[:, :2] - gt).abs().sum(1).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            rec = {"step": step + 1, "loss": loss.item(), **score(model, x1v, x2v, gtv),
                   "seconds": time.time() - tic}
            records.append(rec)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()})
                  + "  [tiny scale]", flush=True)
    return records


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--crop", type=int, default=64, help="square crop, a multiple of 32")
    p.add_argument("--size", type=int, nargs=2, default=list(flow.SYNTH_SIZE), metavar=("W", "H"))
    p.add_argument("--speed", type=float, default=flow.WORLD_KNOBS["speed"])
    p.add_argument("--pan-speed", type=float, default=flow.WORLD_KNOBS["pan_speed"])
    p.add_argument("--max-freq", type=float, default=1 / 8)
    p.add_argument("--objects", type=int, default=-1, help="sprites per world (-1: the world's 2..5)")
    p.add_argument("--loss", choices=("laplacian", "l1"), default="laplacian")
    p.add_argument("--control", choices=("none", "brightness"), default="none")
    p.add_argument("--control-gain", type=float, default=8.0, help="grey levels per pixel of flow")
    p.add_argument("--corr-radius", type=int, default=0, help="local token correlation radius (0: off)")
    p.add_argument("--corr-groups", type=int, default=1)
    p.add_argument("--corr-match", action="store_true", help="add its soft-argmax flow (FlowConfig)")
    p.add_argument("--init", default="", help="a backbone file (DropMAE / TwinMAE / MAE / ours)")
    p.add_argument("--held-out", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the records as JSON here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    records = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "records": records}, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
