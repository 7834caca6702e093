"""Tests for tasks/vot.py and tasks/vot_data.py (DropTrack). Rules: specs/vot.md, metrics-sot.md.

Expected numbers are worked out by hand in the comments. Data are tiny synthetic sequences
written in the GOT-10k / LaSOT / TrackingNet / TNL2K / COCO layouts under tmp_path.
"""
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import dropmae
from tasks import vot
from tasks import vot_data as vd

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The file is sized for one core; two OpenMP threads on a busy machine are ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """GOT-10k (train 2, val 2, test 1) and LaSOT (train 2, test 2) synthetic folders, 24 frames each."""
    return vd.write_synthetic(tmp_path_factory.mktemp("synth"), seed=0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return vot.build_model("tiny").eval()


# ----------------------------------------------------------------------------------------------
# crop, map-back, boxes, window
# ----------------------------------------------------------------------------------------------

def _ramp(H, W):
    """(H, W, 3) uint8 image whose pixel (y, x) holds 10 y + x + 1 in every channel (never 0)."""
    v = (10 * np.arange(H)[:, None] + np.arange(W)[None, :] + 1).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def test_crop_window_side_and_round_half_to_even():
    # side = ceil(sqrt(3*3) * 2) = 6; x1 = round(2 + 1.5 - 3) = round(0.5) = 0 (half to even),
    # y1 = round(1 + 1.5 - 3) = round(-0.5) = 0; box [3, 0, 3, 3]: round(1.5) = 2
    assert vd.crop_window([2, 1, 3, 3], 2.0) == (0, 0, 6)
    assert vd.crop_window([3, 0, 3, 3], 2.0)[0] == 2
    # side = ceil(sqrt(10 * 40) * 5) = ceil(100.0) = 100; ceil(sqrt(2*3)*5) = ceil(12.247) = 13
    assert vd.crop_window([0, 0, 10, 40], 5.0)[2] == 100
    assert vd.crop_window([0, 0, 2, 3], 5.0)[2] == 13
    with pytest.raises(ValueError, match="too small"):
        vd.crop_window([5, 5, 0, 0], 2.0)


def test_sample_target_pixels_zero_padding_and_edge_quirk():
    """At scale 1 the crop is the image window, zero outside; the official x2_pad = x2 - W + 1
    also zeroes the last image column / row when the crop reaches past the edge."""
    img = _ramp(10, 12)
    # box [6, 4, 4, 4], factor 2: side 8, x1 = round(8 - 4) = 4, y1 = round(6 - 4) = 2 -> the
    # window is cols 4..11, rows 2..9; it ends at W = 12 and H = 10, so col 11 / row 9 -> 0
    crop, scale = vd.sample_target(img, [6, 4, 4, 4], 2.0, 8)
    assert scale == 1.0 and crop.shape == (3, 8, 8) and crop.dtype == torch.uint8
    c = crop[0].numpy()
    np.testing.assert_array_equal(c[:7, :7], img[2:9, 4:11, 0])
    assert (c[7, :] == 0).all() and (c[:, 7] == 0).all()
    # box [0, 0, 4, 4]: x1 = y1 = round(2 - 4) = -2 -> two zero rows / cols, then the image
    crop, _, mask = vd.sample_target(img, [0, 0, 4, 4], 2.0, 8, with_mask=True)
    c = crop[0].numpy()
    assert (c[:2, :] == 0).all() and (c[:, :2] == 0).all()
    np.testing.assert_array_equal(c[2:, 2:], img[0:6, 0:6, 0])
    np.testing.assert_array_equal(mask.numpy(), c == 0)
    # resize 8 -> 4 of a constant region is that constant; resize_factor = out / side = 0.5
    flat = np.full((40, 40, 3), 100, np.uint8)
    crop, scale = vd.sample_target(flat, [16, 16, 4, 4], 2.0, 4)
    assert scale == 0.5 and (crop == 100).all()


def _box_to_search_crop(box, prev_box, resize_factor, out_size):
    """The inverse of map_box_back: image [x, y, w, h] -> (cx, cy, w, h) crop px at image scale."""
    x, y, w, h = box
    px, py, pw, ph = prev_box
    half = 0.5 * out_size / resize_factor
    return [x + 0.5 * w - (px + 0.5 * pw - half), y + 0.5 * h - (py + 0.5 * ph - half), w, h]


def _padded_crop_reference(image, box, factor, out):
    """The official recipe written out: build the zero-padded side x side crop (with the
    x2_pad quirk), then resize it bilinearly in float64 (crop before rounding, padding mask)."""
    H, W = image.shape[:2]
    x1, y1, side = vd.crop_window(box, factor)
    sx1, sy1 = max(x1, 0), max(y1, 0)
    sx2, sy2 = min(x1 + side, W - 1) if x1 + side >= W else x1 + side, \
        min(y1 + side, H - 1) if y1 + side >= H else y1 + side
    crop = torch.zeros(1, 3, side, side, dtype=torch.float64)
    pad = torch.ones(1, 1, side, side, dtype=torch.float64)
    if sx2 > sx1 and sy2 > sy1:
        crop[0, :, sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = torch.from_numpy(
            image[sy1:sy2, sx1:sx2].astype(np.float64)).permute(2, 0, 1)
        pad[..., sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = 0
    resize = lambda t: F.interpolate(t, size=(out, out), mode="bilinear", align_corners=False)[0]
    return resize(crop), resize(pad)[0] > 0


def test_sample_target_equals_the_padded_crop_resized_without_building_it():
    """The crop is interpolated straight from the image: same pixels (to rounding) and the same
    padding mask as resizing the explicit zero-padded crop, for up- and down-scaling and boxes
    hanging off every edge; a box whose crop side is 20000 px (1.2 GB as a padded uint8 crop)
    costs only the output."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for _ in range(60):
        box = [rng.uniform(-30, 100), rng.uniform(-30, 75), rng.uniform(1, 40), rng.uniform(1, 40)]
        out, factor = int(rng.choice([7, 32, 128])), float(rng.choice([2.0, 5.0]))
        crop, scale, mask = vd.sample_target(img, box, factor, out, with_mask=True)
        want, want_mask = _padded_crop_reference(img, box, factor, out)
        assert scale == out / vd.crop_window(box, factor)[2]
        assert (crop.double() - want).abs().max() <= 0.5 + 1e-3          # = round(want), to float
        assert torch.equal(mask, want_mask)
    crop, scale, mask = vd.sample_target(img, [0, 0, 4000, 4000], 5.0, 16, with_mask=True)
    assert scale == 16 / 20000 and mask.all() and crop.shape == (3, 16, 16)


def test_map_back_inverts_the_crop_mapping_and_training_labels_use_out_minus_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = (rng.uniform(0, 300, 4) + [0, 0, 5, 5]).tolist()
        prev = (rng.uniform(0, 300, 4) + [0, 0, 5, 5]).tolist()
        scale = float(rng.uniform(0.2, 3.0))
        back = vd.map_box_back(_box_to_search_crop(box, prev, scale, 384), prev, scale, 384)
        np.testing.assert_allclose(back, box, rtol=0, atol=1e-9)
    # map_box_back by hand: prev [100, 50, 20, 40] (centre 110, 70), scale 2, out 384 -> the crop
    # spans 96 px either side: crop centre (96, 96) maps to the prev centre; (100, 90) -> (114, 64)
    assert vd.map_box_back([100, 90, 10, 20], [100, 50, 20, 40], 2.0, 384) == [109.0, 54.0, 10.0, 20.0]
    # label: box == extract box [10, 20, 30, 40], rf 2: centre (383/2, 383/2) = 191.5, wh (60, 80)
    lab = vd.box_in_crop_norm([10, 20, 30, 40], [10, 20, 30, 40], 2.0, 384)
    np.testing.assert_allclose(lab.numpy(), np.array([161.5, 151.5, 60, 80]) / 384, rtol=1e-6)


def test_training_label_decoded_like_the_tracker_returns_the_box():
    """Label (crop around prev) -> cxcywh * S / rf -> map_box_back = the box, shifted by the
    official half output pixel ((S - 1) / 2 vs S / 2): -0.5 / rf image px in x and y."""
    prev, box, S = [100.0, 50.0, 20.0, 40.0], [112.0, 47.0, 24.0, 36.0], 384
    _, _, side = vd.crop_window(prev, 5.0)
    rf = S / side
    lab = vd.box_in_crop_norm(box, prev, rf, S).double()
    cxcywh = torch.cat([lab[:2] + lab[2:] / 2, lab[2:]]) * S / rf
    back = vd.map_box_back(cxcywh.tolist(), prev, rf, S)
    np.testing.assert_allclose(back, [112 - 0.5 / rf, 47 - 0.5 / rf, 24, 36], rtol=0, atol=1e-4)


def test_clip_box_keeps_ten_pixels_inside():
    # W = 100, H = 80: a box hanging off the right [95, -5, 30, 20] -> x1 = min(95, 90) = 90,
    # x2 = min(125, 100) = 100, w = 10; y1 = 0, y2 = 15, h = 15
    assert vd.clip_box([95, -5, 30, 20], 80, 100, margin=10) == [90.0, 0.0, 10.0, 15.0]
    # a 2x2 box inside: w, h raised to the margin
    assert vd.clip_box([40, 40, 2, 2], 80, 100, margin=10) == [40.0, 40.0, 10.0, 10.0]


def test_box_conversions():
    xywh = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert vd.xywh_to_xyxy(xywh).tolist() == [[10, 20, 40, 60]]
    assert vd.cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]]))[0].tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])


def test_hann_window_values():
    w = vot.hann1d(24)
    # hann1d(k) = 0.5 (1 - cos(2 pi k / 25)), k = 1..24; symmetric; peak at k = 12, 13
    assert w[0].item() == pytest.approx(0.5 * (1 - math.cos(2 * math.pi / 25)), rel=1e-6)
    assert w[11].item() == pytest.approx(0.5 * (1 + math.cos(math.pi / 25)), rel=1e-6)   # 0.99605
    torch.testing.assert_close(w, w.flip(0))
    w2 = vot.hann2d(24)
    assert w2.shape == (1, 1, 24, 24)
    assert w2[0, 0, 3, 5].item() == pytest.approx(w[3].item() * w[5].item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# losses and schedules
# ----------------------------------------------------------------------------------------------

def test_giou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [1, 1, 3, 4]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [1, 1, 3, 4]])
    giou, iou = vot.generalized_iou(a, b)
    # 1: inter 1, union 7, hull 9: 1/7 - 2/9 = -5/63.  2: disjoint, union 2, hull 3: -1/3.  3: same: 1
    np.testing.assert_allclose(iou.numpy(), [1 / 7, 0, 1], rtol=1e-6)
    np.testing.assert_allclose(giou.numpy(), [-5 / 63, -1 / 3, 1], rtol=1e-6)


def test_gaussian_target_peak_radius_and_values():
    # w = h = 4 cells: r3 = (-2*0.7*8 + sqrt((2*0.7*8)^2 + 4*2.8*0.3*16)) / 2 = (-11.2 + sqrt(179.2)) / 2
    r = vot.gaussian_radius(torch.tensor([4.0]), torch.tensor([4.0]))
    assert r.item() == pytest.approx((-11.2 + math.sqrt(179.2)) / 2, rel=1e-5)     # 1.0933 -> r = 1
    # box x = 8, w = 4 -> centre col 10; y = 3, h = 4 -> row 5 (in cells of a 24 grid)
    t = vot.gaussian_target(torch.tensor([[8.0, 3.0, 4.0, 4.0]]) / 24, 24)[0]
    assert t.shape == (24, 24) and t[5, 10].item() == 1.0 and int((t == 1).sum()) == 1
    # sigma = (2*1 + 1) / 6 = 0.5: neighbours exp(-1 / 0.5) = e^-2, diagonals e^-4, nothing beyond r
    assert t[5, 11].item() == pytest.approx(math.exp(-2), rel=1e-6)
    assert t[6, 11].item() == pytest.approx(math.exp(-4), rel=1e-6)
    assert int((t > 0).sum()) == 9
    # w = h = 10: r3 = (-28 + sqrt(784 + 336)) / 2 = 2.733 -> r = 2 -> a 5x5 support
    t = vot.gaussian_target(torch.tensor([[5.0, 5.0, 10.0, 10.0]]) / 24, 24)[0]
    assert int((t > 0).sum()) == 25 and t[10, 10].item() == 1.0
    # centre x + w/2 = 10.5 rounds half to even -> col 10
    t = vot.gaussian_target(torch.tensor([[8.5, 3.0, 4.0, 4.0]]) / 24, 24)[0]
    assert t[5, 10].item() == 1.0


def test_focal_loss_hand_computed():
    pred = torch.tensor([0.5, 0.2]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.5]).view(1, 1, 1, 2)
    # pos: log(.5) (1-.5)^2; neg: log(.8) .2^2 (1-.5)^4; one positive
    want = -(math.log(0.5) * 0.25 + math.log(0.8) * 0.04 * 0.0625)
    assert vot.focal_loss(pred, target).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("g,row", [(7, 3), (8, 3), (12, 5), (14, 6), (4, 1)])
def test_template_centre_token_matches_generate_mask_cond(g, row):
    """CTR_POINT: generate_mask_cond's slice(3,4) / (5,6) / (3,4) / (6,7) for 8 / 12 / 7 / 14
    (the upper-left centre cell for even g); 12x12 -> (5, 5) = token 65; tiny 4x4 -> (1, 1)."""
    assert vot.template_centre_index(g) == row * g + row
    assert vot.template_centre_index(12) == 65


def test_steplr_divides_by_ten_every_step_size_epochs():
    """StepLR(step_size=80, gamma=0.1), stepped after each epoch: epoch e runs at
    0.1 ** ((e - 1) // 80), so a second drop follows after 160 epochs (not one drop for good)."""
    lr = [vot.lr_at(e, 1.0, 80) for e in (1, 80, 81, 160, 161)]
    assert lr == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="lr-drop"):
        vot.resolve_train_config("got10k", "tiny", {"lr_drop": 0})


def test_keep_rate_schedule_values():
    f = lambda e: vot.ce_keep_rate(e, start=20, warm=50, base=0.7)
    assert f(0) == 1.0 and f(19) == 1.0 and f(20) == 1.0
    assert f(45) == pytest.approx(0.85)                        # half-way: cos(pi/2) = 0
    assert f(30) == pytest.approx(0.7 + 0.15 * (1 + math.cos(math.pi / 5)))
    assert f(70) == 0.7 and f(100) == 0.7
    # StepLR(80): epochs 1..80 at the base lr, 81..100 at 0.1x
    assert vot.lr_at(80, 2.5e-4, 80) == 2.5e-4 and vot.lr_at(81, 2.5e-4, 80) == pytest.approx(2.5e-5)


def test_milestones_scale_with_epochs_and_explicit_values_win():
    # got10k: E0 = 100, lr_drop 80, ce_start 20, ce_warm 50; round() is half to even
    paper = vot.resolve_train_config("got10k", "base", {})
    assert (paper["epochs"], paper["lr_drop"], paper["ce_start"], paper["ce_warm"]) == (100, 80, 20, 50)
    assert paper["lr"] == 2.5e-4 and paper["batch_size"] == 32
    # 24 epochs: 80 * 0.24 = 19.2 -> 19, 20 * 0.24 = 4.8 -> 5, 50 * 0.24 = 12
    short = vot.resolve_train_config("got10k", "base", {"epochs": 24, "lr": None})
    assert (short["lr_drop"], short["ce_start"], short["ce_warm"]) == (19, 5, 12)
    # tiny recipe: 150 epochs -> 120, 30, 75; full (E0 = 300: 240, 20, 80) -> 120, 10, 40
    tiny = vot.resolve_train_config("got10k", "tiny", {})
    assert (tiny["epochs"], tiny["lr"], tiny["batch_size"], tiny["samples_per_epoch"]) == (150, 1e-3, 8, 64)
    assert (tiny["lr_drop"], tiny["ce_start"], tiny["ce_warm"]) == (120, 30, 75)
    full = vot.resolve_train_config("full", "tiny", {})
    assert (full["lr_drop"], full["ce_start"], full["ce_warm"]) == (120, 10, 40)
    given = vot.resolve_train_config("got10k", "tiny", {"epochs": 24, "ce_start": 3, "lr": 5e-4})
    assert (given["ce_start"], given["ce_warm"], given["lr"]) == (3, 12, 5e-4)


@pytest.mark.parametrize("epochs", [1, 2, 7, 24, 60, 100, 150, 300])
def test_last_training_epoch_uses_the_inference_keep_rate(epochs):
    """Regression: a short run (e.g. 24 epochs with the paper's ce_start 20, warm 50) trained
    with keep ~1.0 only, while the tracker eliminates 30 % of the search tokens at every CE
    block; the tiny tracker then lost the target (synthetic-train AO 6 vs 39 without
    elimination). With the milestones scaled, the run ends at the keep rate used at test."""
    for config, model in (("got10k", "tiny"), ("full", "base")):
        cfg = vot.resolve_train_config(config, model, {"epochs": epochs})
        keep = vot.ce_keep_rate(epochs, cfg["ce_start"], cfg["ce_warm"], vot.TRACK_PRESETS[model].ce_keep)
        assert keep == vot.TRACK_PRESETS[model].ce_keep == 0.7


def test_param_groups_backbone_includes_pos_and_frame_embeddings(tiny_model):
    groups = vot.param_groups(tiny_model, 2.5e-4, 0.1, 1e-4, verbose=False)
    ids = {id(p) for p in groups[1]["params"]}
    bb = tiny_model.backbone
    for p in (bb.pos_embed_z, bb.pos_embed_x, bb.temporal_pos_embed_x, bb.temporal_pos_embed_z):
        assert id(p) in ids
    assert id(bb.pos_embed) not in ids                       # frozen, unused
    assert groups[1]["lr"] == pytest.approx(2.5e-5) and groups[0]["lr"] == 2.5e-4
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    n_trainable = sum(1 for p in tiny_model.parameters() if p.requires_grad)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_trainable


# ----------------------------------------------------------------------------------------------
# candidate elimination
# ----------------------------------------------------------------------------------------------

def test_elimination_and_restore_index_bookkeeping():
    B, lt, Ls, D = 1, 2, 5, 3
    tokens = torch.arange(B * (lt + Ls) * D, dtype=torch.float32).view(B, lt + Ls, D) + 1
    index = torch.arange(Ls).view(1, Ls)
    score = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0]])
    out, idx = vot.eliminate(tokens, lt, index, score, keep=3)
    assert idx.tolist() == [[1, 3, 2]]                       # descending score
    torch.testing.assert_close(out[:, :lt], tokens[:, :lt])
    torch.testing.assert_close(out[0, lt:], tokens[0, lt + torch.tensor([1, 3, 2])])
    # a second round on the survivors: positions refer to the original grid
    out2, idx2 = vot.eliminate(out, lt, idx, torch.tensor([[0.2, 0.1, 0.5]]), keep=2)
    assert idx2.tolist() == [[2, 1]]
    full = vot.restore_tokens(out2[:, lt:], idx2, Ls)
    torch.testing.assert_close(full[0, 2], tokens[0, lt + 2])
    torch.testing.assert_close(full[0, 1], tokens[0, lt + 1])
    assert (full[0, [0, 3, 4]] == 0).all()


def test_ce_block_ranks_by_template_centre_attention(tiny_model):
    """The kept set = top-k of the centre token's attention row (explicit softmax, head mean);
    with keep 1 the CE block equals the plain block."""
    torch.manual_seed(1)
    blk = tiny_model.backbone.blocks[1]
    lt, Ls = 16, 64
    x = torch.randn(2, lt + Ls, 96)
    index = torch.arange(Ls).expand(2, -1)
    ctr = tiny_model.backbone.ctr_index
    assert ctr == 5                                          # 4x4 template: (1, 1) -> 1*4 + 1
    with torch.no_grad():
        same, idx = vot.ce_block(blk, x, lt, index, 1.0, ctr)
        torch.testing.assert_close(same, blk(x), rtol=1e-5, atol=1e-5)
        assert idx.tolist() == index.tolist()
        _, attn = blk.attn(blk.norm1(x), return_attn=True)
        score = attn[:, :, ctr, lt:].mean(1)
        _, kept = vot.ce_block(blk, x, lt, index, 0.7, ctr)
    assert kept.shape == (2, math.ceil(0.7 * 64))            # 45
    want = score.topk(45, dim=1).indices
    assert [sorted(r) for r in kept.tolist()] == [sorted(r) for r in want.tolist()]


def test_backbone_token_counts_and_zero_filled_grid(tiny_model):
    z, x = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = tiny_model(z, x)                               # inference: 64 -> 45 -> 32
        feat, kept = tiny_model.backbone(z, x)
        full, kept_all = tiny_model.backbone(z, x, keep_rate=1.0)
    assert kept.shape == (2, 32) and out["kept_index"].shape == (2, 32)
    nonzero = feat.abs().sum(-1) > 0                         # (2, 64)
    for b in range(2):
        assert sorted(torch.nonzero(nonzero[b]).flatten().tolist()) == sorted(kept[b].tolist())
    assert kept_all.shape == (2, 64) and (full.abs().sum(-1) > 0).all()
    assert out["score_map"].shape == (2, 1, 8, 8) and out["pred_boxes"].shape == (2, 4)
    assert (out["score_map"] >= 1e-4).all() and (out["score_map"] <= 1 - 1e-4).all()


def test_decode_boxes_at_argmax():
    score = torch.zeros(1, 1, 4, 4)
    score[0, 0, 2, 1] = 1.0                                  # row 2, col 1
    size = torch.full((1, 2, 4, 4), 0.5)
    size[0, :, 2, 1] = torch.tensor([0.25, 0.125])
    offset = torch.zeros(1, 2, 4, 4)
    offset[0, :, 2, 1] = torch.tensor([0.5, 0.25])
    # cx = (1 + 0.5) / 4, cy = (2 + 0.25) / 4
    assert vot.decode_boxes(score, size, offset).tolist() == [[0.375, 0.5625, 0.25, 0.125]]


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

def test_dropmae_checkpoint_loads_with_exact_missing_and_dropped(tmp_path):
    src = dropmae.DropMAE(dropmae.get_config("tiny"))
    path = tmp_path / "dropmae_tiny.pth"
    torch.save({"model": src.state_dict()}, path)
    model = vot.build_model("tiny")
    report = vot.load_pretrained_backbone(path, model, verbose=False)
    assert report["kind"] == "dropmae"
    assert report["missing"] == ["pos_embed_x", "pos_embed_z"]
    assert set(report["dropped"]) == {k for k in src.state_dict() if k.startswith("decoder_") or k == "mask_token"}
    torch.testing.assert_close(model.backbone.blocks[2].attn.qkv.weight, src.blocks[2].attn.qkv.weight)
    torch.testing.assert_close(model.backbone.temporal_pos_embed_z, src.temporal_pos_embed_z)
    # the 6x6 table resized bicubically to 4x4 / 8x8 (trainable copies)
    torch.testing.assert_close(model.backbone.pos_embed_x,
                               dropmae.resize_pos_embed(src.pos_embed[:, 1:], (8, 8)))
    assert model.backbone.pos_embed_x.requires_grad
    # MAE layout: cls_token, no frame vectors -> those stay at their init
    mae = {k: v for k, v in src.state_dict().items() if "temporal" not in k and not k.startswith("decoder")}
    mae["cls_token"] = torch.zeros(1, 1, 96)
    report = vot.load_pretrained_backbone({"model": mae}, vot.build_model("tiny"), verbose=False)
    assert report["missing"] == ["pos_embed_x", "pos_embed_z", "temporal_pos_embed_x", "temporal_pos_embed_z"]
    bad = dict(src.state_dict(), extra_key=torch.zeros(1))
    with pytest.raises(KeyError, match="extra_key"):
        vot.load_pretrained_backbone({"model": bad}, vot.build_model("tiny"), verbose=False)


def test_base_backbone_keys_are_dropmae_encoder_keys_plus_two_tables():
    # the decoder's depth does not matter: every decoder key is dropped
    mae_keys = set(dropmae.DropMAE(dropmae.get_config("base", decoder_depth=1)).state_dict())
    bb_keys = set(vot.build_model("base").backbone.state_dict())
    encoder = {k for k in mae_keys if not k.startswith("decoder_") and k != "mask_token"}
    assert bb_keys - encoder == {"pos_embed_z", "pos_embed_x"}
    assert encoder - bb_keys == set()


def test_official_droptrack_net_layout_loads(tiny_model):
    """An OSTrack-style {'net': ...} with backbone.cls_token loads strictly and predicts the same."""
    net = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    net["backbone.cls_token"] = torch.zeros(1, 1, 96)
    model = vot.load_tracker_checkpoint({"net": net}, "tiny")
    z, x = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(z, x)["score_map"], tiny_model(z, x)["score_map"])
    del net["box_head.conv5_ctr.bias"]
    with pytest.raises(KeyError, match="conv5_ctr"):
        vot.load_tracker_checkpoint({"net": net}, "tiny")


# ----------------------------------------------------------------------------------------------
# datasets in their official layouts
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,why", [("1,2,3", "expected 4 values"), ("1,2,nan,4", "NaN"),
                                      ("1,2,-3,4", "negative")])
def test_malformed_groundtruth_names_file_and_line(tmp_path, line, why):
    p = tmp_path / "seq" / "groundtruth.txt"
    p.parent.mkdir()
    p.write_text(f"1,2,3,4\n5,6,7,8\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:3") + ".*" + why):
        vd.read_boxes(p)


def test_malformed_got10k_labels_and_split_indices_name_the_file(tmp_path):
    seq = tmp_path / "train" / "S1"
    seq.mkdir(parents=True)
    (tmp_path / "train" / "list.txt").write_text("S1\n")
    (seq / "groundtruth.txt").write_text("1,2,3,4\n1,2,3,4\n")
    (seq / "absence.label").write_text("0\n1\n")
    (seq / "cover.label").write_text("8\n9\n")                   # classes are 0..8
    with pytest.raises(ValueError, match=re.escape(str(seq / "cover.label")) + ".*found 9"):
        vd.GOT10k(tmp_path, "train").sequence_info(0)
    (seq / "cover.label").write_text("8\n")                      # one value for two frames
    with pytest.raises(ValueError, match="cover.label: 1 values"):
        vd.GOT10k(tmp_path, "train").sequence_info(0)
    (tmp_path / "got10k_vot_train_split.txt").write_text("0\n1\n")   # list.txt has 1 row
    with pytest.raises(ValueError, match="got10k_vot_train_split.txt: indices must be"):
        vd.GOT10k(tmp_path, "vottrain")


def test_got10k_and_lasot_layouts_and_visibility(synth):
    """The readers give back what the world says: GOT-10k visible = cover > 0 and in view,
    boxes = the target's visible extent there; LaSOT visible = some pixel visible."""
    got = vd.GOT10k(synth["got10k"], "train")
    assert got.names == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    info = got.sequence_info(0)
    _, boxes, fraction, in_view = vd.synthetic_sequence(("got10k", 0, "train", 0), 24, (160, 120))
    assert info["boxes"].shape == (24, 4)
    assert np.array_equal(info["visible"], (fraction > 0) & in_view) and info["visible"][0]
    np.testing.assert_allclose(info["boxes"][info["visible"]], boxes[info["visible"]])
    assert got.frame_path(0, 0).name == "00000001.jpg" and got.frame_path(0, 0).is_file()
    test = vd.GOT10k(synth["got10k"], "test")
    seqs = vd.test_sequences(test)
    assert len(seqs[0].frames) == 24 and seqs[0].gt is None         # only the first box is public
    las = vd.LaSOT(synth["lasot"], "train")
    assert las.names == ["bird-1", "cat-1"]                           # from training_set.txt
    assert vd.LaSOT(synth["lasot"], "test").names == ["bird-2", "cat-2"]
    info = las.sequence_info(0)
    _, boxes, fraction, _ = vd.synthetic_sequence(("lasot", 0, "bird-1"), 24, (160, 120))
    assert np.array_equal(info["visible"], fraction > 0)
    assert np.array_equal(info["boxes"][fraction > 0], boxes[fraction > 0])
    assert las.frame_path(0, 9).as_posix().endswith("bird/bird-1/img/00000010.jpg")
    assert len(vd.LaSOT(synth["lasot"], "all")) == 4


def _plain(rgb):
    """A flat-coloured texture (one zero-amplitude sinusoid)."""
    return data.Texture(np.array(rgb, dtype=np.float64), np.zeros((1, 2)), np.zeros(1), np.zeros((1, 3)))


def test_synthetic_labels_of_a_known_occlusion_and_exit(tmp_path):
    """A 13x13 square (rect, radii 6) at x = 20 + 12 t, y = 32 behind a static rect at x 34..54
    taller than the 96x64 frame (radii 10, 80: 1344 of its 3200 px in view, 0.42 < 0.5, so the
    square is the only target candidate): frame 0 all visible (169 px of area 144: cover 8),
    frames 1 and 3 with 5 of 13 columns covered (104 / 144 -> cover ceil(5.8) = 6), frame 2 all
    covered (full occlusion, cover 0, in view), frame 6 with 10 columns in the frame
    (130 / 144 -> cover 8), frames 7-9 out of view (x - 6 > 95). Defect 15: any length works."""
    target = data.Sprite("rect", (6.0, 6.0), _plain((220, 40, 40)), centre=(20.0, 32.0), velocity=(12.0, 0.0))
    occluder = data.Sprite("rect", (10.0, 80.0), _plain((40, 40, 220)), centre=(44.0, 32.0))
    out = vd.write_synthetic(tmp_path, T=10, size=(96, 64), n_train=1, n_val=0, n_test=0,
                             sprites=[target, occluder])
    seq = out["got10k"] / "train" / "GOT-10k_Train_000001"
    assert (seq / "cover.label").read_text().split() == "8 6 0 6 8 8 8 0 0 0".split()
    assert (seq / "absence.label").read_text().split() == "0 0 0 0 0 0 0 1 1 1".split()
    info = vd.GOT10k(out["got10k"], "train").sequence_info(0)
    assert np.flatnonzero(~info["visible"]).tolist() == [2, 7, 8, 9]
    assert info["boxes"][[0, 1, 2, 3, 6, 9]].tolist() == [[14, 26, 13, 13], [26, 26, 8, 13], [26, 26, 8, 13],
                                                          [55, 26, 8, 13], [86, 26, 10, 13], [86, 26, 10, 13]]
    las = out["lasot"] / "bird" / "bird-1"
    assert (las / "full_occlusion.txt").read_text().strip() == "0,0,1,0,0,0,0,0,0,0"
    assert (las / "out_of_view.txt").read_text().strip() == "0,0,0,0,0,0,0,1,1,1"
    assert (las / "groundtruth.txt").read_text().splitlines()[2] == "0,0,0,0"
    for T in (1, 5, 15):                              # the old writer crashed for T <= 15
        short = vd.write_synthetic(tmp_path / f"t{T}", T=T, n_train=1, n_val=1, n_test=1)
        assert len(vd.GOT10k(short["got10k"], "val").sequence_info(0)["boxes"]) == T
    with pytest.raises(ValueError, match="--frames must be >= 1"):
        vd.write_synthetic(tmp_path / "t0", T=0)


def test_synthetic_split_sizes_and_val_independent_of_train_size(tmp_path):
    small = vd.write_synthetic(tmp_path / "a", seed=0, n_train=2, n_val=1, n_test=1)
    big = vd.write_synthetic(tmp_path / "b", seed=0, n_train=3, n_val=1, n_test=1)
    assert len(vd.GOT10k(big["got10k"], "train")) == 3 and len(vd.GOT10k(big["got10k"], "val")) == 1
    for rel in ("val/GOT-10k_Val_000001/groundtruth.txt", "train/GOT-10k_Train_000002/groundtruth.txt"):
        assert (small["got10k"] / rel).read_text() == (big["got10k"] / rel).read_text()


def test_lasot_without_split_file_is_an_error(tmp_path):
    (tmp_path / "cat" / "cat-1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="testing_set.txt"):
        vd.LaSOT(tmp_path, "test")


def test_trackingnet_tnl2k_coco_layouts(tmp_path):
    tn = tmp_path / "trackingnet"
    (tn / "TRAIN_0" / "anno").mkdir(parents=True)
    (tn / "TRAIN_0" / "anno" / "vid_a.txt").write_text("1,2,3,4\n0,0,0,0\n5,6,7,8\n")
    frames = tn / "TRAIN_0" / "frames" / "vid_a"
    frames.mkdir(parents=True)
    for i in (0, 1, 2, 10):                                   # numeric, not lexicographic order
        Image.new("RGB", (8, 8)).save(frames / f"{i}.jpg")
    ds = vd.TrackingNet(tn, ("TRAIN_0",))
    assert ds.names == ["vid_a"] and ds.sequence_info(0)["visible"].tolist() == [True, False, True]
    assert [p.name for p in ds.frame_paths(0)] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg"]
    assert ds.frame_path(0, 2).name == "2.jpg"

    tnl = tmp_path / "tnl2k" / "seqA"
    (tnl / "imgs").mkdir(parents=True)
    (tnl / "groundtruth.txt").write_text("1,2,3,4\n1,2,3,4\n")
    for i in (1, 2):
        Image.new("RGB", (8, 8)).save(tnl / "imgs" / f"{i:05d}.png")
    seqs = vd.test_sequences(vd.TNL2K(tmp_path / "tnl2k"))
    assert seqs[0].name == "seqA" and len(seqs[0].frames) == 2 and seqs[0].init_box == [1, 2, 3, 4]

    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train2017").mkdir()
    (coco / "annotations" / "instances_train2017.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "000007.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                        {"image_id": 7, "bbox": [0, 0, 9, 9], "iscrowd": 1},
                        {"image_id": 7, "bbox": [2, 2, 2, 2], "iscrowd": 0}]}))
    ds = vd.COCO17(coco)
    assert len(ds) == 2 and not ds.is_video                   # the crowd annotation is skipped
    assert ds.sequence_info(1)["boxes"].tolist() == [[2, 2, 2, 2]]
    assert ds.frame_path(0, 0) == coco / "train2017" / "000007.jpg"


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------

def test_causal_pair_rule_and_gap_increase():
    # visible 0 and 300 of T = 301: the template is drawn from [0, T-1) = {0}; the search window
    # [1, 0 + 200 + gap_inc) reaches 300 only after gap_inc grew to 105 (21 retries of +5)
    visible = np.zeros(301, bool)
    visible[[0, 300]] = True
    rng = np.random.default_rng(0)
    assert {vd.sample_causal_pair(visible, 200, rng) for _ in range(20)} == {(0, 300)}
    # a failed search redraws the template too: from 5 nothing is in [6, 205), from 0 frame 5 is,
    # so (0, 5) is drawn almost surely before gap_inc could reach 300 from 5
    visible[5] = True
    pairs = [vd.sample_causal_pair(visible, 200, rng) for _ in range(50)]
    assert set(pairs) == {(0, 5)}
    # search strictly after the template, both visible
    visible = np.random.default_rng(1).random(100) < 0.3
    for _ in range(50):
        t, s = vd.sample_causal_pair(visible, 10, rng)
        assert visible[t] and visible[s] and t < s and t < 99


class _FakeSeqs:
    """A video dataset without files: sequence i has lengths[i] frames, n_visible[i] visible."""
    is_video, name = True, "fake"

    def __init__(self, lengths, n_visible):
        self.lengths, self.n_visible = lengths, n_visible

    def __len__(self):
        return len(self.lengths)

    def sequence_info(self, i):
        vis = np.zeros(self.lengths[i], bool)
        vis[:self.n_visible[i]] = True
        return {"boxes": np.tile([1.0, 1, 4, 4], (self.lengths[i], 1)), "visible": vis}


def test_sequence_rule_more_than_4_visible_and_20_frames():
    # only sequence 3 qualifies: 0 has 19 frames, 1 has 4 visible, 2 has 5 visible but 19 frames
    ds = _FakeSeqs([19, 30, 19, 20], [19, 4, 5, 5])
    pairs = vd.TrackingPairs([ds], [1], 10)
    rng = np.random.default_rng(0)
    assert {pairs._pick_sequence(ds, rng)[0] for _ in range(30)} == {3}


class _ImageSeqs:
    """An image dataset over given files (one frame each)."""
    is_video, name = False, "images"

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def sequence_info(self, i):
        return {"boxes": np.array([[20.0, 20, 16, 16]]), "visible": np.array([True])}

    def frame_path(self, i, f):
        return self.files[i]


def test_data_errors_are_counted_with_the_file_never_silent(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.fromarray(data.World(0, (64, 64), 1).frame(0)).save(good)
    bad.write_text("not a jpeg")
    pairs = vd.TrackingPairs([_ImageSeqs([good, bad])], [1], 8, sizes=(64, 128))
    items = [pairs[i] for i in range(8)]
    errors = [e for it in items for e in it["errors"]]
    assert errors and all(str(bad) in e for e in errors)
    assert vd.collate_pairs(items)["errors"] == errors
    assert items[0]["template"].shape == (3, 64, 64) and items[0]["search"].shape == (3, 128, 128)
    with pytest.raises(RuntimeError, match="bad.jpg"):
        vd.TrackingPairs([_ImageSeqs([bad])], [1], 1, max_tries=3)[0]


def test_joint_grayscale_and_flip_share_one_roll_for_template_and_search(tmp_path):
    """ToGrayscale(0.05) and RandomHorizontalFlip(0.5) act on both full frames with one roll
    (new_roll=False): with no jitter, equal crop geometry and no per-crop transforms, the
    template and search crops of an image dataset are always identical; both flip states occur.
    The frame flip maps x to (W - 1) - (x + w) (pytracking's pixel convention)."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:40, 14:30] = (200, 30, 30)                      # asymmetric: left part red, right green
    img[10:40, 30:46] = (30, 200, 30)
    path = tmp_path / "im.png"
    Image.fromarray(img).save(path)
    pairs = vd.TrackingPairs([_ImageSeqs([path])], [1], 24, sizes=(32, 32), factors=(2.0, 2.0),
                             center_jitter=(0.0, 0.0), scale_jitter=(0.0, 0.0), train=False)
    items = [pairs[i] for i in range(24)]
    assert all(torch.equal(it["template"], it["search"]) for it in items)
    assert len({it["template"][0, 16, 10].item() > it["template"][0, 16, 22].item() for it in items}) == 2
    flipped, box = vd.hflip_frame(img, np.array([14.0, 10, 32, 30]))
    assert box.tolist() == [63 - 46, 10, 32, 30] and np.array_equal(flipped[:, 0], img[:, 63])


def test_pairs_are_a_function_of_seed_epoch_index(synth):
    ds = vd.TrackingPairs([vd.GOT10k(synth["got10k"], "train")], [1], 4, sizes=(64, 128))
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a["search"], b["search"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["search"], a["search"])
    box = a["search_box"]
    assert a["template_box"].shape == (4,) and (box[2:] > 0).all()


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def test_tiny_training_loss_falls_on_a_repeated_batch(synth):
    torch.manual_seed(0)
    ds = vd.TrackingPairs([vd.GOT10k(synth["got10k"], "train")], [1], 8, sizes=(64, 128))
    batch = vd.collate_pairs([ds[i] for i in range(8)])
    model = vot.build_model("tiny")
    opt = torch.optim.AdamW(vot.param_groups(model, 1e-3, 0.1, 1e-4, verbose=False), weight_decay=1e-4)
    # keep rate 0.7: the gradient also flows through the candidate-elimination gathers
    losses = [vot.train_step(model, batch, opt, 0.7, 0.1, "cpu")["loss"] for _ in range(12)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_loss_weights_of_the_config_reach_the_loss(synth):
    """The config's (focal, GIoU, L1) weights are the ones run_epoch uses: with (0, 0, 1) the
    logged loss is the L1 term alone (they were ignored, the default 1/2/5 always used)."""
    ds = vd.TrackingPairs([vd.GOT10k(synth["got10k"], "train")], [1], 2, sizes=(64, 128))
    batch = vd.collate_pairs([ds[0], ds[1]])
    torch.manual_seed(0)
    cfg = dict(vot.COMMON, focal_weight=0.0, giou_weight=0.0, l1_weight=1.0)
    stats = vot.run_epoch(vot.build_model("tiny"), [batch], None, 1.0, cfg, "cpu", False, 0, 1)
    assert stats["loss"] == pytest.approx(stats["l1"], rel=1e-6) and stats["location"] > 0


def test_data_path_items(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "list.txt").write_text("a\n")
    assert vot.resolve_data_paths([str(tmp_path)], {"got10k"}) == {"got10k": tmp_path}    # GOT-10k root
    full = vot.resolve_data_paths(["/d", "coco=/c"], {"got10k", "lasot", "coco", "trackingnet"})
    assert full == {"got10k": Path("/d/got10k"), "lasot": Path("/d/lasot"), "coco": Path("/c"),
                    "trackingnet": Path("/d/trackingnet")}
    with pytest.raises(ValueError, match="lasot"):
        vot.resolve_data_paths(["got10k=/g"], {"got10k", "lasot"})


def test_train_command_writes_run_folder_and_resumes(synth, tmp_path):
    ckpt = tmp_path / "dropmae_tiny.pth"
    torch.save({"model": dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()}, ckpt)
    out = tmp_path / "run"
    common = ["train", "--config", "got10k", "--model", "tiny", "--data-path", str(synth["got10k"]),
              "--output", str(out), "--samples-per-epoch", "8", "--batch-size", "4", "--workers", "0",
              "--val-every", "1", "--val-samples", "4", "--print-freq", "0"]
    vot.main(common + ["--epochs", "1", "--pretrained", str(ckpt)])
    assert (out / "checkpoint-0001.pth").is_file() and (out / "config.json").is_file()
    vot.main(common + ["--epochs", "2", "--resume", "auto"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and r["train_data_errors"] == 0 for r in log)
    # tiny recipe lr 1e-3; milestones scaled to 1 epoch: lr_drop round(0.8) = 1, ce_start
    # round(0.2) = 0, ce_warm round(0.5) = 0 -> keep 0.7 at once; at 2 epochs: 2, 0, 1 -> 0.7
    assert [(r["lr"], r["keep_rate"]) for r in log] == [(1e-3, 0.7), (1e-3, 0.7)] and "val_iou" in log[1]
    ck = torch.load(out / "checkpoint-0002.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["track"]["search_size"] == 128
    model = vot.load_tracker_checkpoint(out / "checkpoint-0002.pth")
    assert model.track.template_size == 64


def test_first_track_step_equals_the_unjittered_training_sample(synth, tiny_model):
    """Train/test parity: the tracker's step on frame 1 = the model on the training pipeline's
    un-jittered crops (template of frame 0 around box 0; search of frame 1 around box 0, the
    previous box), decoded with the Hann window and mapped back by hand; and the training label
    of that search crop is frame 1's box in the crop (same preset sizes and factors)."""
    ds = vd.GOT10k(synth["got10k"], "train")
    boxes = ds.sequence_info(0)["boxes"]
    f0, f1 = vd.read_image(ds.frame_path(0, 0)), vd.read_image(ds.frame_path(0, 1))
    t = tiny_model.track
    rng = np.random.default_rng(0)
    z, _ = vd.make_crop(f0, boxes[0], t.template_factor, t.template_size, 0.0, 0.0, rng, train=False)
    x, _ = vd.make_crop(f1, boxes[0], t.search_factor, t.search_size, 0.0, 0.0, rng, train=False)
    with torch.no_grad():
        out = tiny_model(z[None], x[None])
    g = out["score_map"].shape[-1]
    box = vot.decode_boxes(vot.hann2d(g) * out["score_map"], out["size_map"], out["offset_map"])[0]
    _, _, side = vd.crop_window(boxes[0], t.search_factor)                 # ceil(5 * sqrt(w * h))
    rf = t.search_size / side
    want = vd.clip_box(vd.map_box_back((box * t.search_size / rf).tolist(), boxes[0], rf, t.search_size), 120, 160)
    tracker = vot.Tracker(tiny_model)
    tracker.initialize(f0, boxes[0].tolist())
    torch.testing.assert_close(tracker.template, z[None])
    np.testing.assert_allclose(tracker.track(f1), want, rtol=0, atol=1e-4)
    # the label of the same crop: box 1 relative to box 0's centre, at scale rf, / 128
    label = vd.box_in_crop_norm(boxes[1], boxes[0], rf, t.search_size)
    centre = 127 / 2 + (boxes[1][:2] + boxes[1][2:] / 2 - boxes[0][:2] - boxes[0][2:] / 2) * rf
    np.testing.assert_allclose(label.numpy(), np.r_[centre - boxes[1][2:] * rf / 2, boxes[1][2:] * rf] / 128,
                               rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# inference: official formats, resume, scoring
# ----------------------------------------------------------------------------------------------

def test_result_files_byte_for_byte(tmp_path):
    boxes = np.array([[10.7, -3.2, 20.0, 5.9], [0.4, 1.6, 2.5, 3.5]])
    times = np.array([0.5, 0.0123456789])
    vot.write_sequence_results("got10k", tmp_path / "g", "S", boxes, times)
    assert (tmp_path / "g" / "S" / "S_001.txt").read_bytes() == b"10,-3,20,5\n0,1,2,3\n"
    assert (tmp_path / "g" / "S" / "S_time.txt").read_bytes() == b"0.500000\n0.012346\n"
    vot.write_sequence_results("ope", tmp_path / "l", "cat-1", boxes, times)
    assert (tmp_path / "l" / "cat-1.txt").read_bytes() == b"10\t-3\t20\t5\n0\t1\t2\t3\n"
    vot.write_sequence_results("trackingnet", tmp_path / "t", "vid", boxes, times)
    assert (tmp_path / "t" / "vid.txt").read_bytes() == b"10,-3,20,5\n0,1,2,3\n"
    with zipfile.ZipFile(vot.zip_results("got10k", tmp_path / "g", tmp_path / "g.zip")) as z:
        assert sorted(z.namelist()) == ["S/S_001.txt", "S/S_time.txt"]
    with zipfile.ZipFile(vot.zip_results("trackingnet", tmp_path / "t", tmp_path / "t.zip")) as z:
        assert z.namelist() == ["vid.txt"]
        assert z.read("vid.txt") == b"10,-3,20,5\n0,1,2,3\n"


class OracleTracker:
    """Returns the annotation: frame t's box for the t-th call."""

    def __init__(self, gt):
        self.gt, self.t = gt, 0

    def initialize(self, image, box):
        self.t = 0

    def track(self, image):
        self.t += 1
        return self.gt[self.t].tolist()


def test_oracle_scores_got10k_ao_one_and_the_predicted_ope_auc(synth, tmp_path):
    from eval import sot
    for seq in vd.test_sequences(vd.GOT10k(synth["got10k"], "val")):
        vot.write_sequence_results("got10k", tmp_path / "got", seq.name, *vot.track_sequence(OracleTracker(seq.gt), seq))
    res = sot.score_got10k(tmp_path / "got", synth["got10k"], "val")
    assert res["AO"] == pytest.approx(100.0, abs=1e-9) and res["SR0.75"] == 100.0
    for seq in vd.test_sequences(vd.LaSOT(synth["lasot"], "test")):
        vot.write_sequence_results("ope", tmp_path / "las", seq.name, *vot.track_sequence(OracleTracker(seq.gt), seq))
    res = sot.score_ope(tmp_path / "las", synth["lasot"], "lasot")
    # a test sequence of T = 24 frames, V of them visible: success(t) = V/T (float32) for the 20
    # thresholds t < 1 and 0 at t = 1 (strict >), so AUC = 100 * 20/21 * mean(V/T); below 100
    ratios = [np.float32(vd.LaSOT(synth["lasot"], "test").sequence_info(i)["visible"].sum()) / np.float32(24)
              for i in range(2)]
    want = 100 * 20 * float(np.mean(ratios)) / 21
    assert res["AUC"] == pytest.approx(want, rel=1e-6) and res["AUC"] < 100


def test_inference_writes_official_files_and_resumes(synth, tiny_model, tmp_path):
    seqs = vd.test_sequences(vd.LaSOT(synth["lasot"], "test"))
    out = tmp_path / "lasot"
    stats = vot.run_dataset(seqs, "ope", out, (tiny_model, None, "cpu", 1, False, False), workers=1)
    assert set(stats) == {"bird-2", "cat-2"} and all(s["frames"] == 24 for s in stats.values())
    for s in seqs:
        lines = (out / f"{s.name}.txt").read_text().splitlines()
        assert len(lines) == 24 and lines[0] == "\t".join(str(int(v)) for v in s.init_box)
        assert all(re.fullmatch(r"-?\d+\t-?\d+\t\d+\t\d+", ln) for ln in lines)
        boxes = np.array([[int(v) for v in ln.split("\t")] for ln in lines[1:]])
        assert (boxes[:, 2:] >= 10).all() and (boxes[:, 0] <= 160 - 10).all()     # clip_box margin
        assert all(re.fullmatch(r"\d+\.\d{6}", ln) for ln in (out / f"{s.name}_time.txt").read_text().splitlines())
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    vot.run_dataset(seqs, "ope", out, (tiny_model, None, "cpu", 1, False, False), workers=1)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before      # finished: skipped


def test_test_command_got10k_val_two_workers_zip_and_score(synth, tiny_model, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict(), "track": vot.dataclasses.asdict(tiny_model.track)}, ckpt)
    summary = vot.main(["test", "--dataset", "got10k_val", "--data-path", str(synth["got10k"]), "--ckpt", str(ckpt),
                        "--output", str(tmp_path / "res"), "--workers", "2", "--device", "cpu"])
    names = ["GOT-10k_Val_000001", "GOT-10k_Val_000002"]
    with zipfile.ZipFile(tmp_path / "res" / "got10k_val.zip") as z:
        assert sorted(z.namelist()) == sorted(f"{n}/{n}_{s}.txt" for n in names for s in ("001", "time"))
    first = (tmp_path / "res" / "got10k_val" / names[0] / f"{names[0]}_001.txt").read_text().splitlines()
    assert len(first) == 24 and all(re.fullmatch(r"-?\d+,-?\d+,\d+,\d+", ln) for ln in first)
    assert summary["frames"] == 48 and summary["fps_overall"] > 0
    assert 0 <= summary["scores"]["AO"] <= 100
    out = capsys.readouterr().out
    assert "GOT-10k val: AO" in out and "[tiny model: tiny scale, not comparable with the paper]" in out


# ----------------------------------------------------------------------------------------------
# Bad checkpoints and stale results (issue 15, defects 1 and 2)
# ----------------------------------------------------------------------------------------------

def test_bad_checkpoint_with_two_workers_is_one_error_not_a_hang(synth, tmp_path, monkeypatch):
    """Defect 1: `test --workers 2` with a truncated checkpoint stops at once with the error
    naming the file (checked before the pool starts), and a worker whose setup fails ends the
    pool with that error instead of being respawned forever (in a subprocess with a timeout,
    so a regression fails instead of hanging)."""
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started before the checkpoint was checked")
    monkeypatch.setattr(multiprocessing, "get_context", no_pool)
    with pytest.raises(SystemExit, match=f"error: {bad}: truncated checkpoint"):
        vot.main(["test", "--dataset", "got10k_val", "--data-path", str(synth["got10k"]), "--ckpt",
                  str(bad), "--output", str(tmp_path / "res"), "--workers", "2", "--device", "cpu"])
    monkeypatch.undo()
    pool = ("import sys; from tasks import vot, vot_data as vd\n"
            f"seqs = vd.test_sequences(vd.GOT10k({str(synth['got10k'])!r}, 'val'))\n"
            f"vot.run_dataset(seqs, 'got10k', {str(tmp_path / 'pool')!r}, "
            f"({str(bad)!r}, None, 'cpu', 1, False, False), workers=2)\n")
    run = subprocess.run([sys.executable, "-c", pool], cwd=REPO, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0 and f"{bad}: truncated checkpoint" in run.stderr


def test_results_are_keyed_by_the_checkpoint_that_made_them(synth, tiny_model, tmp_path, capsys):
    """Defect 2: a second `test` with another checkpoint into the same --output does not reuse
    the first one's boxes: it says so, tracks again and records the new checkpoint; the same
    checkpoint again reuses them (resume)."""
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = vot.build_model("tiny")
        path = tmp_path / f"ckpt{seed}.pth"
        torch.save({"model": model.state_dict(), "track": vot.dataclasses.asdict(model.track)}, path)
        ckpts.append(path)
    argv = ["test", "--dataset", "got10k_val", "--data-path", str(synth["got10k"]), "--output",
            str(tmp_path / "res"), "--workers", "1", "--device", "cpu", "--ckpt"]
    first = vot.main(argv + [str(ckpts[0])])
    box_file = tmp_path / "res" / "got10k_val" / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt"
    boxes0 = box_file.read_text()
    capsys.readouterr()
    second = vot.main(argv + [str(ckpts[1])])
    err = capsys.readouterr().err
    assert "were tracked with checkpoint" in err and f"not with {ckpts[1].resolve()}" in err
    assert second["producer"]["ckpt_sha256"] == vot.file_sha256(ckpts[1]) != first["producer"]["ckpt_sha256"]
    saved = json.loads((tmp_path / "res" / "got10k_val_summary.json").read_text())
    assert saved["producer"]["ckpt"] == str(ckpts[1].resolve())
    assert box_file.read_text() != boxes0                       # the boxes of checkpoint 1
    before = box_file.stat().st_mtime_ns
    vot.main(argv + [str(ckpts[1])])
    assert "2 of 2 sequences already done" in capsys.readouterr().out
    assert box_file.stat().st_mtime_ns == before
