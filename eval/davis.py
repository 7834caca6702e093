"""DAVIS 2016 / 2017 semi-supervised J&F, numerically identical to the official toolkit.

Definitions follow `specs/metrics-dense.md` section 1 (github davisvideochallenge/
davis2017-evaluation at ac7c43f, "D17"; DAVIS 2016 as in hkchengrex/davis2016-evaluation,
"D16F"). Every per-frame J and F, every per-object Mean / Recall / Decay and the global numbers
are the same float64 values the official code computes, on every input it handles.

Protocol (D17, semi-supervised):
- GT: `Annotations/480p/<seq>/*.png` (sorted names), palette indices. 255 = void, set to 0
  (void pixels count as background; predicted pixels there are false positives).
- Objects: `K = max id of GT frame 0`. Objects are 1..K even when an id in between is missing
  (frame-0 ids {1, 3} -> 3 objects, object 2 empty everywhere). A GT id > K appearing later is
  background.
- Only frames 1..T-2 are scored (the first and last frame are dropped); the result PNGs of
  frames 0 and T-1 are never opened. Results: `<results>/<seq>/<gt name>.png`, indexed.
- J = |G & P| / |G | P| (1 when both are empty). F = boundary F-measure with tolerance
  `ceil(0.008 * sqrt(H^2 + W^2))` px (8 px at 480x854) and a disk of that radius.
- Per object: M = mean, R = fraction of frames > 0.5, D = mean(first quarter) - mean(last
  quarter) (`object_statistics`). Global numbers = plain means over ALL objects of ALL
  sequences (a 3-object sequence weighs 3x); `J&F-Mean = (J-Mean + F-Mean) / 2`.
- DAVIS 2016 (`--year 2016`, D16F): sequences from `ImageSets/2016/<set>.txt` of the DAVIS-2017
  trainval folder, GT = union of all object ids (255 still void), results binarised with
  `> 128` (write 0/255 masks: a 0/1 PNG scores as empty, and we warn when we see one).

Where the official code crashes, exits or returns a wrong value we return the intended value or
raise a clear error (never a different number for an input it handles):
- a result id > K: the official toolkit prints "index higher than the number of objects" and
  calls `sys.exit()`; we raise `ValueError` naming the PNG and the id;
- T <= 2 (no scored frame; official IndexError), a missing interior result frame (official
  `sys.exit`), a result of another size than the GT (official assertion / broadcast error), a
  non-indexed (RGB) PNG, no object at all in the whole set (official: NaN means): `ValueError` /
  `FileNotFoundError` naming the file or folder;
- Decay past 255 scored frames: the official code casts the bin indices to uint8, so they
  wrap (under NumPy 2 already `ids + 1` at n = 256) and the last bin is empty (D = NaN) or
  wrong; we use int64 indices, i.e. the intended value. For n <= 255 nothing differs.
- A sequence with more JPEGs than annotations crashes the official reader; we raise naming
  the first missing annotation. The JPEG folder itself is optional here (never read).
- A GT frame 0 without objects (K = 0) contributes no object, as in the official code.
- Dotted frame names: the official code drops the dots of the stem ("a.b.png" -> "ab"); we keep
  the stem. Existing CSVs in the output folder are overwritten (the official script would
  print them instead of evaluating again).

Speed: F is computed without dilating whole frames. A boundary pixel is matched iff the disk-
dilated other boundary covers it, i.e. iff some other boundary pixel lies at an offset (dy, dx)
with dy^2 + dx^2 <= r^2. We evaluate that dilation only at the boundary pixels where it is read:
all boundary pixels of all objects and frames of a sequence are encoded as sorted integer keys,
and for each of the 2r+1 row offsets dy one `searchsorted` finds the nearest other boundary
pixel in that row, matched iff it is at most floor(sqrt(r^2 - dy^2)) away. `boundary_f` is the
dense per-frame reference (scipy binary_dilation with the official disk); tests pin both equal.
See `reproduce/bench_eval.py` for timings.

Commands:

    python -m eval.davis --davis-path DAVIS --results runs/vos/davis17_val
    python -m eval.davis --davis-path DAVIS --results runs/vos/davis16_val --year 2016
    python -m eval.davis --davis-path DAVIS --results R --set val --out R/eval --workers 4

prints `DAVIS-2017 val: J&F 83.00 J 80.20 F 85.70 (30 seqs, 59 objects)` and writes
`global_results-<set>.csv`, `per-sequence_results-<set>.csv` (official format) and
`davis<year>_results-<set>.json` to `--out` (default: the results folder, like the toolkit).
"""
import argparse
import json
import math
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from eval.output import write_atomic

BOUND_TH = 0.008  # boundary tolerance as a fraction of the frame diagonal
VOID_ID = 255
D16_THRESHOLD = 128  # D16F binarises results with `> 128`
INDEXED_MODES = ('P', 'L', '1', 'I', 'I;16')  # PIL modes that decode to one index per pixel
GLOBAL_COLUMNS = ['J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay']
SEQUENCE_COLUMNS = ['Sequence', 'J-Mean', 'F-Mean']


# ------------------------------------------------------------------------------------------
# Reference measures on one frame (the official algorithm, step by step)


def boundary_tolerance(height, width, bound_th=BOUND_TH):
    """Boundary tolerance in pixels: `ceil(bound_th * sqrt(H^2 + W^2))` for `bound_th < 1`
    (480x854 -> 8, 480x910 -> 9, 1080x1920 -> 18), else `bound_th` itself (an integer)."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f'bound_th >= 1 must be a whole number of pixels, got {bound_th}')
        return int(bound_th)
    return int(math.ceil(bound_th * math.sqrt(float(height * height + width * width))))


def disk(radius):
    """(2r+1, 2r+1) bool disk: offsets with dx^2 + dy^2 <= r^2 (skimage.morphology.disk, the
    structuring element of the official dilation; 197 ones at r = 8)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius


def seg2bmap(mask):
    """1-pixel boundary map of a binary mask (D. Martin's BSDS `seg2bmap`). mask: (H, W) ->
    (H, W) bool.

    A pixel is a boundary pixel iff it differs from its east, south or south-east neighbour.
    Neighbours outside the image never count (the official code's last-row / last-column
    rules), so the image frame is never a boundary and a full-frame mask has no boundary. The
    boundary sits half a pixel towards the origin: on a left / top edge the background pixel
    just outside is marked, on a right / bottom edge the foreground pixel just inside.
    """
    m = np.asarray(mask, bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]  # east
    b[:-1, :] |= m[:-1, :] != m[1:, :]  # south
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]  # south-east
    return b


def region_j(gt, pred):
    """Region similarity J = |G & P| / |G | P| of boolean masks, 1 where both are empty.
    gt, pred: (..., H, W) -> (...) float64 (a float for single frames)."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f'region_j: GT {gt.shape} and prediction {pred.shape} differ in shape')
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(divide='ignore', invalid='ignore'):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


def precision_recall_f(n_pred, n_gt, matched_pred, matched_gt):
    """Boundary F-measure from boundary pixel counts, with the official empty conventions.
    All arguments are integer arrays (or ints) of one shape -> float64 F of that shape.

    precision = matched_pred / n_pred, recall = matched_gt / n_gt; no predicted boundary ->
    P = 1, R = 0; no GT boundary -> P = 0, R = 1; neither -> P = R = 1. F = 2PR / (P + R),
    0 when P + R = 0.
    """
    n_pred, n_gt = np.asarray(n_pred), np.asarray(n_gt)
    with np.errstate(divide='ignore', invalid='ignore'):
        precision = np.where(n_pred == 0, 1.0, np.asarray(matched_pred) / np.maximum(n_pred, 1))
        recall = np.where(n_gt == 0, 1.0, np.asarray(matched_gt) / np.maximum(n_gt, 1))
    precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    total = precision + recall
    with np.errstate(divide='ignore', invalid='ignore'):
        f = np.where(total == 0, 0.0, 2 * precision * recall / np.where(total == 0, 1, total))
    return f


def boundary_f(gt, pred, bound_th=BOUND_TH):
    """Boundary measure F of one frame, the dense reference. gt, pred: (H, W) masks -> float.

    Boundary maps by `seg2bmap`, each dilated with `disk(r)` (scipy binary_dilation; outside
    the image counts as empty), r = `boundary_tolerance(H, W, bound_th)`; a predicted boundary
    pixel is matched when the dilated GT boundary covers it, and vice versa.
    """
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f'boundary_f: expected two (H, W) masks, got {gt.shape} and {pred.shape}')
    structure = disk(boundary_tolerance(*gt.shape, bound_th))
    b_gt, b_pred = seg2bmap(gt), seg2bmap(pred)
    matched_pred = np.sum(b_pred & ndimage.binary_dilation(b_gt, structure))
    matched_gt = np.sum(b_gt & ndimage.binary_dilation(b_pred, structure))
    return float(precision_recall_f(b_pred.sum(), b_gt.sum(), matched_pred, matched_gt))


# ------------------------------------------------------------------------------------------
# Fast J and F of a whole sequence


def _boundary_keys(labels, t, n_frames, row_stride, frame_stride):
    """Boundary pixels of every object of one label frame as integer keys.
    labels: (H, W) ids in 0..K -> (N,) int64 keys
    `((k - 1) * n_frames + t) * frame_stride + y * row_stride + x`, unsorted, with duplicates.

    Pixel p is a boundary pixel of object k iff for some neighbour n in {E, S, SE} (outside
    the image: no neighbour) labels[p] != labels[n] and k is one of the two; this equals
    `seg2bmap(labels == k)` for every k at once.
    """
    h, w = labels.shape
    differs = np.zeros((h, w), bool)
    np.not_equal(labels[:, :-1], labels[:, 1:], out=differs[:, :-1])
    differs[:-1] |= labels[:-1] != labels[1:]
    differs[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    idx = np.flatnonzero(differs)
    y, x = np.divmod(idx, w)
    flat = labels.ravel()
    own = flat[idx]
    step_e, step_s = (x < w - 1).astype(np.int64), (y < h - 1) * w  # stay put at the border
    objects, pixels = [own], [idx]
    for nb in (flat[idx + step_e], flat[idx + step_s], flat[idx + step_e + step_s]):
        other = nb != own
        objects.append(nb[other])
        pixels.append(idx[other])
    objects, pixels = np.concatenate(objects).astype(np.int64), np.concatenate(pixels)
    keep = objects > 0
    y, x = np.divmod(pixels[keep], w)
    return ((objects[keep] - 1) * n_frames + t) * frame_stride + y * row_stride + x


def _matched(query, ref, radius, row_stride):
    """For each sorted key in `query`, whether a key of `ref` (sorted) lies within the disk of
    `radius` around it: the disk dilation of `ref` read at the `query` pixels. -> (N,) bool.

    Rows are `row_stride > W + radius` apart and frames `radius` empty rows apart, so two keys
    within `radius` of each other are always in the same row of the same object and frame.
    Row offsets are tried nearest first and matched queries dropped, so a good prediction
    needs few searches.
    """
    hit = np.zeros(query.shape, bool)
    todo = np.arange(query.size)  # queries not matched yet
    for dy in sorted(range(-radius, radius + 1), key=abs):
        if todo.size == 0 or ref.size == 0:
            break
        half_width = math.isqrt(radius * radius - dy * dy)  # disk row dy spans |dx| <= this
        q = query[todo] + dy * row_stride
        i = np.searchsorted(ref, q)
        after = ref[np.minimum(i, ref.size - 1)]
        before = ref[np.maximum(i - 1, 0)]
        near = (np.abs(after - q) <= half_width) | (np.abs(q - before) <= half_width)
        hit[todo[near]] = True
        todo = todo[~near]
    return hit


def _sorted_unique(chunks):
    """Concatenate int64 key arrays -> sorted keys without duplicates."""
    keys = np.sort(np.concatenate(chunks))
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys


def eval_sequence(gt, pred, n_obj, bound_th=BOUND_TH):
    """Per-frame J and F of objects 1..n_obj on every frame given.

    gt, pred: (T, H, W) non-negative integer label maps (0 = background) of the SCORED frames
    (the DAVIS protocol passes frames 1..T-2; `evaluate_davis` does that). GT ids > n_obj are
    background (objects appearing after frame 0, and the void id 255 if left in); a predicted id
    > n_obj is an error (the official toolkit exits). -> J, F: (n_obj, T) float64 each.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(f'eval_sequence: expected GT and prediction of one shape (T, H, W), '
                         f'got {gt.shape} and {pred.shape}')
    for name, a in (('GT', gt), ('prediction', pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f'eval_sequence: {name} must hold integer ids, got {a.dtype}')
        if a.size and a.min() < 0:
            raise ValueError(f'eval_sequence: {name} has negative ids')
    n_frames, h, w = gt.shape
    if n_frames == 0:
        raise ValueError('eval_sequence: no frame to score')
    k = int(n_obj)
    if pred.size and pred.max() > k:
        bad = np.argwhere(pred.reshape(n_frames, -1).max(1) > k)[0, 0]
        raise ValueError(f'eval_sequence: prediction frame {bad} uses id {pred[bad].max()} but '
                         f'there are {k} objects')
    if gt.size and gt.max() > k:
        gt = np.where(gt > k, 0, gt)
    radius = boundary_tolerance(h, w, bound_th)
    row_stride = w + radius + 1
    frame_stride = (h + radius) * row_stride

    confusion = np.empty((n_frames, k + 1, k + 1), np.int64)  # [t, gt id, pred id] pixel counts
    n_pairs = (k + 1) ** 2
    pair_dtype = np.uint8 if n_pairs <= 256 else np.uint16 if n_pairs <= 65536 else np.intp
    keys_gt, keys_pred = [], []
    for t in range(n_frames):
        pair = gt[t].astype(pair_dtype) * pair_dtype(k + 1) + pred[t].astype(pair_dtype)
        confusion[t] = np.bincount(pair.ravel(), minlength=n_pairs).reshape(k + 1, k + 1)
        keys_gt.append(_boundary_keys(gt[t], t, n_frames, row_stride, frame_stride))
        keys_pred.append(_boundary_keys(pred[t], t, n_frames, row_stride, frame_stride))

    # J: intersection = diagonal, |G| = row sums, |P| = column sums (object ids 1..K)
    inter = np.diagonal(confusion, axis1=1, axis2=2)[:, 1:].T  # (K, T)
    area_gt = confusion.sum(2)[:, 1:].T
    area_pred = confusion.sum(1)[:, 1:].T
    union = area_gt + area_pred - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))

    # F: boundary pixels of all objects and frames as sorted keys, matched within the disk
    b_gt, b_pred = _sorted_unique(keys_gt), _sorted_unique(keys_pred)
    def counts(keys):  # number of keys per (object, frame) -> (K, T)
        return np.bincount(keys // frame_stride, minlength=k * n_frames).reshape(k, n_frames)

    matched_pred = b_pred[_matched(b_pred, b_gt, radius, row_stride)]
    matched_gt = b_gt[_matched(b_gt, b_pred, radius, row_stride)]
    f = precision_recall_f(counts(b_pred), counts(b_gt), counts(matched_pred), counts(matched_gt))
    return j, f


def object_statistics(values):
    """Mean, Recall and Decay of one object's per-frame J (or F) values (`db_statistics`).
    values: (n,) float64 -> (M, R, D) floats.

    M = nanmean(v); R = mean(v > 0.5) (strict); D = nanmean(bin 0) - nanmean(bin 3) with
    `ids = round(linspace(1, n, 5) + 1e-10) - 1` and bin i = v[ids[i] : ids[i+1] + 1]
    (neighbouring bins share their end frame). n = 48 -> bins [0:13], [12:25], [24:36], [35:48];
    n = 1 -> D = 0. The official code casts `ids` to uint8, which wraps beyond 255 scored
    frames (D NaN or a wrong bin); we keep int64 indices, the intended value.
    """
    v = np.asarray(values, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        mean = np.nanmean(v)
        recall = np.nanmean(v > 0.5)
        ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
        decay = np.nanmean(v[ids[0]:ids[1] + 1]) - np.nanmean(v[ids[3]:ids[4] + 1])
    return float(mean), float(recall), float(decay)


def summarize(per_object):
    """Global numbers from per-object statistics, averaged over ALL objects (evaluation_method).
    per_object: {'<seq>_<k>': {'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', ...}} -> dict of the
    seven GLOBAL_COLUMNS."""
    if not per_object:
        raise ValueError('no object to evaluate: every sequence has an empty first-frame '
                         'annotation (the official toolkit would report NaN)')
    stats = {name: np.mean([o[name] for o in per_object.values()]) for name in GLOBAL_COLUMNS[1:]}
    out = {'J&F-Mean': float((stats['J-Mean'] + stats['F-Mean']) / 2.0)}
    out.update({name: float(v) for name, v in stats.items()})
    return out


# ------------------------------------------------------------------------------------------
# Reader for the official layout


def read_index_png(path):
    """One indexed PNG (palette or grey) -> (H, W) integer ids. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: missing')
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in INDEXED_MODES:
                raise ValueError(f'{path}: expected an indexed PNG (palette or grey, one id per '
                                 f'pixel), got PIL mode {mode}')
            a = np.array(im)
    except (OSError, SyntaxError) as e:
        raise ValueError(f'{path}: cannot decode PNG ({e})') from e
    return a.astype(np.uint8) if a.dtype == bool else a


def _read_frames(paths, workers):
    """Decode many PNGs (Pillow releases the GIL while decoding) -> list of (H, W) arrays."""
    if workers <= 1 or len(paths) < 2:
        return [read_index_png(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(read_index_png, paths))


def _stack(frames, paths, shape, what):
    """Stack frames after checking each has `shape` (H, W); errors name the odd file."""
    for a, p in zip(frames, paths):
        if a.shape != shape:
            raise ValueError(f'{p}: {what} is {a.shape[1]}x{a.shape[0]} (WxH), expected '
                             f'{shape[1]}x{shape[0]} like the annotation')
    return np.stack(frames) if frames else np.zeros((0, *shape), np.uint8)


def read_sequence_list(davis_root, split, year):
    """Sequence names of `ImageSets/<year>/<split>.txt` in file order (blank lines ignored,
    duplicates kept once, like the official dict)."""
    path = Path(davis_root) / 'ImageSets' / str(year) / f'{split}.txt'
    if not path.is_file():
        raise FileNotFoundError(f'{path}: sequence list not found (DAVIS-2017 trainval layout '
                                f'expected, it also holds ImageSets/2016)')
    names = [line.strip() for line in path.read_text().splitlines()]
    return list(dict.fromkeys(n for n in names if n))


def annotation_paths(davis_root, seq):
    """Sorted `Annotations/480p/<seq>/*.png`; checks against `JPEGImages/480p/<seq>/*.jpg`
    when that folder exists (fewer annotations than images crash the official code)."""
    folder = Path(davis_root) / 'Annotations' / '480p' / seq
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: annotation folder of sequence {seq} not found')
    paths = sorted(folder.glob('*.png'))
    if len(paths) <= 2:
        raise ValueError(f'{folder}: {len(paths)} annotated frames; the protocol drops the first '
                         f'and last frame, so at least 3 are needed')
    images = Path(davis_root) / 'JPEGImages' / '480p' / seq
    jpgs = sorted(images.glob('*.jpg')) if images.is_dir() else []
    if len(jpgs) > len(paths):
        stems = {p.stem for p in paths}
        first = next((p for p in jpgs if p.stem not in stems), jpgs[len(paths)])
        raise FileNotFoundError(f'{folder / (first.stem + ".png")}: annotation missing '
                                f'({len(jpgs)} images in {images}, {len(paths)} annotations)')
    return paths


def read_sequence(davis_root, results_dir, seq, year=2017, workers=2):
    """GT and result labels of the scored frames of one sequence.
    -> (gt (T-2, H, W), pred (T-2, H, W), n_obj, frame names of the scored frames).

    2017: GT ids of frame 0 define n_obj; void 255 -> 0; result ids > n_obj are an error.
    2016: GT = any id in 1..254, results = pixel > 128; n_obj = 1.
    The last GT frame is not read (it is never scored).
    """
    gt_paths = annotation_paths(davis_root, seq)
    scored = gt_paths[1:-1]  # the first and last frame are never scored
    res_paths = [Path(results_dir) / seq / f'{p.stem}.png' for p in scored]
    for p in res_paths:
        if not p.is_file():
            raise FileNotFoundError(f'{p}: result frame missing (frames 1..T-2 of {seq} are '
                                    f'scored; name them like the annotations)')
    frames = _read_frames([gt_paths[0], *scored, *res_paths], workers)
    first, gt_frames, res_frames = frames[0], frames[1:len(scored) + 1], frames[len(scored) + 1:]
    shape = first.shape
    gt = _stack(gt_frames, scored, shape, 'annotation')
    pred = _stack(res_frames, res_paths, shape, 'result')
    names = [p.stem for p in scored]
    if year == 2016:
        if not ((first > 0) & (first != VOID_ID)).any() and (first == VOID_ID).any():
            raise ValueError(f'{gt_paths[0]}: only 0/255 pixels; this looks like the original '
                             f'DAVIS-2016 layout, the 2016 protocol reads the DAVIS-2017 folder')
        binary = pred > D16_THRESHOLD
        if not binary.any() and pred.any():
            print(f'warning: {Path(results_dir) / seq}: result pixels are non-zero but none '
                  f'> {D16_THRESHOLD}; DAVIS-2016 binarises with > {D16_THRESHOLD}, so they '
                  f'score as background (write 0/255 masks)', file=sys.stderr)
        gt = (gt > 0) & (gt != VOID_ID)  # one object: the union of all ids
        return gt.astype(np.uint8), binary.astype(np.uint8), 1, names
    n_obj = int(np.where(first == VOID_ID, 0, first).max())
    over = pred.reshape(len(scored), -1).max(1) > n_obj
    if over.any():
        i = int(np.argmax(over))
        raise ValueError(f'{res_paths[i]}: object id {int(pred[i].max())} but the first-frame '
                         f'annotation {gt_paths[0]} has {n_obj} objects (the official toolkit '
                         f'stops here: "index higher than the number of objects")')
    gt[gt > n_obj] = 0  # void (255) and objects appearing after frame 0 are background
    if n_obj > VOID_ID:  # 16-bit annotations with more than 255 objects
        gt[gt == VOID_ID] = 0
    return gt, pred, n_obj, names


def evaluate_davis(davis_root, results_dir, split='val', year=2017, workers=2,
                   bound_th=BOUND_TH):
    """Evaluate a results folder on a DAVIS split (semi-supervised protocol).

    -> {'year', 'split', 'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
        'F-Decay' (fractions in [0, 1], like the official CSV), 'n_sequences', 'n_objects',
        'per_object': {'<seq>_<k>': {'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall',
        'F-Decay', 'J': per-frame list, 'F': per-frame list, 'frames': scored frame names}}}
    """
    year = int(year)
    if year not in (2016, 2017):
        raise ValueError(f'year must be 2016 or 2017, got {year}')
    if not Path(results_dir).is_dir():
        raise FileNotFoundError(f'{results_dir}: results folder not found')
    sequences = read_sequence_list(davis_root, split, year)
    per_object, empty = {}, []
    for seq in sequences:
        gt, pred, n_obj, names = read_sequence(davis_root, results_dir, seq, year, workers)
        if n_obj == 0:
            empty.append(f'{seq} ({annotation_paths(davis_root, seq)[0]})')
        j, f = eval_sequence(gt, pred, n_obj, bound_th)
        for k in range(n_obj):
            jm, jr, jd = object_statistics(j[k])
            fm, fr, fd = object_statistics(f[k])
            per_object[f'{seq}_{k + 1}'] = {
                'J-Mean': jm, 'J-Recall': jr, 'J-Decay': jd,
                'F-Mean': fm, 'F-Recall': fr, 'F-Decay': fd,
                'J': j[k].tolist(), 'F': f[k].tolist(), 'frames': names}
    if empty and not per_object:
        raise ValueError(f'no object to evaluate: the first-frame annotation of every sequence of '
                         f'{split} is empty (all background or void; the official toolkit would '
                         f'report NaN): {", ".join(empty[:5])}{" ..." if len(empty) > 5 else ""}')
    if empty:
        print(f'warning: {len(empty)} sequences have an empty first-frame annotation and add no '
              f'object: {", ".join(empty[:5])}', file=sys.stderr)
    out = {'year': year, 'split': split}
    out.update(summarize(per_object))
    out.update({'n_sequences': len(sequences), 'n_objects': len(per_object),
                'per_object': per_object})
    return out


# ------------------------------------------------------------------------------------------
# Output in the official format


def _csv_text(rows):
    """Rows -> CSV text as pandas `to_csv(index=False, float_format='%.3f')` writes it."""
    lines = []
    for row in rows:
        cells = [('' if math.isnan(v) else f'{v:.3f}') if isinstance(v, float) else str(v)
                 for v in row]  # pandas writes NaN as an empty cell
        lines.append(','.join(c if not any(ch in c for ch in ',"\n') else
                              '"' + c.replace('"', '""') + '"' for c in cells))
    return '\n'.join(lines) + '\n'


def global_csv(result):
    """`global_results-<set>.csv` text: header and one row of the seven global numbers."""
    return _csv_text([GLOBAL_COLUMNS, [result[c] for c in GLOBAL_COLUMNS]])


def per_sequence_csv(result):
    """`per-sequence_results-<set>.csv` text: one `<seq>_<k>,J-Mean,F-Mean` row per object."""
    rows = [[name, o['J-Mean'], o['F-Mean']] for name, o in result['per_object'].items()]
    return _csv_text([SEQUENCE_COLUMNS, *rows])


def summary_line(result):
    """`DAVIS-2017 val: J&F 83.00 J 80.20 F 85.70 (30 seqs, 59 objects)` (percent)."""
    return (f"DAVIS-{result['year']} {result['split']}: J&F {100 * result['J&F-Mean']:.2f} "
            f"J {100 * result['J-Mean']:.2f} F {100 * result['F-Mean']:.2f} "
            f"({result['n_sequences']} seqs, {result['n_objects']} objects)")


def write_outputs(result, out_dir):
    """Write both official CSVs and the full JSON to out_dir -> list of written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = result['split']
    files = {out_dir / f'global_results-{split}.csv': global_csv(result),
             out_dir / f'per-sequence_results-{split}.csv': per_sequence_csv(result),
             out_dir / f"davis{result['year']}_results-{split}.json":
                 json.dumps(result, indent=1) + '\n'}
    for path, text in files.items():
        write_atomic(path, text)
    return list(files)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--davis-path', required=True,
                        help='DAVIS folder with Annotations/480p, JPEGImages/480p, ImageSets')
    parser.add_argument('--results', required=True, help='folder with <seq>/<frame>.png results')
    parser.add_argument('--set', default='val', help='ImageSets/<year>/<set>.txt (default val)')
    parser.add_argument('--year', type=int, default=2017, choices=[2016, 2017])
    parser.add_argument('--out', default=None, help='output folder (default: --results)')
    parser.add_argument('--workers', type=int, default=2, help='PNG decoding threads')
    args = parser.parse_args(argv)
    try:
        result = evaluate_davis(args.davis_path, args.results, args.set, args.year, args.workers)
    except (FileNotFoundError, ValueError) as e:  # bad input: the message names the file
        sys.exit(f'error: {e}')
    print(summary_line(result), flush=True)  # first: a failing write cannot lose the score
    try:
        paths = write_outputs(result, args.out or args.results)
    except OSError as e:
        sys.exit(f'error: {e}')
    for p in paths:
        print(f'wrote {p}')
    return result


if __name__ == '__main__':
    main()
