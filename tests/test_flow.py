"""Tests for tasks/flow.py (DropMAE-Flow). Rules: specs/flow.md, metrics-dense.md section 3.

Expected numbers are worked out by hand in the comments. Dataset layouts come from
`flow.write_synthetic` (the synthetic world's exact flow) under a temporary folder; the format
tests write random arrays with our writers and read them back.
"""
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import dropmae
from eval import flow as eval_flow
from tasks import flow


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return flow.build_model("tiny").eval()


# ----------------------------------------------------------------------------------------------
# model and loss
# ----------------------------------------------------------------------------------------------

def test_model_output_shape_and_crop_assert(tiny):
    x = torch.randn(2, 3, 64, 96)
    out = tiny(x, x)
    assert out.shape == (2, 3, 64, 96) and out.abs().max() > 0
    zero = flow.build_model("tiny", zero_init=True)
    assert torch.all(zero(x, x) == 0)                # zero-init output conv: flow 0, c 0
    with pytest.raises(AssertionError, match="multiples of 32"):
        flow.build_model("tiny", crop=(64, 80))
    with pytest.raises(AssertionError, match="multiples of 32"):
        tiny(torch.randn(1, 3, 48, 64), torch.randn(1, 3, 48, 64))


def test_model_uses_both_frames_and_frame_vectors():
    torch.manual_seed(1)
    m = flow.build_model("tiny")
    torch.nn.init.normal_(m.head.out.weight, std=0.1)  # let the head see its input
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out_ab, out_aa = m(a, b), m(a, a)
        m.temporal_pos_embed_z.add_(1.0)             # frame 2 carries `_z`
        out_ab_z = m(a, b)
    assert not torch.allclose(out_ab, out_aa)
    assert not torch.allclose(out_ab, out_ab_z)


def test_local_correlation_hand_values():
    # f2 = f1 moved one token right: f2(p + (0, 1)) = f1(p), so channel (dy, dx) = (0, +1), index
    # 1 * 3 + 2 = 5 of radius 1, is the cosine 1 of a token with itself (layer-normed, mean over
    # channels) wherever p + (0, 1) is on the grid, and 0 in the last column (zero padding)
    torch.manual_seed(0)
    f1 = torch.randn(2, 8, 3, 4)
    f2 = torch.zeros_like(f1)
    f2[..., 1:] = f1[..., :-1]
    c = flow.local_correlation(f1, f2, radius=1)
    assert c.shape == (2, 9, 3, 4)
    assert torch.allclose(c[:, 5, :, :3], torch.ones(2, 3, 3), atol=5e-3)
    assert torch.all(c[:, 5, :, 3] == 0)
    # groups: each group of 4 channels is normalised on its own; a group-wise sign flip of f2
    # gives -1 in that group's channel and +1 in the other's
    f2g = f2.clone()
    f2g[:, 4:] *= -1
    g = flow.local_correlation(f1, f2g, radius=1, groups=2)
    assert g.shape == (2, 18, 3, 4)
    assert torch.allclose(g[:, 5, :, :3], torch.ones(2, 3, 3), atol=5e-3)
    assert torch.allclose(g[:, 9 + 5, :, :3], -torch.ones(2, 3, 3), atol=5e-3)
    # by hand at one token, radius 0: mean of the product of the two layer-normed vectors
    a, b = torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0.0, 1.0, 0.0, 3.0])
    ln = lambda t: (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-5)
    got = flow.local_correlation(a.view(1, 4, 1, 1), b.view(1, 4, 1, 1), radius=0)
    assert got.item() == pytest.approx((ln(a) * ln(b)).mean().item(), rel=1e-5)


def test_model_with_correlation_option():
    # corr_radius r adds groups * (2r + 1)^2 channels to the stride-16 DPT input; the output
    # depends on frame 2 through them even when no frame-1 token attends to frame 2
    torch.manual_seed(0)
    m = flow.build_model("tiny", corr_radius=1, corr_groups=2)
    assert m.head.act_postprocess[2][0].in_channels == 96 + 2 * 9
    torch.nn.init.normal_(m.head.out.weight, std=0.1)
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = m(a, b)
        assert out.shape == (1, 3, 64, 64)
        for blk in m.blocks:                         # no attention path: frame 2 reaches the
            blk.attn.proj.weight.zero_()             # frame-1 maps only through the correlation
            blk.attn.proj.bias.zero_()
        assert not torch.allclose(m(a, b), m(a, a))
    with pytest.raises(AssertionError, match="corr_groups"):
        flow.build_model("tiny", corr_radius=1, corr_groups=5)


def test_soft_argmax_matching_flow_hand_values():
    # radius 1, patch 16, temperature 0.1: channel index = (dy + 1) * 3 + (dx + 1)
    c = torch.zeros(1, 9, 2, 2)
    c[0, 5, 0, 0] = 1.0                              # (dy, dx) = (0, +1) at token (0, 0)
    c[0, 1, 1, 1] = 1.0                              # (dy, dx) = (-1, 0) at token (1, 1)
    m = flow.soft_argmax(c, radius=1, patch=16)
    # the one 1 gets w = e^10 / (e^10 + 8), each 0 (1 - w) / 8; at (0, 0) the seven other
    # displacements' dx sum to -1 and their dy to 0, at (1, 1) their dy sum to +1, dx to 0
    w = math.exp(10) / (math.exp(10) + 8)
    assert m[0, :, 0, 0].tolist() == pytest.approx([16 * (w - (1 - w) / 8), 0.0], abs=1e-4)
    assert m[0, :, 1, 1].tolist() == pytest.approx([0.0, 16 * (-w + (1 - w) / 8)], abs=1e-4)
    assert m[0, :, 0, 1].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)   # uniform -> 0
    # groups are averaged before the softmax
    g = flow.soft_argmax(torch.cat([c, torch.zeros_like(c)], 1), radius=1, patch=16)
    w2 = math.exp(5) / (math.exp(5) + 8)
    assert g[0, 0, 0, 0].item() == pytest.approx(16 * (w2 - (1 - w2) / 8), abs=1e-4)


def test_matching_flow_added_to_the_head():
    # zero-init head: (u, v) is the soft-argmax flow of the last hook's tokens, upsampled; c = 0
    torch.manual_seed(0)
    m = flow.build_model("tiny", zero_init=True, corr_radius=1, corr_match=True).eval()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    grabbed = {}
    m.norm.register_forward_hook(lambda mod, i, o: grabbed.__setitem__("t", o))
    with torch.no_grad():
        out = m(a, b)
    t = grabbed["t"]                                  # (1, 32, 96): 16 frame-1 then 16 frame-2
    f1, f2 = (x.transpose(1, 2).reshape(1, 96, 4, 4) for x in (t[:, :16], t[:, 16:]))
    match = flow.soft_argmax(flow.local_correlation(f1, f2, 1), 1, 16)
    want = torch.nn.functional.interpolate(match, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, :2], want, atol=1e-5) and out[:, :2].abs().max() > 0.1
    assert torch.all(out[:, 2] == 0)
    with pytest.raises(AssertionError, match="corr_match needs"):
        flow.build_model("tiny", corr_match=True)


def test_laplacian_loss_hand_values():
    # one valid pixel, u-u* = 1, v-v* = -2: c = 0 -> s = 3.75 * 0.5 + 0.25 = 2.125,
    # loss = 3 / 2.125 + log 2.125; c = +inf -> s = 4: 3/4 + log 4; c = -inf -> s = 0.25: 12 + log .25
    gt = torch.zeros(1, 2, 1, 2)
    gt[0, :, 0, 1] = float("nan")                    # non-finite GT: ignored
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    for c, s in ((0.0, 2.125), (float("inf"), 4.0), (float("-inf"), 0.25)):
        pred = torch.tensor([1.0, -2.0, c]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
        assert flow.laplacian_loss(pred, gt, valid).item() == pytest.approx(3 / s + math.log(s), rel=1e-6)
    # |f*| >= 10000 and valid = False are ignored too; none valid -> 0
    gt = torch.tensor([[[[0.0, 20000.0]], [[0.0, 0.0]]]])
    pred = torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 1, 2)
    assert flow.laplacian_loss(pred, gt, valid).item() == pytest.approx(3 / 2.125 + math.log(2.125))
    assert flow.laplacian_loss(pred, gt, torch.zeros_like(valid)).item() == 0.0


def _translation_pair(rng, h=64, w=64, dx=3, dy=-2):
    """Two crops of one random texture: pixel p of image 1 shows the texture point that sits at
    p - (dx, dy) in image 2, so the flow is (-dx, -dy) everywhere (a pure translation)."""
    tex = (rng.random((h + 16, w + 16, 3)) * 255).astype(np.uint8)
    y, x = 8, 8
    return tex[y:y + h, x:x + w], tex[y + dy:y + dy + h, x + dx:x + dx + w], np.array([-dx, -dy], np.float32)


def test_loss_finite_and_falling_on_repeated_batch():
    torch.manual_seed(0)
    m = flow.build_model("tiny", zero_init=True)
    rng = np.random.default_rng(0)
    a, b, f = _translation_pair(rng)
    img1, img2 = flow.to_tensor(a)[None].repeat(2, 1, 1, 1), flow.to_tensor(b)[None].repeat(2, 1, 1, 1)
    gt = torch.from_numpy(f).view(1, 2, 1, 1).expand(2, 2, 64, 64).contiguous()
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = flow.laplacian_loss(m(img1, img2), gt, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def _backbone_states():
    torch.manual_seed(0)
    mae = dropmae.DropMAE(dropmae.get_config("tiny"))
    dm = mae.state_dict()
    enc = {k: v for k, v in dm.items() if not k.startswith("decoder_") and k != "mask_token"}
    image_mae = {k: v for k, v in enc.items() if not k.startswith("temporal_pos_embed")}
    image_mae["cls_token"] = torch.zeros(1, 1, 96)
    return dm, image_mae


def test_checkpoint_loading_key_lists(tmp_path):
    dm, image_mae = _backbone_states()
    model = flow.build_model("tiny")
    heads = flow.head_keys(model)
    assert heads and all(k.startswith("head.") for k in heads)
    decoder = sorted(k for k in dm if k.startswith("decoder_") or k == "mask_token")
    # DropMAE and TwinMAE (official layout: {"model": full DropMAE state})
    for name in ("dropmae", "twinmae"):
        torch.save({"model": dm}, tmp_path / f"{name}.pth")
        rep = flow.load_backbone(tmp_path / f"{name}.pth", model, verbose=False)
        assert rep["kind"] == "dropmae" and rep["missing"] == heads and rep["dropped"] == decoder
        assert torch.equal(model.temporal_pos_embed_z, dm["temporal_pos_embed_z"])
    # our pre-training checkpoint (has a config entry)
    torch.save({"model": dm, "config": {"model": "tiny"}}, tmp_path / "ours.pth")
    rep = flow.load_backbone(tmp_path / "ours.pth", model, verbose=False)
    assert rep["kind"] == "ours" and rep["missing"] == heads
    # MAE ImageNet: cls_token dropped, frame vectors kept at their init
    fresh = flow.build_model("tiny")
    before = fresh.temporal_pos_embed_x.detach().clone()
    torch.save({"model": image_mae}, tmp_path / "mae.pth")
    rep = flow.load_backbone(tmp_path / "mae.pth", fresh, verbose=False)
    assert rep["kind"] == "mae" and rep["dropped"] == ["cls_token"]
    assert rep["missing"] == sorted(heads + ["temporal_pos_embed_x", "temporal_pos_embed_z"])
    assert torch.equal(fresh.temporal_pos_embed_x, before)
    assert torch.equal(fresh.blocks[0].attn.qkv.weight, image_mae["blocks.0.attn.qkv.weight"])
    # anything else differing raises, naming the file
    bad = dict(dm)
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="bad.pth"):
        flow.load_backbone(tmp_path / "bad.pth", model, verbose=False)


# ----------------------------------------------------------------------------------------------
# formats
# ----------------------------------------------------------------------------------------------

def test_pfm_round_trip_both_endians_and_bottom_up(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 7, 3)).astype(np.float32)
    for le in (True, False):
        flow.write_pfm(tmp_path / "a.pfm", arr, little_endian=le)
        assert np.array_equal(flow.read_pfm(tmp_path / "a.pfm"), arr)
    # hand-built file: 'Pf', 2x2, big-endian (scale +1), rows stored bottom first
    body = np.array([[3, 4], [1, 2]], ">f4").tobytes()     # bottom row (3, 4) first
    (tmp_path / "h.pfm").write_bytes(b"Pf\n2 2\n1.0\n" + body)
    assert flow.read_pfm(tmp_path / "h.pfm").tolist() == [[1, 2], [3, 4]]
    # Things flow PFM: (u, v, 0), first two channels returned
    f = rng.normal(size=(4, 6, 2)).astype(np.float32)
    flow.write_things_pfm(tmp_path / "t.pfm", f, little_endian=False)
    g, valid = flow.read_gt(tmp_path / "t.pfm", "pfm")
    assert np.array_equal(g, f) and valid.all()


def test_malformed_files_name_the_file(tmp_path):
    f = np.ones((4, 5, 2), np.float32)
    cases = {}
    (tmp_path / "magic.pfm").write_bytes(b"P6\n5 4\n-1.0\n" + bytes(4 * 5 * 3 * 4))
    cases["magic.pfm"] = ("pfm", "bad PFM magic")
    flow.write_things_pfm(tmp_path / "trunc.pfm", f)
    (tmp_path / "trunc.pfm").write_bytes((tmp_path / "trunc.pfm").read_bytes()[:-4])
    cases["trunc.pfm"] = ("pfm", "expected 240")
    (tmp_path / "head.pfm").write_bytes(b"PF\n5 x\n")
    cases["head.pfm"] = ("pfm", "truncated PFM header")
    eval_flow.write_flo(tmp_path / "magic.flo", f)
    data = bytearray((tmp_path / "magic.flo").read_bytes())
    data[:4] = np.array([1.0], "<f4").tobytes()
    (tmp_path / "magic.flo").write_bytes(bytes(data))
    cases["magic.flo"] = ("flo", "bad .flo magic")
    eval_flow.write_flo(tmp_path / "size.flo", f)
    (tmp_path / "size.flo").write_bytes((tmp_path / "size.flo").read_bytes()[:-8])
    cases["size.flo"] = ("flo", "header says 5x4")
    nan = f.copy()
    nan[1, 2, 0] = np.nan
    eval_flow.write_flo(tmp_path / "nan.flo", nan)
    cases["nan.flo"] = ("flo", "1 non-finite")
    flow.write_things_pfm(tmp_path / "nan.pfm", nan)
    cases["nan.pfm"] = ("pfm", "1 non-finite")
    (tmp_path / "k.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    cases["k.png"] = ("kitti", "truncated PNG")
    for name, (fmt, msg) in cases.items():
        with pytest.raises(ValueError, match=msg) as err:
            flow.read_gt(tmp_path / name, fmt)
        assert name in str(err.value)
    # the Things subset's NaN files are masked instead, when allowed
    g, valid = flow.read_gt(tmp_path / "nan.flo", "flo", allow_nonfinite=True)
    assert valid.sum() == 19 and not valid[1, 2]
    with pytest.raises(ValueError, match="third channel"):
        arr = np.ones((2, 2, 3), np.float32)
        flow.write_pfm(tmp_path / "third.pfm", arr)
        flow.read_gt(tmp_path / "third.pfm", "pfm")


def test_kitti_png_round_trip_at_1_64(tmp_path):
    rng = np.random.default_rng(1)
    q = np.round(rng.uniform(-300, 300, (6, 9, 2)) * 64) / 64             # on the 1/64 grid
    valid = rng.random((6, 9)) < 0.4
    eval_flow.write_kitti_png(tmp_path / "k.png", q, valid)
    g, v = flow.read_gt(tmp_path / "k.png", "kitti")
    assert np.array_equal(g, q.astype(np.float32)) and np.array_equal(v, valid)
    # off-grid values come back at the nearest 1/64
    eval_flow.write_kitti_png(tmp_path / "k2.png", q + 0.004)
    assert np.abs(flow.read_gt(tmp_path / "k2.png", "kitti")[0] - q).max() < 1e-6


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------

def _only(**kw):
    base = dict(crop=(4, 6), scale=(0.0, 0.0), spatial_prob=0.0, stretch_prob=0.0, h_flip_prob=0.0,
                v_flip_prob=0.0, eraser_prob=0.0, colour=False)
    return flow.AugParams(**{**base, **kw})


def test_flips_negate_the_right_component():
    rng = np.random.default_rng(0)
    img = (rng.random((4, 6, 3)) * 255).astype(np.uint8)
    f = rng.normal(size=(4, 6, 2)).astype(np.float32)
    valid = np.ones((4, 6), bool)
    g = torch.Generator().manual_seed(0)
    a, _, fh, _ = flow.augment(img, img, f, valid, _only(h_flip_prob=1.0), g)
    assert np.array_equal(a, img[:, ::-1])
    assert np.array_equal(fh[..., 0], -f[:, ::-1, 0]) and np.array_equal(fh[..., 1], f[:, ::-1, 1])
    a, _, fv, _ = flow.augment(img, img, f, valid, _only(v_flip_prob=1.0), g)
    assert np.array_equal(a, img[::-1])
    assert np.array_equal(fv[..., 0], f[::-1, :, 0]) and np.array_equal(fv[..., 1], -f[::-1, :, 1])
    # KITTI stage: no flips at all
    _, _, fk, _ = flow.augment(img, img, f, valid, _only(h_flip_prob=1.0, v_flip_prob=1.0, flip=False), g)
    assert np.array_equal(fk, f)


def test_resize_never_makes_invalid_valid():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(8, 10, 2)).astype(np.float32)
    valid = rng.random((8, 10)) < 0.4
    # sparse: scatter; every output valid pixel holds a scaled input valid value
    out, ov = flow.resize_sparse_flow(np.where(valid[..., None], f, 1e6), valid, 1.5, 2.0, 16, 15)
    scaled = {tuple(v) for v in f[valid] * np.array([1.5, 2.0], np.float32)}
    assert ov.sum() > 0 and all(tuple(v) in scaled for v in out[ov])
    # dense: NaN (invalid) spreads, it never turns into a value
    dense = np.where(valid[..., None], f, np.nan)
    r = flow.resize_dense_flow(dense, 12, 20)
    assert np.isnan(r).any() and not np.isfinite(r).all()
    assert np.allclose(flow.resize_dense_flow(np.full((8, 10, 2), 1.0, np.float32), 16, 30)[..., 0], 3.0)


# ----------------------------------------------------------------------------------------------
# tiling
# ----------------------------------------------------------------------------------------------

def test_tile_counts_match_the_formula():
    # 436x1024 Sintel frame, 320x384 window: 5 x 18 = 90 tiles at 0.9, 3 x 7 = 21 at 0.7
    assert (len(flow.tile_offsets(436, 320, 0.9)), len(flow.tile_offsets(1024, 384, 0.9))) == (5, 18)
    assert (len(flow.tile_offsets(436, 320, 0.7)), len(flow.tile_offsets(1024, 384, 0.7))) == (3, 7)
    assert flow.tile_offsets(436, 320, 0.7) == [0, 58, 116]
    assert flow.tile_offsets(64, 64, 0.9) == [0]


def test_confidence_weight_values():
    # c = 0 -> exp(0) = 1; c -> -inf -> exp(10); c -> +inf -> exp(-10)
    w = flow.confidence_weight(torch.tensor([0.0, -1e9, 1e9]))
    assert torch.allclose(w, torch.tensor([1.0, math.exp(10), math.exp(-10)]))


def test_oracle_tiles_blend_to_exact_flow_at_seams():
    """Image 1's channels hold the pixel coordinates, so an oracle that reads them returns the
    exact GT of each tile wherever the tile is; random confidences per tile and pixel."""
    H, W, crop = 70, 150, (32, 64)
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.normal(scale=5, size=(2, H, W)).astype(np.float32))
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    img1 = torch.stack([xx, yy, torch.zeros_like(xx)]).float()
    gen = torch.Generator().manual_seed(0)
    calls = []

    def oracle(t1, t2):
        x, y = t1[:, 0].long(), t1[:, 1].long()                 # (n, h, w)
        calls.append(len(t1))
        f = gt[:, y, x].permute(1, 0, 2, 3)                     # (n, 2, h, w)
        c = torch.randn(len(t1), 1, *crop, generator=gen) * 8
        return torch.cat([f, c], 1)

    out = flow.tiled_flow(oracle, img1, img1, crop, overlap=0.6, tile_batch=5)
    assert sum(calls) == len(flow.tile_offsets(H, 32, 0.6)) * len(flow.tile_offsets(W, 64, 0.6))
    assert torch.allclose(out, gt, atol=1e-4)
    const = flow.tiled_flow(lambda a, b: torch.cat([torch.full((len(a), 2, *crop), 2.5),
                                                    torch.randn(len(a), 1, *crop, generator=gen)], 1),
                            img1, img1, crop, 0.9)
    assert torch.allclose(const, torch.full_like(const, 2.5))


class _ConstModel(torch.nn.Module):
    """Returns flow (1, 2) px and c = 0 for any tile; records the tile shapes it saw."""

    def __init__(self, crop):
        super().__init__()
        self.flow_cfg = flow.FlowConfig(crop=crop)
        self.shapes = []

    def forward(self, a, b):
        self.shapes.append(tuple(a.shape))
        out = torch.zeros(a.shape[0], 3, *a.shape[2:])
        out[:, 0], out[:, 1] = 1.0, 2.0
        return out


def test_small_frame_upscaled_and_flow_scaled_back():
    # 40x50 frame, 64x64 crop: s = max(64/40, 64/50) = 1.6 -> 64x80; flow (1, 2) back x (50/80, 40/64)
    m = _ConstModel((64, 64))
    pred = flow.Predictor(m, torch.device("cpu"), overlap=0.5)
    img = np.zeros((40, 50, 3), np.uint8)
    out = pred(img, img)
    assert out.shape == (40, 50, 2)
    assert {s[2:] for s in m.shapes} == {(64, 64)}
    assert np.allclose(out[..., 0], 1 * 50 / 80) and np.allclose(out[..., 1], 2 * 40 / 64)
    # full-frame mode pads to a multiple of 32 and crops back; downscale 2 multiplies by 2
    m = _ConstModel((64, 64))
    out = flow.Predictor(m, torch.device("cpu"), mode="full", downscale=2.0)(img, img)
    assert m.shapes == [(1, 3, 32, 32)] and out.shape == (40, 50, 2)
    assert np.allclose(out[..., 0], 2.0) and np.allclose(out[..., 1], 4.0)


# ----------------------------------------------------------------------------------------------
# synthetic layouts (data.World's exact flow): readers, pair lists, augmentation, outputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    import data
    if not hasattr(data, "World"):
        pytest.skip("data.World (the synthetic world) is not merged on this branch yet")
    return flow.write_synthetic(tmp_path_factory.mktemp("flow_synth"), "test", seed=0)


def test_pair_lists_counts_and_orders(synth):
    train = flow.chairs_pairs(synth["chairs"], "train")
    val = flow.chairs_pairs(synth["chairs"], "val")
    split = [int(v) for v in (synth["chairs"] / "chairs_split.txt").read_text().split()]
    assert (len(train), len(val)) == (4, 2) and sorted(split) == [1, 1, 1, 1, 2, 2]
    assert [p.name for p in train] == [f"{i + 1:05d}_flow" for i, s in enumerate(split) if s == 1]
    # Things full: 2 TRAIN sequences x 9 pairs x 2 directions x 2 passes, left camera
    things = flow.things_pairs(synth["things"], "train")
    assert len(things) == 72 and flow.things_layout(synth["things"]) == "full"
    past = [p for p in things if "into_past" in p.name][0]
    assert (past.img1.name, past.img2.name) == ("0007.png", "0006.png")
    assert past.flow.name == "OpticalFlowIntoPast_0007_L.pfm"        # flow file i + 1
    fut = [p for p in things if "into_future" in p.name][0]
    assert (fut.img1.name, fut.img2.name, fut.flow.name) == ("0006.png", "0007.png",
                                                              "OpticalFlowIntoFuture_0006_L.pfm")
    assert len(flow.things_pairs(synth["things"], "val")) == 36
    sub = flow.things_pairs(synth["things_subset"], "train")
    assert len(sub) == 72 and flow.things_layout(synth["things_subset"]) == "subset"
    assert all(p.nonfinite_ok for p in sub)
    # Sintel: frames - 1 per sequence; KITTI _10 / _11; HD1K consecutive frames
    assert len(flow.sintel_pairs(synth["sintel"], "training", "final")) == 6
    sp = flow.sintel_pairs(synth["sintel"], "training", "clean")[0]
    assert (sp.name, sp.img2.name, sp.flow.name) == ("seq_0/frame_0001", "frame_0002.png", "frame_0001.flo")
    assert len(flow.sintel_pairs(synth["sintel"], "test", "clean")) == 3
    kp = flow.kitti_pairs(synth["kitti"], "training")
    assert [p.name for p in kp] == ["000000_10", "000001_10", "000002_10"]
    assert kp[0].img2.name == "000000_11.png" and kp[0].sparse
    assert len(flow.kitti_pairs(synth["kitti"], "testing")) == 2
    assert len(flow.hd1k_pairs(synth["hd1k"])) == 2


def test_readers_return_the_worlds_exact_arrays(synth):
    pair = flow.chairs_pairs(synth["chairs"], "train")[0]
    i = int(pair.name[:5]) - 1
    w = flow.synthetic_world("chairs", i, 2)
    gt, valid = flow.read_gt(pair.flow, pair.fmt)
    assert np.array_equal(gt, w.flow(0, 1)[0]) and valid.all()
    assert np.array_equal(flow.read_image(pair.img1), w.frame(0))
    # Things into_past, a big-endian file (t = 1 odd): flow of frame 0007 towards 0006
    w = flow.synthetic_world("things", 0, 10)                        # TRAIN/A/0000 left
    past = [p for p in flow.things_pairs(synth["things"], "train", ("clean",)) if "into_past" in p.name][0]
    assert past.flow.read_bytes().split(b"\n")[2] == b"1.0"
    assert np.array_equal(flow.read_gt(past.flow, "pfm")[0], w.flow(1, 0)[0])
    # the subset's NaN file: masked, not an error
    sub = flow.things_pairs(synth["things_subset"], "train", ("clean",), ("into_future",))[0]
    g, v = flow.read_gt(sub.flow, sub.fmt, sub.nonfinite_ok)
    assert (~v).sum() == 6 and np.isfinite(g[v]).all()
    with pytest.raises(ValueError, match="non-finite"):
        flow.read_gt(sub.flow, sub.fmt)
    # KITTI: about 40 % valid at 1/64; pair 1 none
    k = flow.kitti_pairs(synth["kitti"], "training")
    g, v = flow.read_gt(k[0].flow, "kitti")
    w = flow.synthetic_world("kitti", 0, 2, size=flow.KITTI_SIZES[0])
    assert 0.3 < v.mean() < 0.5
    assert np.abs(g[v] - w.flow(0, 1)[0][v]).max() <= 1 / 128 + 1e-6
    assert flow.read_gt(k[1].flow, "kitti")[1].sum() == 0


def _warp(img2, flw):
    """Sample image 2 at x + f(x) (bilinear) -> (H, W, 3) float, and in-frame mask."""
    H, W = flw.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    gx, gy = xx + flw[..., 0], yy + flw[..., 1]
    grid = torch.from_numpy(np.stack([2 * (gx + 0.5) / W - 1, 2 * (gy + 0.5) / H - 1], -1))[None]
    src = torch.from_numpy(img2.astype(np.float32)).permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=False)
    inside = (gx >= 0) & (gx <= W - 1) & (gy >= 0) & (gy <= H - 1)
    return out[0].permute(1, 2, 0).numpy(), inside


def test_augmentation_keeps_flow_consistent_with_images(synth):
    """Colour and eraser off: image 2 warped by the augmented GT reproduces image 1 on the
    non-occluded pixels (up to interpolation error); the sign-flipped flow does not."""
    w = flow.synthetic_world("sintel", 0, 4)
    img1, img2 = w.frame(1), w.frame(2)
    f, visible = w.flow(1, 2)
    aug = flow.AugParams(crop=(32, 64), scale=(0.2, 0.4), spatial_prob=1.0, stretch_prob=1.0,
                         h_flip_prob=0.5, v_flip_prob=0.5, eraser_prob=0.0, colour=False)
    errs, wrong = [], []
    for i in range(6):
        a, b, fa, va = flow.augment(img1, img2, f, visible, aug, torch.Generator().manual_seed(i))
        warped, inside = _warp(b, fa)
        m = va & inside
        assert m.mean() > 0.3
        errs.append(np.abs(warped - a)[m].mean())
        warped_bad, inside_bad = _warp(b, fa * np.array([-1, -1], np.float32))
        wrong.append(np.abs(warped_bad - a)[va & inside_bad].mean())
    assert max(errs) < 6.0 and min(wrong) > 2 * max(errs), (errs, wrong)


class _Oracle:
    """A predictor that returns each pair's GT (looked up by image 1's bytes)."""

    def __init__(self, pairs):
        self.gt = {flow.read_image(p.img1).tobytes(): flow.read_gt(p.flow, p.fmt, True)[0] for p in pairs}
        self.device = torch.device("cpu")

    def settings(self):
        return {"predictor": "oracle"}

    def __call__(self, img1, img2):
        return self.gt[img1.tobytes()]


def test_outputs_names_counts_and_scores(synth, tmp_path):
    sintel, kitti = synth["sintel"], synth["kitti"]
    # GT as the prediction scores EPE 0 and Fl-all 0
    pairs = [p for d in ("clean", "final") for p in flow.sintel_pairs(sintel, "training", d)]
    r = flow.evaluate("sintel_train", sintel, _Oracle(pairs), tmp_path / "s")
    assert r["clean"]["epe"] == 0.0 and r["final"]["epe"] == 0.0 and r["clean"]["n_images"] == 6
    assert sorted(p.relative_to(tmp_path / "s/sintel_clean").as_posix()
                  for p in (tmp_path / "s/sintel_clean").rglob("*.flo"))[0] == "seq_0/frame_0001.flo"
    r = flow.evaluate("kitti_train", kitti, _Oracle(flow.kitti_pairs(kitti)), tmp_path / "k")
    assert r["kitti"]["fl_all"] == 0.0 and r["kitti"]["epe_pooled"] < 1 / 64
    assert r["kitti"]["images_without_valid_pixels"] == ["000001_10"]
    # zero flow: Sintel EPE = mean |f*| over every pixel; KITTI pooled over valid pixels
    r = flow.evaluate("sintel_train", sintel, None, tmp_path / "z")
    mags = np.concatenate([np.linalg.norm(flow.read_gt(p.flow, "flo")[0], axis=2).ravel()
                           for p in flow.sintel_pairs(sintel, "training", "clean")])
    assert r["clean"]["epe"] == pytest.approx(mags.astype(np.float64).mean(), rel=1e-6)
    r = flow.evaluate("kitti_train", kitti, None, tmp_path / "zk")
    gts = [flow.read_gt(p.flow, "kitti") for p in flow.kitti_pairs(kitti)]
    valid_mags = np.concatenate([np.linalg.norm(g, axis=2)[v] for g, v in gts])
    assert r["kitti"]["epe_pooled"] == pytest.approx(valid_mags.mean(), rel=1e-6)
    assert r["kitti"]["fl_all"] == pytest.approx(100 * np.mean(valid_mags > 3), rel=1e-6)
    # submissions: Sintel tree (clean + final, 1-based names) and the KITTI zip
    r = flow.evaluate("sintel_test", sintel, None, tmp_path / "st")
    files = sorted(p.relative_to(tmp_path / "st/submission/test").as_posix()
                   for p in (tmp_path / "st/submission/test").rglob("*.flo"))
    assert files == [f"{d}/test_0/frame_{n:04d}.flo" for d in ("clean", "final") for n in (1, 2, 3)]
    r = flow.evaluate("kitti_test", kitti, None, tmp_path / "kt")
    with zipfile.ZipFile(r["zip"]) as zf:
        assert zf.namelist() == ["flow/000000_10.png", "flow/000001_10.png"]
    g, v = eval_flow.read_kitti_png(tmp_path / "kt/flow/000001_10.png")
    assert v.all() and g.shape == flow.KITTI_SIZES[1][::-1] + (2,)


def _train(synth, out, *extra):
    return flow.main(["train", "--stage", "chairs", "--model", "tiny", "--chairs", str(synth["chairs"]),
                      "--output", str(out), "--workers", "0", "--effective-batch", "2",
                      "--batch-size", "2", "--crop", "32", "64", "--val-every", "0",
                      "--no-progress", "--log-every", "1", *extra])


def test_train_resume_exact_and_stage_chain(synth, tmp_path):
    _train(synth, tmp_path / "straight", "--steps", "4", "--save-every", "4")
    _train(synth, tmp_path / "split", "--steps", "4", "--save-every", "2", "--max-steps", "2")
    _train(synth, tmp_path / "split", "--steps", "4", "--save-every", "2", "--resume", "auto")
    a = torch.load(tmp_path / "straight/checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoint-last.pth", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logs = [json.loads(l) for l in (tmp_path / "split/log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logs] == [1, 2, 3, 4] and all(math.isfinite(l["loss"]) for l in logs)
    # save then load gives identical outputs
    model, ckpt = flow.load_flow_checkpoint(tmp_path / "straight")
    again = flow.build_model("tiny", crop=(32, 64))
    again.load_state_dict(a["model"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, x), again.eval()(x, x))
    # the next stage starts from it: protocol C+T (Things subset layout)
    flow.main(["train", "--stage", "things", "--model", "tiny", "--things", str(synth["things_subset"]),
               "--init", str(tmp_path / "straight"), "--output", str(tmp_path / "T"), "--workers", "0",
               "--effective-batch", "2", "--batch-size", "2", "--crop", "32", "64", "--steps", "1",
               "--val-every", "0", "--no-progress"])
    t = torch.load(tmp_path / "T/checkpoint-last.pth", weights_only=True)
    assert t["config"]["protocol"] == "C+T" and t["config"]["things_layout"] == "subset"


def test_train_correlation_flags_stored_and_checked_at_init(synth, tmp_path):
    _train(synth, tmp_path / "C", "--steps", "2", "--corr-radius", "1", "--corr-groups", "2", "--corr-match")
    model, ckpt = flow.load_flow_checkpoint(tmp_path / "C")
    assert (ckpt["flow"]["corr_radius"], ckpt["flow"]["corr_groups"], ckpt["flow"]["corr_match"]) == (1, 2, True)
    assert model.head.act_postprocess[2][0].in_channels == 96 + 2 * 9
    things = ["train", "--stage", "things", "--model", "tiny", "--things", str(synth["things"]),
              "--init", str(tmp_path / "C"), "--workers", "0", "--effective-batch", "2", "--batch-size", "2",
              "--crop", "32", "64", "--steps", "1", "--val-every", "0", "--no-progress"]
    with pytest.raises(SystemExit, match="corr_radius 1 there, 0 here"):
        flow.main(things + ["--output", str(tmp_path / "T0")])       # the flags must be repeated
    flow.main(things + ["--output", str(tmp_path / "T"), "--corr-radius", "1", "--corr-groups", "2", "--corr-match"])
    t = torch.load(tmp_path / "T/checkpoint-last.pth", weights_only=True)
    assert t["flow"]["corr_match"] is True and t["config"]["protocol"] == "C+T"
