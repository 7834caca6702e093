"""Tests for eval/davis.py: DAVIS J&F as the official davis2017-evaluation toolkit computes it
(specs/metrics-dense.md section 1). Expected numbers are hand-computed on tiny masks."""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from eval import davis
from eval.davis import (boundary_f, boundary_tolerance, disk, eval_sequence, evaluate_davis,
                        object_statistics, region_j, seg2bmap, summarize)


def square(h, w, top, left, size):
    m = np.zeros((h, w), bool)
    m[top:top + size, left:left + size] = True
    return m


def save_palette(labels, path):
    im = Image.fromarray(np.asarray(labels, np.uint8), 'P')
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_davis(root, sequences, year=2017, split='val'):
    """sequences: {name: (gt (T, H, W), pred (T, H, W) or None)} -> (davis root, results)."""
    davis_root, results = root / 'DAVIS', root / 'results'
    for name, (gt, pred) in sequences.items():
        for t in range(len(gt)):
            save_palette(gt[t], davis_root / 'Annotations' / '480p' / name / f'{t:05d}.png')
            if pred is not None:
                save_palette(pred[t], results / name / f'{t:05d}.png')
    results.mkdir(parents=True, exist_ok=True)
    sets = davis_root / 'ImageSets' / str(year)
    sets.mkdir(parents=True)
    (sets / f'{split}.txt').write_text('\n'.join(sequences) + '\n')
    return davis_root, results


# ------------------------------------------------------------------------------------------
# J


def test_region_j_empty_conventions():
    """J = 1 when both masks are empty; 0 for an empty GT with a prediction and vice versa."""
    empty, sq = np.zeros((4, 4), bool), square(4, 4, 1, 1, 2)
    assert region_j(empty, empty) == 1.0
    assert region_j(empty, sq) == 0.0
    assert region_j(sq, empty) == 0.0
    assert region_j(sq, sq) == 1.0


def test_region_j_partial_overlap():
    """2x2 square vs the same shifted by one column: |G&P| = 2, |G|P| = 6 -> 1/3."""
    assert region_j(square(5, 5, 1, 1, 2), square(5, 5, 1, 2, 2)) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------
# Boundary map, tolerance, disk


def test_seg2bmap_interior_square_is_ring_offset_towards_origin():
    """2x2 square at rows/cols 2..3 of 6x6 -> 8 boundary pixels: the 3x3 ring rows/cols 1..3
    (background just outside on the top/left, foreground just inside on the bottom/right)."""
    b = seg2bmap(square(6, 6, 2, 2, 2))
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    assert b.sum() == 8
    np.testing.assert_array_equal(b, expected)


def test_seg2bmap_border_is_never_a_boundary():
    """The image frame is no boundary: full mask -> empty map; a 2x2 square in the top-left
    corner of 4x4 -> 3 pixels; in the bottom-right corner -> 5 pixels (last row uses only the
    east neighbour, last column only the south one, the corner pixel is 0)."""
    assert seg2bmap(np.ones((5, 7), bool)).sum() == 0
    top_left = seg2bmap(square(4, 4, 0, 0, 2))
    assert sorted(zip(*np.nonzero(top_left))) == [(0, 1), (1, 0), (1, 1)]
    bottom_right = seg2bmap(square(4, 4, 2, 2, 2))
    assert sorted(zip(*np.nonzero(bottom_right))) == [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]


def test_boundary_tolerance_from_frame_diagonal():
    """ceil(0.008 * diagonal): 480x854 -> 8, 480x910 -> 9, 1080x1920 -> 18, 384x384 -> 5,
    256x256 -> 3, 64x96 -> 1; bound_th >= 1 is taken as pixels; 0 -> 0."""
    assert boundary_tolerance(480, 854) == 8
    assert boundary_tolerance(480, 910) == 9
    assert boundary_tolerance(1080, 1920) == 18
    assert boundary_tolerance(384, 384) == 5
    assert boundary_tolerance(256, 256) == 3
    assert boundary_tolerance(64, 96) == 1
    assert boundary_tolerance(480, 854, 3) == 3
    assert boundary_tolerance(480, 854, 0) == 0
    with pytest.raises(ValueError, match='whole number'):
        boundary_tolerance(10, 10, 1.5)


def test_disk_shape_is_skimage_disk():
    """disk(r) = offsets with dx^2 + dy^2 <= r^2: a plus at r=1, 13 ones at r=2, 197 at r=8."""
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(2).sum() == 13 and disk(2).shape == (5, 5)
    assert disk(8).sum() == 197 and disk(8).shape == (17, 17)
    assert disk(0).tolist() == [[True]]


# ------------------------------------------------------------------------------------------
# F


def test_f_shifted_square_tolerance_0_vs_1():
    """3x3 square vs the same shifted right by 1 px: the two 12-pixel boundary rings share
    6 pixels -> F = 0.5 with r = 0; with r = 1 (plus-shaped disk) every pixel matches -> 1."""
    gt, pred = square(8, 8, 2, 2, 3), square(8, 8, 2, 3, 3)
    assert seg2bmap(gt).sum() == 12
    assert boundary_f(gt, pred, bound_th=0) == 0.5
    assert boundary_f(gt, pred, bound_th=1) == 1.0
    j, f = eval_sequence(gt[None].astype(np.uint8), pred[None].astype(np.uint8), 1, bound_th=0)
    assert f[0, 0] == 0.5 and j[0, 0] == pytest.approx(6 / 12)
    _, f = eval_sequence(gt[None].astype(np.uint8), pred[None].astype(np.uint8), 1, bound_th=1)
    assert f[0, 0] == 1.0


def test_f_empty_conventions():
    """F = 0 for an empty prediction of a present object and for a prediction of an absent
    one, F = 1 when both are empty and when both masks fill the frame (no boundary at all)."""
    empty, sq, full = np.zeros((6, 6), bool), square(6, 6, 1, 1, 3), np.ones((6, 6), bool)
    assert boundary_f(sq, empty) == 0.0
    assert boundary_f(empty, sq) == 0.0
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(full, full) == 1.0
    assert region_j(full, full) == 1.0


def test_eval_sequence_equals_dense_reference():
    """The sparse matching of eval_sequence gives exactly the values of the dense reference
    (per-object seg2bmap + scipy binary_dilation with the disk) and of region_j, on random
    multi-object masks touching the borders, for several tolerances."""
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = rng.integers(6, 40, size=2)
        n_frames, n_obj = 3, int(rng.integers(1, 4))
        smooth = [ndimage.gaussian_filter(rng.random((2 * n_frames, h, w)), (0, 1.5, 1.5))
                  for _ in range(n_obj)]
        gt = np.argmax(np.stack([np.full((n_frames, h, w), 0.5)] +
                                [s[:n_frames] for s in smooth]), 0).astype(np.uint8)
        pred = np.argmax(np.stack([np.full((n_frames, h, w), 0.5)] +
                                  [s[n_frames:] * 0.3 + s[:n_frames] * 0.7 for s in smooth]),
                         0).astype(np.uint8)
        bound_th = [0.008, 0.1, 1, 2][trial % 4]
        j, f = eval_sequence(gt, pred, n_obj, bound_th)
        for k in range(n_obj):
            for t in range(n_frames):
                g, p = gt[t] == k + 1, pred[t] == k + 1
                assert j[k, t] == region_j(g, p)
                assert f[k, t] == boundary_f(g, p, bound_th)


def test_eval_sequence_many_objects_and_none():
    """20 objects (pair counts no longer fit 8 bits) match the reference too; n_obj = 0 gives
    empty (0, T) arrays."""
    rng = np.random.default_rng(2)
    gt = ndimage.zoom(rng.integers(0, 21, size=(2, 6, 8)), (1, 4, 4), order=0).astype(np.uint8)
    pred = np.roll(gt, 1, axis=2)
    j, f = eval_sequence(gt, pred, 20)
    for k in range(20):
        for t in range(2):
            g, p = gt[t] == k + 1, pred[t] == k + 1
            assert j[k, t] == region_j(g, p) and f[k, t] == boundary_f(g, p)
    j, f = eval_sequence(np.zeros((2, 5, 5), np.uint8), np.zeros((2, 5, 5), np.uint8), 0)
    assert j.shape == f.shape == (0, 2)


# ------------------------------------------------------------------------------------------
# Sequences on arrays


def test_object_vanishing_mid_sequence():
    """An object absent from the GT scores J = F = 1 where the prediction is also empty and
    0 where something is predicted; GT ids > n_obj (objects appearing later) are background."""
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:2, 5:7, 5:7] = 2  # object 2 vanishes after frame 1
    gt[3, 4:6, 0:2] = 3  # id 3 appears later: not an object, background
    pred = gt.copy()
    pred[3] = np.where(pred[3] == 3, 0, pred[3])
    pred[3, 0:2, 5:7] = 2  # predicted where object 2 is absent
    j, f = eval_sequence(gt, pred, 2)
    np.testing.assert_array_equal(j, [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(f, [[1, 1, 1, 1], [1, 1, 1, 0]])


def test_prediction_id_above_object_count_is_an_error():
    """The official toolkit exits on a predicted id > number of objects; we raise."""
    gt = np.zeros((2, 4, 4), np.uint8)
    pred = gt.copy()
    pred[1, 0, 0] = 3
    with pytest.raises(ValueError, match='frame 1 uses id 3 but there are 2 objects'):
        eval_sequence(gt, pred, 2)


def test_gt_as_prediction_scores_one():
    """GT used as the prediction -> every J and F is 1."""
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, size=(5, 20, 30)).astype(np.uint8)
    j, f = eval_sequence(gt, gt, 3)
    assert (j == 1).all() and (f == 1).all()


# ------------------------------------------------------------------------------------------
# Statistics and averaging


def test_decay_bins_hand_made():
    """db_statistics: n = 5 -> bins v[0:2] .. v[3:5]; M = mean, R counts v > 0.5 strictly,
    D = mean(bin 0) - mean(bin 3)."""
    m, r, d = object_statistics([1.0, 1.0, 0.5, 0.0, 0.0])
    assert (m, r, d) == (0.5, 0.4, 1.0)
    # n = 4: ids = [0, 1, 2, 2, 3] -> bin 0 = v[0:2], bin 3 = v[2:4]
    assert object_statistics([1.0, 1.0, 0.0, 0.5])[2] == 0.75
    # n = 48: bins [0:13] and [35:48] -> (mean 0..12 - mean 35..47) / 47 = -35/47
    assert object_statistics(np.arange(48) / 47)[2] == pytest.approx(-35 / 47)
    # n = 1 (a 3-frame sequence): every bin is the single value
    assert object_statistics([0.7]) == (0.7, 1.0, 0.0)


def test_decay_past_255_frames_is_the_intended_value():
    """The official uint8 bin indices wrap past 255 frames (n = 300: last bin empty -> NaN);
    we return the intended value: n = 300 -> bins [0:76] and [224:300]."""
    v = np.r_[np.ones(150), np.zeros(150)]
    assert object_statistics(v) == (0.5, 0.5, 1.0)
    v = np.linspace(0, 1, 300)
    assert object_statistics(v)[2] == pytest.approx(v[0:76].mean() - v[224:300].mean())


def test_global_mean_is_per_object_not_per_sequence():
    """Global numbers average objects: one perfect 1-object sequence and one 3-object
    sequence at 0 give J-Mean 0.25 (a per-sequence average would give 0.5)."""
    def obj(v):
        return {'J-Mean': v, 'J-Recall': v, 'J-Decay': 0.0, 'F-Mean': v, 'F-Recall': v,
                'F-Decay': 0.0}
    out = summarize({'a_1': obj(1.0), 'b_1': obj(0.0), 'b_2': obj(0.0), 'b_3': obj(0.0)})
    assert out['J-Mean'] == 0.25 and out['F-Mean'] == 0.25 and out['J&F-Mean'] == 0.25
    with pytest.raises(ValueError, match='no object'):
        summarize({})


# ------------------------------------------------------------------------------------------
# Reader and command line on the official layout


def _two_sequences():
    """'a': 1 object, predicted perfectly. 'b': object 1 perfect, object 2 (2x2 square)
    predicted one column to the right: J = 2/6, F = 1 at r = 1 (6x8 frames)."""
    a = np.zeros((3, 6, 8), np.uint8)
    a[:, 1:4, 2:5] = 1
    b = np.zeros((3, 6, 8), np.uint8)
    b[:, 2:4, 0:2] = 1
    b[:, 2:4, 4:6] = 2
    b_pred = b.copy()
    b_pred[1, 2:4, 4:7] = 0
    b_pred[1, 2:4, 5:7] = 2
    return {'a': (a, a.copy()), 'b': (b, b_pred)}


def test_cli_writes_official_csvs(tmp_path, capsys):
    """End to end: both CSVs byte-exact in the toolkit's format (pandas, '%.3f'), the summary
    line and the JSON. 3-frame sequences: only frame 1 is scored (R in {0, 1}, D = 0)."""
    davis_root, results = write_davis(tmp_path, _two_sequences())
    out = tmp_path / 'out'
    davis.main(['--davis-path', str(davis_root), '--results', str(results), '--out', str(out)])
    assert capsys.readouterr().out.splitlines()[0] == (
        'DAVIS-2017 val: J&F 88.89 J 77.78 F 100.00 (2 seqs, 3 objects)')
    assert (out / 'global_results-val.csv').read_text() == (
        'J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n'
        '0.889,0.778,0.667,0.000,1.000,1.000,0.000\n')
    assert (out / 'per-sequence_results-val.csv').read_text() == (
        'Sequence,J-Mean,F-Mean\n'
        'a_1,1.000,1.000\n'
        'b_1,1.000,1.000\n'
        'b_2,0.333,1.000\n')
    saved = json.loads((out / 'davis2017_results-val.json').read_text())
    assert saved['n_objects'] == 3 and saved['per_object']['b_2']['J'] == [1 / 3]
    assert saved['per_object']['b_2']['frames'] == ['00001']


def test_cli_rejects_unknown_arguments(tmp_path):
    """Unknown command-line arguments are an error."""
    with pytest.raises(SystemExit):
        davis.main(['--davis-path', 'x', '--results', 'y', '--bogus'])


def test_first_and_last_result_frames_never_opened(tmp_path):
    """Only frames 1..T-2 are read: missing or malformed first / last result PNGs are fine."""
    seqs = _two_sequences()
    davis_root, results = write_davis(tmp_path, seqs)
    (results / 'a' / '00000.png').unlink()
    (results / 'a' / '00002.png').write_bytes(b'not a png')
    out = evaluate_davis(davis_root, results)
    assert out['per_object']['a_1']['J-Mean'] == 1.0


def test_noncontiguous_ids_give_max_id_objects(tmp_path):
    """Frame-0 ids {1, 3} -> 3 objects; object 2 is empty in GT and prediction: J = F = 1."""
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:7] = 3
    pred = gt.copy()
    pred[1, 5:7, 5:7] = 0  # object 3 missed on the scored frame
    davis_root, results = write_davis(tmp_path, {'s': (gt, pred)})
    out = evaluate_davis(davis_root, results)
    assert list(out['per_object']) == ['s_1', 's_2', 's_3']
    assert [out['per_object'][f's_{k}']['J-Mean'] for k in (1, 2, 3)] == [1.0, 1.0, 0.0]
    assert [out['per_object'][f's_{k}']['F-Mean'] for k in (1, 2, 3)] == [1.0, 1.0, 0.0]
    assert out['J-Mean'] == pytest.approx(2 / 3)


def test_void_pixels_are_background_and_predictions_there_false_positives(tmp_path):
    """GT 255 is void: set to background, so predicting it costs J: 4 object pixels + 4
    predicted void pixels -> J = 4/8."""
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:7] = 255
    pred = np.where(gt > 0, 1, 0).astype(np.uint8)
    davis_root, results = write_davis(tmp_path, {'s': (gt, pred)})
    out = evaluate_davis(davis_root, results)
    assert out['n_objects'] == 1 and out['J-Mean'] == 0.5


def test_result_of_another_size_names_the_file(tmp_path):
    """A result PNG whose size differs from the annotation -> error naming that PNG."""
    davis_root, results = write_davis(tmp_path, _two_sequences())
    save_palette(np.zeros((6, 9), np.uint8), results / 'b' / '00001.png')
    with pytest.raises(ValueError, match=r'b/00001\.png: result is 9x6'):
        evaluate_davis(davis_root, results)


def test_missing_scored_frame_names_the_file(tmp_path):
    """A missing interior result frame -> FileNotFoundError naming the expected path."""
    davis_root, results = write_davis(tmp_path, _two_sequences())
    (results / 'b' / '00001.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'b/00001\.png: result frame missing'):
        evaluate_davis(davis_root, results)
    with pytest.raises(SystemExit, match=r'error: .*b/00001\.png: result frame missing'):
        davis.main(['--davis-path', str(davis_root), '--results', str(results)])


def test_result_id_above_object_count_names_the_file(tmp_path):
    """A result id > K in a scored frame -> error naming the PNG (the toolkit exits)."""
    seqs = _two_sequences()
    seqs['a'][1][1, 0, 0] = 2
    davis_root, results = write_davis(tmp_path, seqs)
    with pytest.raises(ValueError, match=r'a/00001\.png: object id 2 but .* has 1 objects'):
        evaluate_davis(davis_root, results)


def test_rgb_result_and_short_sequence_are_errors(tmp_path):
    """A non-indexed (RGB) result PNG and a 2-frame sequence (no scored frame) -> errors
    naming the file / folder."""
    davis_root, results = write_davis(tmp_path, _two_sequences())
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(results / 'a' / '00001.png')
    with pytest.raises(ValueError, match=r'a/00001\.png: expected an indexed PNG'):
        evaluate_davis(davis_root, results)
    gt = np.zeros((2, 4, 4), np.uint8)
    gt[:, 1, 1] = 1
    davis_root, results = write_davis(tmp_path / 'short', {'s': (gt, gt)})
    with pytest.raises(ValueError, match=r'480p/s: 2 annotated frames'):
        evaluate_davis(davis_root, results)


def test_davis2016_union_of_ids_and_results_above_128(tmp_path, capsys):
    """DAVIS-2016 protocol: GT = union of all object ids (void 255 still background),
    results binarised with > 128; a 0/1 result scores as empty (with a warning), a 0/255 one
    as intended."""
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:7] = 2
    pred = (gt > 0) * 255
    gt[:, 0, 5:8] = 255  # void: not part of the union
    davis_root, results = write_davis(tmp_path, {'s': (gt, pred)}, year=2016)
    out = evaluate_davis(davis_root, results, year=2016)
    assert out['n_objects'] == 1 and out['J&F-Mean'] == 1.0
    save_palette((gt[1] > 0).astype(np.uint8), results / 's' / '00001.png')
    out = evaluate_davis(davis_root, results, year=2016)
    assert out['J-Mean'] == 0.0 and out['F-Mean'] == 0.0
    assert 'none > 128' in capsys.readouterr().err
