"""eval/kitti3d.py: oriented 3D IoU, Success / Precision (spec section 4), files and CLI."""
import json
import math

import numpy as np
import pytest

from eval import kitti3d as K


def _up(bx, by, up, l, w, h, yaw=0.0):
    """One up box (1, 7): BEV centre (bx, by), up-axis centre, length, width, height, yaw."""
    return np.array([[bx, by, up, l, w, h, yaw]], float)


def test_identical_boxes_iou_one_and_distance_zero():
    """IoU(a, a) = 1 for any orientation; same box described as yaw + pi or l/w swapped + 90 deg."""
    a = _up(3, -2, 1, 4, 2, 1.5, 0.7)
    assert K.box_iou(a, a)[0] == pytest.approx(1.0, abs=1e-12)
    assert K.centre_distance(a, a)[0] == 0.0
    assert K.box_iou(a, _up(3, -2, 1, 4, 2, 1.5, 0.7 + np.pi))[0] == pytest.approx(1.0, abs=1e-12)
    swapped = _up(3, -2, 1, 2, 4, 1.5, 0.7 + np.pi / 2)
    assert K.box_iou(a, swapped)[0] == pytest.approx(1.0, abs=1e-12)


def test_axis_aligned_overlap_by_hand():
    """2x2x2 cubes offset by (1, 1) in BEV and 0.5 vertically: BEV 1 x height 1.5 = 1.5,
    union 8 + 8 - 1.5 -> IoU 3/29 (equal heights: official = exact)."""
    a, b = _up(0, 0, 0, 2, 2, 2), _up(1, 1, 0.5, 2, 2, 2)
    assert K.box_iou(a, b)[0] == pytest.approx(1.5 / 14.5)
    assert K.box_iou(a, b, exact_height=True)[0] == pytest.approx(1.5 / 14.5)
    assert K.centre_distance(a, b)[0] == pytest.approx(1.5)


def test_45_degree_rotated_unit_square():
    """Unit square vs itself rotated 45 deg: the intersection is a regular octagon of area
    2 (sqrt 2 - 1), so IoU = 2 (sqrt 2 - 1) / (2 - 2 (sqrt 2 - 1)) = 1 / sqrt 2."""
    a, b = _up(0, 0, 0, 1, 1, 1), _up(0, 0, 0, 1, 1, 1, np.pi / 4)
    poly, count = K.clip_convex(K.bev_corners(a), K.bev_corners(b))
    assert count[0] == 8
    assert K.polygon_area(poly, count)[0] == pytest.approx(2 * (math.sqrt(2) - 1))
    assert K.box_iou(a, b)[0] == pytest.approx(1 / math.sqrt(2))


def test_disjoint_and_touching_boxes_give_zero():
    """No BEV overlap, touching faces, or vertically separated boxes: IoU 0."""
    a = _up(0, 0, 0, 1, 1, 1)
    assert K.box_iou(a, _up(5, 0, 0, 1, 1, 1, 0.3))[0] == 0.0
    assert K.box_iou(a, _up(1, 0, 0, 1, 1, 1))[0] == pytest.approx(0.0, abs=1e-12)
    assert K.box_iou(a, _up(0, 0, 3, 1, 1, 1), exact_height=True)[0] == 0.0


def test_height_overlap_official_vs_exact_worked_example():
    """Camera mode: a 2 m and a 1 m unit-footprint box on the same ground (label y = 1).
    Official [c - h, c] intervals: [-2, 0] and [-0.5, 0.5] -> 0.5 m -> IoU 0.5 / 2.5 = 0.2;
    exact: B inside A -> IoU 1 / 2 = 0.5. Velodyne mode (up is up): both formulas give 0.5."""
    labels = np.array([[2, 1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0]], float)  # h w l x y z ry
    cam = K.camera_boxes(labels)
    assert cam[:, 2].tolist() == [0.0, 0.5]  # geometric centre y - h/2
    assert K.box_iou(cam[:1], cam[1:])[0] == pytest.approx(0.2)
    assert K.box_iou(cam[:1], cam[1:], exact_height=True)[0] == pytest.approx(0.5)
    tr = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], float)  # ideal velo -> cam
    velo = K.velodyne_boxes(labels, tr)
    assert velo[:, 2].tolist() == [0.0, -0.5]
    assert K.box_iou(velo[:1], velo[1:])[0] == pytest.approx(0.5)
    assert K.box_iou(velo[:1], velo[1:], exact_height=True)[0] == pytest.approx(0.5)


def test_camera_and_velodyne_modes_agree_for_equal_heights():
    """With an ideal calibration the two conventions give the same IoU and distance."""
    rng = np.random.default_rng(3)
    n = 50
    labels = np.c_[np.full(n, 1.5), rng.uniform(1, 2, n), rng.uniform(3, 5, n),
                   rng.uniform(-3, 3, n), rng.uniform(0.5, 1.5, n), rng.uniform(5, 9, n),
                   rng.uniform(-np.pi, np.pi, n)]
    other = labels + np.c_[np.zeros((n, 3)), rng.normal(0, 0.5, (n, 3)), rng.normal(0, 0.3, n)]
    tr = np.array([[0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, 0.3]], float)
    iou_cam = K.box_iou(K.camera_boxes(labels), K.camera_boxes(other))
    iou_velo = K.box_iou(K.velodyne_boxes(labels, tr), K.velodyne_boxes(other, tr))
    np.testing.assert_allclose(iou_cam, iou_velo, atol=1e-12)
    assert (iou_cam > 0).sum() > 25  # the comparison is not vacuous


def test_zero_volume_and_nan_boxes_score_zero():
    """Invalid predictions (size <= 0, NaN) give IoU 0 (Open3DSOT's fallback); NaN -> dist inf."""
    gt = _up(0, 0, 0, 2, 2, 2)
    assert K.box_iou(gt, _up(0, 0, 0, 2, 2, 0))[0] == 0.0
    assert K.box_iou(_up(0, 0, 0, 0, 2, 2), _up(0, 0, 0, 0, 2, 2))[0] == 0.0
    nan_box = _up(np.nan, 0, 0, 2, 2, 2)
    assert K.box_iou(gt, nan_box)[0] == 0.0
    assert K.centre_distance(gt, nan_box)[0] == np.inf


def _reference_bev_area(pa, pb):
    """Independent convex intersection: vertices inside the other polygon + edge crossings,
    sorted by angle around their mean, shoelace."""
    def cross(u, v):
        return u[0] * v[1] - u[1] * v[0]

    def inside(p, poly):
        return all(cross(poly[(i + 1) % 4] - poly[i], p - poly[i]) >= -1e-12 for i in range(4))
    pts = [p for p in pa if inside(p, pb)] + [p for p in pb if inside(p, pa)]
    for i in range(4):
        p, r = pa[i], pa[(i + 1) % 4] - pa[i]
        for j in range(4):
            q, s = pb[j], pb[(j + 1) % 4] - pb[j]
            denom = cross(r, s)
            if abs(denom) < 1e-15:
                continue
            t, u = cross(q - p, s) / denom, cross(q - p, r) / denom
            if 0 <= t <= 1 and 0 <= u <= 1:
                pts.append(p + t * r)
    if len(pts) < 3:
        return 0.0
    pts = np.array(pts)
    centre = pts.mean(axis=0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))]
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_iou_symmetric_bounded_and_matches_reference_on_random_boxes():
    """Property: IoU(a, b) = IoU(b, a), 0 <= IoU <= 1, and the clipped BEV area equals an
    independent intersection algorithm on 300 random box pairs."""
    rng = np.random.default_rng(0)
    n = 300
    def boxes():
        return np.c_[rng.uniform(-2, 2, (n, 3)), rng.uniform(0.3, 3, (n, 3)),
                     rng.uniform(-np.pi, np.pi, n)]
    a, b = boxes(), boxes()
    for exact in (False, True):
        ab, ba = K.box_iou(a, b, exact), K.box_iou(b, a, exact)
        np.testing.assert_allclose(ab, ba, atol=1e-12)
        assert ((ab >= 0) & (ab <= 1)).all()
    ca, cb = K.bev_corners(a), K.bev_corners(b)
    area = K.polygon_area(*K.clip_convex(ca, cb))
    expected = [_reference_bev_area(ca[i], cb[i]) for i in range(n)]
    np.testing.assert_allclose(area, expected, atol=1e-9)
    assert np.count_nonzero(area > 0) > 100  # mostly overlapping pairs, not a vacuous check


def test_success_precision_auc_by_hand():
    """Trapezoidal AUC normalised by the x-range, thresholds linspace(0,1,21) / (0,2,21) m.
    IoUs [1, 0.5, 0]: curve 1 at t=0, 2/3 for t in (0, 0.5], 1/3 above -> 100 * 31/60.
    Distances [0, 1, 3]: 1/3 for t < 1, 2/3 for t >= 1 (1 <= 1.0) -> 100 * 61/120."""
    assert K.success([1.0, 0.5, 0.0]) == pytest.approx(100 * 31 / 60)
    assert K.precision([0.0, 1.0, 3.0]) == pytest.approx(100 * 61 / 120)
    assert K.success([1.0] * 4) == pytest.approx(100.0)
    assert K.precision([5.0]) == 0.0
    assert math.isnan(K.success([]))


def test_first_frame_scored_as_gt_box():
    """The first frame counts with IoU 1 / distance 0 whatever was predicted there:
    [1, 0] -> success 51.25 (curve 1 at t=0, 0.5 after), distances [0, 10] -> precision 50."""
    gt = np.vstack([_up(0, 0, 0, 2, 2, 2), _up(1, 0, 0, 2, 2, 2)])
    pred = np.vstack([_up(50, 50, 0, 1, 1, 1), _up(11, 0, 0, 2, 2, 2)])  # frame 0 ignored
    s = K.score_tracklets([pred], [gt])
    assert s['ious'][0].tolist() == [1.0, 0.0]
    assert s['distances'][0].tolist() == [0.0, 10.0]
    assert s['success'] == pytest.approx(51.25)
    assert s['precision'] == pytest.approx(50.0)


def _label(frame, tid, kind, h, w, l, x, y, z, ry):
    return f'{frame} {tid} {kind} 0 0 -10 0 0 50 50 {h} {w} {l} {x} {y} {z} {ry}\n'


def _write_dataset(tmp_path):
    """label_02 with two scenes: Car track 0 (frames 0-2) and a Pedestrian in scene 0000, a
    DontCare row, Car track 5 at frames 3 and 5 (gap) in scene 0001; matching predictions."""
    labels, preds = tmp_path / 'label_02', tmp_path / 'pred'
    labels.mkdir()
    preds.mkdir()
    (labels / '0000.txt').write_text(
        _label(0, 0, 'Car', 1.5, 2, 4, 0, 1, 10, 0)
        + _label(0, 1, 'Pedestrian', 1.8, 0.6, 0.8, 3, 1, 8, 0)
        + _label(0, -1, 'DontCare', -1, -1, -1, -1000, -1000, -1000, -10)
        + _label(1, 0, 'Car', 1.5, 2, 4, 0, 1, 11, 0)
        + _label(2, 0, 'Car', 1.5, 2, 4, 0, 1, 12, 0)
        + _label(1, 1, 'Pedestrian', 1.8, 0.6, 0.8, 3, 1, 8, 0))
    (labels / '0001.txt').write_text(_label(3, 5, 'Car', 1.5, 2, 4, 5, 1, 20, 0.5)
                                     + _label(5, 5, 'Car', 1.5, 2, 4, 5, 1, 20, 0.5))
    (preds / '0000_0000.txt').write_text(
        '0 1 1 1 9 9 9 0\n'  # frame 0: ignored (scored as the GT box)
        '1 1.5 2 4 1.25 1 11 0\n'  # 1.25 m along the length: IoU 2.75/(8 - 2.75) = 0.5238
        '2 nan nan nan nan nan nan nan\n')  # tracker failure: IoU 0, distance inf
    (preds / '0001_5.txt').write_text('3 0 0 0 0 0 0 0\n'
                                      '5 1.5 2 4 5 1 30 0.5\n')  # 10 m away: IoU 0
    (preds / '0000_0007.txt').write_text('0 1 1 1 0 0 0 0\n')  # not a Car tracklet: unused
    return labels, preds


def test_cli_pooled_over_all_frames_of_all_tracklets(tmp_path, capsys):
    """End to end: IoUs [1, 0.524, 0, 1, 0] and distances [0, 1.25, inf, 0, 10] pooled
    (not per tracklet) -> Success 51.5, Precision 47.5; Pedestrian/DontCare rows ignored."""
    labels, preds = _write_dataset(tmp_path)
    out = tmp_path / 'm.json'
    m = K.main(['--pred', str(preds), '--gt', str(labels), '--out', str(out)])
    assert m['n_tracklets'] == 2 and m['n_frames'] == 5
    assert m['success'] == pytest.approx(51.5)
    assert m['precision'] == pytest.approx(47.5)
    assert m['n_invalid_pred'] == 1 and m['extra_pred_files'] == 1
    assert m['per_tracklet']['0001_0005'] == {'frames': 2, 'success': pytest.approx(51.25),
                                               'precision': pytest.approx(50.0)}
    assert json.loads(out.read_text())['success'] == pytest.approx(51.5)
    assert 'kitti3d Car (camera, official height): 2 tracklets, 5 frames' in capsys.readouterr().out
    one = K.main(['--pred', str(preds), '--gt', str(labels), '--scenes', '1'])
    assert one['n_tracklets'] == 1 and one['success'] == pytest.approx(51.25)


def test_velodyne_mode_reads_calibration(tmp_path):
    """--coords velodyne maps centres with inv(Tr_velo_cam) from calib/<seq>.txt."""
    labels, preds = _write_dataset(tmp_path)
    calib = tmp_path / 'calib'
    calib.mkdir()
    for seq in ('0000', '0001'):
        (calib / f'{seq}.txt').write_text('P0: 1 0 0 0 0 1 0 0 0 0 1 0\nR_rect 1 0 0 0 1 0 0 0 1\n'
                                          'Tr_velo_cam 0 -1 0 0 0 0 -1 0 1 0 0 0\n')
    m = K.evaluate(preds, labels, coords='velodyne', calib_dir=calib)
    assert m['success'] == pytest.approx(51.5) and m['precision'] == pytest.approx(47.5)
    with pytest.raises(ValueError, match='calib'):
        K.evaluate(preds, labels, coords='velodyne')


def test_file_errors_name_file_and_line(tmp_path):
    """Wrong column count -> file:line; missing tracklet prediction; frames that differ."""
    labels, preds = _write_dataset(tmp_path)
    (preds / '0001_5.txt').write_text('3 0 0 0 0 0 0 0\n6 1.5 2 4 5 1 30 0.5\n')
    with pytest.raises(ValueError, match=r'0001_5\.txt.*frames'):
        K.evaluate(preds, labels)
    (preds / '0001_5.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'0001_0005\.txt'):
        K.evaluate(preds, labels)
    (labels / '0001.txt').write_text(_label(3, 5, 'Car', 1.5, 2, 4, 5, 1, 20, 0.5)
                                     + '4 5 Car 0 0 0 1 2 3\n')
    with pytest.raises(ValueError, match=r'0001\.txt:2: 9 columns, expected 17'):
        K.read_tracklets(labels)
    (labels / '0001.txt').write_text(_label(3, 5, 'Car', 0, 2, 4, 5, 1, 20, 0.5))
    with pytest.raises(ValueError, match=r'0001\.txt:1: invalid Car box'):
        K.read_tracklets(labels)
