"""TAP-Vid point-tracking metrics: OA, <delta^x_avg, AJ (query modes `first` and `strided`).

Definitions follow `specs/metrics-dense.md` section 2 (tapnet `compute_tapvid_metrics` and the
query samplers of `evaluation_datasets.py`, after the 2023-07 `first`-mode bugfix):

- Coordinates are raster pixels of a **256x256** frame: GT points (normalised to [0, 1] in the
  pickles) are multiplied by 256 (no +0.5 shift); predictions made at another resolution
  (H, W) are rescaled by `x * 256 / W`, `y * 256 / H` (a pure scale).
- Query frame `q = round(t)` (numpy: half to even). Evaluated frames: `first` mode, frames
  strictly after q; `strided` mode, every frame but q.
- `occlusion_accuracy = #[eval & pred_occ == gt_occ] / #eval`.
- For delta in 1, 2, 4, 8, 16 px: `within = |pred - gt|^2 < delta^2` (strict);
  `pts_within_delta = #[eval & gt_vis & within] / #[eval & gt_vis]` (predicted occlusion
  ignored); `jaccard_delta = TP / (#[eval & gt_vis] + FP)` with
  `TP = #[eval & gt_vis & pred_vis & within]`, `FP = #[eval & pred_vis & (gt_occ | ~within)]`.
- `average_pts_within_thresh` (<delta^x_avg) and `average_jaccard` (AJ): means over the five
  thresholds. Counts are pooled over all queries and frames of one video; the dataset number
  is the plain mean over videos (in [0, 1]; papers print x100).
- 0/0 gives NaN, silently here (tapnet: a RuntimeWarning): e.g. a video whose only query is
  in its last frame in `first` mode; one NaN video makes the dataset mean NaN. The CLI lists
  the NaN videos.

Query sampling (`sample_queries`): `first` queries every track that is visible at least once at
its first visible frame (never-visible tracks are dropped); `strided` walks frames 0, 5, 10, ...
and turns every track visible there into a query, so a track can give several queries. Queries
come out in that order (stride frame, then track index) and predictions must follow it.

Ground truth (`read_tapvid_gt`): a TAP-Vid pickle, or a folder of pickles (Kinetics shards
`*_of_0010.pkl`, read in sorted order). A pickle holds either a dict `name -> example`
(TAP-Vid-DAVIS; also some Kinetics shards) or a list of examples (RGB-Stacking, Kinetics),
named `"{index:04d}"`, or `"{file stem}_{index:04d}"` in a folder. An example is a dict with
`points` (N, T, 2) float [x, y] normalised to [0, 1] and `occluded` (N, T) bool; its `video`
(frames, or JPEG bytes in Kinetics) is not needed for scoring and is not decoded.

Predictions (`read_predictions`): either a folder with one `<video name>.npz` per video, or one
`.npz` whose keys are prefixed `"<video name>/"`. Per video:
- `tracks`     (Q, T, 2) float, [x, y] raster pixels of the frame the tracker saw;
- `occluded`   (Q, T) bool (or 0/1), True = predicted occluded;
- `resolution` optional (2,) ints (height, width) of that frame, default (256, 256);
- `query_points` optional (Q, 3) [t, y, x] in the same pixels; if given it is checked against
  our sampler's queries (catches a different query order or mode).
Q and the query order are those of `sample_queries(points, occluded, mode)` for that video.

    python -m eval.tapvid --gt tapvid_davis/tapvid_davis.pkl --pred runs/tapvid_davis \\
        --query-mode first --out runs/tapvid_davis/metrics.json
    python -m eval.tapvid --gt tapvid_kinetics --pred runs/kinetics.npz --query-mode strided
"""
import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

from eval.output import write_atomic

THRESHOLDS = (1, 2, 4, 8, 16)  # pixels, in the 256x256 frame
EVAL_SIZE = 256
QUERY_STRIDE = 5
METRIC_NAMES = (['occlusion_accuracy']
                + [f'pts_within_{d}' for d in THRESHOLDS]
                + [f'jaccard_{d}' for d in THRESHOLDS]
                + ['average_pts_within_thresh', 'average_jaccard'])


# ------------------------------------------------------------------------------------------
# Queries


def sample_queries(points, occluded, mode, stride=QUERY_STRIDE):
    """Turn GT tracks into queries, as the TAP-Vid readers do.

    points: (N, T, 2) [x, y] (any units), occluded: (N, T) bool, mode: 'first' | 'strided'.
    Returns query_points (Q, 3) [t, y, x], tracks (Q, T, 2), occluded (Q, T), track (Q,)
    (index of the source track).
    """
    points, occluded = np.asarray(points), np.asarray(occluded, bool)
    t = occluded.shape[1]
    if mode == 'first':
        track = np.flatnonzero((~occluded).any(axis=1))
        frame = np.argmax(~occluded[track], axis=1)  # first visible frame of each track
    elif mode == 'strided':
        stride_frames = np.arange(0, t, stride)
        k, track = np.nonzero(~occluded[:, stride_frames].T)  # row-major: frame, then track
        frame = stride_frames[k]
    else:
        raise ValueError(f'unknown query mode {mode!r} (first | strided)')
    xy = points[track, frame].reshape(-1, 2)
    query_points = np.stack([frame.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1)
    return query_points, points[track], occluded[track], track


def evaluation_mask(query_points, n_frames, mode):
    """(Q, T) bool of scored frames: after the query frame ('first') or all but it ('strided')."""
    q = np.round(np.asarray(query_points)[:, 0]).astype(int)  # half to even, like tapnet
    if q.size and (q.min() < 0 or q.max() >= n_frames):
        raise ValueError(f'query frame outside 0..{n_frames - 1}: {q.min()}..{q.max()}')
    frames = np.arange(n_frames)[None, :]
    if mode == 'first':
        return frames > q[:, None]
    if mode == 'strided':
        return frames != q[:, None]
    raise ValueError(f'unknown query mode {mode!r} (first | strided)')


# ------------------------------------------------------------------------------------------
# Metrics on arrays (one video)


def _ratio(num, den):
    return float(num) / float(den) if den else float('nan')


def tapvid_metrics(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks, mode):
    """TAP-Vid metrics of one video, counts pooled over its queries and frames.

    query_points: (Q, 3) [t, y, x]; gt_occluded, pred_occluded: (Q, T) bool;
    gt_tracks, pred_tracks: (Q, T, 2) [x, y] in 256x256 raster pixels; mode: 'first' | 'strided'.
    Returns {name: float in [0, 1] or NaN} for METRIC_NAMES.
    """
    gt_occ = np.asarray(gt_occluded, bool)
    pred_occ = np.asarray(pred_occluded, bool)
    evaluated = evaluation_mask(query_points, gt_occ.shape[1], mode)
    visible, pred_visible = ~gt_occ, ~pred_occ
    sq_dist = np.sum(np.square(np.asarray(pred_tracks, np.float64)
                               - np.asarray(gt_tracks, np.float64)), axis=-1)  # (Q, T)
    n_visible = np.count_nonzero(evaluated & visible)

    m = {'occlusion_accuracy': _ratio(np.count_nonzero(evaluated & (pred_occ == gt_occ)),
                                      np.count_nonzero(evaluated))}
    for d in THRESHOLDS:
        within = sq_dist < d * d  # strict; NaN predictions are never within
        correct = evaluated & visible & within
        m[f'pts_within_{d}'] = _ratio(np.count_nonzero(correct), n_visible)
        tp = np.count_nonzero(correct & pred_visible)
        fp = np.count_nonzero(evaluated & pred_visible & (gt_occ | ~within))
        m[f'jaccard_{d}'] = _ratio(tp, n_visible + fp)
    m['average_pts_within_thresh'] = float(np.mean([m[f'pts_within_{d}'] for d in THRESHOLDS]))
    m['average_jaccard'] = float(np.mean([m[f'jaccard_{d}'] for d in THRESHOLDS]))
    return m


def mean_over_videos(per_video):
    """Dataset numbers: plain mean over videos of each metric (NaN if any video is NaN)."""
    return {k: float(np.mean([m[k] for m in per_video])) if per_video else float('nan')
            for k in METRIC_NAMES}


def rescale_tracks(tracks, resolution, size=EVAL_SIZE):
    """Pure scale of [x, y] raster pixels from a (height, width) frame to size x size."""
    h, w = resolution
    return np.asarray(tracks, np.float64) * np.array([size / w, size / h])


# ------------------------------------------------------------------------------------------
# Readers


def _check_example(example, where):
    if not isinstance(example, dict) or 'points' not in example or 'occluded' not in example:
        raise ValueError(f'{where}: expected a dict with "points" and "occluded"')
    points = np.asarray(example['points'], np.float64)
    occluded = np.asarray(example['occluded'])
    if points.ndim != 3 or points.shape[2] != 2 or occluded.shape != points.shape[:2]:
        raise ValueError(f'{where}: points {points.shape} / occluded {occluded.shape}, '
                         f'expected (N, T, 2) / (N, T)')
    return points, occluded.astype(bool)


# Reading pickles. The TAP-Vid GT is a pickle, and `pickle.load` of a crafted file runs code.
# The suite's trust rule (the same as for checkpoints, `dropmae.load_checkpoint`; eval/ imports
# nothing of ours, so the rule is restated here): by default only plain containers and numpy
# arrays are rebuilt, which is all an official TAP-Vid pickle holds; a file that needs any
# other Python object is refused unless `trust_pickle` (`--trust-pickle`) says it is trusted.

SAFE_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
}


class _Refused(pickle.UnpicklingError):
    """A global the safe unpickler does not rebuild (the message is its dotted name)."""


class _SafeUnpickler(pickle.Unpickler):
    """Plain containers, strings, numbers and numpy arrays / scalars; nothing that runs code."""

    def find_class(self, module, name):
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f'{module}.{name}')


def read_pickle(path, trust_pickle=False):
    """Load a pickle file by the trust rule above; every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such file')
    try:
        with open(path, 'rb') as fh:
            return pickle.load(fh) if trust_pickle else _SafeUnpickler(fh).load()
    except _Refused as err:
        raise ValueError(f'{path}: the pickle holds a Python object ({err}) beyond arrays and '
                             f'plain containers, and loading it could run code; pass '
                             f'--trust-pickle if you trust this file') from None
    except pickle.UnpicklingError as err:
        raise ValueError(f'{path}: truncated or corrupt pickle (UnpicklingError: {err})') from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError) as err:
        raise ValueError(f'{path}: truncated or corrupt pickle ({type(err).__name__}: '
                         f'{err})') from None


def read_tapvid_gt(path, trust_pickle=False):
    """Read TAP-Vid GT -> {video name: (points (N, T, 2) normalised [x, y], occluded (N, T))}.

    Pickles are read by `read_pickle` (arrays only unless `trust_pickle`). Non-finite points
    at visible positions are an error (occluded positions are never scored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path}: no such file or folder')
    files = sorted(path.glob('*.pkl')) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f'{path}: no .pkl files')
    videos = {}
    for f in files:
        data = read_pickle(f, trust_pickle)
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, (list, tuple)):
            prefix = f'{f.stem}_' if path.is_dir() else ''
            items = [(f'{prefix}{i:04d}', v) for i, v in enumerate(data)]
        else:
            raise ValueError(f'{f}: expected a dict or a list of examples, got {type(data)}')
        for name, example in items:
            if name in videos:
                raise ValueError(f'{f}: video {name!r} appears twice')
            points, occluded = _check_example(example, f'{f}: video {name!r}')
            bad = ~np.isfinite(points).all(axis=2) & ~occluded
            if bad.any():
                n, t = np.argwhere(bad)[0]
                raise ValueError(f'{f}: video {name!r}: non-finite GT points at {int(bad.sum())} '
                                 f'visible positions, first track {n} frame {t}')
            videos[name] = points, occluded
    return videos


def _read_prediction(arrays, where):
    for key in ('tracks', 'occluded'):
        if key not in arrays:
            raise ValueError(f'{where}: missing key {key!r}')
    tracks = np.asarray(arrays['tracks'], np.float64)
    occluded = np.asarray(arrays['occluded'])
    if occluded.dtype != bool:
        if not np.isin(occluded, (0, 1)).all():
            raise ValueError(f'{where}: occluded must be bool or 0/1')
        occluded = occluded.astype(bool)
    if tracks.ndim != 3 or tracks.shape[2] != 2 or occluded.shape != tracks.shape[:2]:
        raise ValueError(f'{where}: tracks {tracks.shape} / occluded {occluded.shape}, '
                         f'expected (Q, T, 2) / (Q, T)')
    bad = ~np.isfinite(tracks).all(axis=2)
    if bad.any():
        q, t = np.argwhere(bad)[0]
        raise ValueError(f'{where}: non-finite predicted tracks (NaN or inf) at {int(bad.sum())} '
                         f'of {bad.size} points, first query {q} frame {t} (write a finite '
                         f'position, with occluded=1 where the tracker has none)')
    resolution = tuple(int(v) for v in arrays.get('resolution', (EVAL_SIZE, EVAL_SIZE)))
    queries = arrays.get('query_points')
    return {'tracks': tracks, 'occluded': occluded, 'resolution': resolution,
            'query_points': None if queries is None else np.asarray(queries, np.float64)}


def _load_npz(path):
    """{key: array} of an .npz file; errors (missing, truncated, not a zip, pickled objects)
    name the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: no such file')
    try:
        z = np.load(path)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError('an .npy array, not an .npz archive')
        with z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # zipfile.BadZipFile, EOFError, ValueError (object arrays), OSError
        raise ValueError(f'{path}: cannot read the .npz ({type(err).__name__}: {err})') from None


def read_predictions(path, names):
    """Predictions for the given video names from a folder of .npz files or one .npz file."""
    path = Path(path)
    preds = {}
    if path.is_dir():
        for name in names:
            f = path / f'{name}.npz'
            if not f.is_file():
                raise FileNotFoundError(f'{f}: missing prediction for video {name!r}')
            preds[name] = _read_prediction(_load_npz(f), f)
        return preds
    grouped = {}
    for key, value in _load_npz(path).items():
        name, _, field = key.rpartition('/')
        grouped.setdefault(name, {})[field] = value
    extra = sorted(set(grouped) - set(names))
    if extra:
        raise ValueError(f'{path}: predictions for unknown videos {extra[:5]}')
    for name in names:
        if name not in grouped:
            raise ValueError(f'{path}: missing prediction for video {name!r}')
        preds[name] = _read_prediction(grouped[name], f'{path}: video {name!r}')
    return preds


# ------------------------------------------------------------------------------------------
# Dataset evaluation and CLI


def evaluate(gt, preds, mode):
    """Score predictions against GT videos. gt: read_tapvid_gt output, preds: read_predictions.

    Returns {'mean': {metric: float}, 'per_video': {name: {metric: float}}, 'n_videos',
    'n_queries'}.
    """
    per_video, n_queries = {}, 0
    for name, (points, occluded) in gt.items():
        query_points, gt_tracks, gt_occ, _ = sample_queries(points * EVAL_SIZE, occluded, mode)
        p = preds[name]
        if p['tracks'].shape != gt_tracks.shape:
            raise ValueError(f'video {name!r}: prediction tracks {p["tracks"].shape}, expected '
                             f'{gt_tracks.shape} (queries of mode {mode!r}, in sampler order)')
        if p['query_points'] is not None:  # [t, y, x] at the prediction's resolution
            h, w = p['resolution']
            pq = p['query_points']
            if (pq.shape != query_points.shape or not np.allclose(
                    pq * [1, EVAL_SIZE / h, EVAL_SIZE / w], query_points, atol=1e-3)):
                raise ValueError(f'video {name!r}: prediction query_points differ from the '
                                 f'{mode!r} queries (order or mode mismatch)')
        pred_tracks = rescale_tracks(p['tracks'], p['resolution'])
        per_video[name] = tapvid_metrics(query_points, gt_occ, gt_tracks, p['occluded'],
                                         pred_tracks, mode)
        n_queries += len(query_points)
    return {'mean': mean_over_videos(list(per_video.values())), 'per_video': per_video,
            'n_videos': len(per_video), 'n_queries': n_queries}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--gt', required=True, help='TAP-Vid pickle, or a folder of pickles')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='unpickle any Python object in --gt. Loading a pickle can run code: '
                             'by default only numpy arrays and plain containers are read, which '
                             'is all an official TAP-Vid file holds')
    parser.add_argument('--pred', required=True, help='folder of <video>.npz, or one .npz')
    parser.add_argument('--query-mode', required=True, choices=('first', 'strided'))
    parser.add_argument('--out', help='write the metrics as JSON here')
    args = parser.parse_args(argv)

    try:
        gt = read_tapvid_gt(args.gt, args.trust_pickle)
        result = evaluate(gt, read_predictions(args.pred, list(gt)), args.query_mode)
    except (FileNotFoundError, ValueError) as err:  # bad input: the message names the file
        parser.exit(2, f'error: {err}\n')
    result['query_mode'] = args.query_mode
    nan_videos = [n for n, m in result['per_video'].items() if np.isnan(m['average_jaccard'])]
    if nan_videos:
        print(f'warning: {len(nan_videos)} videos have NaN metrics (no scored point): '
              f'{", ".join(nan_videos[:5])}', file=sys.stderr)
    m = result['mean']
    print(f"tapvid {args.query_mode}: {result['n_videos']} videos, {result['n_queries']} queries"
          f"  AJ {100 * m['average_jaccard']:.2f}"
          f"  <d_avg {100 * m['average_pts_within_thresh']:.2f}"
          f"  OA {100 * m['occlusion_accuracy']:.2f}")
    if args.out:  # after the summary line: a failing write cannot lose the score
        try:
            write_atomic(args.out, json.dumps(result, indent=1) + '\n')
        except OSError as err:
            parser.exit(1, f'error: {err}\n')
    return result


if __name__ == '__main__':
    main()
