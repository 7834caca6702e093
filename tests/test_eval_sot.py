"""Tests for eval/sot.py: GOT-10k toolkit rules and pytracking OPE rules, hand-computed.

Every expected number below is worked out in the comment next to it from the rules in
specs/metrics-sot.md. Tiny datasets are written in the official layouts under tmp_path.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import sot

EPS = np.finfo(np.float64).eps
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# layout writers (kept here: tests/conftest.py belongs to someone else)
# ---------------------------------------------------------------------------------------------
def write_boxes(path, boxes, sep=','):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(sep.join(f'{v:g}' for v in b) + '\n' for b in boxes))


def write_got10k_seq(root, split, seq, gt, cover, resolution):
    d = root / split / seq
    write_boxes(d / 'groundtruth.txt', gt)
    (d / 'cover.label').write_text(''.join(f'{c}\n' for c in cover))
    (d / 'absence.label').write_text(''.join(f'{int(c == 0)}\n' for c in cover))
    (d / 'meta_info.ini').write_text(
        '[METAINFO]\nurl: https://example.invalid/v\nbegin_time: 00:00:01\n'
        f'object_class: cat\nresolution: ({resolution[0]}, {resolution[1]})\n')


def write_lasot_seq(root, name, gt, occlusion, out_of_view):
    d = root / name.rsplit('-', 1)[0] / name
    write_boxes(d / 'groundtruth.txt', gt)
    (d / 'full_occlusion.txt').write_text(','.join(str(v) for v in occlusion) + '\n')
    (d / 'out_of_view.txt').write_text(','.join(str(v) for v in out_of_view) + '\n')


def make_got10k(tmp_path):
    """Two val sequences; expected pooled IoUs worked out in the comments.

    seq 1: T=5, image 100x80, GT [10,10,20,20] (area 400), cover 8,8,8,0,8
      f0 excluded; f1 = GT -> 1; f2 [20,10,20,20]: inter 10*20 = 200, union 600 -> 1/3;
      f3 cover 0 -> excluded; f4 [10,10,20,10]: inter 200, union 400 -> 0.5 (200/(400+eps) = 0.5)
    seq 2: T=3, image 50x50, GT [40,40,10,10], two repetitions
      rep 1: f1 [45,40,20,10] clipped to [45,40,5,10]: inter 50, union 100 -> 0.5
             (unclipped it would be 50 / 250 = 0.2); f2 = GT -> 1
      rep 2: f1 = GT -> 1; f2 [30,40,20,10]: inter 100, union 200 -> 0.5
    pooled: [1, 1/3, .5, .5, 1, 1, .5] -> AO = (29/6)/7 = 29/42; SR0.5 = SR0.75 = 3/7
    times (seq 1 only): 0.01, 0.02, nan, 0, 0.04 -> fps mean(100, 50, 25) = 175/3
    """
    data, res = tmp_path / 'got10k', tmp_path / 'res_got'
    (data / 'val').mkdir(parents=True)
    (data / 'val' / 'list.txt').write_text('GOT-10k_Val_000001\nGOT-10k_Val_000002\n')
    s1, s2 = 'GOT-10k_Val_000001', 'GOT-10k_Val_000002'
    write_got10k_seq(data, 'val', s1, [[10, 10, 20, 20]] * 5, [8, 8, 8, 0, 8], (100, 80))
    write_got10k_seq(data, 'val', s2, [[40, 40, 10, 10]] * 3, [8, 8, 8], (50, 50))
    write_boxes(res / s1 / f'{s1}_001.txt',
                [[10, 10, 20, 20], [10, 10, 20, 20], [20, 10, 20, 20], [0, 0, 5, 5], [10, 10, 20, 10]])
    (res / s1 / f'{s1}_time.txt').write_text('0.01\n0.02\nnan\n0\n0.04\n')
    write_boxes(res / s2 / f'{s2}_001.txt', [[40, 40, 10, 10], [45, 40, 20, 10], [40, 40, 10, 10]])
    write_boxes(res / s2 / f'{s2}_002.txt', [[40, 40, 10, 10], [40, 40, 10, 10], [30, 40, 20, 10]])
    return data, res


def make_lasot(tmp_path, with_list=True):
    """LaSOT with cat-1, cat-2, dog-1; testing_set.txt lists cat-1 and dog-1.

    cat-1: T=5, GT [10,10,10,10]; frame 3 fully occluded. pred = GT except f3 (garbage) and
      f4 [30,10,10,10] (IoU 0, centre error 20 px, normalised 2.0).
      success t<1: f0,f1,f2 -> 3/5; t=1: 0.  precision@20: f0,f1,f2,f4 -> 4/5.  Pnorm@.2: 3/5.
    dog-1: T=4, GT [0,0,8,6] except f2 = [0,0,0,0] out of view. pred f1 [0,0,4,6]: IoU 24/48 =
      0.5 exactly, centres 1.5 vs 3.5 in x -> error 2 px, normalised |1.5-3.5|/8 = 0.25;
      f2 [0,0,0,0] (replaced, invalid anyway); f3 = GT.
      success t in 0..0.45 (10 pts): f0,f1,f3 -> 3/4; t in 0.5..0.95: 2/4; t=1: 0.
      precision@20: f0,f1,f3 -> 3/4. Pnorm@.2: f0,f3 -> 2/4 (f2 is +inf for LaSOT).
    dataset: AUC = (10*(.6+.75)/2 + 10*(.6+.5)/2) / 21 * 100 = 12.25/21*100 = 58.333...
             P = (.8+.75)/2*100 = 77.5, Pnorm = (.6+.5)/2*100 = 55.0
    """
    data, res = tmp_path / 'lasot', tmp_path / 'res_lasot'
    write_lasot_seq(data, 'cat-1', [[10, 10, 10, 10]] * 5, [0, 0, 0, 1, 0], [0] * 5)
    write_lasot_seq(data, 'cat-2', [[5, 5, 5, 5]] * 3, [0] * 3, [0] * 3)
    write_lasot_seq(data, 'dog-1', [[0, 0, 8, 6], [0, 0, 8, 6], [0, 0, 0, 0], [0, 0, 8, 6]],
                    [0] * 4, [0, 0, 1, 0])
    if with_list:
        (data / 'testing_set.txt').write_text('cat-1\ndog-1\n')
    write_boxes(res / 'cat-1.txt', [[10, 10, 10, 10]] * 3 + [[99, 99, 3, 3], [30, 10, 10, 10]], '\t')
    write_boxes(res / 'dog-1.txt', [[0, 0, 8, 6], [0, 0, 4, 6], [0, 0, 0, 0], [0, 0, 8, 6]], '\t')
    return data, res


# ---------------------------------------------------------------------------------------------
# IoU conventions
# ---------------------------------------------------------------------------------------------
def test_continuous_and_pixel_inclusive_iou_agree_without_bound_differ_with_clipping():
    """Both intersections are min(right) - max(left); GOT-10k differs only by bound and eps."""
    pred, gt = np.array([[0., 0, 10, 10]]), np.array([[5., 5, 10, 10]])
    # inter 5*5 = 25, union 175
    assert sot.got10k_iou(pred, gt)[0] == 25 / 175
    assert sot.ope_iou(pred, gt)[0] == 25 / 175
    # a box left of the image is shifted, not cropped: x -5 -> 0, w stays 10 -> identical to GT
    pred, gt = np.array([[-5., 0, 10, 10]]), np.array([[0., 0, 10, 10]])
    assert sot.got10k_iou(pred, gt, bound=(100, 100))[0] == 1.0
    assert sot.ope_iou(pred, gt)[0] == 50 / 150  # unclipped pixel-inclusive: inter 5*10


def test_got10k_clip_to_bound_right_edge():
    """w <- clip(w, 0, W - x): [90,0,20,10] in a 100-wide image becomes [90,0,10,10]."""
    pred, gt = np.array([[90., 0, 20, 10]]), np.array([[80., 0, 20, 10]])
    assert sot.got10k_iou(pred, gt, bound=(100, 50))[0] == 0.5  # inter 100, union 100+200-100
    assert sot.got10k_iou(pred, gt)[0] == 100 / 300  # unclipped
    np.testing.assert_array_equal(sot.clip_to_bound([[-3, 60, 20, 20]], (100, 50)), [[0, 50, 20, 0]])


def test_got10k_iou_eps_and_zero_area():
    """Union + float64 eps: two zero-area boxes give 0, two identical 1x1 boxes 1/(1+eps) < 1."""
    assert sot.got10k_iou([[3., 3, 0, 0]], [[3., 3, 0, 0]])[0] == 0.0
    assert sot.got10k_iou([[0., 0, 1, 1]], [[0., 0, 1, 1]])[0] == 1 / (1 + EPS) < 1.0
    assert sot.got10k_iou([[0., 0, 2, 1]], [[0., 0, 2, 1]])[0] == 1.0  # 2 + eps rounds to 2


def test_iou_properties_random_boxes():
    """Property: both IoUs symmetric and in [0, 1]; without bound they agree to 1e-12."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = np.concatenate([rng.uniform(-20, 120, (50, 2)), rng.uniform(1, 60, (50, 2))], 1)
        b = np.concatenate([rng.uniform(-20, 120, (50, 2)), rng.uniform(1, 60, (50, 2))], 1)
        b[:10] = a[:10] + rng.uniform(-3, 3, (10, 4)).clip(-0.5, 0.5)  # some large overlaps
        for bound in (None, (100, 90)):
            ab, ba = sot.got10k_iou(a, b, bound), sot.got10k_iou(b, a, bound)
            np.testing.assert_array_equal(ab, ba)
            assert ((ab >= 0) & (ab <= 1)).all()
        o_ab, o_ba = sot.ope_iou(a, b), sot.ope_iou(b, a)
        np.testing.assert_allclose(o_ab, o_ba, rtol=0, atol=1e-12)
        assert ((o_ab >= 0) & (o_ab <= 1 + 1e-12)).all()
        np.testing.assert_allclose(sot.got10k_iou(a, b), o_ab, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# GOT-10k frame selection, pooling, thresholds, speed
# ---------------------------------------------------------------------------------------------
def test_got10k_excludes_frame0_and_cover0():
    """Frame 0 and cover==0 frames are not scored; IoUs 1, 1/3, 0.5 remain (see make_got10k)."""
    gt = np.array([[10., 10, 20, 20]] * 5)
    pred = np.array([[50., 50, 20, 20], [10, 10, 20, 20], [20, 10, 20, 20], [0, 0, 5, 5], [10, 10, 20, 10]])
    ious = sot.got10k_sequence_ious(pred, gt, np.array([8, 8, 8, 0, 8]), (100, 80))
    np.testing.assert_array_equal(ious, [1.0, 200 / 600, 0.5])
    s = sot.got10k_scores(ious)
    assert s['ao'] == pytest.approx(11 / 18, abs=1e-15)
    assert s['sr50'] == 1 / 3  # 0.5 exactly is not > 0.5
    assert s['sr75'] == 1 / 3


def test_got10k_frame0_excluded_vs_ope_frame0_forced():
    """A garbage frame-0 box: GOT-10k ignores frame 0, OPE replaces it by the GT (IoU 1)."""
    gt = np.array([[0., 0, 10, 10]] * 2)
    pred = np.array([[50., 50, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_array_equal(sot.got10k_sequence_ious(pred, gt, np.array([8, 8]), (99, 99)), [1.0])
    iou, _, _, _ = sot.ope_frame_errors(pred, gt, 'tnl2k')
    np.testing.assert_array_equal(iou, [1.0, 1.0])


def test_got10k_pooled_not_sequence_mean():
    """AO pools frames: 3 frames of IoU 1 + 1 frame of IoU 0 -> 0.75, not mean(1, 0) = 0.5."""
    seq_a = np.ones(3)
    seq_b = np.zeros(1)
    assert sot.got10k_scores(np.concatenate([seq_a, seq_b]))['ao'] == 0.75
    assert sot.got10k_scores(seq_a)['ao'] == 1.0 and sot.got10k_scores(seq_b)['ao'] == 0.0


def test_got10k_threshold_tie_strict_and_speed():
    """IoU exactly 0.5 fails SR0.5 and the curve at t=0.5; speed = mean(1/t), t > 0 and not NaN."""
    s = sot.got10k_scores([0.5, 0.75], [0.5, np.nan, 0.0, -1.0, 0.25])
    assert s['sr50'] == 0.5 and s['sr75'] == 0.0
    t = sot.GOT10K_THRESHOLDS
    assert t[50] == 0.5 and s['success_curve'][50] == 0.5 and s['success_curve'][49] == 1.0
    assert s['speed_fps'] == 3.0  # mean(1/0.5, 1/0.25)
    assert sot.got10k_scores([1.0], [np.nan, 0])['speed_fps'] == -1


def test_got10k_oracle_ao_is_exactly_one(tmp_path):
    """Oracle tracker (pred = GT, areas >= 2): AO = SR0.5 = SR0.75 = 100 exactly."""
    data, res = make_got10k(tmp_path)
    for seq in ('GOT-10k_Val_000001', 'GOT-10k_Val_000002'):
        for f in (res / seq).glob(f'{seq}_0*.txt'):
            f.unlink()
        gt = sot.read_boxes(data / 'val' / seq / 'groundtruth.txt')
        write_boxes(res / seq / f'{seq}_001.txt', gt)
    r = sot.score_got10k(res, data, 'val')
    assert r['AO'] == 100.0 and r['SR0.5'] == 100.0 and r['SR0.75'] == 100.0
    assert r['num_frames'] == 3 + 2  # seq 1: frames 1, 2, 4; seq 2: frames 1, 2


def test_got10k_dataset_scores(tmp_path):
    """Pooled scores of make_got10k: AO 29/42, SR 3/7, fps 175/3; per-sequence AOs 61.1 / 75."""
    data, res = make_got10k(tmp_path)
    r = sot.score_got10k(res, data, 'val')
    assert r['AO'] == pytest.approx(29 / 42 * 100, abs=1e-12)
    assert r['SR0.5'] == pytest.approx(300 / 7, abs=1e-12)
    assert r['SR0.75'] == pytest.approx(300 / 7, abs=1e-12)
    assert r['speed_fps'] == pytest.approx(175 / 3, abs=1e-9)
    assert r['repetitions'] == (1, 2) and r['num_frames'] == 7
    seqs = r['sequences']
    assert seqs['GOT-10k_Val_000001']['AO'] == pytest.approx(11 / 18 * 100, abs=1e-12)
    assert seqs['GOT-10k_Val_000002']['AO'] == pytest.approx(75.0, abs=1e-12)
    assert seqs['GOT-10k_Val_000002']['num_repetitions'] == 2
    assert seqs['GOT-10k_Val_000002']['speed_fps'] == -1  # no time file
    assert len(r['success_curve']) == 101 and r['success_curve'][0] == 100.0


def test_got10k_errors_name_files(tmp_path):
    """Missing results, shape mismatch and malformed GT each name the file (and line)."""
    data, res = make_got10k(tmp_path)
    s2 = 'GOT-10k_Val_000002'
    write_boxes(res / s2 / f'{s2}_002.txt', [[40, 40, 10, 10]] * 2)
    with pytest.raises(ValueError, match=f'{s2}_002.txt: 2 boxes'):
        sot.score_got10k(res, data, 'val')
    for f in (res / s2).iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=f'{s2}_001.txt'):
        sot.score_got10k(res, data, 'val')
    (data / 'val' / s2 / 'groundtruth.txt').write_text('40,40,10,10\n40,40,10\n40,40,10,10\n')
    with pytest.raises(ValueError, match=r'groundtruth.txt:2: expected 4 values'):
        sot.score_got10k(res, data, 'val')
    with pytest.raises(ValueError, match='hidden'):
        sot.score_got10k(res, data, 'test')


def test_got10k_meta_resolution_and_cover_length(tmp_path):
    """meta_info.ini without a resolution line, or cover.label of the wrong length, is an error."""
    data, res = make_got10k(tmp_path)
    d = data / 'val' / 'GOT-10k_Val_000001'
    (d / 'meta_info.ini').write_text('[METAINFO]\nresolution: 1920x1080\n')
    with pytest.raises(ValueError, match=r'meta_info.ini:2'):
        sot.score_got10k(res, data, 'val')
    assert sot.read_got10k_resolution(data / 'val' / 'GOT-10k_Val_000002' / 'meta_info.ini') == (50, 50)
    (d / 'meta_info.ini').write_text('[METAINFO]\nresolution: (100, 80)\n')
    (d / 'cover.label').write_text('8\n8\n')
    with pytest.raises(ValueError, match=r'cover.label: 2 values'):
        sot.score_got10k(res, data, 'val')


# ---------------------------------------------------------------------------------------------
# OPE per-frame rules
# ---------------------------------------------------------------------------------------------
def test_zero_size_replacement_chain():
    """w or h == 0 at frame i >= 1 takes the already-replaced box of i - 1; frame 0 never."""
    pred = [[1, 1, 10, 10], [0, 0, 0, 5], [3, 3, 5, 0], [20, 20, 10, 10], [0, 0, 0, 0]]
    np.testing.assert_array_equal(sot.replace_zero_size(pred), [
        [1, 1, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [20, 20, 10, 10], [20, 20, 10, 10]])
    np.testing.assert_array_equal(sot.replace_zero_size([[0, 0, 0, 0], [5, 5, 0, 1], [2, 2, 2, 2]]),
                                  [[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]])


def test_zero_size_copies_tracker_frame0_before_forcing_gt():
    """Replacement happens before frame 0 is set to GT: frame 1 gets the tracker's own box.

    GT [0,0,10,10]; tracker frame 0 [1,1,10,10]; frame 1 zero-size -> [1,1,10,10]:
    inter 9*9 = 81, union 200 - 81 = 119.
    """
    gt = np.array([[0., 0, 10, 10]] * 3)
    pred = np.array([[1., 1, 10, 10], [0, 0, 0, 5], [0, 0, 10, 10]])
    iou, err, _, _ = sot.ope_frame_errors(pred, gt, 'tnl2k')
    np.testing.assert_array_equal(iou, [1.0, 81 / 119, 1.0])
    assert err[1] == pytest.approx(np.sqrt(2), abs=1e-15)


def test_ope_oracle_lasot_invisible_and_invalid_frames():
    """Oracle on LaSOT, T=10: frames 3 (occluded) and 7 (out of view) invisible, frame 5 GT 0x0.

    7 valid frames of IoU 1: success = 0.7 for t < 1 and 0 at t = 1.0 (strict) ->
    AUC = 0.7 * 20/21 * 100 = 66.667; P = 70 (invalid -> +inf);
    Pnorm = 80: frame 5 is visible but invalid -> -1 counts (quirk), frames 3, 7 -> +inf.
    """
    gt = np.array([[10., 20, 30, 40]] * 10)
    gt[5] = [0, 0, 0, 0]
    visible = np.ones(10, bool)
    visible[[3, 7]] = False
    iou, err, err_norm, valid = sot.ope_frame_errors(gt, gt, 'lasot', visible)
    assert valid.sum() == 7
    assert iou[3] == -1 and iou[5] == -1 and np.isinf(err[[3, 5, 7]]).all()
    assert err_norm[5] == -1 and np.isinf(err_norm[[3, 7]]).all()
    d = sot.ope_dataset_scores(*[c[None] for c in sot.ope_sequence_curves(iou, err, err_norm)])
    assert d['AUC'] == pytest.approx(0.7 * 20 / 21 * 100, abs=1e-4)
    assert d['P'] == pytest.approx(70.0, abs=1e-4)
    assert d['Pnorm'] == pytest.approx(80.0, abs=1e-4)


def test_ope_non_lasot_quirk_invalid_frames_count_for_norm_precision():
    """Outside LaSOT invisible/invalid frames get normalised error -1 -> counted as successes.

    Same oracle as above: lasot_ext keeps errn = -1 on the 3 invalid frames -> Pnorm 100
    (LaSOT: 80), P 70 for both; tnl2k without visibility: only frame 5 invalid -> P 90, Pnorm 100.
    """
    gt = np.array([[10., 20, 30, 40]] * 10)
    gt[5] = 0
    visible = np.ones(10, bool)
    visible[[3, 7]] = False

    def scores(benchmark, vis):
        curves = sot.ope_sequence_curves(*sot.ope_frame_errors(gt, gt, benchmark, vis)[:3])
        return sot.ope_dataset_scores(*[c[None] for c in curves])

    ext = scores('lasot_ext', visible)
    assert ext['P'] == pytest.approx(70.0, abs=1e-4) and ext['Pnorm'] == pytest.approx(100.0, abs=1e-4)
    tnl = scores('tnl2k', None)
    assert tnl['AUC'] == pytest.approx(0.9 * 20 / 21 * 100, abs=1e-4)
    assert tnl['P'] == pytest.approx(90.0, abs=1e-4) and tnl['Pnorm'] == pytest.approx(100.0, abs=1e-4)


def test_ope_threshold_ties_success_strict_precision_inclusive():
    """IoU exactly 0.5 fails t = 0.5 (strict >); a 20 px error passes P@20 (<=), fails P@19."""
    gt = np.array([[0., 0, 8, 6], [0, 0, 8, 6], [100, 100, 10, 10]])
    pred = np.array([[0., 0, 8, 6], [0, 0, 4, 6], [120, 100, 10, 10]])  # IoU 24/48; shift 20 px
    iou, err, err_norm, _ = sot.ope_frame_errors(pred, gt, 'otb')
    assert iou[1] == 0.5 and err[2] == 20.0 and err_norm[1] == 0.25
    success, precision, _ = sot.ope_sequence_curves(iou, err, err_norm)
    assert sot.OPE_OVERLAP_THRESHOLDS[10] == 0.5 and sot.OPE_OVERLAP_THRESHOLDS[20] == 1.0
    assert success[9] == np.float32(2 / 3) and success[10] == np.float32(1 / 3)
    assert precision[19] == np.float32(2 / 3) and precision[20] == np.float32(1.0)  # err[1] = 2
    assert success.dtype == np.float32 and len(success) == 21 and len(precision) == 51


def test_ope_length_mismatch_rules():
    """Longer -> truncated everywhere; shorter -> LaSOT error, else padded with zero boxes.

    tnl2k T=4, 2 predicted boxes: padded frames 2, 3 are [0,0,0,0] (not replaced: padding
    comes after replacement) -> IoU 0, centre (-0.5,-0.5) vs (4.5,4.5) -> error 5*sqrt(2).
    """
    gt = np.array([[0., 0, 10, 10]] * 4)
    iou, err, err_norm, _ = sot.ope_frame_errors(gt[:2], gt, 'tnl2k')
    np.testing.assert_array_equal(iou, [1, 1, 0, 0])
    np.testing.assert_allclose(err, [0, 0, 5 * np.sqrt(2), 5 * np.sqrt(2)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(err_norm[2:], [np.sqrt(0.5)] * 2, rtol=0, atol=1e-12)
    longer = np.concatenate([gt, [[50, 50, 5, 5]] * 2])
    for b, vis in (('tnl2k', None), ('lasot', np.ones(4, bool))):
        np.testing.assert_array_equal(sot.ope_frame_errors(longer, gt, b, vis)[0], [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r'cat-1.txt: 3 boxes but the annotation has 4'):
        sot.ope_frame_errors(gt[:3], gt, 'lasot', np.ones(4, bool), source='cat-1.txt')


def test_ope_invalid_predictions_are_errors():
    """NaN or negative predicted size -> 'invalid results' naming source:line."""
    gt = np.array([[0., 0, 10, 10]] * 3)
    with pytest.raises(ValueError, match=r'r.txt:2: invalid results'):
        sot.ope_frame_errors([[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, 1, 1]], gt, 'otb', source='r.txt')
    with pytest.raises(ValueError, match=r'r.txt:3: invalid results'):
        sot.ope_frame_errors([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, -1, 1]], gt, 'otb', source='r.txt')
    with pytest.raises(ValueError, match='NaN'):
        sot.ope_frame_errors(gt, np.array([[0, 0, 10, 10], [0, 0, np.nan, 1], [0, 0, 1, 1]]), 'otb')
    with pytest.raises(ValueError, match='unknown OPE benchmark'):  # a typo must not pick rules
        sot.ope_frame_errors(gt, gt, 'LaSOT')


def test_ope_sequences_averaged_not_pooled():
    """Dataset curves average sequences: A (T=4, oracle) 20/21, B (T=2, frame 1 IoU 0) 10/21.

    AUC = mean(20/21, 10/21) * 100 = 71.43 (pooling frames would give 5/6 * 20/21 * 100 = 79.37).
    """
    a = np.array([[0., 0, 10, 10]] * 4)
    b = np.array([[0., 0, 10, 10]] * 2)
    ca = sot.ope_sequence_curves(*sot.ope_frame_errors(a, a, 'otb')[:3])
    cb = sot.ope_sequence_curves(*sot.ope_frame_errors([[0, 0, 10, 10], [50, 50, 10, 10]], b, 'otb')[:3])
    d = sot.ope_dataset_scores(*[np.stack([x, y]) for x, y in zip(ca, cb)])
    assert d['AUC'] == pytest.approx(15 / 21 * 100, abs=1e-4)
    assert d['OP50'] == pytest.approx(75.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# readers and dataset scoring
# ---------------------------------------------------------------------------------------------
def test_read_boxes_separators_and_errors(tmp_path):
    """Tab, comma and whitespace accepted; bad column count / NaN / negative size -> file:line."""
    p = tmp_path / 'a.txt'
    p.write_text('1\t2\t3\t4\n5,6,7,8\n\n9 10  11 12\n')
    np.testing.assert_array_equal(sot.read_boxes(p), [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    for text, line, what in (('1,2,3,4\n1,2,3\n', 2, 'expected 4 values'),
                             ('1,2,3,4\n1,2,3,4\n1,2,nan,4\n', 3, 'NaN'),
                             ('1,2,-3,4\n', 1, 'negative'), ('1,2,x,4\n', 1, 'not a number'),
                             ('1,,2,3,4\n', 1, 'expected 4 values')):
        p.write_text(text)
        with pytest.raises(ValueError, match=f'a.txt:{line}: .*{what}'):
            sot.read_boxes(p)
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        sot.read_boxes(tmp_path / 'nope.txt')


def test_lasot_dataset_scores(tmp_path):
    """make_lasot: AUC 58.333, P 77.5, Pnorm 55 over the 2 listed sequences (cat-2 unlisted)."""
    data, res = make_lasot(tmp_path)
    r = sot.score_ope(res, data, 'lasot')
    assert r['num_sequences'] == 2 and list(r['sequences']) == ['cat-1', 'dog-1']
    assert r['AUC'] == pytest.approx(12.25 / 21 * 100, abs=1e-4)
    assert r['P'] == pytest.approx(77.5, abs=1e-4)
    assert r['Pnorm'] == pytest.approx(55.0, abs=1e-4)
    assert r['sequences']['cat-1']['AUC'] == pytest.approx(0.6 * 20 / 21 * 100, abs=1e-4)
    assert r['sequences']['dog-1']['num_valid'] == 3
    assert r['sequences']['dog-1']['mean_iou'] == pytest.approx(2.5 / 3, abs=1e-12)


def test_lasot_sequence_list_fallbacks(tmp_path, capsys):
    """No testing_set.txt: --sequences list, or every sequence found with a loud warning."""
    data, res = make_lasot(tmp_path, with_list=False)
    write_boxes(res / 'cat-2.txt', [[5, 5, 5, 5]] * 3)
    r = sot.score_ope(res, data, 'lasot')
    assert r['num_sequences'] == 3
    assert 'NOT the official 280-sequence' in capsys.readouterr().err
    r = sot.score_ope(res, data, 'lasot', sequences=['cat-2'])
    assert r['num_sequences'] == 1 and r['AUC'] == pytest.approx(20 / 21 * 100, abs=1e-4)


def test_lasot_errors_name_files(tmp_path):
    """Missing result, NaN result, malformed GT, bad visibility file: each names file (and line)."""
    data, res = make_lasot(tmp_path)
    (res / 'dog-1.txt').unlink()
    with pytest.raises(FileNotFoundError, match='dog-1.txt: result for sequence dog-1 not found'):
        sot.score_ope(res, data, 'lasot')
    (res / 'dog-1.txt').write_text('0\t0\t8\t6\nnan\t0\t4\t6\n0\t0\t0\t0\n0\t0\t8\t6\n')
    with pytest.raises(ValueError, match=r'dog-1.txt:2: NaN'):
        sot.score_ope(res, data, 'lasot')
    gt = data / 'cat' / 'cat-1' / 'groundtruth.txt'
    gt.write_text('10,10,10,10\n10,10,10,10\n10,10,-10,10\n10,10,10,10\n10,10,10,10\n')
    with pytest.raises(ValueError, match=r'cat-1/groundtruth.txt:3: negative'):
        sot.score_ope(res, data, 'lasot')
    gt.write_text('10,10,10,10\n' * 5)
    (data / 'cat' / 'cat-1' / 'out_of_view.txt').write_text('0,0,0,0\n')
    with pytest.raises(ValueError, match=r'out_of_view.txt: 4 values'):
        sot.score_ope(res, data, 'lasot')
    (data / 'cat' / 'cat-1' / 'out_of_view.txt').write_text('0,0,2,0,0\n')
    with pytest.raises(ValueError, match=r'out_of_view.txt: values must be 0 or 1'):
        sot.score_ope(res, data, 'lasot')


@pytest.mark.parametrize('benchmark', ['tnl2k', 'otb', 'trackingnet'])
def test_other_layouts_oracle(tmp_path, benchmark):
    """TNL2K / OTB / TrackingNet layouts, integer tab-separated results (OSTrack's format).

    Oracle on one sequence of T=3 with frame 2 GT 0x0 (invalid): success 2/3 for t < 1 ->
    AUC = 2/3 * 20/21 * 100 = 63.49; P = 66.67; Pnorm = 100 (invalid -> -1, the quirk).
    """
    data, res = tmp_path / 'data', tmp_path / 'res'
    gt = [[3, 4, 20, 10], [4, 4, 20, 10], [0, 0, 0, 0]]
    gt_path = {'tnl2k': data / 'seq_a' / 'groundtruth.txt',
               'otb': data / 'seq_a' / 'groundtruth_rect.txt',
               'trackingnet': data / 'TRAIN_0' / 'anno' / 'seq_a.txt'}[benchmark]
    write_boxes(gt_path, gt, '\t' if benchmark == 'otb' else ',')
    write_boxes(res / 'seq_a.txt', gt, '\t')
    split = 'TRAIN_0' if benchmark == 'trackingnet' else None
    r = sot.score_ope(res, data, benchmark, split)
    assert r['num_sequences'] == 1
    assert r['AUC'] == pytest.approx(2 / 3 * 20 / 21 * 100, abs=1e-4)
    assert r['P'] == pytest.approx(200 / 3, abs=1e-4) and r['Pnorm'] == pytest.approx(100, abs=1e-4)
    if benchmark == 'trackingnet':
        with pytest.raises(ValueError, match='hidden'):
            sot.score_ope(res, data, benchmark, 'TEST')
    else:
        with pytest.raises(ValueError, match='--split'):
            sot.score_ope(res, data, benchmark, 'val')


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def test_cli_got10k_subprocess(tmp_path):
    """`python -m eval.sot --benchmark got10k` prints the summary and writes the JSON."""
    data, res = make_got10k(tmp_path)
    out = tmp_path / 'got.json'
    proc = subprocess.run([sys.executable, '-m', 'eval.sot', '--benchmark', 'got10k', '--results',
                           str(res), '--data-path', str(data), '--split', 'val', '--out', str(out)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    # AO 29/42 = 69.05, SR 3/7 = 42.86
    assert proc.stdout.strip() == 'GOT-10k val: AO 69.05 SR0.5 42.86 SR0.75 42.86 (2 seqs, 1-2 reps)'
    j = json.loads(out.read_text())
    assert j['AO'] == pytest.approx(29 / 42 * 100, abs=1e-12)
    assert set(j['sequences']) == {'GOT-10k_Val_000001', 'GOT-10k_Val_000002'}
    assert len(j['success_curve']) == 101 and len(j['thresholds']) == 101


def test_cli_lasot_summary_json_and_missing_matplotlib(tmp_path, capsys, monkeypatch):
    """LaSOT CLI summary; --plot without matplotlib prints a clear message, JSON still written."""
    data, res = make_lasot(tmp_path)
    out = tmp_path / 'o' / 'lasot.json'
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    sot.main(['--benchmark', 'lasot', '--results', str(res), '--data-path', str(data),
              '--out', str(out), '--plot', str(tmp_path / 'plots')])
    captured = capsys.readouterr()
    assert captured.out.strip() == 'LaSOT: AUC 58.33 P 77.50 Pnorm 55.00 (2 seqs)'
    assert '--plot needs matplotlib' in captured.err
    j = json.loads(out.read_text())
    assert j['P'] == pytest.approx(77.5, abs=1e-4) and len(j['success_curve']) == 21
    assert j['sequences']['cat-1']['P'] == pytest.approx(80.0, abs=1e-4)
    assert len(j['precision_curve']) == 51 and j['thresholds_norm'][20] == 0.2


def test_cli_rejects_unknown_arguments_and_reports_bad_input(tmp_path, capsys):
    """Unknown arguments are an error; a missing result file exits 2 with its path, no traceback."""
    with pytest.raises(SystemExit):
        sot.main(['--benchmark', 'lasot', '--results', 'r', '--data-path', 'd', '--bogus', '1'])
    data, res = make_lasot(tmp_path)
    (res / 'cat-1.txt').unlink()
    with pytest.raises(SystemExit) as e:
        sot.main(['--benchmark', 'lasot', '--results', str(res), '--data-path', str(data)])
    assert e.value.code == 2
    assert 'cat-1.txt: result for sequence cat-1 not found' in capsys.readouterr().err
