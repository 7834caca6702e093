"""eval/flow.py: EPE / Fl-all definitions (spec section 3) and the .flo / KITTI PNG formats."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from eval import flow as F


def _flow(values):
    """(H, W, 2) float32 from nested lists of (u, v)."""
    return np.array(values, np.float32)


def test_kitti_epe_is_per_image_mean_and_differs_from_pooled():
    """kitti_epe = mean of per-image means (image-weighted) != pixel-pooled EPE."""
    gt1, pred1 = _flow([[(0, 0)]]), _flow([[(4, 0)]])  # 1 valid pixel, EPE 4
    gt2 = _flow([[(0, 0), (0, 0), (0, 0)]])  # 3 valid pixels, EPE 0
    epes = [F.endpoint_error(pred1, gt1), F.endpoint_error(gt2, gt2)]
    m = F.kitti_metrics(epes, [gt1, gt2], [np.ones((1, 1)), np.ones((1, 3))])
    assert m['kitti_epe'] == pytest.approx((4 + 0) / 2)  # 2.0
    assert m['epe_pooled'] == pytest.approx(4 / 4)  # 1.0
    assert m['per_image_epe'] == [4.0, 0.0]
    assert F.pooled_metrics(epes)['epe'] == pytest.approx(1.0)


def test_fl_outlier_needs_both_strict_conditions():
    """Outlier iff EPE > 3 AND EPE/|gt| > 0.05; both strict; |gt| = 0 -> ratio inf; 0/0 never."""
    gt = _flow([[(10, 0), (80, 0), (80, 0), (100, 0), (0, 0), (0, 0), (0, 0), (60, 0)]])
    pred = _flow([[(13, 0),   # EPE 3.0 exactly, ratio 0.3: EPE not > 3 -> inlier
                   (84, 0),   # EPE 4, ratio 4/80 = 0.05 exactly: ratio not > 0.05 -> inlier
                   (84.5, 0),  # EPE 4.5, ratio 0.05625 -> outlier
                   (103.5, 0),  # EPE 3.5, ratio 0.035 -> inlier (second condition)
                   (2, 0),    # EPE 2, |gt| 0 -> ratio inf but EPE <= 3 -> inlier
                   (4, 0),    # EPE 4, |gt| 0 -> outlier
                   (0, 0),    # 0 / 0 -> NaN -> inlier
                   (63.5, 0)]])  # EPE 3.5, ratio 0.0583 -> outlier
    out = F.kitti_outliers(F.endpoint_error(pred, gt), gt)
    assert out[0].tolist() == [False, False, True, False, False, True, False, True]
    m = F.kitti_metrics([F.endpoint_error(pred, gt)], [gt], [np.ones((1, 8))])
    assert m['fl_all'] == pytest.approx(100 * 3 / 8)


def test_fl_all_is_pooled_over_valid_pixels_of_all_images():
    """Fl-all = outliers / valid pixels summed over images (not a mean of per-image rates)."""
    gt1, pred1 = _flow([[(0, 0)]]), _flow([[(10, 0)]])  # 1 pixel, 1 outlier (100 %)
    gt2 = np.zeros((1, 3, 2), np.float32)  # 3 pixels, 0 outliers
    m = F.kitti_metrics([F.endpoint_error(pred1, gt1), F.endpoint_error(gt2, gt2)],
                        [gt1, gt2], [np.ones((1, 1)), np.ones((1, 3))])
    assert m['fl_all'] == pytest.approx(25.0)  # not (100 + 0) / 2


def test_invalid_pixels_ignored_by_kitti_but_counted_by_sintel():
    """KITTI masks valid < 0.5; Chairs/Sintel use every pixel (no mask)."""
    gt = _flow([[(0, 0), (0, 0)]])
    pred = _flow([[(1, 0), (1000, 0)]])  # pixel 2 invalid, huge error
    epe = F.endpoint_error(pred, gt)
    m = F.kitti_metrics([epe], [gt], [np.array([[1.0, 0.4]])])  # 0.4 < 0.5 -> invalid
    assert m['kitti_epe'] == pytest.approx(1.0)
    assert m['fl_all'] == 0.0
    assert F.pooled_metrics([epe])['epe'] == pytest.approx((1 + 1000) / 2)


def test_image_without_valid_pixels_makes_kitti_epe_nan_but_not_fl():
    """Spec: no valid pixel -> per-image mean NaN -> kitti_epe NaN; Fl-all unaffected."""
    gt = _flow([[(0, 0), (0, 0)]])
    pred = _flow([[(5, 0), (0, 0)]])  # pixel 1: EPE 5 with |gt| 0 -> outlier
    epe = F.endpoint_error(pred, gt)
    m = F.kitti_metrics([epe, epe], [gt, gt], [np.ones((1, 2)), np.zeros((1, 2))])
    assert math.isnan(m['kitti_epe'])
    assert math.isnan(m['per_image_epe'][1]) and m['per_image_epe'][0] == pytest.approx(2.5)
    assert m['fl_all'] == pytest.approx(50.0)


def test_pixel_rates_are_strict():
    """1px/3px/5px count EPE < 1/3/5 strictly: an EPE of exactly 1, 3, 5 fails its own rate."""
    gt = np.zeros((1, 4, 2), np.float32)
    pred = _flow([[(0.5, 0), (1, 0), (3, 0), (5, 0)]])
    m = F.pooled_metrics([F.endpoint_error(pred, gt)])
    assert (m['1px'], m['3px'], m['5px']) == (0.25, 0.5, 0.75)
    assert m['epe'] == pytest.approx(9.5 / 4)


def test_flo_round_trip_and_bad_magic(tmp_path):
    """.flo: magic 202021.25, w, h, (u, v) float32; a bad magic is an error naming the file."""
    flow = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    F.write_flo(tmp_path / 'a.flo', flow)
    assert (tmp_path / 'a.flo').stat().st_size == 12 + 3 * 5 * 8
    np.testing.assert_array_equal(F.read_flo(tmp_path / 'a.flo'), flow)
    data = bytearray((tmp_path / 'a.flo').read_bytes())
    data[:4] = np.array([1.0], '<f4').tobytes()
    (tmp_path / 'bad.flo').write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r'bad\.flo.*magic'):
        F.read_flo(tmp_path / 'bad.flo')
    (tmp_path / 'short.flo').write_bytes((tmp_path / 'a.flo').read_bytes()[:-8])
    with pytest.raises(ValueError, match=r'short\.flo.*3'):
        F.read_flo(tmp_path / 'short.flo')


def test_kitti_png_encoding_and_round_trip(tmp_path):
    """KITTI PNG: u = (R - 2^15)/64, v = (G - 2^15)/64, valid = B > 0; write -> read exact."""
    raw = np.array([[[2 ** 15 + 64, 2 ** 15 - 128, 1], [0, 65535, 0]]], np.uint16)
    F.write_png(tmp_path / 'raw.png', raw)
    flow, valid = F.read_kitti_png(tmp_path / 'raw.png')
    np.testing.assert_array_equal(flow[0, 0], [1.0, -2.0])
    np.testing.assert_array_equal(flow[0, 1], [-512.0, 32767 / 64])
    np.testing.assert_array_equal(valid, [[1.0, 0.0]])

    rng = np.random.default_rng(1)
    flow = (rng.integers(-300 * 64, 300 * 64, size=(6, 9, 2)) / 64).astype(np.float32)
    valid = rng.random((6, 9)) > 0.3
    F.write_kitti_png(tmp_path / 'f.png', flow, valid)
    back, back_valid = F.read_flow(tmp_path / 'f.png')
    np.testing.assert_array_equal(back, flow)
    np.testing.assert_array_equal(back_valid, valid.astype(np.float32))


def test_png_reader_matches_pillow_on_all_filter_types(tmp_path):
    """Own PNG decoder: the 5 row filters at 16 bits (Pillow keeps only the high byte of
    16-bit RGB, which we check against) and Pillow's own adaptive-filter 8-bit files."""
    rng = np.random.default_rng(2)
    img16 = rng.integers(0, 65536, size=(10, 7, 3)).astype(np.uint16)
    F.write_png(tmp_path / 'a.png', img16, filters=[0, 1, 2, 3, 4, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(F.read_png(tmp_path / 'a.png'), img16)
    F.write_png(tmp_path / 'up.png', img16, filters=[0, 2, 2, 0, 2, 2, 2, 0, 0, 2])  # fast path
    np.testing.assert_array_equal(F.read_png(tmp_path / 'up.png'), img16)
    pil = np.asarray(Image.open(tmp_path / 'a.png'))
    assert pil.dtype == np.uint8  # Pillow truncates: why we parse PNGs ourselves
    np.testing.assert_array_equal(pil, img16 >> 8)

    small = rng.integers(0, 4, size=(40, 30, 3)).astype(np.uint8)  # frequent Paeth ties
    F.write_png(tmp_path / 'c.png', small, filters=np.arange(40) % 5)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'c.png')), small)
    np.testing.assert_array_equal(F.read_png(tmp_path / 'c.png'), small)

    yy, xx = np.mgrid[:40, :50]
    img8 = np.stack([(3 * xx + yy) % 256, (5 * yy) % 256, rng.integers(0, 256, (40, 50))],
                    axis=-1).astype(np.uint8)
    Image.fromarray(img8).save(tmp_path / 'b.png')
    np.testing.assert_array_equal(F.read_png(tmp_path / 'b.png'), img8)


def test_png_errors_name_the_file(tmp_path):
    """Not a PNG / a palette PNG are errors naming the file."""
    (tmp_path / 'x.png').write_bytes(b'hello')
    with pytest.raises(ValueError, match=r'x\.png.*signature'):
        F.read_png(tmp_path / 'x.png')
    Image.new('P', (4, 4)).save(tmp_path / 'p.png')
    with pytest.raises(ValueError, match=r'p\.png.*unsupported'):
        F.read_png(tmp_path / 'p.png')
    F.write_png(tmp_path / 'g.png', np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r'g\.png.*16-bit RGB'):
        F.read_kitti_png(tmp_path / 'g.png')


def test_cli_kitti_end_to_end(tmp_path, capsys):
    """KITTI GT PNGs + .npy/.npz predictions matched by name; summary line and JSON."""
    gt_dir, pred_dir = tmp_path / 'flow_occ', tmp_path / 'pred'
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((2, 2, 2), np.float32)
    F.write_kitti_png(gt_dir / '000000_10.png', gt, np.array([[1, 1], [1, 0]]))
    F.write_kitti_png(gt_dir / '000001_10.png', gt, np.array([[1, 0], [0, 0]]))
    pred0 = np.zeros((2, 2, 2), np.float32)
    pred0[0, 0] = (3, 4)  # EPE 5, outlier; other valid pixels EPE 0
    np.save(pred_dir / '000000_10.npy', pred0)
    np.savez(pred_dir / '000001_10.npz', flow=np.full((2, 2, 2), 1.0, np.float32))  # EPE sqrt 2
    out = tmp_path / 'm.json'
    F.main(['--pred', str(pred_dir), '--gt', str(gt_dir), '--format', 'kitti', '--out', str(out)])
    m = json.loads(out.read_text())
    assert m['n_images'] == 2
    assert m['kitti_epe'] == pytest.approx((5 / 3 + math.sqrt(2)) / 2, rel=1e-6)
    assert m['fl_all'] == pytest.approx(100 * 1 / 4)
    assert m['epe_pooled'] == pytest.approx((5 + math.sqrt(2)) / 4, rel=1e-6)
    assert 'kitti: 2 images' in capsys.readouterr().out

    (pred_dir / '000001_10.npz').unlink()
    with pytest.raises(SystemExit):
        F.main(['--pred', str(pred_dir), '--gt', str(gt_dir), '--format', 'kitti'])
    err = capsys.readouterr().err
    assert err.startswith('error:') and '000001_10' in err


def test_cli_sintel_ignores_validity_and_rejects_unknown_args(tmp_path):
    """Sintel/Chairs: a GT 'valid' map is ignored (no mask); unknown CLI args are errors."""
    gt_dir, pred_dir = tmp_path / 'gt' / 'alley_1', tmp_path / 'pred' / 'alley_1'
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    np.savez(gt_dir / 'frame_0001.npz', flow=np.zeros((1, 2, 2)), valid=np.array([[1, 0]]))
    F.write_flo(pred_dir / 'frame_0001.flo', np.array([[[2, 0], [0, 4]]], np.float32))
    m = F.main(['--pred', str(tmp_path / 'pred'), '--gt', str(tmp_path / 'gt'),
                '--format', 'sintel'])
    assert m['epe'] == pytest.approx(3.0)
    assert m['images'] == ['alley_1/frame_0001']
    with pytest.raises(SystemExit):
        F.main(['--pred', 'a', '--gt', 'b', '--format', 'sintel', '--bogus'])
