"""Tests of the synthetic world (data.World): exact flow, point tracks, occlusion, masks and boxes,
determinism. Run: .venv/bin/python -m pytest -q tests/test_world.py"""
import numpy as np
import pytest

import data

SIZE = (96, 64)                    # (W, H)


def bilinear(image, x, y):
    """image (H, W, C) float sampled at points x, y (in [0, W-1] x [0, H-1]); also the top-left
    pixel (row, col) of each point's 2x2 neighbourhood."""
    h, w = image.shape[:2]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    out = (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x0 + 1] * fx * (1 - fy)
           + image[y0 + 1, x0] * (1 - fx) * fy + image[y0 + 1, x0 + 1] * fx * fy)
    return out, y0, x0


def warp_error(world, t, s, flow=None):
    """Mean |frame t - frame s sampled bilinearly at pixel + flow(t, s)| (grey levels) over the
    pixels that stay visible (valid) and whose 2x2 neighbourhood in frame s lies on the same
    surface as the pixel at t (sprite edges excluded); and the fraction of pixels used."""
    exact, valid = world.flow(t, s)
    flow = exact if flow is None else flow
    h, w = world.size[1], world.size[0]
    y, x = np.mgrid[0:h, 0:w]
    tx, ty = x + flow[..., 0], y + flow[..., 1]
    warped, y0, x0 = bilinear(world.frame(s).astype(np.float64), tx, ty)
    label_t, label_s = world.label_map(t), world.label_map(s)
    use = valid & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    for dy in (0, 1):
        for dx in (0, 1):
            use &= label_s[y0 + dy, x0 + dx] == label_t
    error = np.abs(warped - world.frame(t).astype(np.float64)).mean(-1)
    return error[use].mean(), use.mean()


def test_frame_warped_by_the_exact_flow_matches_the_other_frame():
    """Below 1/255 (1 grey level) mean abs error with bilinear sampling on the pixels that stay
    visible, sprite edges excluded (the 2x2 neighbourhood in frame s on the same surface);
    without the flow (zero flow) the same pixels differ by far more."""
    for seed in range(3):
        world = data.World(seed, SIZE, 12)
        for t, s in ((0, 1), (2, 11), (11, 3)):
            err, used = warp_error(world, t, s)
            assert err < 1.0 and used > 0.5, (seed, t, s, err, used)
        still, _ = warp_error(world, 0, 11, flow=np.zeros(SIZE[::-1] + (2,), np.float32))
        assert still > 2.0, still


def test_tracks_are_the_query_moved_by_the_flow():
    """tracks[n, s] = (x, y) + flow(t, s)[y, x] and occluded[n, s] = not valid there, for integer
    queries; at the query frame the track is the query and not occluded."""
    world = data.World(7, SIZE, 10, num_objects=4)
    rng = np.random.default_rng(0)
    t = 3
    ys, xs = rng.integers(0, SIZE[1], 200), rng.integers(0, SIZE[0], 200)
    tracks, occluded = world.tracks(np.stack([np.full(200, t), ys, xs], 1))
    assert tracks.shape == (200, 10, 2) and tracks.dtype == np.float32 and occluded.shape == (200, 10)
    for s in range(10):
        flow, valid = world.flow(t, s)
        np.testing.assert_allclose(tracks[:, s], np.stack([xs, ys], 1) + flow[ys, xs], atol=1e-4)
        assert np.array_equal(occluded[:, s], ~valid[ys, xs])
    np.testing.assert_array_equal(tracks[:, t], np.stack([xs, ys], 1))
    assert not occluded[:, t].any() and occluded.any() and not occluded.all()
    with pytest.raises(ValueError, match='integers 0..9'):
        world.tracks([[1.5, 3, 3]])


def test_masks_boxes_labels_and_visibility_agree():
    """masks(t)[k] = label_map(t) == k + 1 (disjoint); boxes = the masks' extent (x, y, w, h),
    NaN rows exactly where nothing is visible; visible_fraction > 0 exactly where visible, in
    [0, 1]; a visible sprite is in view; the front-most sprite is never occluded by another."""
    world = data.World(3, SIZE, 30, num_objects=5)
    assert world.num_objects == 5 and world.size == SIZE
    seen_partial = seen_absent = False
    for t in range(0, 30, 3):
        label, masks, boxes = world.label_map(t), world.masks(t), world.boxes(t)
        assert label.shape == SIZE[::-1] and label.dtype == np.int64 and masks.shape == (5,) + SIZE[::-1]
        assert np.array_equal(label, world.surface(t))
        assert np.array_equal(masks.sum(0) > 0, label > 0) and masks.sum(0).max() <= 1
        for k in range(5):
            assert np.array_equal(masks[k], label == k + 1)
            ys, xs = np.nonzero(masks[k])
            if len(xs):
                assert boxes[k].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            else:
                assert np.isnan(boxes[k]).all()
        fraction, visible, in_view = world.visible_fraction(t), world.visible(t), world.in_view(t)
        assert np.array_equal(fraction > 0, visible) and (fraction <= 1).all()
        assert (in_view | ~visible).all()
        seen_partial |= ((fraction > 0) & (fraction < 0.8)).any()
        seen_absent |= (~visible).any()
    assert seen_partial and seen_absent                 # occlusion / frame edges happen here
    front = data.World(1, SIZE, 6, num_objects=3)
    tracks, occluded = front.tracks([[0, y, x] for y, x in zip(*np.nonzero(front.masks(0)[2]))])
    inside = (tracks[..., 0] >= -0.5) & (tracks[..., 0] < SIZE[0] - 0.5) & \
        (tracks[..., 1] >= -0.5) & (tracks[..., 1] < SIZE[1] - 0.5)
    assert np.array_equal(occluded, ~inside)            # only the frame edge hides it


def _plain(rgb):
    return data.Texture(np.array(rgb, dtype=np.float64), np.zeros((1, 2)), np.zeros(1), np.zeros((1, 3)))


def test_known_occlusion_and_leaving_the_frame():
    """A 13x13 square at x = 20 + 12 s, y = 32 (rect, radii 6) behind a static rect covering
    x 34..54, y 12..52, no pan, 96x64 frames. Its centre (query at frame 0) is covered at s = 2
    (x = 44) and out of the frame from s = 7 (x = 104 >= 95.5); a background point at x = 60 is
    covered by the square at s = 3 only (|60 - 56| <= 6); a point of the front rect is never
    occluded; the flow of the square's centre is (12 s, 0)."""
    square = data.Sprite('rect', (6.0, 6.0), _plain((220, 40, 40)), centre=(20.0, 32.0), velocity=(12.0, 0.0))
    block = data.Sprite('rect', (10.0, 20.0), _plain((40, 40, 220)), centre=(44.0, 32.0))
    world = data.World(0, SIZE, 10, pan=False, sprites=[square, block])
    tracks, occluded = world.tracks([[0, 32, 20], [0, 32, 60], [0, 15, 44]])
    np.testing.assert_allclose(tracks[0], np.stack([20 + 12 * np.arange(10), np.full(10, 32)], 1))
    assert np.flatnonzero(occluded[0]).tolist() == [2, 7, 8, 9]
    assert np.flatnonzero(occluded[1]).tolist() == [3]
    assert not occluded[2].any() and (tracks[1:] == tracks[1:, :1]).all()
    flow, valid = world.flow(0, 2)
    assert flow[32, 20].tolist() == [24.0, 0.0] and not valid[32, 20] and valid[32, 60]
    assert world.visible_fraction(2)[0] == 0 and world.in_view(2)[0]
    assert not world.in_view(7)[0] and world.boxes(6)[0].tolist() == [86, 26, 10, 13]
    assert (world.frame(2)[32, 44] == (40, 40, 220)).all() and (world.frame(0)[32, 20] == (220, 40, 40)).all()


def test_same_seed_same_arrays_other_seed_other_scene():
    """A world is a pure function of (seed, size, frames, knobs): two constructions give the
    same frames, labels, flow and tracks; another seed or knob gives another scene; string seed
    parts name independent streams."""
    a, b = data.World(data.world_seed('test', 5), SIZE, 8), data.World(data.world_seed('test', 5), SIZE, 8)
    assert np.array_equal(a.video(), b.video()) and np.array_equal(a.label_map(4), b.label_map(4))
    for x, y in zip(a.flow(1, 6), b.flow(1, 6)):
        assert np.array_equal(x, y)
    q = [[2, 10, 10], [5, 40, 80]]
    for x, y in zip(a.tracks(q), b.tracks(q)):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.frame(0), data.World(data.world_seed('test', 6), SIZE, 8).frame(0))
    assert not np.array_equal(a.frame(0), data.World(data.world_seed('other', 5), SIZE, 8).frame(0))
    assert not np.array_equal(a.frame(0), data.World(data.world_seed('test', 5), SIZE, 8, max_freq=0.05).frame(0))
    assert data.world_seed('test', 5) == data.world_seed('test', 5) != data.world_seed('test', 6)
    assert a.frame(7).shape == (64, 96, 3) and a.frame(7).dtype == np.uint8
    with pytest.raises(IndexError, match='frame 8'):
        a.frame(8)
    with pytest.raises(ValueError, match='max_freq'):
        data.World(0, SIZE, 8, max_freq=0.6)


def test_world_knobs_from_the_command_line():
    """`--world KEY=VALUE` (make-clips, tasks/vot.py synth, tasks/vos.py synthetic): a Python
    literal per knob of World; unknown keys and non-literals are errors naming them."""
    import argparse
    assert data.world_knob('speed=0.02') == ('speed', 0.02)
    assert data.world_knob('sprite_size=(0.1, 0.2)') == ('sprite_size', (0.1, 0.2))
    with pytest.raises(argparse.ArgumentTypeError, match="KEY one of .*'speed'.*got 'sped=1'"):
        data.world_knob('sped=1')
    with pytest.raises(argparse.ArgumentTypeError, match="--world speed: 'fast' is not a Python literal"):
        data.world_knob('speed=fast')
