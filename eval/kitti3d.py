"""KITTI 3D single-object tracking: 3D IoU of oriented boxes, Success and Precision.

Definitions follow `specs/metrics-dense.md` section 4 (Open3DSOT `estimateOverlap` /
`estimateAccuracy` / `TorchSuccess` / `TorchPrecision`, P2B `metrics.py`), `IoU_space = 3`:

- Boxes come from KITTI tracking labels (camera frame, `location` = bottom-face centre,
  `ry` = yaw about the camera y axis). The geometric centre is `(x, y - h/2, z)`.
  *camera* mode (P2B, Open3DSOT `P2B_*` configs): BEV plane = camera (x, z), up axis = camera y
  (which points down); *velodyne* mode (Open3DSOT BAT / M2-Track configs): the geometric centre
  mapped by `inv(Tr_velo_cam)` of the scene's calibration, BEV plane = velodyne (x, y), up
  axis = velodyne z, yaw `-(ry + pi/2)` about +z. The box length runs along the yaw direction,
  the width across it.
- 3D IoU = BEV intersection area x height overlap / (V_a + V_b - inter), V = w l h. The BEV
  intersection of the two rotated rectangles is found by Sutherland-Hodgman clipping, in numpy,
  vectorised over box pairs.
- **Height overlap.** The official code intersects the intervals `[c - h, c]` of the up-axis
  geometric-centre coordinate c, instead of `[c - h/2, c + h/2]`: right for equal heights, wrong
  otherwise. We default to the official formula, so numbers compare with published ones;
  `exact_height=True` / `--exact-height` uses the true interval. Worked example (camera mode):
  unit-footprint boxes standing on the same ground plane y = 1 at the same (x, z), box A 2 m
  tall (centre y = 0), box B 1 m tall (centre y = 0.5), so B lies inside A. Exact: overlap 1 m,
  IoU = 1 / (2 + 1 - 1) = 0.5. Official: A -> [-2, 0], B -> [-0.5, 0.5], overlap 0.5 m,
  IoU = 0.5 / (2 + 1 - 0.5) = 0.2. (In velodyne mode, where up points up, the same pair gets
  0.5 from both formulas: the error depends on the axis direction too.)
- A predicted box that is not finite or has a non-positive size scores IoU 0 (Open3DSOT's
  `except ValueError: 0` fallback); a non-finite centre gives distance +inf (fails every
  precision threshold). GT boxes must be valid (an error naming file:line otherwise).
- Distance = 3D Euclidean distance between geometric centres (metres).
- Success = area under `frac(IoU >= t)` for t in linspace(0, 1, 21); Precision = area under
  `frac(dist <= t)` for t in linspace(0, 2, 21) m; trapezoidal areas normalised to [0, 100]
  (divided by the x-range 1 and 2 m). Pooled over all frames of all tracklets (long tracklets
  weigh more), **the first frame of every tracklet included** with the GT box as prediction:
  we score it as IoU 1 and distance 0 exactly (the official shapely value is 1 +- 1e-15, so
  whether it passes the threshold 1.0 is luck there: Success can differ by up to
  2.5 x tracklets / frames points).

A tracklet = the label rows of one track id in one scene whose type is the category (`All`:
Car, Van, Pedestrian, Cyclist), ordered by frame; frame gaps are not filled.

Files:
- GT: a KITTI tracking `label_02` folder, `<seq>.txt` per scene, 17 space-separated columns:
  frame, track id, type, truncated, occluded, alpha, bbox (4), h, w, l, x, y, z, ry.
- Calibration (velodyne mode): a `calib` folder, `<seq>.txt` with a `Tr_velo_cam` line
  (12 numbers, the 3x4 velodyne -> camera transform).
- Predictions: a folder with one `<seq>_<track id>.txt` per tracklet (e.g. `0019_0003.txt`; the
  id is read as an integer), one line per GT frame of the tracklet, in order, first frame
  included, 8 columns: `frame h w l x y z ry` in the label's camera convention (bottom-face
  centre). The first line is required (usually the GT copy the tracker starts from) but
  scored as the GT box, like the official code.

    python -m eval.kitti3d --gt KITTI/tracking/training/label_02 --pred runs/sot3d_car \\
        --category Car --scenes 19 20 --out runs/sot3d_car/metrics.json
    python -m eval.kitti3d --gt .../label_02 --pred runs/sot3d_car --exact-height
    python -m eval.kitti3d --gt .../label_02 --pred runs/sot3d_car --coords velodyne \\
        --calib KITTI/tracking/training/calib
"""
import argparse
import json
from pathlib import Path

import numpy as np

from eval.output import write_atomic

SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)  # IoU
PRECISION_THRESHOLDS = np.linspace(0, 2, 21)  # metres
ALL_CATEGORIES = ('Car', 'Van', 'Pedestrian', 'Cyclist')
LABEL_COLUMNS = 17
PRED_COLUMNS = 8
# Box layouts used below:
#   label box (7,): [h, w, l, x, y, z, ry]   KITTI camera label, location = bottom-face centre
#   up box    (7,): [bx, by, up, l, w, h, yaw]   geometric centre: (bx, by) in the BEV plane,
#                   `up` on the up axis; yaw = angle of the length axis in the BEV plane


# ------------------------------------------------------------------------------------------
# Box conventions


def camera_boxes(labels):
    """(N, 7) label boxes -> (N, 7) up boxes in camera mode: BEV (x, z), up axis camera y."""
    h, w, l, x, y, z, ry = np.asarray(labels, np.float64).T
    # R_y(ry) maps the length axis (1, 0, 0) to (cos ry, 0, -sin ry): angle -ry in (x, z).
    return np.stack([x, z, y - h / 2, l, w, h, -ry], axis=-1)


def velodyne_boxes(labels, tr_velo_cam):
    """(N, 7) label boxes -> (N, 7) up boxes in velodyne mode. tr_velo_cam: (3, 4) or (4, 4)."""
    h, w, l, x, y, z, ry = np.asarray(labels, np.float64).T
    velo_to_cam = np.eye(4)
    velo_to_cam[:3] = np.asarray(tr_velo_cam, np.float64)[:3]
    centre_cam = np.stack([x, y - h / 2, z, np.ones_like(x)], axis=0)  # (4, N)
    cx, cy, cz, _ = np.linalg.inv(velo_to_cam) @ centre_cam
    return np.stack([cx, cy, cz, l, w, h, -(ry + np.pi / 2)], axis=-1)


# ------------------------------------------------------------------------------------------
# Oriented-box IoU


def _cross(u, v):
    """z of the 2-D cross product, broadcast over leading axes. u, v: (..., 2)."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def bev_corners(boxes):
    """(N, 7) up boxes -> (N, 4, 2) BEV rectangle corners, counter-clockwise."""
    bx, by, _, l, w, _, yaw = np.asarray(boxes, np.float64).T
    unit = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])  # (length, width)
    along = unit[None, :, 0] * l[:, None]  # (N, 4)
    across = unit[None, :, 1] * w[:, None]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    return np.stack([bx[:, None] + c * along - s * across,
                     by[:, None] + s * along + c * across], axis=-1)


def clip_convex(subject, clip):
    """Intersection of convex polygons by Sutherland-Hodgman clipping, vectorised over pairs.

    subject: (N, M, 2), clip: (N, K, 2), both counter-clockwise.
    Returns vertices (N, V, 2) (only the first `count` of each row are meaningful) and
    count (N,). The subject is clipped by the half-plane left of each clip edge in turn.
    """
    n, m0 = subject.shape[:2]
    k_edges = clip.shape[1]
    cap = 2 * (m0 + k_edges)  # a convex result has <= M + K vertices; room for round-off
    poly, count = subject, np.full(n, m0)
    for k in range(k_edges):
        start = clip[:, k, None]  # (N, 1, 2)
        edge = clip[:, (k + 1) % k_edges, None] - start
        idx = np.arange(poly.shape[1])
        live = idx < count[:, None]  # (N, M)
        prev = np.take_along_axis(poly, ((idx - 1) % np.maximum(count, 1)[:, None])[..., None],
                                  axis=1)
        side_cur = _cross(edge, poly - start)  # >= 0: inside (on or left of the edge)
        side_prev = _cross(edge, prev - start)
        inside = side_cur >= 0
        crossing = live & (inside != (side_prev >= 0))
        t = side_prev / np.where(crossing, side_prev - side_cur, 1.0)
        hit = prev + t[..., None] * (poly - prev)  # where edge prev -> cur crosses the line
        # Per vertex, emit [crossing point if the side changes, vertex if inside], in order.
        candidates = np.stack([hit, poly], axis=2).reshape(n, -1, 2)
        keep = np.stack([crossing, live & inside], axis=2).reshape(n, -1)
        order = np.argsort(~keep, axis=1, kind='stable')[:, :cap]  # kept ones first, in order
        poly = np.take_along_axis(candidates, order[..., None], axis=1)
        count = keep.sum(axis=1)
    return poly, count


def polygon_area(poly, count):
    """Shoelace area of the first count[i] vertices of each row. poly: (N, V, 2) -> (N,)."""
    idx = np.arange(poly.shape[1])
    live = idx < count[:, None]
    nxt = np.take_along_axis(poly, ((idx + 1) % np.maximum(count, 1)[:, None])[..., None],
                             axis=1)
    return 0.5 * np.abs(np.sum(np.where(live, _cross(poly, nxt), 0.0), axis=1))


def valid_boxes(boxes):
    """(N, 7) up boxes -> (N,) bool: all finite and l, w, h > 0."""
    boxes = np.asarray(boxes, np.float64)
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 3:6] > 0).all(axis=1)


def box_iou(a, b, exact_height=False):
    """3D IoU of paired oriented boxes. a, b: (N, 7) up boxes -> (N,) in [0, 1].

    exact_height=False intersects the official intervals [c - h, c]; True the correct
    [c - h/2, c + h/2] (see the module docstring). Invalid pairs (a box not finite or with a
    non-positive size) give 0.
    """
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    ok = valid_boxes(a) & valid_boxes(b)
    a, b = np.where(ok[:, None], a, 1.0), np.where(ok[:, None], b, 1.0)  # keep NaN out
    area = polygon_area(*clip_convex(bev_corners(a), bev_corners(b)))
    up_a, h_a, up_b, h_b = a[:, 2], a[:, 5], b[:, 2], b[:, 5]
    if exact_height:
        top = np.minimum(up_a + h_a / 2, up_b + h_b / 2)
        bottom = np.maximum(up_a - h_a / 2, up_b - h_b / 2)
    else:
        top = np.minimum(up_a, up_b)
        bottom = np.maximum(up_a - h_a, up_b - h_b)
    inter = area * np.maximum(0.0, top - bottom)
    union = np.prod(a[:, 3:6], axis=1) + np.prod(b[:, 3:6], axis=1) - inter
    return np.where(ok, np.clip(inter / union, 0.0, 1.0), 0.0)


def centre_distance(a, b):
    """Euclidean distance of the geometric centres. a, b: (N, 7) up boxes -> (N,), NaN -> inf."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    d = np.linalg.norm(np.asarray(a, np.float64)[:, :3] - np.asarray(b, np.float64)[:, :3], axis=1)
    return np.where(np.isfinite(d), d, np.inf)


# ------------------------------------------------------------------------------------------
# Success and Precision


def trapezoid(y, x):
    """Trapezoidal area under y(x). y, x: (K,)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def success(ious):
    """Success score in [0, 100]: AUC of frac(IoU >= t), t in linspace(0, 1, 21), over 1."""
    ious = np.asarray(ious, np.float64)
    if ious.size == 0:
        return float('nan')
    curve = [np.mean(ious >= t) for t in SUCCESS_THRESHOLDS]
    return 100.0 * trapezoid(curve, SUCCESS_THRESHOLDS) / 1.0


def precision(distances):
    """Precision score in [0, 100]: AUC of frac(dist <= t), t in linspace(0, 2, 21) m, over 2."""
    distances = np.asarray(distances, np.float64)
    if distances.size == 0:
        return float('nan')
    curve = [np.mean(distances <= t) for t in PRECISION_THRESHOLDS]
    return 100.0 * trapezoid(curve, PRECISION_THRESHOLDS) / 2.0


def score_tracklets(preds, gts, exact_height=False):
    """Pooled Success / Precision over tracklets, first frames scored as the GT box.

    preds, gts: lists of (T_i, 7) up boxes (frame 0 of each tracklet first).
    Returns {'success', 'precision', 'ious', 'distances'} (the last two: lists of (T_i,)).
    """
    lengths = [len(g) for g in gts]
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    iou, dist = box_iou(pred, gt, exact_height), centre_distance(pred, gt)
    first = np.cumsum([0] + lengths[:-1])
    iou[first], dist[first] = 1.0, 0.0  # the tracker is initialised with the GT box
    splits = np.cumsum(lengths)[:-1]
    return {'success': success(iou), 'precision': precision(dist),
            'ious': np.split(iou, splits), 'distances': np.split(dist, splits)}


# ------------------------------------------------------------------------------------------
# Files


def _parse_rows(path, n_columns):
    """Yield (line number, fields) of a whitespace-separated text file with n_columns fields."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != n_columns:
                raise ValueError(f'{path}:{lineno}: {len(fields)} columns, expected {n_columns}')
            yield lineno, fields


def read_tracking_labels(path):
    """KITTI tracking label file -> list of (line, frame, track_id, type, label box (7,))."""
    rows = []
    for lineno, f in _parse_rows(path, LABEL_COLUMNS):
        try:
            box = np.array([float(v) for v in f[10:17]])  # h w l x y z ry
            rows.append((lineno, int(f[0]), int(f[1]), f[2], box))
        except ValueError as err:
            raise ValueError(f'{path}:{lineno}: {err}') from None
    return rows


def read_tracklets(label_dir, category='Car', scenes=None):
    """{(seq, track_id): (frames (T,), label boxes (T, 7))} from a label_02 folder.

    category: a KITTI type or 'All' (Car, Van, Pedestrian, Cyclist); scenes: iterable of
    ints / names to keep (default all files).
    """
    label_dir = Path(label_dir)
    files = sorted(label_dir.glob('*.txt'))
    if scenes is not None:
        wanted = {int(s) for s in scenes}
        files = [f for f in files if int(f.stem) in wanted]
        missing = wanted - {int(f.stem) for f in files}
        if missing:
            raise FileNotFoundError(f'{label_dir}: no label file for scenes {sorted(missing)}')
    if not files:
        raise FileNotFoundError(f'{label_dir}: no label files')
    types = set(ALL_CATEGORIES) if category == 'All' else {category}
    tracklets = {}
    for f in files:
        rows = {}
        for lineno, frame, tid, kind, box in read_tracking_labels(f):
            if kind not in types:
                continue
            if not (np.isfinite(box).all() and (box[:3] > 0).all()):
                raise ValueError(f'{f}:{lineno}: invalid {kind} box (h w l x y z ry = {box})')
            track = rows.setdefault(tid, {})
            if frame in track:
                raise ValueError(f'{f}:{lineno}: track {tid} has frame {frame} twice')
            track[frame] = box
        for tid in sorted(rows):
            frames = sorted(rows[tid])
            tracklets[(f.stem, tid)] = (np.array(frames), np.stack([rows[tid][t] for t in frames]))
    return tracklets


def read_prediction(path):
    """Prediction file -> frames (T,) int, label boxes (T, 7); 'nan' values are allowed."""
    frames, boxes = [], []
    for lineno, f in _parse_rows(path, PRED_COLUMNS):
        try:
            frames.append(int(f[0]))
            boxes.append([float(v) for v in f[1:]])
        except ValueError as err:
            raise ValueError(f'{path}:{lineno}: {err}') from None
    return np.array(frames, int), np.array(boxes, np.float64).reshape(-1, 7)


def read_tr_velo_cam(path):
    """The (3, 4) Tr_velo_cam matrix of a KITTI tracking calibration file."""
    with open(path) as fh:
        for line in fh:
            fields = line.replace(':', ' ').split()
            if fields and fields[0] in ('Tr_velo_cam', 'Tr_velo_to_cam'):
                if len(fields) != 13:
                    raise ValueError(f'{path}: Tr_velo_cam needs 12 numbers')
                return np.array([float(v) for v in fields[1:]]).reshape(3, 4)
    raise ValueError(f'{path}: no Tr_velo_cam line')


def index_predictions(pred_dir):
    """{(seq, track_id): file} for every `<seq>_<track id>.txt` in pred_dir."""
    index = {}
    for f in sorted(Path(pred_dir).glob('*.txt')):
        seq, _, tid = f.stem.rpartition('_')
        if not seq or not tid.isdigit():
            raise ValueError(f'{f}: prediction files are named <seq>_<track id>.txt')
        if (seq, int(tid)) in index:
            raise ValueError(f'{f}: same tracklet as {index[(seq, int(tid))]}')
        index[(seq, int(tid))] = f
    return index


def evaluate(pred_dir, label_dir, category='Car', scenes=None, exact_height=False,
             coords='camera', calib_dir=None):
    """Score a prediction folder against KITTI tracking labels; returns the metrics dict."""
    if coords == 'velodyne' and calib_dir is None:
        raise ValueError('velodyne mode needs the calibration folder (calib_dir / --calib)')
    if coords not in ('camera', 'velodyne'):
        raise ValueError(f'unknown coords {coords!r} (camera | velodyne)')
    tracklets = read_tracklets(label_dir, category, scenes)
    if not tracklets:
        raise ValueError(f'{label_dir}: no {category} tracklets')
    index = index_predictions(pred_dir)
    missing = [k for k in tracklets if k not in index]
    if missing:
        raise FileNotFoundError(f'{pred_dir}: no prediction for {len(missing)} tracklets, first: '
                                f'{missing[0][0]}_{missing[0][1]:04d}.txt')
    preds, gts, n_invalid = [], [], 0
    for (seq, tid), (frames, gt_labels) in tracklets.items():
        pred_frames, pred_labels = read_prediction(index[(seq, tid)])
        if not np.array_equal(pred_frames, frames):
            raise ValueError(f'{index[(seq, tid)]}: frames {pred_frames.tolist()[:8]}... differ '
                             f'from the GT tracklet frames {frames.tolist()[:8]}...')
        if coords == 'camera':
            pred, gt = camera_boxes(pred_labels), camera_boxes(gt_labels)
        else:
            tr = read_tr_velo_cam(Path(calib_dir) / f'{seq}.txt')
            pred, gt = velodyne_boxes(pred_labels, tr), velodyne_boxes(gt_labels, tr)
        n_invalid += int(np.count_nonzero(~valid_boxes(pred[1:])))
        preds.append(pred)
        gts.append(gt)
    scores = score_tracklets(preds, gts, exact_height)
    names = [f'{seq}_{tid:04d}' for seq, tid in tracklets]
    per_tracklet = {name: {'frames': len(i), 'success': success(i), 'precision': precision(d)}
                    for name, i, d in zip(names, scores['ious'], scores['distances'])}
    return {'success': scores['success'], 'precision': scores['precision'],
            'n_tracklets': len(tracklets), 'n_frames': int(sum(len(g) for g in gts)),
            'n_invalid_pred': n_invalid, 'category': category, 'coords': coords,
            'exact_height': exact_height, 'extra_pred_files': len(set(index) - set(tracklets)),
            'per_tracklet': per_tracklet}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pred', required=True, help='folder of <seq>_<track id>.txt files')
    parser.add_argument('--gt', required=True, help='KITTI tracking label_02 folder')
    parser.add_argument('--category', default='Car', help='KITTI type, or All (default Car)')
    parser.add_argument('--scenes', nargs='+', type=int, help='scene numbers (default: all)')
    parser.add_argument('--exact-height', action='store_true',
                        help='correct height overlap instead of the official [c - h, c]')
    parser.add_argument('--coords', default='camera', choices=('camera', 'velodyne'))
    parser.add_argument('--calib', help='KITTI tracking calib folder (velodyne mode)')
    parser.add_argument('--out', help='write the metrics as JSON here')
    args = parser.parse_args(argv)

    try:
        m = evaluate(args.pred, args.gt, args.category, args.scenes, args.exact_height,
                     args.coords, args.calib)
    except (FileNotFoundError, ValueError) as err:  # bad input: the message names the file
        parser.exit(2, f'error: {err}\n')
    height = 'exact' if args.exact_height else 'official'
    print(f"kitti3d {args.category} ({args.coords}, {height} height): {m['n_tracklets']} "
          f"tracklets, {m['n_frames']} frames  Success {m['success']:.2f}  "
          f"Precision {m['precision']:.2f}  invalid pred boxes {m['n_invalid_pred']}  "
          f"unused pred files {m['extra_pred_files']}")
    if args.out:  # after the summary line: a failing write cannot lose the score
        try:
            write_atomic(args.out, json.dumps(m, indent=1) + '\n')
        except OSError as err:
            parser.exit(1, f'error: {err}\n')
    return m


if __name__ == '__main__':
    main()
