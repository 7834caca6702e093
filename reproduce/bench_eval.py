"""Speed of `eval/davis.py` (DAVIS J&F) on synthetic DAVIS-layout data.

Not a paper table: a benchmark of our evaluator against the official davis2017-evaluation
toolkit's speed quoted in `specs/metrics-dense.md` 1.7 (about 2.8 s for one 480x854, 50-frame,
3-object sequence and about a minute for DAVIS-2017 val on a 2-core machine; the official
toolkit needs cv2 / skimage / pandas, which this project does not install, so it is not run
here and no measured ratio is claimed).

Measured:
1. one 480x854, 50-frame, 3-object sequence (moving ellipse, rectangle and triangle;
   predictions = GT shifted by a few pixels plus square noise), written as palette PNGs:
   - `evaluate_davis` end to end (PNG decoding included), 1 and 2 decoding threads;
   - `eval_sequence` on the in-memory arrays (J and F of the 48 scored frames);
   - the dense per-frame reference `boundary_f` (scipy binary_dilation with the disk),
     extrapolated from a few object-frames to the 144 of the sequence;
2. a DAVIS-2017-val-sized set: 30 sequences, 1999 frames, 59 objects (480x854), end to end.
   `--val-seqs N` generates only the first N sequences and extrapolates linearly in frames.

All timings are medians of `--repeat` runs on warm files (page cache). Command:

    python -m reproduce.bench_eval --out runs/bench_eval.json
    python -m reproduce.bench_eval --val-seqs 6 --repeat 1     # quicker, extrapolated
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from eval.davis import boundary_f, eval_sequence, evaluate_davis, read_sequence

H, W = 480, 854
OFFICIAL_S_PER_SEQ = 2.8  # spec 1.7: official evaluate, one 480x854 50-frame 3-object sequence
OFFICIAL_S_VAL = 60.0  # spec 1.7: "about a minute" for DAVIS-2017 val
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128]


def moving_shapes(n_frames, n_obj, rng):
    """GT label maps of `n_obj` shapes moving across the frame -> (T, H, W) uint8."""
    yy, xx = np.mgrid[:H, :W]
    start = rng.uniform([80, 120], [H - 80, W - 120], size=(n_obj, 2))
    velocity = rng.uniform(-4, 4, size=(n_obj, 2))
    size = rng.uniform(40, 110, size=(n_obj, 2))
    out = np.zeros((n_frames, H, W), np.uint8)
    for t in range(n_frames):
        for k in range(n_obj):
            cy, cx = start[k] + velocity[k] * t
            ry, rx = size[k]
            kind = k % 3
            if kind == 0:  # ellipse
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            elif kind == 1:  # rectangle
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:  # triangle
                m = (yy <= cy + ry) & (yy - cy + ry >= 2 * np.abs(xx - cx) * ry / rx)
            out[t][m] = k + 1
    return out


def perturb(gt, n_obj, rng):
    """Prediction = GT with each object shifted by up to 3 px and 6 random squares flipped."""
    pred = np.zeros_like(gt)
    for t in range(gt.shape[0]):
        for k in range(1, n_obj + 1):
            dy, dx = rng.integers(-3, 4, size=2)
            m = np.roll(gt[t] == k, (dy, dx), axis=(0, 1))
            ys, xs = np.nonzero(m)
            for _ in range(6 if ys.size else 0):
                i = rng.integers(ys.size)
                s = rng.integers(4, 20)
                m[max(ys[i] - s, 0):ys[i] + s, max(xs[i] - s, 0):xs[i] + s] ^= True
            pred[t][m] = k
    return pred


def save_png(labels, path):
    im = Image.fromarray(labels, 'P')
    im.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    im.save(path)


def write_sequence(root, results, seq, gt, pred):
    """Write one sequence in the official layout (annotations and results; no JPEGs)."""
    (root / 'Annotations' / '480p' / seq).mkdir(parents=True)
    (results / seq).mkdir(parents=True)
    for t in range(gt.shape[0]):
        save_png(gt[t], root / 'Annotations' / '480p' / seq / f'{t:05d}.png')
        save_png(pred[t], results / seq / f'{t:05d}.png')


def make_set(root, results, lengths, objects, seed):
    """Generate sequences `seq000..` with the given frame counts and object counts."""
    rng = np.random.default_rng(seed)
    names = []
    for i, (n_frames, n_obj) in enumerate(zip(lengths, objects)):
        gt = moving_shapes(n_frames, n_obj, rng)
        write_sequence(root, results, f'seq{i:03d}', gt, perturb(gt, n_obj, rng))
        names.append(f'seq{i:03d}')
    (root / 'ImageSets' / '2017').mkdir(parents=True, exist_ok=True)
    (root / 'ImageSets' / '2017' / 'val.txt').write_text('\n'.join(names) + '\n')


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def val_layout(seed=0):
    """30 sequence lengths summing to 1999 and object counts summing to 59 (DAVIS-17 val)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(25, 105, size=30)
    lengths = np.maximum(np.round(lengths * 1999 / lengths.sum()).astype(int), 3)
    lengths[-1] += 1999 - lengths.sum()
    objects = np.full(30, 2)
    objects[[0, 6, 12, 18, 24]] = 3
    objects[[3, 9, 15, 21, 27, 29]] = 1  # 60 + 5 - 6 = 59 objects
    return lengths.tolist(), objects.tolist()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=None, help='write the results as JSON here')
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--val-seqs', type=int, default=30,
                        help='generate only this many of the 30 val-sized sequences and '
                             'extrapolate (generating takes about 0.05 s per frame)')
    parser.add_argument('--dense-frames', type=int, default=6,
                        help='object-frames timed for the dense binary_dilation reference')
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. one 50-frame, 3-object sequence
        root, results = tmp / 'one' / 'DAVIS', tmp / 'one' / 'results'
        make_set(root, results, [50], [3], seed=0)
        seq_s = {w: median_time(lambda: evaluate_davis(root, results, workers=w), args.repeat)
                 for w in (1, 2)}
        gt, pred, n_obj, _ = read_sequence(root, results, 'seq000')
        arrays_s = median_time(lambda: eval_sequence(gt, pred, n_obj), args.repeat)
        picks = [(t % gt.shape[0], t % n_obj + 1) for t in range(args.dense_frames)]
        t0 = time.perf_counter()
        for t, k in picks:
            boundary_f(gt[t] == k, pred[t] == k)
        dense_s = (time.perf_counter() - t0) / len(picks) * gt.shape[0] * n_obj
        rows += [('1 seq 480x854, 50 fr, 3 obj: evaluate_davis, 1 thread', seq_s[1],
                  OFFICIAL_S_PER_SEQ),
                 ('1 seq: evaluate_davis, 2 decoding threads', seq_s[2], OFFICIAL_S_PER_SEQ),
                 ('1 seq: eval_sequence on arrays (J+F only)', arrays_s, None),
                 (f'1 seq: dense binary_dilation F only (extrapolated from {len(picks)} '
                  'object-frames)', dense_s, None)]

        # 2. a DAVIS-2017-val-sized set
        lengths, objects = val_layout()
        n = max(1, min(args.val_seqs, 30))
        root, results = tmp / 'val' / 'DAVIS', tmp / 'val' / 'results'
        t0 = time.perf_counter()
        make_set(root, results, lengths[:n], objects[:n], seed=1)
        gen_s = time.perf_counter() - t0
        val_s = median_time(lambda: evaluate_davis(root, results, workers=2), args.repeat)
        scale = sum(lengths) / sum(lengths[:n])
        label = ('DAVIS-17-val-sized (30 seqs, 1999 fr, 59 obj), 2 threads' if n == 30 else
                 f'DAVIS-17-val-sized, extrapolated x{scale:.2f} from {n} seqs / '
                 f'{sum(lengths[:n])} frames, 2 threads')
        rows.append((label, val_s * scale, OFFICIAL_S_VAL))

    print(f'{"case":<86} {"ours s":>8} {"official s (spec 1.7, not run)":>31}')
    for name, ours, official in rows:
        ref = f'{official:.1f}' if official else '-'
        print(f'{name:<86} {ours:8.3f} {ref:>31}')
    report = {'rows': [{'case': r[0], 'ours_s': r[1], 'official_s_spec': r[2]} for r in rows],
              'generation_s': gen_s, 'repeat': args.repeat, 'val_seqs_generated': n,
              'cpu_count': os.cpu_count(), 'machine': platform.machine(),
              'python': platform.python_version(), 'numpy': np.__version__}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + '\n')
        print(f'wrote {args.out}')
    return report


if __name__ == '__main__':
    main()
