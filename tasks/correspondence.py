"""Label propagation on DAVIS with a frozen pre-trained encoder (self-supervised correspondence).

No training: every frame is encoded alone by the DropMAE encoder, and the first frame's object
labels are carried forward through feature affinities, then scored with the DAVIS-2017 evaluator
(eval/davis.py). The paper's extended version reports this task but gives no protocol settings
(specs/paper.md), so the defaults are DINO's protocol for ViTs (specs/metrics-dense.md section 5;
github facebookresearch/dino, `eval_video_segmentation.py`):

- frames resized so the shorter side is 480 and the longer side rounded down to a multiple of
  64 (480x854 -> 480x832; bilinear), ImageNet-normalised;
- features: the last block's tokens after the final norm, one per 16x16 patch (30x52 at 480p),
  from a single-frame forward, L2-normalised over channels;
- context for frame t: frame 0 with its ground-truth labels plus the 7 preceding frames with
  their propagated soft labels (predictions fed back, before upsampling);
- affinity exp(<f_t, f_s> / 0.1) restricted to a square neighbourhood |di|, |dj| <= 12 feature
  cells (also for frame 0); per target token the 5 largest affinities over all context tokens
  are kept (ties at the 5th kept), normalised to sum 1, and the context labels averaged with
  them;
- frame-0 labels: the annotation nearest-resized to the token grid, one-hot (void 255 counts as
  background); outputs: bilinear x16, per-channel min-max normalisation (channels whose max is 0
  untouched), argmax, nearest resize to the annotation size; frame 0 is written as its GT.

Which frame vector: the encoder is pre-trained on pairs with a learned vector per frame
(`temporal_pos_embed_x` on the earlier frame, `_z` on the later one). A single frame is encoded
with `_x` (`--frame x`, default): the vector DropSeg and DropTrack give the frame being segmented
or searched. `--frame z` and `--frame none` (no vector) are there to measure the choice. An MAE
checkpoint has no frame vectors (the encoder's would be random), so it always runs with none.

Differences from DINO's script, on purpose: ImageNet std 0.229 for red (DINO's copy has 0.228);
PIL bilinear resizing instead of OpenCV's; a channel whose values are all equal and positive is
left as is by the min-max step (DINO divides 0 by 0 there); the frame is encoded without a cls
token (our encoder has none, like DropMAE's; an MAE checkpoint's cls_token is dropped, where
DINO's ViT runs its own cls token through the blocks).

`propagate_labels` is a pure function on feature tensors (any features: tests use raw pixels).

Commands:
    python tasks/correspondence.py --data-path DAVIS2017_trainval --pretrained dropmae.pth \\
        --output runs/labelprop/davis17_val
    python tasks/correspondence.py --data-path DAVIS --pretrained mae_pretrain_vit_base.pth \\
        --output runs/labelprop/mae --n-last-frames 7 --topk 5 --radius 12 --temperature 0.1
    # tiny smoke run on generated data (python tasks/vos.py synthetic --out /tmp/vos_synth)
    python tasks/correspondence.py --model tiny --data-path /tmp/vos_synth/DAVIS \\
        --pretrained /tmp/tiny_dropmae.pth --output /tmp/labelprop --short-side 0 --multiple 16
Writes <output>/<seq>/<frame>.png (palette PNGs with the annotation's palette), timing.json and,
on val, the eval/davis.py CSVs and JSON; prints the J&F line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import normalize  # noqa: E402
from eval.output import write_atomic  # noqa: E402
from tasks.vos import (VOID_ID, davis_frames, davis_sequences, read_image, read_mask,  # noqa: E402
                       write_index_png)


# --------------------------------------------------------------------------------------------
# The propagation core: pure functions on feature tensors
# --------------------------------------------------------------------------------------------

def neighbourhood(h: int, w: int, radius: int, device=None) -> torch.Tensor | None:
    """(h*w, h*w) bool, [s, t] True when cells s and t are at most `radius` apart in both row
    and column (a square window); None when radius <= 0 (no restriction)."""
    if radius <= 0:
        return None
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & \
           ((cols[:, None] - cols[None, :]).abs() <= radius)


def propagate_step(feat: torch.Tensor, ctx_feats: torch.Tensor, ctx_labels: torch.Tensor,
                   topk: int, temperature: float, allowed: torch.Tensor | None) -> torch.Tensor:
    """Labels of one target frame from its context.

    feat (Nt, D) target tokens and ctx_feats (M, Ns, D) source tokens, L2-normalised;
    ctx_labels (M, L, Ns); allowed (Ns, Nt) bool [source, target] or None -> (L, Nt).
    Weights are exp(<f_t, f_s> / T) over the `topk` largest per target (ties kept),
    normalised to sum 1: computed as a softmax of the kept logits, the same number without
    overflow for small T.
    """
    M, Ns, _ = ctx_feats.shape
    logits = torch.einsum("msd,td->mst", ctx_feats, feat) / temperature          # (M, Ns, Nt)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    logits = logits.reshape(M * Ns, feat.shape[0])                      # (sources, targets)
    kth = logits.topk(min(topk, M * Ns), dim=0).values[-1]                       # (Nt,)
    weights = logits.masked_fill(logits < kth, float("-inf")).softmax(dim=0)
    labels = ctx_labels.permute(1, 0, 2).reshape(ctx_labels.shape[1], M * Ns)   # (L, M*Ns)
    return labels @ weights


def propagate_labels(feats, first_labels: torch.Tensor, n_last: int = 7, topk: int = 5,
                     radius: int = 12, temperature: float = 0.1):
    """Propagate frame-0 labels through a video; a generator, one frame at a time.

    feats: an iterable of (h, w, D) feature maps, frame 0 first (a (T, h, w, D) tensor works;
    normalised here); first_labels (L, h, w) soft or one-hot labels of frame 0. Yields
    (L, h, w) per frame: frame 0's labels, then each prediction from frame 0 plus the `n_last`
    preceding frames (their predictions fed back).
    """
    feats = iter(feats)
    f0 = F.normalize(next(feats).float(), dim=-1)
    h, w, D = f0.shape
    L = first_labels.shape[0]
    allowed = neighbourhood(h, w, radius, f0.device)
    first = (f0.reshape(h * w, D), first_labels.float().reshape(L, h * w))
    recent = []                                                    # [(feat, labels)], <= n_last
    yield first_labels.float()
    for f in feats:
        f = F.normalize(f.float(), dim=-1).reshape(h * w, D)
        ctx = [first] + recent
        out = propagate_step(f, torch.stack([c[0] for c in ctx]), torch.stack([c[1] for c in ctx]),
                             topk, temperature, allowed)
        if n_last > 0:
            recent = (recent + [(f, out)])[-n_last:]
        yield out.reshape(L, h, w)


def soft_to_ids(soft: torch.Tensor, patch: int, out_hw: tuple[int, int]) -> np.ndarray:
    """(L, h, w) soft labels -> (H0, W0) uint8 ids: bilinear x patch, per-channel min-max
    (channels with max 0, or constant, untouched), argmax, nearest resize to out_hw."""
    up = F.interpolate(soft[None].float(), scale_factor=patch, mode="bilinear",
                       align_corners=False)[0]                                  # (L, h*p, w*p)
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    scale = torch.where((hi > 0) & (hi > lo), hi - lo, torch.ones_like(hi))
    up = torch.where((hi > 0) & (hi > lo), (up - lo) / scale, up)
    ids = up.argmax(0).to(torch.uint8).cpu().numpy()
    if ids.shape != tuple(out_hw):
        ids = np.array(Image.fromarray(ids).resize((out_hw[1], out_hw[0]),
                                                   Image.Resampling.NEAREST))
    return ids


def one_hot_labels(ids: np.ndarray, grid: tuple[int, int], n_labels: int) -> torch.Tensor:
    """(H, W) ids -> (n_labels, gh, gw) one-hot of the ids nearest-resized to the grid."""
    small = np.array(Image.fromarray(ids.astype(np.uint8)).resize((grid[1], grid[0]),
                                                                  Image.Resampling.NEAREST))
    return F.one_hot(torch.from_numpy(small).long(), n_labels).permute(2, 0, 1).float()


# --------------------------------------------------------------------------------------------
# Frames and features
# --------------------------------------------------------------------------------------------

def frame_size(h: int, w: int, short_side: int = 480, multiple: int = 64) -> tuple[int, int]:
    """DINO's size rule: shorter side -> short_side, longer side scaled and rounded down to a
    multiple (480x854 -> 480x832). short_side 0 keeps the frame and only rounds both sides
    down to the multiple."""
    if short_side <= 0:
        return h // multiple * multiple, w // multiple * multiple
    if h > w:
        return int(short_side * h / w // multiple * multiple), short_side
    return short_side, int(short_side * w / h // multiple * multiple)


def load_encoder(path, model: str, frame: str) -> tuple[dropmae.ViTEncoder, str]:
    """The frozen encoder from a DropMAE / MAE / our pre-training checkpoint, and the frame
    vector to use: `frame` ('x', 'z' or 'none'), or 'none' when the checkpoint has no frame
    vectors (MAE), since the encoder's own are random (N(0, 1) per channel) there."""
    encoder = dropmae.ViTEncoder(dropmae.get_config(model))
    report = dropmae.load_pretrained(path, encoder)
    if frame != "none" and f"temporal_pos_embed_{frame}" in report["missing"]:
        print(f"{path}: no frame vectors in this {report['kind']} checkpoint; encoding frames "
              f"without one (--frame none)")
        frame = "none"
    return encoder.eval(), frame


@torch.no_grad()
def encode_frame(encoder: dropmae.ViTEncoder, img: torch.Tensor, frame: str | None) -> torch.Tensor:
    """(1, 3, H, W) normalised frame -> (H/p, W/p, D) last-layer tokens (after the final norm),
    L2-normalised."""
    p = encoder.cfg.patch_size
    tokens = encoder.forward_tokens(encoder.embed(img, frame))                    # (1, N, D)
    return F.normalize(tokens[0], dim=-1).reshape(img.shape[-2] // p, img.shape[-1] // p, -1)


def sequence_ids(encoder, frame_paths: list, first_ann, args, device):
    """Yield (t, ids (H0, W0) uint8) for every frame of one sequence."""
    gt, _ = read_mask(first_ann)
    gt = np.where(gt == VOID_ID, 0, gt)
    H0, W0 = gt.shape
    h, w = frame_size(H0, W0, args.short_side, args.multiple)
    p = encoder.cfg.patch_size
    if h < p or w < p or h % p or w % p:
        raise ValueError(f"{first_ann}: frames of {W0}x{H0} resize to {w}x{h}, not a positive "
                         f"multiple of the patch size {p} (check --short-side / --multiple)")

    def features():
        for path in frame_paths:
            img = read_image(path)
            if (img.height, img.width) != (H0, W0):
                raise ValueError(f"{path}: frame is {img.width}x{img.height}, the annotation "
                                 f"{first_ann} is {W0}x{H0}")
            img = normalize(img.resize((w, h), Image.Resampling.BILINEAR))[None].to(device)
            yield encode_frame(encoder, img, None if args.frame == "none" else args.frame)

    labels0 = one_hot_labels(gt, (h // p, w // p), int(gt.max()) + 1).to(device)
    soft = propagate_labels(features(), labels0, args.n_last_frames, args.topk, args.radius,
                            args.temperature)
    for t, s in enumerate(soft):
        yield t, (gt.astype(np.uint8) if t == 0 else soft_to_ids(s, p, (H0, W0)))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", required=True, help="DAVIS-2017 trainval root")
    parser.add_argument("--pretrained", required=True, help="DropMAE / MAE / our pre-training ckpt")
    parser.add_argument("--output", required=True, help="results folder")
    parser.add_argument("--model", default="base", choices=sorted(dropmae.PRESETS))
    parser.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt")
    parser.add_argument("--n-last-frames", type=int, default=7, help="preceding frames in context")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--radius", type=int, default=12,
                        help="square neighbourhood in feature cells (0: none)")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--short-side", type=int, default=480, help="0: keep the frame size")
    parser.add_argument("--multiple", type=int, default=64, help="round sides down to this")
    parser.add_argument("--frame", default="x", choices=["x", "z", "none"],
                        help="frame vector added to every single frame")
    parser.add_argument("--device", default="", help="default: cuda when available")
    parser.add_argument("--no-eval", action="store_true", help="only write the PNGs")
    return parser.parse_args(argv)


def main(argv=None):
    from tqdm import tqdm
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder, args.frame = load_encoder(args.pretrained, args.model, args.frame)
    encoder.to(device)
    sequences = davis_sequences(args.data_path, 2017, args.split)
    scorable = not args.no_eval
    jobs = [(seq, *davis_frames(args.data_path, seq, all_annotated=scorable)) for seq in sequences]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    n_frames, tic = 0, time.time()
    bar = tqdm(total=sum(len(j[1]) for j in jobs), unit="frame", desc="label propagation")
    for seq, frames, anns in jobs:
        bar.set_postfix_str(seq)
        palette = read_mask(anns[0])[1]
        for t, ids in sequence_ids(encoder, frames, anns[0], args, device):
            write_index_png(out / seq / f"{frames[t].stem}.png", ids, palette)
            n_frames += 1
            bar.update(1)
    bar.close()
    seconds = time.time() - tic
    timing = {"frames": n_frames, "sequences": len(jobs), "seconds": seconds,
              "fps": n_frames / max(seconds, 1e-9), "device": str(device), **vars(args)}
    write_atomic(out / "timing.json", json.dumps(timing, indent=1) + "\n")
    print(f"label propagation: {n_frames} frames of {len(jobs)} sequences in {seconds:.1f} s "
          f"({timing['fps']:.2f} frames/s on {device})")
    if scorable:
        from eval.davis import evaluate_davis, summary_line, write_outputs
        result = evaluate_davis(args.data_path, out, args.split, 2017)
        tiny = args.model == "tiny"
        print(summary_line(result) + ("  [tiny model: tiny scale, not comparable with the paper]" if tiny else ""))
        write_outputs(result, out)                      # after the score is printed, atomically
        return result
    return None


if __name__ == "__main__":
    main()
