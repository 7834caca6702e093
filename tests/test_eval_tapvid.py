"""eval/tapvid.py: TAP-Vid metrics (spec section 2), query samplers, readers and CLI."""
import json
import math
import pickle

import numpy as np
import pytest

from eval import tapvid as TV


def _two_track_case():
    """2 tracks x 4 frames in 256-px units; first-mode queries at frames 0 and 1.

    track 0: GT visible everywhere at (10, 10). Predictions: frame 0 (query) far off; frame 1
      1.5 px off, visible; frame 2 3 px off, predicted occluded; frame 3 10 px off (6, 8), visible.
    track 1: GT occluded at 0 and 3, visible at 1 (query) and 2 at (50, 50). Predictions:
      frame 0 (before the query) visible far off; frame 2 exact but predicted occluded;
      frame 3 visible (GT occluded).
    """
    queries = np.array([[0, 10, 10], [1, 50, 50]], float)  # [t, y, x]
    gt_occ = np.array([[0, 0, 0, 0], [1, 0, 0, 1]], bool)
    gt = np.array([[[10, 10]] * 4, [[50, 50]] * 4], float)
    pred = np.array([[[100, 100], [11.5, 10], [10, 13], [16, 18]],
                     [[200, 200], [50, 50], [50, 50], [50, 50]]], float)
    pred_occ = np.array([[0, 0, 1, 0], [0, 0, 1, 0]], bool)
    return queries, gt_occ, gt, pred_occ, pred


def test_two_track_four_frame_case_first_mode_by_hand():
    """Every metric of the 2-track case, first mode (frames strictly after the query)."""
    m = TV.tapvid_metrics(*_two_track_case(), mode='first')
    # Scored: track 0 frames 1-3, track 1 frames 2-3 (5 points, 4 GT-visible).
    assert m['occlusion_accuracy'] == pytest.approx(2 / 5)
    # GT-visible distances: 1.5, 3, 10 (track 0) and 0 (track 1).
    expected_within = {1: 1 / 4, 2: 2 / 4, 4: 3 / 4, 8: 3 / 4, 16: 4 / 4}
    # Predicted visible: t0f1 (1.5 px), t0f3 (10 px), t1f3 (GT occluded: always a FP).
    expected_jaccard = {1: 0 / (4 + 3), 2: 1 / (4 + 2), 4: 1 / 6, 8: 1 / 6, 16: 2 / (4 + 1)}
    for d in TV.THRESHOLDS:
        assert m[f'pts_within_{d}'] == pytest.approx(expected_within[d]), d
        assert m[f'jaccard_{d}'] == pytest.approx(expected_jaccard[d]), d
    assert m['average_pts_within_thresh'] == pytest.approx(0.65)
    assert m['average_jaccard'] == pytest.approx(0.18)


def test_two_track_case_strided_mode_also_scores_frames_before_the_query():
    """Strided mode scores every frame but the query: track 1 frame 0 (GT occluded, predicted
    visible) adds an occlusion error and one false positive at every threshold."""
    m = TV.tapvid_metrics(*_two_track_case(), mode='strided')
    assert m['occlusion_accuracy'] == pytest.approx(2 / 6)
    assert m['average_pts_within_thresh'] == pytest.approx(0.65)  # GT-visible set unchanged
    expected_jaccard = {1: 0.0, 2: 1 / 7, 4: 1 / 7, 8: 1 / 7, 16: 2 / 6}
    for d in TV.THRESHOLDS:
        assert m[f'jaccard_{d}'] == pytest.approx(expected_jaccard[d]), d
    assert m['average_jaccard'] == pytest.approx(16 / 105)


def test_threshold_ties_are_strict():
    """within = |pred - gt|^2 < delta^2: an error of exactly 1, 2 or 4 px fails that threshold."""
    queries = np.zeros((3, 3))  # all queried at frame 0; frame 1 scored
    gt = np.zeros((3, 2, 2))
    pred = np.zeros((3, 2, 2))
    pred[:, 1] = [[1, 0], [0, 2], [3, 4]]  # distances 1, 2, 5
    occ = np.zeros((3, 2), bool)
    m = TV.tapvid_metrics(queries, occ, gt, occ, pred, 'first')
    assert [m[f'pts_within_{d}'] for d in TV.THRESHOLDS] == pytest.approx(
        [0, 1 / 3, 2 / 3, 1, 1])


def test_query_in_last_frame_first_mode_is_nan():
    """First mode, only query in the last frame: nothing scored, every metric NaN (0/0)."""
    occ = np.zeros((1, 3), bool)
    tracks = np.zeros((1, 3, 2))
    m = TV.tapvid_metrics(np.array([[2, 0, 0]]), occ, tracks, occ, tracks, 'first')
    assert all(math.isnan(v) for v in m.values())
    m = TV.tapvid_metrics(np.array([[2, 0, 0]]), occ, tracks, occ, tracks, 'strided')
    assert m['average_jaccard'] == 1.0 and m['occlusion_accuracy'] == 1.0


def test_track_occluded_after_query_gives_nan_positions_but_zero_jaccard():
    """No GT-visible scored point: pts_within NaN; AJ 0 when something is predicted visible."""
    gt_occ = np.array([[0, 1, 1]], bool)  # visible only at its query frame
    tracks = np.zeros((1, 3, 2))
    m = TV.tapvid_metrics(np.zeros((1, 3)), gt_occ, tracks, np.zeros((1, 3), bool), tracks,
                          'first')
    assert math.isnan(m['pts_within_1']) and math.isnan(m['average_pts_within_thresh'])
    assert m['average_jaccard'] == 0.0 and m['occlusion_accuracy'] == 0.0


def test_query_frame_rounds_half_to_even():
    """q = round(t) as numpy: 2.5 -> 2, 3.5 -> 4."""
    mask = TV.evaluation_mask(np.array([[2.5, 0, 0], [3.5, 0, 0]]), 6, 'first')
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]]
    mask = TV.evaluation_mask(np.array([[2.5, 0, 0]]), 4, 'strided')
    assert mask.tolist() == [[1, 1, 0, 1]]


def test_samplers_first_and_strided():
    """first: each ever-visible track at its first visible frame; strided: frames 0, 5, 10, ...
    every track visible there (a track can give several queries); never-visible tracks none."""
    t = 11
    occ = np.ones((3, t), bool)
    occ[0] = False  # A: always visible
    occ[1, 6:] = False  # B: visible from frame 6
    # C (row 2): never visible
    points = np.stack([np.tile([[1.0, 2.0]], (t, 1)), np.tile([[3.0, 4.0]], (t, 1)),
                       np.zeros((t, 2))])
    q, tracks, q_occ, track = TV.sample_queries(points, occ, 'first')
    assert track.tolist() == [0, 1]
    assert q.tolist() == [[0, 2, 1], [6, 4, 3]]  # [t, y, x]
    np.testing.assert_array_equal(q_occ, occ[:2])
    q, tracks, q_occ, track = TV.sample_queries(points, occ, 'strided')
    assert track.tolist() == [0, 0, 0, 1]
    assert q[:, 0].tolist() == [0, 5, 10, 10]
    assert tracks.shape == (4, t, 2)


def test_all_occluded_track_is_never_queried():
    """A never-visible track produces no query in either mode, so it changes no metric."""
    occ = np.array([[0, 0, 0], [1, 1, 1]], bool)
    points = np.zeros((2, 3, 2))
    for mode in ('first', 'strided'):
        q, tracks, q_occ, track = TV.sample_queries(points, occ, mode)
        assert track.tolist() == [0]


def test_rescale_to_256():
    """Predictions at (H, W) are scaled by 256/W, 256/H; no half-pixel shift."""
    out = TV.rescale_tracks(np.array([[[512.0, 64.0]]]), (128, 1024))
    np.testing.assert_allclose(out, [[[128.0, 128.0]]])


def _write_davis_pickle(path):
    """Two videos in the TAP-Vid-DAVIS layout: dict name -> {'video', 'points', 'occluded'}."""
    points = np.array([[[0.25, 0.5]] * 4, [[0.5, 0.75]] * 4], np.float32)  # normalised [x, y]
    occ = np.array([[0, 0, 0, 0], [1, 0, 0, 0]], bool)
    data = {'bear': {'video': np.zeros((4, 8, 8, 3), np.uint8), 'points': points,
                     'occluded': occ},
            'car': {'video': np.zeros((4, 8, 8, 3), np.uint8), 'points': points[:1],
                    'occluded': occ[:1]}}
    path.write_bytes(pickle.dumps(data))
    return data


def test_cli_davis_first_mode_with_rescaled_predictions(tmp_path, capsys):
    """End to end: perfect predictions made at 480x854 rescale to a perfect score; one video
    2 px off in x at 256 scale; dataset = plain mean over videos; JSON written."""
    data = _write_davis_pickle(tmp_path / 'davis.pkl')
    pred_dir = tmp_path / 'pred'
    pred_dir.mkdir()
    q, tracks, occ, _ = TV.sample_queries(data['bear']['points'] * [854, 480],
                                          data['bear']['occluded'], 'first')
    np.savez(pred_dir / 'bear.npz', tracks=tracks, occluded=occ, resolution=[480, 854],
             query_points=q)
    q, tracks, occ, _ = TV.sample_queries(data['car']['points'] * 256, data['car']['occluded'],
                                          'first')
    np.savez(pred_dir / 'car.npz', tracks=tracks + [2.0, 0.0], occluded=occ.astype(np.uint8))
    out = tmp_path / 'm.json'
    result = TV.main(['--gt', str(tmp_path / 'davis.pkl'), '--pred', str(pred_dir),
                      '--query-mode', 'first', '--out', str(out)])
    assert result['per_video']['bear']['average_jaccard'] == pytest.approx(1.0)
    car = result['per_video']['car']
    assert car['pts_within_2'] == 0.0 and car['pts_within_4'] == 1.0  # 2 px: tie fails at 2
    assert car['average_jaccard'] == pytest.approx(0.6)  # jaccard 0, 0, 1, 1, 1
    assert car['average_pts_within_thresh'] == pytest.approx(0.6)  # within 0, 0, 1, 1, 1
    saved = json.loads(out.read_text())
    assert saved['mean']['average_jaccard'] == pytest.approx((1.0 + 0.6) / 2)
    assert saved['n_videos'] == 2 and saved['n_queries'] == 3
    assert 'tapvid first: 2 videos' in capsys.readouterr().out


def test_prediction_checks_name_the_video(tmp_path):
    """Missing video, wrong query count, and query_points that differ from the sampler error."""
    data = _write_davis_pickle(tmp_path / 'davis.pkl')
    gt = TV.read_tapvid_gt(tmp_path / 'davis.pkl')
    pred_dir = tmp_path / 'pred'
    pred_dir.mkdir()
    with pytest.raises(FileNotFoundError, match='bear'):
        TV.read_predictions(pred_dir, list(gt))
    q, tracks, occ, _ = TV.sample_queries(data['bear']['points'] * 256,
                                          data['bear']['occluded'], 'strided')
    np.savez(pred_dir / 'bear.npz', tracks=tracks, occluded=occ, query_points=q + [1, 0, 0])
    np.savez(pred_dir / 'car.npz', tracks=np.zeros((5, 4, 2)), occluded=np.zeros((5, 4)))
    preds = TV.read_predictions(pred_dir, list(gt))
    with pytest.raises(ValueError, match="'bear'.*query_points"):
        TV.evaluate(gt, preds, 'strided')
    preds['bear']['query_points'] = None
    with pytest.raises(ValueError, match="'car'.*tracks"):
        TV.evaluate(gt, preds, 'strided')


def test_list_pickles_and_single_npz_predictions(tmp_path):
    """RGB-Stacking: a list of examples named 0000, 0001...; Kinetics: a folder of shards named
    <stem>_<index>; predictions from one .npz with '<video>/' prefixed keys."""
    example = {'video': [b'jpeg'] * 3, 'points': np.full((1, 3, 2), 0.5),
               'occluded': np.zeros((1, 3), bool)}
    (tmp_path / 'rgb.pkl').write_bytes(pickle.dumps([example, example]))
    assert list(TV.read_tapvid_gt(tmp_path / 'rgb.pkl')) == ['0000', '0001']
    shards = tmp_path / 'kinetics'
    shards.mkdir()
    (shards / '0000_of_0010.pkl').write_bytes(pickle.dumps([example]))
    (shards / '0001_of_0010.pkl').write_bytes(pickle.dumps([example, example]))
    gt = TV.read_tapvid_gt(shards)
    assert list(gt) == ['0000_of_0010_0000', '0001_of_0010_0000', '0001_of_0010_0001']
    arrays = {}
    for name in gt:
        arrays[f'{name}/tracks'] = np.full((1, 3, 2), 128.0)
        arrays[f'{name}/occluded'] = np.zeros((1, 3), bool)
    np.savez(tmp_path / 'pred.npz', **arrays)
    result = TV.main(['--gt', str(shards), '--pred', str(tmp_path / 'pred.npz'),
                      '--query-mode', 'strided'])
    assert result['mean']['average_jaccard'] == 1.0 and result['n_queries'] == 3
    (tmp_path / 'bad.pkl').write_bytes(pickle.dumps([{'points': np.zeros((1, 3, 2)),
                                                      'occluded': np.zeros((1, 4))}]))
    with pytest.raises(ValueError, match=r"bad\.pkl.*'0000'"):
        TV.read_tapvid_gt(tmp_path / 'bad.pkl')
