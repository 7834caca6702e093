"""The paper's attention analysis: within-frame vs between-frame attention per decoder layer.

For each checkpoint and each of N videos, one frame pair goes through the two-frame MAE with
the same masking noise for every checkpoint; in every decoder layer, each query's attention is
summed over the keys of its own frame (within) and of the other frame (between), then averaged
over heads, queries and videos. The paper (Fig. "attention analysis", 20 random K400 validation
videos, ViT-B) shows DropMAE raising the between-frame share over TwinMAE in every layer.
ASAD is off during the analysis (eval mode), so both models are read with full attention.

Commands:
    python -m reproduce.attention --ckpt runs/twinmae/checkpoint-399.pth \\
        --ckpt runs/dropmae/checkpoint-399.pth --names TwinMAE DropMAE \\
        --data k400 --data-path /data/k400/val --videos 20 --out runs/attention
    make figure-attention      # the same on tiny synthetic checkpoints (see reproduce/table1.py)
Writes attention.json (per checkpoint: within[layer], between[layer]) and attention.png when
matplotlib is installed (the optional extra).
Hardware and time: ViT-B, 20 videos: about a minute on a 2-core CPU; seconds on a GPU.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dropmae  # noqa: E402
from data import FramePairDataset, FrameNote, count_skips  # noqa: E402
from eval.output import write_atomic  # noqa: E402


def frame_attention_shares(attn: torch.Tensor) -> tuple[float, float]:
    """(B, heads, L, L) attention probabilities, frame x = tokens 0..L/2-1, z = the rest ->
    (within, between): each query's attention summed over keys of its own / the other frame,
    averaged over batch, heads and queries. The two add up to 1 for softmax rows."""
    h = attn.shape[-1] // 2
    own = torch.cat([attn[..., :h, :h].sum(-1), attn[..., h:, h:].sum(-1)], dim=-1)   # (B, H, L)
    other = torch.cat([attn[..., :h, h:].sum(-1), attn[..., h:, :h].sum(-1)], dim=-1)
    return own.mean().item(), other.mean().item()


def build_model(ckpt_path: str, preset: str | None) -> dropmae.DropMAE:
    """A DropMAE with the checkpoint's config (ours) or the named preset (official files)."""
    _, ckpt, _ = dropmae.read_checkpoint(ckpt_path)
    if "config" in ckpt:
        cfg = dropmae.Config(**ckpt["config"])
    elif preset is not None:
        cfg = dropmae.get_config(preset)
    else:
        raise ValueError(f"{ckpt_path}: no stored config; pass --model for official checkpoints")
    model = dropmae.DropMAE(cfg)
    dropmae.load_pretrained(ckpt, model, verbose=False)
    return model.eval()


@torch.no_grad()
def analyse(models: dict, dataset, videos: int, seed: int = 0, mask_ratio: float = 0.75):
    """Per model name: {'within': [per layer], 'between': [per layer]} averaged over videos.

    Videos are taken in a seeded random order until `videos` distinct ones gave a pair. The
    dataset replaces an unreadable video by the next one (`skipped` says which it tried), so
    the video actually used is known; a replacement that is already used is not counted
    twice. -> (result, used video paths, skipped entries "path: reason").
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    sums = {name: {"within": None, "between": None} for name in models}
    num_patches = next(iter(models.values())).num_patches
    used, skipped = [], []
    for i in order:
        if len(used) == min(videos, len(dataset)):
            break
        img_x, img_z, entries = dataset[i]
        tried = count_skips(entries)
        skipped += [e for e in entries if e not in skipped and not isinstance(e, FrameNote)]
        path = dataset.path((i + tried) % len(dataset))    # the video that gave the pair
        if path in used:
            continue
        used.append(path)
        noise = torch.rand(1, 2 * num_patches, generator=gen)                   # same masks for all
        for name, model in models.items():
            maps = model.decoder_attention(img_x[None], img_z[None], mask_ratio, noise)
            shares = [frame_attention_shares(a) for a in maps]
            w = torch.tensor([s[0] for s in shares], dtype=torch.float64)
            b = torch.tensor([s[1] for s in shares], dtype=torch.float64)
            rec = sums[name]
            rec["within"] = w if rec["within"] is None else rec["within"] + w
            rec["between"] = b if rec["between"] is None else rec["between"] + b
    if not used:
        raise RuntimeError(f"no video gave a frame pair; skipped: {skipped[:5]}")
    result = {name: {k: (v / len(used)).tolist() for k, v in rec.items()} for name, rec in sums.items()}
    return result, used, skipped


def plot(result: dict, path: Path) -> bool:
    """Bar chart of the between-frame share per layer; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the PNG (pip install matplotlib)")
        return False
    names = list(result)
    layers = len(result[names[0]]["between"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ax.bar([i + k * width for i in range(layers)], result[name]["between"], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(layers)], [str(i + 1) for i in range(layers)])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("between-frame attention")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def print_table(result: dict, title: str = ""):
    names = list(result)
    layers = len(result[names[0]]["between"])
    if title:
        print(title)
    print("layer  " + "  ".join(f"{n + ' within':>16s} {n + ' between':>17s}" for n in names))
    for i in range(layers):
        print(f"{i + 1:5d}  " + "  ".join(f"{result[n]['within'][i]:16.4f} {result[n]['between'][i]:17.4f}"
                                        for n in names))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint (repeat, 2 or more)")
    p.add_argument("--names", nargs="+", help="a label per checkpoint (default: file names)")
    p.add_argument("--model", default=None, help="preset for checkpoints without a stored config")
    p.add_argument("--data", default="k400")
    p.add_argument("--data-path", default=None)
    p.add_argument("--input-size", type=int, default=None, help="default: the model's img_size")
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--label", default="", help="printed above the table (e.g. 'tiny scale')")
    args = p.parse_args(argv)
    names = args.names or [Path(c).stem for c in args.ckpt]
    if len(names) != len(args.ckpt):
        p.error("give one --names entry per --ckpt")
    models = {n: build_model(c, args.model) for n, c in zip(names, args.ckpt)}
    tiny = dropmae.PRESETS["tiny"]
    if any(m.cfg.embed_dim == tiny.embed_dim and m.cfg.depth == tiny.depth for m in models.values()) \
            and "tiny" not in args.label:
        args.label = (args.label + " " if args.label else "") + "[tiny model: tiny scale, not comparable with the paper]"
    size = args.input_size or next(iter(models.values())).cfg.img_size
    dataset = FramePairDataset(args.data, args.data_path, input_size=size, seed=args.seed)
    result, used, skipped = analyse(models, dataset, args.videos, args.seed)
    print(f"attention: {len(used)} distinct videos used ({args.videos} asked, {len(dataset)} in the "
          f"set); {len(skipped)} skipped as unreadable" + "".join(f"\n  {e}" for e in skipped))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_table(result, args.label)
    write_atomic(out / "attention.json", json.dumps(
        {"label": args.label, "videos": len(used), "videos_asked": args.videos,
         "videos_used": used, "skipped_videos": skipped,
         "checkpoints": dict(zip(names, args.ckpt)), "result": result}, indent=1))
    plot(result, out / "attention.png")
    return result


if __name__ == "__main__":
    main()
