"""Single-object-tracking evaluators: GOT-10k (toolkit rules) and OPE (pytracking rules).

Exact definitions: `specs/metrics-sot.md` (GOT-10k toolkit 0.1.3 `ExperimentGOT10k.report`;
pytracking `extract_results.py`, which OSTrack and DropTrack use for LaSOT, LaSOT_ext, TNL2K,
TrackingNet and OTB). Boxes are `[x, y, w, h]` (top-left corner, width, height) in pixels, one
row per frame.

Commands:

    python -m eval.sot --benchmark got10k --split val --results RES/got10k --data-path GOT10K \
        --out got10k_val.json
    python -m eval.sot --benchmark lasot --results RES/lasot --data-path LASOT --out lasot.json \
        --plot plots/
    python -m eval.sot --benchmark lasot_ext|tnl2k|otb --results RES --data-path ROOT
    python -m eval.sot --benchmark trackingnet --split TRAIN_0 --results RES --data-path TRACKINGNET

Printed summaries (one line), e.g.

    GOT-10k val: AO 75.90 SR0.5 86.80 SR0.75 72.00 (180 seqs, 1 rep)
    LaSOT: AUC 71.80 P 78.10 Pnorm 81.80 (280 seqs)

Layouts read (`--data-path` is the dataset root):
    got10k       ROOT/<split>/list.txt, ROOT/<split>/<seq>/{groundtruth.txt, cover.label,
                 meta_info.ini}; results RES/<seq>/<seq>_001.txt (one file per repetition,
                 comma separated) and optional RES/<seq>/<seq>_time.txt (seconds per frame).
    lasot        ROOT/<class>/<class>-<n>/{groundtruth.txt, full_occlusion.txt, out_of_view.txt};
                 sequence list = ROOT/testing_set.txt (the official 280-sequence protocol) if
                 present, else `--sequences FILE`, else every sequence found (with a warning).
    lasot_ext    same layout as LaSOT; every sequence found (150 in the release) or --sequences.
    tnl2k        ROOT/<seq>/groundtruth.txt
    trackingnet  ROOT/<split>/anno/<seq>.txt (TRAIN_k only: TEST annotations are hidden)
    otb          ROOT/<seq>/groundtruth_rect.txt
    OPE results: RES/<seq>.txt, tab, comma or whitespace separated (OSTrack writes `%d` + tab).

Importable: `score_got10k`, `score_ope` (dataset level, return dicts documented there), and the
pure array functions `got10k_iou`, `got10k_sequence_ious`, `got10k_scores`, `ope_iou`,
`ope_center_error`, `replace_zero_size`, `ope_frame_errors`, `ope_sequence_curves`,
`ope_dataset_scores`.
"""
import argparse
import ast
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from eval.output import write_atomic

BENCHMARK_NAMES = {'got10k': 'GOT-10k', 'lasot': 'LaSOT', 'lasot_ext': 'LaSOT_ext',
                   'tnl2k': 'TNL2K', 'trackingnet': 'TrackingNet', 'otb': 'OTB'}
OPE_BENCHMARKS = ('lasot', 'lasot_ext', 'tnl2k', 'trackingnet', 'otb')
VISIBILITY_BENCHMARKS = ('lasot', 'lasot_ext')  # datasets whose sequences carry target_visible


# ---------------------------------------------------------------------------------------------
# GOT-10k: continuous boxes clipped to the image, frames pooled over sequences and repetitions
# ---------------------------------------------------------------------------------------------
GOT10K_THRESHOLDS = np.linspace(0, 1, 101)  # success-curve IoU thresholds, strict >
EPS = np.finfo(np.float64).eps


def clip_to_bound(boxes, bound):
    """Clip (N, 4) xywh boxes to the image (W, H) the toolkit's way; returns a copy.

    x, y are clipped to [0, W], [0, H]; then w, h to [0, W - x], [0, H - y] with the clipped
    x, y. A box left of the image is therefore shifted right, not cropped.
    """
    W, H = bound
    b = np.array(boxes, dtype=np.float64)
    b[:, 0] = np.clip(b[:, 0], 0, W)
    b[:, 1] = np.clip(b[:, 1], 0, H)
    b[:, 2] = np.clip(b[:, 2], 0, W - b[:, 0])
    b[:, 3] = np.clip(b[:, 3], 0, H - b[:, 1])
    return b


def got10k_iou(pred, gt, bound=None):
    """Continuous IoU (right edge x + w) of (N, 4) xywh boxes, -> (N,) in [0, 1].

    With `bound=(W, H)` both boxes are first clipped to the image. The union gets + float64
    machine epsilon, so two zero-area boxes give 0 (and two identical 1x1 boxes 1 / (1 + eps)).
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if pred.shape != gt.shape:
        raise ValueError(f'got10k_iou: shapes differ, {pred.shape} vs {gt.shape}')
    if bound is not None:
        pred, gt = clip_to_bound(pred, bound), clip_to_bound(gt, bound)
    lo = np.maximum(pred[:, :2], gt[:, :2])
    hi = np.minimum(pred[:, :2] + pred[:, 2:], gt[:, :2] + gt[:, 2:])
    inter = np.prod(np.maximum(hi - lo, 0), axis=1)
    union = np.prod(pred[:, 2:], axis=1) + np.prod(gt[:, 2:], axis=1) - inter
    return np.clip(inter / (union + EPS), 0.0, 1.0)


def got10k_sequence_ious(pred, gt, cover, bound):
    """IoUs of the scored frames of one repetition: frames 1..T-1 whose `cover` class is > 0.

    pred, gt: (T, 4) xywh; cover: (T,) visible-ratio class 0..8; bound: (W, H). -> (K,) IoU.
    """
    pred, gt, cover = np.asarray(pred), np.asarray(gt), np.asarray(cover)
    if pred.shape != gt.shape:
        raise ValueError(f'prediction shape {pred.shape} differs from annotation {gt.shape}')
    if cover.shape != (len(gt),):
        raise ValueError(f'cover has shape {cover.shape}, annotation has {len(gt)} frames')
    ious = got10k_iou(pred[1:], gt[1:], bound)  # frame 0 is the initialisation: not scored
    return ious[cover[1:] > 0]


def got10k_scores(ious, times=None):
    """Toolkit scores of pooled IoUs (K,) and per-frame seconds (M,), all as fractions.

    -> dict ao, sr50, sr75 (strict >), success_curve (101,) on GOT10K_THRESHOLDS, speed_fps =
    mean(1 / t) over positive non-NaN times (-1 when there are none). ao etc. are NaN if K = 0.
    """
    ious = np.asarray(ious, dtype=np.float64)
    times = np.asarray([] if times is None else times, dtype=np.float64).ravel()
    times = times[~np.isnan(times)]
    times = times[times > 0]
    if len(ious) == 0:
        nan = float('nan')
        return {'ao': nan, 'sr50': nan, 'sr75': nan,
                'success_curve': np.full(len(GOT10K_THRESHOLDS), np.nan),
                'speed_fps': float(np.mean(1.0 / times)) if len(times) else -1.0}
    return {'ao': float(np.mean(ious)),
            'sr50': float(np.mean(ious > 0.5)),
            'sr75': float(np.mean(ious > 0.75)),
            'success_curve': np.mean(ious[:, None] > GOT10K_THRESHOLDS[None, :], axis=0),
            'speed_fps': float(np.mean(1.0 / times)) if len(times) else -1.0}


# ---------------------------------------------------------------------------------------------
# OPE as in pytracking: pixel-inclusive boxes, frame 0 forced to GT, curves averaged per sequence
# ---------------------------------------------------------------------------------------------
# i * 0.05 in float64 (what numpy's arange gives). Note torch.arange's vectorised CPU kernel can
# round two of these one ulp higher (0.65, 0.75); that only matters for an IoU equal to that ulp.
OPE_OVERLAP_THRESHOLDS = np.arange(21, dtype=np.float64) * 0.05  # success, strict >
OPE_CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)  # precision in pixels, <=
OPE_NORM_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0  # normalised precision, <=


def ope_iou(pred, gt):
    """Pixel-inclusive IoU (right edge x + w - 1) of (N, 4) xywh boxes, -> (N,); no epsilon.

    Algebraically the intersection equals the continuous one; what differs from GOT-10k is
    no clipping to the image, no epsilon and no clip to [0, 1]. Zero union gives NaN.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:] - 1.0, gt[:, :2] + gt[:, 2:] - 1.0)
    inter = np.prod(np.maximum(br - tl + 1.0, 0.0), axis=1)
    union = np.prod(pred[:, 2:], axis=1) + np.prod(gt[:, 2:], axis=1) - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        return inter / union


def ope_center_error(pred, gt, normalized=False):
    """Distance of pixel-inclusive centres c = xy + (wh - 1) / 2 of (N, 4) boxes, -> (N,).

    normalized: both centres are divided by the annotation's (w, h) before the distance.
    numpy's sqrt is correctly rounded; recent torch CPU builds can be one ulp off, which moves a
    count only for an error within one ulp of a threshold.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    c_pred = pred[:, :2] + 0.5 * (pred[:, 2:] - 1.0)
    c_gt = gt[:, :2] + 0.5 * (gt[:, 2:] - 1.0)
    with np.errstate(invalid='ignore', divide='ignore'):  # 0-size GT rows are masked later
        if normalized:
            c_pred, c_gt = c_pred / gt[:, 2:], c_gt / gt[:, 2:]
        return np.sqrt(np.sum((c_pred - c_gt) ** 2, axis=1))


def replace_zero_size(pred):
    """Frames i >= 1 whose predicted w or h is 0 take the (already replaced) box of frame i - 1.

    pred: (T, 4) -> (T, 4) copy. The sequential rule is a forward fill of the last index with a
    non-zero size; frame 0 is never replaced (a zero-size frame 0 propagates as is).
    """
    pred = np.asarray(pred, dtype=np.float64)
    if len(pred) == 0:
        return pred.copy()
    keep = (pred[:, 2] != 0) & (pred[:, 3] != 0)
    source = np.maximum.accumulate(np.where(keep, np.arange(len(pred)), 0))  # falls back to 0
    return pred[source]


def ope_frame_errors(pred, gt, benchmark, visible=None, source='prediction'):
    """Per-frame errors of one sequence under pytracking's `calc_seq_err_robust`.

    pred: (N, 4) tracker boxes; gt: (T, 4) annotation; visible: (T,) bool or None (required for
    lasot); source names the result file in error messages.
    -> iou (T,), center_error (T,) pixels, norm_center_error (T,), valid (T,) bool, where invalid
    frames (annotation w or h <= 0, or not visible) have IoU -1, centre error +inf and normalised
    error -1; for LaSOT invisible frames get +inf for both centre errors.
    """
    if benchmark not in OPE_BENCHMARKS:
        raise ValueError(f'unknown OPE benchmark {benchmark!r}, expected one of {OPE_BENCHMARKS}')
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    T = len(gt)
    if T == 0:
        raise ValueError(f'{source}: the annotation has no frames')
    bad = ~np.isfinite(pred).all(axis=1) | (pred[:, 2:] < 0).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f'{source}:{i + 1}: invalid results (NaN, inf or negative size) '
                         f'at frame {i}: {pred[i].tolist()}')
    if np.isnan(gt).any():  # pytracking allows this for UAV only, which we do not score
        raise ValueError(f'annotation for {source} has NaN at frame {int(np.argmax(np.isnan(gt).any(1)))}')
    if visible is None and benchmark == 'lasot':
        raise ValueError('lasot needs per-frame visibility (full_occlusion / out_of_view)')
    if visible is not None:
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (T,):
            raise ValueError(f'visibility has shape {visible.shape}, annotation has {T} frames')

    # Length: a longer prediction is truncated; a shorter one is an error for LaSOT and padded
    # with zero boxes elsewhere. Replacement only looks back, so truncating before it is
    # identical to pytracking's order; padding comes after it (padded boxes stay zero).
    if len(pred) < T and benchmark == 'lasot':
        raise ValueError(f'{source}: {len(pred)} boxes but the annotation has {T} frames '
                         f'(LaSOT needs one box per frame)')
    pred = replace_zero_size(pred[:T])
    if len(pred) < T:
        pred = np.concatenate([pred, np.zeros((T - len(pred), 4))], axis=0)
    pred[0] = gt[0]  # frame 0 always counts, with IoU 1

    valid = (gt[:, 2] > 0) & (gt[:, 3] > 0)
    if visible is not None:
        valid &= visible
    iou = ope_iou(pred, gt)
    err = ope_center_error(pred, gt)
    err_norm = ope_center_error(pred, gt, normalized=True)
    iou[~valid] = -1.0
    err[~valid] = np.inf
    err_norm[~valid] = -1.0  # quirk: counts as a success for normalised precision
    if benchmark == 'lasot':
        err[~visible] = np.inf
        err_norm[~visible] = np.inf
    if np.isnan(iou).any():
        i = int(np.argmax(np.isnan(iou)))
        raise ValueError(f'{source}:{i + 1}: NaN IoU at frame {i}')
    return iou, err, err_norm, valid


def ope_sequence_curves(iou, err, err_norm):
    """Per-sequence curves over all T frames, stored float32 like pytracking.

    -> success (21,) = count(iou > t) / T, precision (51,) = count(err <= t px) / T,
    norm_precision (51,) = count(err_norm <= t) / T.
    """
    T = np.float32(len(iou))

    def rate(hits):  # (T, K) bool -> (K,) float32, a float32 division like torch's
        return hits.sum(axis=0).astype(np.float32) / T

    return (rate(iou[:, None] > OPE_OVERLAP_THRESHOLDS[None, :]),
            rate(err[:, None] <= OPE_CENTER_THRESHOLDS[None, :]),
            rate(err_norm[:, None] <= OPE_NORM_THRESHOLDS[None, :]))


def ope_dataset_scores(success, precision, norm_precision):
    """Dataset numbers from per-sequence curves (S, 21), (S, 51), (S, 51), in percent.

    Curves are averaged over sequences (equal weight; float64 accumulation of the float32
    curves) and times 100. -> dict AUC = mean of the success curve, P = precision at 20 px,
    Pnorm = normalised precision at 0.20, OP50 / OP75 = success at 0.5 / 0.75, and the curves.
    """
    s = np.mean(np.asarray(success, dtype=np.float64), axis=0) * 100
    p = np.mean(np.asarray(precision, dtype=np.float64), axis=0) * 100
    pn = np.mean(np.asarray(norm_precision, dtype=np.float64), axis=0) * 100
    return {'AUC': float(np.mean(s)), 'P': float(p[20]), 'Pnorm': float(pn[20]),
            'OP50': float(s[10]), 'OP75': float(s[15]),
            'success_curve': s, 'precision_curve': p, 'norm_precision_curve': pn}


# ---------------------------------------------------------------------------------------------
# Readers for the official formats; every error names the file (and line)
# ---------------------------------------------------------------------------------------------
_SEPARATORS = re.compile(r'\s*,\s*|\s+')  # one comma, or a run of whitespace


def read_boxes(path, allow_negative=False):
    """Read one xywh box per line (comma, tab or whitespace separated) -> (T, 4) float64.

    Blank lines are skipped. Wrong column count, unparsable numbers, NaN or inf, and negative
    w/h (unless allow_negative) raise ValueError naming `path:line`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: file not found')
    text = path.read_text()
    boxes = _parse_boxes_fast(text)
    if (boxes is not None and np.isfinite(boxes).all()
            and (allow_negative or not (boxes[:, 2:] < 0).any())):
        return boxes
    return _parse_boxes_by_line(text, path, allow_negative)  # finds and names the bad line


def _parse_boxes_fast(text):
    """numpy's C parser for a well-formed file -> (T, 4), or None when anything is off."""
    delimiter = ',' if ',' in text else None  # None: runs of tabs / spaces
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "input contained no data"
            boxes = np.loadtxt(io.StringIO(text), delimiter=delimiter, comments=None,
                               dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    return boxes if boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) else None


def _parse_boxes_by_line(text, path, allow_negative):
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = _SEPARATORS.split(line)
        if len(fields) != 4:
            raise ValueError(f'{path}:{lineno}: expected 4 values x,y,w,h, got {len(fields)}: {line!r}')
        try:
            box = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f'{path}:{lineno}: not a number in {line!r}') from None
        if not np.isfinite(box).all():
            raise ValueError(f'{path}:{lineno}: NaN or inf in box {line!r}')
        if not allow_negative and (box[2] < 0 or box[3] < 0):
            raise ValueError(f'{path}:{lineno}: negative width or height in box {line!r}')
        rows.append(box)
    if not rows:
        raise ValueError(f'{path}: no boxes')
    return np.asarray(rows, dtype=np.float64)


def read_numbers(path):
    """All numbers of a file, comma or whitespace separated, in order -> (N,) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: file not found')
    values = [np.zeros(0)]
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if line:
            try:
                values.append(np.asarray(_SEPARATORS.split(line), dtype=np.float64))
            except ValueError:
                raise ValueError(f'{path}:{lineno}: not a number in {line!r}') from None
    return np.concatenate(values)


def read_flags(path, length):
    """A per-frame 0/1 file (LaSOT full_occlusion.txt / out_of_view.txt) -> (length,) bool."""
    flags = read_numbers(path)
    if len(flags) != length:
        raise ValueError(f'{path}: {len(flags)} values, the annotation has {length} frames')
    if not np.isin(flags, (0, 1)).all():
        raise ValueError(f'{path}: values must be 0 or 1, found {flags[~np.isin(flags, (0, 1))][0]}')
    return flags.astype(bool)


def read_sequence_list(path):
    """One sequence name per line (blank lines skipped) -> list of str."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: sequence list not found')
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f'{path}: empty sequence list')
    return names


def read_got10k_resolution(path):
    """The `resolution: (W, H)` line of a GOT-10k meta_info.ini -> (W, H) floats."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: file not found')
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        key, sep, value = line.partition(':')
        if sep and key.strip() == 'resolution':
            try:
                W, H = ast.literal_eval(value.strip())
                return float(W), float(H)
            except (ValueError, SyntaxError, TypeError):
                raise ValueError(f'{path}:{lineno}: expected "resolution: (W, H)", got {line!r}') from None
    raise ValueError(f'{path}: no "resolution: (W, H)" line')


# ---------------------------------------------------------------------------------------------
# Dataset-level scoring
# ---------------------------------------------------------------------------------------------
def _repetition_files(seq_dir, seq):
    """<seq>_NNN.txt files in seq_dir sorted by repetition number (not <seq>_time.txt)."""
    pattern = re.compile(re.escape(seq) + r'_(\d+)\.txt')
    found = [(int(m.group(1)), p) for p in seq_dir.glob(f'{seq}_*.txt')
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def score_got10k(results_dir, data_root, split='val', sequences=None):
    """Score GOT-10k results with the toolkit's rules (pooled frames; see module docstring).

    results_dir: folder holding <seq>/<seq>_NNN.txt; data_root: GOT-10k root holding <split>/;
    sequences: optional list of names (default: <split>/list.txt).
    Returns a dict, scores in percent:
        benchmark 'got10k', split, num_sequences, num_frames (pooled scored frames),
        repetitions (min, max number of repetitions per sequence),
        AO, SR0.5, SR0.75 (pooled over all scored frames of all repetitions and sequences),
        speed_fps (mean 1/t over all positive times, -1 if none),
        thresholds (101,) and success_curve (101,) as lists,
        sequences: {name: {AO, SR0.5, SR0.75 (None when no frame is scored), speed_fps,
                           length (frames - 1, as the toolkit), num_frames_scored,
                           num_repetitions}}.
    """
    if split == 'test':
        raise ValueError('GOT-10k test annotations are hidden: submit the zipped results to the '
                         'evaluation server; local scoring is for val and train')
    results_dir, split_dir = Path(results_dir), Path(data_root) / split
    if sequences is None:
        sequences = read_sequence_list(split_dir / 'list.txt')
    all_ious, all_times, per_seq, reps = [], [], {}, []
    for seq in sequences:
        seq_dir = split_dir / seq
        gt = read_boxes(seq_dir / 'groundtruth.txt')
        cover = read_numbers(seq_dir / 'cover.label')
        if len(cover) != len(gt):
            raise ValueError(f'{seq_dir / "cover.label"}: {len(cover)} values, '
                             f'{seq_dir / "groundtruth.txt"} has {len(gt)} frames')
        bound = read_got10k_resolution(seq_dir / 'meta_info.ini')
        files = _repetition_files(results_dir / seq, seq)
        if not files:
            raise FileNotFoundError(f'{results_dir / seq / (seq + "_001.txt")}: results for '
                                    f'{seq} not found (expected <seq>/<seq>_NNN.txt)')
        seq_ious = []
        for f in files:
            pred = read_boxes(f, allow_negative=True)  # the toolkit clips negative sizes to 0
            if pred.shape != gt.shape:
                raise ValueError(f'{f}: {len(pred)} boxes, the annotation has {len(gt)} frames '
                                 f'(every repetition must match it)')
            seq_ious.append(got10k_sequence_ious(pred, gt, cover, bound))
        seq_ious = np.concatenate(seq_ious)
        time_file = results_dir / seq / f'{seq}_time.txt'
        seq_times = read_numbers(time_file) if time_file.is_file() else np.zeros(0)
        s = got10k_scores(seq_ious, seq_times)
        per_seq[seq] = {'AO': _percent(s['ao']), 'SR0.5': _percent(s['sr50']),
                        'SR0.75': _percent(s['sr75']), 'speed_fps': s['speed_fps'],
                        'length': len(gt) - 1, 'num_frames_scored': len(seq_ious),
                        'num_repetitions': len(files)}
        all_ious.append(seq_ious)
        all_times.append(seq_times)
        reps.append(len(files))
    ious = np.concatenate(all_ious)
    if len(ious) == 0:
        raise ValueError(f'{split_dir}: no scored frame (all frames after the first have cover 0)')
    s = got10k_scores(ious, np.concatenate(all_times))
    return {'benchmark': 'got10k', 'split': split, 'num_sequences': len(sequences),
            'num_frames': len(ious), 'repetitions': (min(reps), max(reps)),
            'AO': s['ao'] * 100, 'SR0.5': s['sr50'] * 100, 'SR0.75': s['sr75'] * 100,
            'speed_fps': s['speed_fps'], 'thresholds': GOT10K_THRESHOLDS.tolist(),
            'success_curve': (s['success_curve'] * 100).tolist(), 'sequences': per_seq}


def _percent(x):
    return None if np.isnan(x) else x * 100


def ope_sequences(data_root, benchmark, split=None, sequences=None):
    """Find the annotation of each sequence -> list of (name, groundtruth path, seq folder or None).

    Sequence order: the given list, LaSOT's testing_set.txt, or sorted discovery.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f'{root}: dataset root not found')
    if benchmark in ('lasot', 'lasot_ext'):
        if sequences is None and (root / 'testing_set.txt').is_file():
            sequences = read_sequence_list(root / 'testing_set.txt')
        if sequences is None:
            sequences = sorted(p.parent.name for p in root.glob('*/*/groundtruth.txt'))
            if benchmark == 'lasot':
                print(f'WARNING: {root / "testing_set.txt"} not found and no --sequences given: '
                      f'scoring ALL {len(sequences)} sequences found, which is NOT the official '
                      f'280-sequence LaSOT test protocol', file=sys.stderr)
        out = []
        for name in sequences:
            seq_dir = root / name.rsplit('-', 1)[0] / name
            out.append((name, seq_dir / 'groundtruth.txt', seq_dir))
        return out
    if benchmark == 'tnl2k':
        names = sequences or sorted(p.parent.name for p in root.glob('*/groundtruth.txt'))
        return [(n, root / n / 'groundtruth.txt', None) for n in names]
    if benchmark == 'otb':
        names = sequences or sorted(p.parent.name for p in root.glob('*/groundtruth_rect.txt'))
        return [(n, root / n / 'groundtruth_rect.txt', None) for n in names]
    if benchmark == 'trackingnet':
        if split is None:
            raise ValueError('trackingnet needs --split (a TRAIN_k folder)')
        if split.upper() == 'TEST':
            raise ValueError('TrackingNet TEST annotations are hidden: submit the zipped '
                             '<seq>.txt files to the evaluation server')
        anno = root / split / 'anno'
        names = sequences or sorted(p.stem for p in anno.glob('*.txt'))
        return [(n, anno / f'{n}.txt', None) for n in names]
    raise ValueError(f'unknown OPE benchmark {benchmark!r}, expected one of {OPE_BENCHMARKS}')


def score_ope(results_dir, data_root, benchmark, split=None, sequences=None):
    """Score OPE results (pytracking rules) for lasot, lasot_ext, tnl2k, trackingnet or otb.

    results_dir: folder of <seq>.txt; data_root: dataset root (layouts in the module docstring);
    split: TrackingNet TRAIN_k folder; sequences: optional list of names.
    Returns a dict, scores in percent:
        benchmark, split, num_sequences,
        AUC (mean of the 21-point success curve), P (precision at 20 px), Pnorm (normalised
        precision at 0.20), OP50, OP75 (success at IoU 0.5, 0.75),
        thresholds_overlap (21,), thresholds_center (51,), thresholds_norm (51,),
        success_curve (21,), precision_curve (51,), norm_precision_curve (51,) as lists,
        sequences: {name: {AUC, P, Pnorm, length (annotation frames), num_valid (valid frames),
                           mean_iou (over valid frames, fraction; None if none is valid)}}.
    """
    if split is not None and benchmark != 'trackingnet':
        raise ValueError(f'--split is only used for got10k and trackingnet, not {benchmark}')
    results_dir = Path(results_dir)
    found = ope_sequences(data_root, benchmark, split, sequences)
    if not found:
        raise ValueError(f'{data_root}: no {benchmark} sequence found')
    curves, per_seq = ([], [], []), {}
    for name, gt_path, seq_dir in found:
        gt = read_boxes(gt_path)
        visible = None
        if benchmark in VISIBILITY_BENCHMARKS:
            occluded = read_flags(seq_dir / 'full_occlusion.txt', len(gt))
            out_of_view = read_flags(seq_dir / 'out_of_view.txt', len(gt))
            visible = ~occluded & ~out_of_view
        result_path = results_dir / f'{name}.txt'
        if not result_path.is_file():
            raise FileNotFoundError(f'{result_path}: result for sequence {name} not found')
        pred = read_boxes(result_path)  # NaN / negative size are errors with file:line
        iou, err, err_norm, valid = ope_frame_errors(pred, gt, benchmark, visible, str(result_path))
        seq_curves = ope_sequence_curves(iou, err, err_norm)
        for acc, c in zip(curves, seq_curves):
            acc.append(c)
        per_seq[name] = {'AUC': float(np.mean(seq_curves[0], dtype=np.float64) * 100),
                         'P': float(seq_curves[1][20]) * 100, 'Pnorm': float(seq_curves[2][20]) * 100,
                         'length': len(gt), 'num_valid': int(valid.sum()),
                         'mean_iou': float(iou[valid].mean()) if valid.any() else None}
    scores = ope_dataset_scores(*curves)
    return {'benchmark': benchmark, 'split': split, 'num_sequences': len(found),
            'AUC': scores['AUC'], 'P': scores['P'], 'Pnorm': scores['Pnorm'],
            'OP50': scores['OP50'], 'OP75': scores['OP75'],
            'thresholds_overlap': OPE_OVERLAP_THRESHOLDS.tolist(),
            'thresholds_center': OPE_CENTER_THRESHOLDS.tolist(),
            'thresholds_norm': OPE_NORM_THRESHOLDS.tolist(),
            'success_curve': scores['success_curve'].tolist(),
            'precision_curve': scores['precision_curve'].tolist(),
            'norm_precision_curve': scores['norm_precision_curve'].tolist(),
            'sequences': per_seq}


# ---------------------------------------------------------------------------------------------
# Summary, plots, command line
# ---------------------------------------------------------------------------------------------
def summary_line(result):
    """The one-line summary of a score_got10k / score_ope dict."""
    if result['benchmark'] == 'got10k':
        lo, hi = result['repetitions']
        reps = f'{lo} rep' if lo == hi == 1 else (f'{lo} reps' if lo == hi else f'{lo}-{hi} reps')
        return (f"GOT-10k {result['split']}: AO {result['AO']:.2f} SR0.5 {result['SR0.5']:.2f} "
                f"SR0.75 {result['SR0.75']:.2f} ({result['num_sequences']} seqs, {reps})")
    name = BENCHMARK_NAMES[result['benchmark']]
    if result['split']:
        name += f" {result['split']}"
    return (f"{name}: AUC {result['AUC']:.2f} P {result['P']:.2f} Pnorm {result['Pnorm']:.2f} "
            f"({result['num_sequences']} seqs)")


def write_plots(result, plot_dir):
    """Success (and for OPE precision / normalised precision) plots as PNG; -> list of paths.

    matplotlib is optional: when it is missing, print a message and return [].
    """
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('--plot needs matplotlib, which is not installed (pip install matplotlib); '
              'no plots written', file=sys.stderr)
        return []
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    b, title = result['benchmark'], summary_line(result)
    if b == 'got10k':
        panels = [('success', result['thresholds'], result['success_curve'], 'overlap threshold',
                   f"AO {result['AO']:.2f}")]
    else:
        panels = [('success', result['thresholds_overlap'], result['success_curve'],
                   'overlap threshold', f"AUC {result['AUC']:.2f}"),
                  ('precision', result['thresholds_center'], result['precision_curve'],
                   'location error threshold (px)', f"P@20 {result['P']:.2f}"),
                  ('norm_precision', result['thresholds_norm'], result['norm_precision_curve'],
                   'normalised location error threshold', f"Pnorm@0.2 {result['Pnorm']:.2f}")]
    paths = []
    for kind, x, y, xlabel, label in panels:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(x, y, label=label)
        ax.set(xlabel=xlabel, ylabel='rate (%)', ylim=(0, 100), title=title)
        ax.title.set_fontsize(8)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = plot_dir / f'{b}_{kind}.png'
        tmp = path.with_name(f'.{path.name}.tmp.png')  # atomic, as every evaluator output
        try:
            fig.savefig(tmp, dpi=120, bbox_inches='tight')
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(err.errno, f'{path}: cannot write the plot ({err.strerror or err})') from None
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description='Score single-object-tracking results.')
    parser.add_argument('--benchmark', required=True, choices=sorted(BENCHMARK_NAMES))
    parser.add_argument('--results', required=True, help='folder of result files')
    parser.add_argument('--data-path', required=True, help='dataset root')
    parser.add_argument('--split', default=None,
                        help='got10k: val (default) or train; trackingnet: a TRAIN_k folder')
    parser.add_argument('--sequences', default=None, help='file with one sequence name per line')
    parser.add_argument('--out', default=None, help='write the full result dict as JSON here')
    parser.add_argument('--plot', default=None, help='write PNG plots into this folder')
    args = parser.parse_args(argv)

    try:
        sequences = read_sequence_list(args.sequences) if args.sequences else None
        if args.benchmark == 'got10k':
            result = score_got10k(args.results, args.data_path, args.split or 'val', sequences)
        else:
            result = score_ope(args.results, args.data_path, args.benchmark, args.split, sequences)
    except (FileNotFoundError, ValueError) as e:  # bad input: the message names the file
        parser.exit(2, f'error: {e}\n')
    print(summary_line(result))
    if args.out:  # after the summary line: a failing write cannot lose the score
        try:
            write_atomic(args.out, json.dumps(result, indent=1) + '\n')
        except OSError as err:
            parser.exit(1, f'error: {err}\n')
    if args.plot:
        try:
            for path in write_plots(result, args.plot):
                print(f'wrote {path}')
        except OSError as err:
            parser.exit(1, f'error: {err}\n')
    return result


if __name__ == '__main__':
    main()
