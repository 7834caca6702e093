"""Tests of tasks/tap.py (DropMAE-TAP): soft-argmax and sampling geometry, query independence,
the tapnet losses, checkpoint import, the Kubric-export and TAP-Vid readers and their errors,
training with resume, and predictions scored through eval/tapvid.py.
Run: .venv/bin/python -m pytest -q tests/test_tap.py"""
import inspect
import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import dropmae
import tasks.tap as tap
from eval import tapvid


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return tap.build_model("tiny", **kw).eval()


# ------------------------------------------------------------------------------ geometry

def test_soft_argmax_recovers_a_subpixel_peak():
    """A Gaussian bump centred between cells soft-argmaxes to its centre (cell units, cell
    (i, j) centred at (j + 0.5, i + 0.5))."""
    h, w = 16, 20
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy = 7.3, 9.85
    logits = -((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 0.8 ** 2)
    xy = tap.soft_argmax_window(logits[None], 5.0)[0]
    assert abs(xy[0].item() - cx) < 0.01 and abs(xy[1].item() - cy) < 0.01


def test_delta_heatmap_gives_the_cell_centre_times_stride():
    logits = torch.full((1, 2, 8, 8), -1e4)
    logits[0, 0, 3, 6] = 0.0          # (i, j) = (3, 6)
    logits[0, 1, 0, 0] = 0.0
    xy = tap.soft_argmax_window(logits, 5.0)
    assert xy[0, 0].tolist() == [6.5, 3.5] and xy[0, 1].tolist() == [0.5, 0.5]


def test_local_window_excludes_a_distractor():
    """Two peaks 10 cells apart: the window (radius 5) keeps only the stronger one; the
    global softmax mean would land between them."""
    logits = torch.full((16, 16), -50.0)
    logits[3, 3], logits[13, 13] = 10.0, 9.5
    xy = tap.soft_argmax_window(logits, 5.0)
    assert torch.allclose(xy, torch.tensor([3.5, 3.5]), atol=1e-4)
    prob = logits.flatten().softmax(0)
    centres = torch.stack(torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5,
                                         indexing="xy"), -1).reshape(-1, 2)
    global_mean = (prob[:, None] * centres).sum(0)
    assert (global_mean - xy).norm() > 3.0


def test_bilinear_sample_at_cell_centre_returns_the_cell():
    fmap = torch.randn(1, 5, 8, 8)
    xy = torch.tensor([[[(6 + 0.5) * 4, (2 + 0.5) * 4], [0.5 * 4, 7.5 * 4]]])  # stride 4, 32 px
    out = tap.sample_features(fmap, xy, (32, 32))
    assert torch.allclose(out[0, 0], fmap[0, :, 2, 6], atol=1e-6)
    assert torch.allclose(out[0, 1], fmap[0, :, 7, 0], atol=1e-6)


def test_query_independence_bit_exact():
    """One query alone, a subset and all 40 together give bit-identical tracks and flags."""
    model = tiny_model()
    frames = torch.randn(6, 3, 64, 64)
    rng = np.random.default_rng(0)
    qp = np.stack([rng.integers(0, 6, 40).astype(float), rng.uniform(0, 64, 40),
                   rng.uniform(0, 64, 40)], -1)
    tracks, occ = tap.track_queries(model, frames, qp, pair_batch=3)
    for i in (0, 17, 39):
        t1, o1 = tap.track_queries(model, frames, qp[i:i + 1], pair_batch=3)
        assert np.array_equal(t1[0], tracks[i]) and np.array_equal(o1[0], occ[i])
    sub = [2, 5, 11, 30]
    t2, o2 = tap.track_queries(model, frames, qp[sub], pair_batch=3)
    assert np.array_equal(t2, tracks[sub]) and np.array_equal(o2, occ[sub])


def test_query_frame_returns_the_query_verbatim():
    model = tiny_model()
    frames = torch.randn(4, 3, 64, 64)
    qp = np.array([[2.0, 10.25, 33.75], [0.0, 1.0, 2.0]])
    tracks, occ = tap.track_queries(model, frames, qp)
    assert tracks[0, 2].tolist() == [33.75, 10.25] and not occ[0, 2]
    assert tracks[1, 0].tolist() == [2.0, 1.0] and not occ[1, 0]
    tracks, occ = tap.track_queries(model, frames, qp, mode="first", skip_unscored=True)
    assert occ[0, :2].all() and tracks[0, 0].tolist() == [33.75, 10.25]


def test_visibility_rule():
    occ = torch.tensor([-5.0, 5.0, 0.0, -5.0])
    expd = torch.tensor([-5.0, -5.0, -5.0, 5.0])
    assert tap.predicted_visible(occ, expd).tolist() == [True, False, False, False]
    # TAP-Net's rule reads the occlusion logit only: the far-but-visible entry stays visible
    assert tap.predicted_visible(occ, expd, "occlusion").tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="visibility rule"):
        tap.predicted_visible(occ, expd, "oracle")


# ------------------------------------------------------------------------------ losses

def test_loss_matches_hand_computed_values():
    """Errors in 256-px units (input 64 -> x4). Entry 0: d = 0.5 px (2 at 256: Huber's
    quadratic branch d^2/2 = 2; below 6, expected-distance target 0); entry 1: d = 3 px (12 at
    256: linear branch 4 (12 - 2) = 40; above 6, target 1); entry 2: GT-occluded (occlusion
    term only); entry 3: padding (nothing). Every mean is over the 3 valid entries."""
    gt = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[0.5, 0.0], [0.0, 3.0], [9.0, 9.0], [9.0, 9.0]]])
    occ_logit = torch.tensor([[0.0, 1.0, -1.0, 3.0]])
    expd_logit = torch.tensor([[2.0, -2.0, 0.5, 1.0]])
    gt_occ = torch.tensor([[False, False, True, False]])
    valid = torch.tensor([[True, True, True, False]])
    out = {"points": pred, "occ_logit": occ_logit, "expd_logit": expd_logit}
    total, s = tap.tap_loss(out, gt, gt_occ, valid, to_256=4.0)

    def bce(z, y):
        return -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    position = 0.05 * (2.0 + 40.0) / 3
    occlusion = (bce(0.0, 0) + bce(1.0, 0) + bce(-1.0, 1)) / 3
    expected = (bce(2.0, 0) + bce(-2.0, 1)) / 3
    assert s["position"] == pytest.approx(position, rel=1e-5)
    assert s["occlusion"] == pytest.approx(occlusion, rel=1e-5)
    assert s["expected_dist"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(position + occlusion + expected, rel=1e-5)


def test_loss_falls_and_identical_frames_track_to_within_one_cell():
    """Overfit one pair of identical frames: the loss is finite and falls on the repeated
    batch, and every query ends within one cell (4 px at stride 4) of itself."""
    model = tiny_model().train()
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 64, 64, generator=g)
    qxy = torch.rand(1, 16, 2, generator=g) * 56 + 4
    occ, valid = torch.zeros(1, 16, dtype=torch.bool), torch.ones(1, 16, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(80):
        loss, _ = tap.tap_loss(model.forward_points(img, img, qxy), qxy, occ, valid, 4.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        err = (model.eval().forward_points(img, img, qxy)["points"] - qxy).norm(dim=-1)
    assert err.max() < 4.0, err


def test_heatmap_target_is_centred_on_the_gt_point():
    """The Gaussian target sums to 1 and its mean, in the soft-argmax's cell centres, is the GT
    point (input pixels / stride), here at stride 8 on a 16 x 16 grid."""
    gt = torch.tensor([[[37.0, 70.5], [64.0, 64.0]]])                      # (1, 2, 2) input px
    target = tap.heatmap_target(gt, (16, 16), cell=8.0, sigma=1.0)          # (1, 2, 16, 16)
    assert torch.allclose(target.sum((-2, -1)), torch.ones(1, 2))
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    mean = torch.stack([(target * xs).sum((-2, -1)), (target * ys).sum((-2, -1))], -1)
    assert torch.allclose(mean * 8, gt, atol=1e-3), mean * 8
    peak = target[0, 0].flatten().argmax()
    assert (peak // 16, peak % 16) == (70 // 8, 37 // 8)                    # (row, col) of the GT


def test_heatmap_loss_hand_computed_and_off_by_default():
    """Flat position logits: the cross-entropy is log(h w) on every GT-visible entry whatever
    the target; the occluded and padding entries add nothing; the mean is over the valid ones
    (3 here: 2 visible), times the weight. Weight 0 (the spec's loss) leaves the total as it was."""
    h = w = 8
    gt = torch.tensor([[[10.0, 12.0], [40.0, 3.0], [9.0, 9.0], [9.0, 9.0]]])
    out = {"points": gt.clone(), "occ_logit": torch.zeros(1, 4), "expd_logit": torch.zeros(1, 4),
           "heatmap": torch.zeros(1, 4, h, w)}
    gt_occ = torch.tensor([[False, False, True, False]])
    valid = torch.tensor([[True, True, True, False]])
    base, s0 = tap.tap_loss(out, gt, gt_occ, valid, to_256=4.0)            # input 64, cell 8
    total, s = tap.tap_loss(out, gt, gt_occ, valid, to_256=4.0, heatmap_weight=0.5)
    assert "heatmap" not in s0
    assert s["heatmap"] == pytest.approx(0.5 * 2 * np.log(h * w) / 3, rel=1e-5)
    assert total.item() == pytest.approx(base.item() + s["heatmap"], rel=1e-6)
    # a logit map peaked on the GT cell costs less than one peaked elsewhere
    good, bad = torch.zeros(1, 4, h, w), torch.zeros(1, 4, h, w)
    good[0, 0, 12 // 8, 10 // 8] = good[0, 1, 3 // 8, 40 // 8] = 2.0
    bad[0, 0, 7, 7] = bad[0, 1, 7, 0] = 2.0
    losses = [tap.tap_loss({**out, "heatmap": m}, gt, gt_occ, valid, 4.0, heatmap_weight=1.0)[1]
              ["heatmap"] for m in (good, bad)]
    assert losses[0] < np.log(h * w) * 2 / 3 < losses[1]


def overfit_translated_pair(heatmap_weight, shift, seed, steps=60):
    """Train a tiny model (64 px, stride 4) for `steps` on one synthetic-world frame and its
    copy rolled by `shift` (x, y) pixels; -> mean error (input px) of 16 queries afterwards."""
    from PIL import Image

    from data import World, normalize
    torch.manual_seed(seed)
    model = tap.build_model("tiny").train()
    frame = World(3, size=(64, 64), num_frames=1).frame(0)
    moved = np.roll(frame, shift=(shift[1], shift[0]), axis=(0, 1))        # content at + shift
    img_q, img_t = (normalize(Image.fromarray(f))[None] for f in (frame, moved))
    qxy = torch.rand(1, 16, 2, generator=torch.Generator().manual_seed(0)) * 40 + 4
    gxy = qxy + torch.tensor(shift, dtype=torch.float32)
    occ, valid = torch.zeros(1, 16, dtype=torch.bool), torch.ones(1, 16, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss, _ = tap.tap_loss(model.forward_points(img_q, img_t, qxy), gxy, occ, valid, 4.0,
                               heatmap_weight=heatmap_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        points = model.eval().forward_points(img_q, img_t, qxy)["points"]
    return (points - gxy).norm(dim=-1).mean().item()


@pytest.mark.parametrize("shift, seed", [((8, 4), 2), ((-6, 10), 3)])
def test_heatmap_loss_learns_a_translation_the_spec_loss_misses(shift, seed):
    """One translated pair, 60 steps: with the heatmap term the error ends far below zero
    motion's (|shift| = 8.9 / 11.7 px); the spec's three terms alone stay near it (measured
    with seeds 2-4: 1.9-7.6 px with the spec's loss, 0.1-0.5 px with the heatmap term)."""
    zero = float(np.hypot(*shift))
    with_heatmap = overfit_translated_pair(1.0, shift, seed)
    spec = overfit_translated_pair(0.0, shift, seed)
    assert with_heatmap < 1.0 < zero, (with_heatmap, zero)
    assert with_heatmap < 0.5 * spec, (with_heatmap, spec)


# ------------------------------------------------------------------------------ checkpoints

def test_backbone_import_asserts_the_key_list(tmp_path):
    torch.manual_seed(0)
    state = dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()
    model = tiny_model()
    report = tap.load_backbone({"model": state}, model, verbose=False)
    assert report["missing"] == tap.new_keys(model) and report["kind"] == "dropmae"
    assert torch.equal(model.temporal_pos_embed_z, state["temporal_pos_embed_z"])
    assert all(k.startswith(tap.DropMAETAP.NEW_PREFIXES) for k in report["missing"])
    bad = dict(state)
    del bad["blocks.0.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(KeyError, match="broken.pth.*blocks.0.attn.qkv.weight"):
        tap.load_backbone(path, tiny_model(), verbose=False)


def test_checkpoint_save_load_identical_outputs(tmp_path):
    model = tiny_model(3)
    path = tmp_path / "checkpoint-1.pth"
    torch.save({"model": model.state_dict(), "tap": tap.dataclasses.asdict(model.tap)}, path)
    loaded, _ = tap.load_tap_checkpoint(path)
    frames = torch.randn(3, 3, 64, 64)
    qp = np.array([[0.0, 20.0, 30.0], [1.0, 5.0, 60.0]])
    a, b = tap.track_queries(model, frames, qp), tap.track_queries(loaded, frames, qp)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state, "tap": tap.dataclasses.asdict(model.tap)}, tmp_path / "x.pth")
    with pytest.raises(KeyError, match="x.pth.*extra.weight"):
        tap.load_tap_checkpoint(tmp_path / "x.pth")


# ------------------------------------------------------------------------------ readers

def random_clip(seed=0, size=(40, 24), T=7, N=9):
    """Random frames and straight-line tracks (W, H = size), some occluded: reader data only."""
    rng = np.random.default_rng(seed)
    W, H = size
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    start = rng.uniform(0, [W, H], (N, 1, 2))
    coords = (start + rng.uniform(-1, 1, (N, 1, 2)) * np.arange(T)[None, :, None]).astype(np.float32)
    occluded = rng.random((N, T)) < 0.3
    occluded[0] = False
    return frames, coords, occluded


def test_kubric_round_trip_and_visibility_means_occluded(tmp_path):
    frames, coords, occ = random_clip()
    seq = tap.write_kubric_sequence(tmp_path, "00007", frames, coords, occ)
    raw = np.load(seq / "00007.npy", allow_pickle=True).item()
    assert np.array_equal(raw["visibility"], occ)          # the export stores occluded here
    got_coords, got_occ = tap.read_kubric_annotation(seq / "00007.npy", trust_pickle=True)
    assert np.array_equal(got_coords, coords) and np.array_equal(got_occ, occ)
    assert [p.name for p in tap.kubric_frames(seq)] == [f"{t:03d}.png" for t in range(7)]
    assert np.array_equal(np.asarray(tap.read_frame(tap.kubric_frames(seq)[3])), frames[3])
    assert tap.kubric_sequences(tmp_path) == [seq]


def test_kubric_untrusted_pickle_is_refused_naming_the_file(tmp_path):
    seq = tap.write_kubric_sequence(tmp_path, "s", *random_clip())
    with pytest.raises(PermissionError, match=r"s\.npy.*pickle.*--trust-pickle"):
        tap.read_kubric_annotation(seq / "s.npy")
    with pytest.raises(PermissionError, match="s.npy"):
        tap.KubricClips(tmp_path, 32, num_targets=2)[0]


@pytest.mark.parametrize("data, match", [
    ({"coords": np.zeros((3, 5, 2))}, r"missing key\(s\) \['visibility'\]"),
    ({"coords": np.zeros((3, 5, 3)), "visibility": np.zeros((3, 5), bool)}, r"\(N, T, 2\)"),
    ({"coords": np.zeros((3, 5, 2)), "visibility": np.zeros((3, 4), bool)}, r"\(N, T, 2\)"),
    ({"coords": np.full((3, 5, 2), np.nan), "visibility": np.zeros((3, 5), bool)}, "non-finite"),
    ({"coords": np.zeros((3, 5, 2)), "visibility": np.full((3, 5), 2)}, "bool or 0/1"),
    ([1, 2, 3], "expected a dict"),
])
def test_kubric_malformed_annotation(tmp_path, data, match):
    path = tmp_path / "bad.npy"
    np.save(path, np.array(data, dtype=object) if isinstance(data, dict) else np.array(data, dtype=object))
    with pytest.raises(ValueError, match=match) as err:
        tap.read_kubric_annotation(path, trust_pickle=True)
    assert "bad.npy" in str(err.value)


def test_kubric_layout_errors_name_the_file(tmp_path):
    (tmp_path / "a" / "frames").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"a\.npy"):
        tap.kubric_sequences(tmp_path)
    frames, coords, occ = random_clip(T=7)
    tap.write_kubric_sequence(tmp_path / "r", "b", frames[:5], coords, occ)
    with pytest.raises(ValueError, match=r"b\.npy.*7 frames.*has 5"):
        tap.KubricClips(tmp_path / "r", 32, num_targets=2, trust_pickle=True)[0]


def test_kubric_clip_item(tmp_path):
    """Resize to 32 (x 32/40, 32/24), shared flip, out-of-frame points marked occluded."""
    frames, coords, occ = random_clip(N=9)
    coords[:, :, 0] += np.linspace(0, 45, 7)                # most tracks leave the 40-px frame
    occ[:] = False
    tap.write_kubric_sequence(tmp_path, "c", frames, coords, occ)
    ds = tap.KubricClips(tmp_path, 32, num_queries=12, num_targets=3, trust_pickle=True,
                         aug=tap.Augment(0.0, 0.0, 0.0))
    item = ds[0]
    assert item["query_img"].shape == (3, 32, 32) and item["target_imgs"].shape == (3, 3, 32, 32)
    assert item["target_xy"].shape == (3, 12, 2) and item["valid"].sum() <= 9
    n = int(item["valid"].sum())
    assert not item["valid"][n:].any() and item["target_occ"][:, n:].all()
    xy, t_occ = item["target_xy"][:, :n], item["target_occ"][:, :n]
    outside = (xy < 0).any(-1) | (xy >= 32).any(-1)
    assert outside.any() and t_occ[outside].all()              # off-frame -> occluded
    scale = torch.tensor([32 / 40, 32 / 24])
    src = torch.from_numpy(coords) * scale                     # every query is a scaled track point
    assert all(((src - item["query_xy"][i]).norm(dim=-1) < 1e-4).any() for i in range(n))
    flipped = tap.KubricClips(tmp_path, 32, num_queries=12, num_targets=3, trust_pickle=True,
                              aug=tap.Augment(0.0, 0.0, 1.0))[0]
    assert torch.allclose(flipped["query_xy"][:n, 0], 32 - item["query_xy"][:n, 0])
    assert torch.allclose(flipped["query_img"], item["query_img"].flip(-1))


def test_kubric_clip_shift_moves_frames_and_tracks_together(tmp_path):
    """Augment(shift=s): every frame is translated on its own by up to +-s pixels, and its
    track points with it: on a static scene the pixel under each visible target point is the
    pixel under its query point; points pushed off the frame are occluded."""
    rng = np.random.default_rng(3)
    frames = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 6, 0)  # static
    coords = np.repeat(rng.integers(4, 28, (40, 1, 2)).astype(np.float32) + 0.5, 6, 1)
    tap.write_kubric_sequence(tmp_path, "s", frames, coords, np.zeros((40, 6), bool))
    aug = tap.Augment(0.0, 0.0, 0.0, shift=5)
    item = tap.KubricClips(tmp_path, 32, num_queries=40, num_targets=4, trust_pickle=True, aug=aug)[0]
    n = int(item["valid"].sum())
    moved = (item["target_xy"][:, :n] - item["query_xy"][None, :n]).abs().amax(-1)
    assert moved.max() > 0 and moved.max() <= 10                 # two offsets of at most 5
    for k in range(4):
        xy, occ = item["target_xy"][k, :n], item["target_occ"][k, :n]
        outside = (xy < 0).any(-1) | (xy >= 32).any(-1)
        assert occ[outside].all() and not occ[~outside].any()
        here = tap.sample_features(item["target_imgs"][k:k + 1], xy[None], (32, 32))[0]
        there = tap.sample_features(item["query_img"][None], item["query_xy"][None, :n], (32, 32))[0]
        assert torch.allclose(here[~occ], there[~occ], atol=1e-5)


def scorer_names(path):
    """Video names as eval.tapvid reads them (its reader may take a trust flag)."""
    trusted = "trust_pickle" in inspect.signature(tapvid.read_tapvid_gt).parameters
    return list(tapvid.read_tapvid_gt(path, **({"trust_pickle": True} if trusted else {})))


def write_tapvid_sets(root, n=3):
    clips = [random_clip(seed=k) for k in range(n)]
    davis = {f"v{k}": tap.tapvid_example(*c) for k, c in enumerate(clips)}
    tap._dump(root / "davis.pkl", davis)
    tap._dump(root / "rgb.pkl", [tap.tapvid_example(*c) for c in clips])
    tap._dump(root / "kin" / "0000_of_0010.pkl", [tap.tapvid_example(*c, jpeg=True) for c in clips[:2]])
    tap._dump(root / "kin" / "0001_of_0010.pkl", [tap.tapvid_example(*c, jpeg=True) for c in clips[2:]])
    return clips


def test_tapvid_readers_round_trip_and_names(tmp_path):
    clips = write_tapvid_sets(tmp_path)
    davis = tap.read_tapvid(tmp_path / "davis.pkl", trust_pickle=True)
    rgb = tap.read_tapvid(tmp_path / "rgb.pkl", trust_pickle=True)
    kin = tap.read_tapvid(tmp_path / "kin", trust_pickle=True)
    assert list(davis) == ["v0", "v1", "v2"] and list(rgb) == ["0000", "0001", "0002"]
    assert list(kin) == ["0000_of_0010_0000", "0000_of_0010_0001", "0001_of_0010_0000"]
    assert list(kin) == scorer_names(tmp_path / "kin")                   # the scorer's names
    for (video, points, occ), (frames, coords, c_occ) in zip(davis.values(), clips):
        assert np.array_equal(video, frames) and np.array_equal(occ, c_occ)
        np.testing.assert_allclose(points * [40, 24], coords, atol=1e-5)
    jpeg = kin["0000_of_0010_0001"][0]
    assert jpeg.shape == clips[1][0].shape and jpeg.dtype == np.uint8
    blob = tap.tapvid_example(*clips[1], jpeg=True)["video"][4]          # Pillow's own round trip
    assert np.array_equal(jpeg[4], np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    resized = tap.resize_video(davis["v0"][0], 256)
    assert resized.shape == (7, 256, 256, 3)                        # aspect ignored


def test_tapvid_untrusted_and_malformed(tmp_path):
    write_tapvid_sets(tmp_path)
    with pytest.raises(PermissionError, match=r"davis\.pkl.*--trust-pickle"):
        tap.read_tapvid(tmp_path / "davis.pkl")
    with pytest.raises(PermissionError, match=r"0000_of_0010\.pkl"):
        tap.read_tapvid(tmp_path / "kin")
    frames, coords, occ = random_clip()
    ex = tap.tapvid_example(frames, coords, occ)
    cases = {"nokey.pkl": ({"a": {k: v for k, v in ex.items() if k != "occluded"}}, r"missing key.*occluded"),
             "shape.pkl": ({"a": {**ex, "points": ex["points"][..., :1]}}, r"\(N, T, 2\)"),
             "frames.pkl": ({"a": {**ex, "video": frames[:3]}}, "7 frames, the video 3"),
             "nan.pkl": ({"a": {**ex, "points": ex["points"] * np.nan}}, "non-finite"),
             "video.pkl": ({"a": {**ex, "video": "nope"}}, "uint8 array or a list of JPEG"),
             "jpeg.pkl": ([{**ex, "video": np.array([b"not a jpeg"] * 7, dtype=object)}], "frame 0 is not"),
             "top.pkl": (42, "expected a dict or a list")}
    for name, (obj, match) in cases.items():
        tap._dump(tmp_path / name, obj)
        with pytest.raises(ValueError, match=match) as err:
            tap.read_tapvid(tmp_path / name, trust_pickle=True)
        assert name in str(err.value)
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(ValueError, match="trunc.pkl.*cannot unpickle"):
        tap.read_tapvid(tmp_path / "trunc.pkl", trust_pickle=True)


# ------------------------------------------------------------------------------ scoring

def test_synthetic_world_in_both_layouts(tmp_path):
    """`write_synthetic`: World.tracks (+ 0.5: tapnet's pixel centres) in the Kubric layout
    (visibility = occluded) and as TAP-Vid pickles (DAVIS dict at 40x24, RGB-Stacking list,
    Kinetics JPEG shards), all read back by our readers and named as eval/tapvid.py does."""
    paths = tap.write_synthetic(tmp_path, train_videos=1, val_videos=2, kubric_size=32,
                                tapvid_size=(40, 24), num_frames=5, num_tracks=6)
    from data import World
    frames, coords, occ = tap.world_clip(0, (32, 32), 5, 6)
    seq = paths["kubric_train"] / "00000"
    got, got_occ = tap.read_kubric_annotation(seq / "00000.npy", trust_pickle=True)
    assert np.array_equal(got, coords) and np.array_equal(got_occ, occ)
    world = World(0, size=(32, 32), num_frames=5)
    assert np.array_equal(np.asarray(tap.read_frame(tap.kubric_frames(seq)[2])), world.frame(2))
    keep = np.flatnonzero((~occ).any(1))
    t = np.argmax(~occ[keep], axis=1)                  # a frame where the point is front-most
    qp = np.stack([t, coords[keep, t, 1] - 0.5, coords[keep, t, 0] - 0.5], -1)
    tracks, occluded = world.tracks(qp)                # the same surface points, re-queried
    coords, occ = coords[keep], occ[keep]
    assert len(keep) >= 4 and np.array_equal(occluded, occ)
    np.testing.assert_allclose(tracks + 0.5, coords, atol=1e-3)
    davis = tap.read_tapvid(paths["davis"], trust_pickle=True)
    assert list(davis) == ["world-00", "world-01"] and davis["world-00"][0].shape == (5, 24, 40, 3)
    assert list(tap.read_tapvid(paths["rgb_stacking"], trust_pickle=True)) == ["0000", "0001"]
    kin = tap.read_tapvid(paths["kinetics"], trust_pickle=True)
    assert list(kin) == scorer_names(paths["kinetics"])
    assert tap.kinetics_csv_count(paths["kinetics_csv"]) == 2


def test_oracle_scores_one_and_swapped_axes_do_not(tmp_path):
    """Exact synthetic-world tracks written as predictions (both modes, query order of
    sample_queries) score AJ = delta = OA = 1 through eval/tapvid.py; the same at 384^2 with
    resolution (384, 384); x and y swapped do not."""
    clips = [tap.world_clip(k, (40, 24), 8, 16) for k in range(2)]
    tap._dump(tmp_path / "davis.pkl", {f"w{k}": tap.tapvid_example(*c) for k, c in enumerate(clips)})
    videos = tap.read_tapvid(tmp_path / "davis.pkl", trust_pickle=True)
    for mode in ("first", "strided"):
        for size, swap in ((256, False), (384, False), (256, True)):
            out = tmp_path / f"{mode}_{size}_{swap}"
            for name, (_, points, occ) in videos.items():
                qp, tracks, q_occ, _ = tapvid.sample_queries(points * 256, occ, mode)
                tracks = tracks * size / 256
                if swap:
                    tracks = tracks[..., ::-1]
                tap.write_prediction(out / f"{name}.npz", tracks, q_occ, qp * [1, size / 256, size / 256], size)
            m = tap.evaluate_folder(videos, out, mode)["mean"]
            if swap:
                assert m["average_jaccard"] < 0.5
            else:
                assert m["average_jaccard"] == 1.0 and m["average_pts_within_thresh"] == 1.0
                assert m["occlusion_accuracy"] == 1.0


def test_zero_motion_baseline_through_run_tapvid(tmp_path):
    """run_tapvid writes one .npz per video whose query_points follow sample_queries; the
    zero-motion predictor scores exactly what eval.tapvid gives the hand-built arrays."""
    write_tapvid_sets(tmp_path)
    videos = tap.read_tapvid(tmp_path / "rgb.pkl", trust_pickle=True)
    result = tap.run_tapvid(lambda frames, qp: tap.zero_motion(qp, len(frames)), videos,
                            "strided", tmp_path / "pred", 64)
    per = []
    for name, (_, points, occ) in videos.items():
        qp, tracks, q_occ, _ = tapvid.sample_queries(points * 256, occ, "strided")
        with np.load(tmp_path / "pred" / f"{name}.npz") as z:
            np.testing.assert_allclose(z["query_points"], qp * [1, 0.25, 0.25], atol=1e-4)
            assert tuple(z["resolution"]) == (64, 64)
        zt, zo = tap.zero_motion(qp, occ.shape[1])
        per.append(tapvid.tapvid_metrics(qp, q_occ, tracks, zo, zt, "strided"))
    expect = tapvid.mean_over_videos(per)
    for k in ("average_jaccard", "occlusion_accuracy", "average_pts_within_thresh"):
        assert result["mean"][k] == pytest.approx(expect[k], abs=1e-6)
    assert result["points_tracked"] == sum(len(tapvid.sample_queries(p, o, "strided")[0]) * o.shape[1]
                                           for _, p, o in videos.values())


# ------------------------------------------------------------------------------ commands

def test_train_resume_and_test_commands(tmp_path):
    """2 steps (with --heatmap-loss), then `--resume auto` to 3 (run folder, log.jsonl, atomic
    checkpoints), then `test` on a DAVIS-layout pickle: one .npz per video and metrics.json
    from eval.tapvid."""
    for k in range(4):
        tap.write_kubric_sequence(tmp_path / "kubric", f"{k:03d}", *random_clip(seed=10 + k))
    write_tapvid_sets(tmp_path, n=2)
    common = ["train", "--model", "tiny", "--size", "32", "--data-path", str(tmp_path / "kubric"),
              "--trust-pickle", "--batch-size", "2", "--num-targets", "2", "--num-queries", "8",
              "--workers", "0", "--warmup", "1", "--print-freq", "1", "--save-every", "1",
              "--output", str(tmp_path / "run"), "--kubric-variant", "synthetic",
              "--heatmap-loss", "0.5"]
    tap.main(common + ["--steps", "2"])
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*.pth")) == ["checkpoint-1.pth", "checkpoint-2.pth"]
    tap.main(common + ["--steps", "3", "--resume", "auto"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert all(r["heatmap"] > 0 for r in log)                           # --heatmap-loss reached the loss
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == {"variant": "synthetic", "videos": 4, "resolution": [40, 24], "frames": 7}
    ckpt = torch.load(run / "checkpoint-3.pth", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["tap"]["size"] == 32
    assert not list(run.glob("*.tmp"))
    result = tap.main(["test", "--dataset", "davis", "--query-mode", "first", "--trust-pickle",
                       "--data-path", str(tmp_path / "davis.pkl"), "--ckpt", str(run / "checkpoint-3.pth"),
                       "--output", str(tmp_path / "pred")])
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.npz")) == ["v0.npz", "v1.npz"]
    saved = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert saved["n_videos"] == 2 and saved["mean"] == pytest.approx(result["mean"], nan_ok=True)
    assert saved["visibility"] == "tapir"
    tap.main(["test", "--dataset", "davis", "--query-mode", "first", "--trust-pickle", "--data-path",
              str(tmp_path / "davis.pkl"), "--ckpt", str(run / "checkpoint-3.pth"),
              "--output", str(tmp_path / "pred_occ"), "--visibility", "occlusion"])
    assert json.loads((tmp_path / "pred_occ" / "metrics.json").read_text())["visibility"] == "occlusion"
    with pytest.raises(SystemExit, match=r"davis\.pkl.*--trust-pickle"):
        tap.main(["test", "--dataset", "davis", "--query-mode", "first", "--data-path",
                  str(tmp_path / "davis.pkl"), "--ckpt", str(run / "checkpoint-3.pth"),
                  "--output", str(tmp_path / "pred2")])
