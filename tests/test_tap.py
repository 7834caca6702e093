"""Tests of tasks/tap.py (DropMAE-TAP): soft-argmax and sampling geometry, query independence,
the tapnet losses, checkpoint import, the Kubric-export and TAP-Vid readers and their errors,
training with resume, and predictions scored through eval/tapvid.py.
Run: .venv/bin/python -m pytest -q tests/test_tap.py"""
import json
import pickle

import numpy as np
import pytest
import torch

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


def _pair_batch(n=4, q=12, seed=0):
    """Pairs whose target is the query frame rolled by (dx, dy) = (4, 2) px."""
    g = torch.Generator().manual_seed(seed)
    img_q = torch.randn(n, 3, 64, 64, generator=g)
    img_t = torch.roll(img_q, shifts=(2, 4), dims=(2, 3))
    qxy = torch.rand(n, q, 2, generator=g) * 50 + 4
    gxy = qxy + torch.tensor([4.0, 2.0])
    return img_q, img_t, qxy, gxy, torch.zeros(n, q, dtype=torch.bool), torch.ones(n, q, dtype=torch.bool)


def test_loss_finite_and_falls_on_a_repeated_batch():
    model = tiny_model().train()
    img_q, img_t, qxy, gxy, gocc, valid = _pair_batch(n=2, q=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss, _ = tap.tap_loss(model.forward_points(img_q, img_t, qxy), gxy, gocc, valid, 4.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0]


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
