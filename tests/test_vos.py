"""Tests of tasks/vos.py (DropSeg): model pieces, soft aggregation, schedules, checkpoint import,
readers and their errors, the pair dataset, a falling loss on a repeated batch, the train CLI
with resume, and inference in the official DAVIS / YouTube-VOS layouts scored with eval.davis.
Run: .venv/bin/python -m pytest -q tests/test_vos.py"""
import json
import math
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dropmae
import tasks.vos as vos
from data import normalize
from eval.davis import evaluate_davis

SIZE = (64, 96)          # synthetic frames (H, W)
FRAMES = 6


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """3 sequences x 6 frames, 3 textured objects each (the last leaves the frame)."""
    return vos.write_synthetic_davis(tmp_path_factory.mktemp("davis"), n_frames=FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def ytvos(tmp_path_factory):
    return vos.write_synthetic_ytvos(tmp_path_factory.mktemp("ytvos"), n_frames=FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def tiny_dropmae(tmp_path_factory):
    """An official-format DropMAE tiny checkpoint file ({'model': state_dict})."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "dropmae_tiny.pth"
    torch.save({"model": dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_dropmae):
    """A tasks/vos.py checkpoint of the tiny model (backbone from DropMAE, 64-px crops)."""
    torch.manual_seed(1)
    model = vos.build_model("tiny", 64)
    vos.load_backbone(tiny_dropmae, model, verbose=False)
    path = tmp_path_factory.mktemp("ft") / "checkpoint-0.pth"
    torch.save({"model": model.state_dict(), "config": {"model": "tiny", "size": 64}}, path)
    return path


def copy_davis(src, dst):
    return shutil.copytree(src, dst)


# ------------------------------------------------------------------------------ model pieces

def test_soft_aggregation_hand_values_and_sums_to_one():
    """STM aggregation: q = [prod(1-p), p], softmax(log q/(1-q)) = odds / sum(odds).
    One object p=0.8: odds [0.25, 4] -> [1/17, 16/17]; two objects 0.5, 0.5: bg 0.25, odds
    [1/3, 1, 1] -> [1/7, 3/7, 3/7]; random maps sum to one per pixel."""
    out = vos.soft_aggregate(torch.tensor([0.8]).view(1, 1, 1, 1)).softmax(1).flatten()
    assert torch.allclose(out, torch.tensor([1 / 17, 16 / 17]), atol=1e-6)
    out = vos.soft_aggregate(torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)).softmax(1).flatten()
    assert torch.allclose(out, torch.tensor([1 / 7, 3 / 7, 3 / 7]), atol=1e-6)
    prob = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    total = vos.soft_aggregate(prob).softmax(1).sum(1)
    assert torch.allclose(total, torch.ones(2, 5, 7), atol=1e-6)


def test_absent_object_gets_no_probability():
    """selector 0 (no second object) zeroes its sigmoid: its aggregated probability is the
    clamp floor, q/(1-q) = 1e-7/(1-1e-7), i.e. < 1e-6 everywhere."""
    torch.manual_seed(0)
    model = vos.build_model("tiny", 64).eval()
    img = torch.randn(1, 3, 32, 48)
    masks = torch.zeros(1, 2, 32, 48)
    masks[0, 0, 8:20, 10:30] = 1
    with torch.no_grad():
        probs = vos.segment_objects(model, img, masks, img, torch.tensor([[1.0, 0.0]])).softmax(1)
    assert probs.shape == (1, 3, 32, 48)
    assert probs[0, 2].max() < 1e-6


def test_forward_shapes_any_grid_and_mask_matters():
    """A 48x80 query (3x5 grid) gives a (B, 1, 48, 80) logit; the two-frame table is resized
    from the training grid (64/16 = 4x4); changing the reference mask changes the output."""
    torch.manual_seed(0)
    model = vos.build_model("tiny", 64).eval()
    assert model.pos_embed_two_frame.shape == (1, 16, 96)
    assert not model.pos_embed_two_frame.requires_grad
    assert model.two_frame_pos((3, 5)).shape == (1, 15, 96)
    ref, query = torch.randn(2, 3, 48, 80), torch.randn(2, 3, 48, 80)
    mask = torch.zeros(2, 1, 48, 80)
    with torch.no_grad():
        a = model(ref, mask, query)
        mask[:, :, 16:32, 16:48] = 1
        b = model(ref, mask, query)
    assert a.shape == (2, 1, 48, 80)
    assert (a - b).abs().max() > 1e-4


def test_tokens_are_assembled_as_dropseg(monkeypatch):
    """B.1 token assembly: reference = patch_embed(rgb) + mask_patch_embed(mask) (summed, not
    concatenated: 6 + 6 tokens on a 2x3 grid) + table + `_z`; query = patch_embed(rgb) + table +
    `_x`; the same table for both frames, the frozen 4x4 training table resized bicubically to
    the input grid (not the 6x6 pre-training table resized directly); m16 = the query half of
    the blocks' output."""
    torch.manual_seed(0)
    model = vos.build_model("tiny", 64).eval()
    seen = {}
    blocks, decoder = model.forward_tokens, model.stcn_decoder.forward

    def spy_blocks(tokens):
        seen["in"], seen["out"] = tokens, blocks(tokens)
        return seen["out"]

    def spy_decoder(m16, m8, m4):
        seen["m16"] = m16
        return decoder(m16, m8, m4)

    monkeypatch.setattr(model, "forward_tokens", spy_blocks)
    monkeypatch.setattr(model.stcn_decoder, "forward", spy_decoder)
    ref, query = torch.randn(1, 3, 32, 48), torch.randn(1, 3, 32, 48)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., :16, 16:] = 1
    with torch.no_grad():
        model(ref, mask, query)
        pos = dropmae.resize_pos_embed(model.pos_embed_two_frame, (2, 3), (4, 4))
        ref_tokens = (model.patch_embed(ref) + model.mask_patch_embed(mask) + pos
                      + model.temporal_pos_embed_z)
        query_tokens = model.patch_embed(query) + pos + model.temporal_pos_embed_x
    assert seen["in"].shape == (1, 12, 96)
    assert torch.allclose(seen["in"], torch.cat([ref_tokens, query_tokens], 1), atol=1e-6)
    assert not torch.allclose(pos, model.spatial_pos_embed((2, 3)), atol=1e-3)
    assert torch.equal(seen["m16"], seen["out"][:, 6:].transpose(1, 2).reshape(1, 96, 2, 3))


def test_one_backbone_pass_per_object_then_soft_aggregation():
    """B.1 multi-object: object k's logit comes from its own pass over (reference RGB, its own
    mask, query); segment_objects = log(q / (1 - q)) of q = [prod(1 - p_k), p_1, p_2] with
    p_k = sigmoid(pass k) x selector, clamped to [1e-7, 1 - 1e-7], assembled here by hand."""
    torch.manual_seed(0)
    model = vos.build_model("tiny", 64).eval()
    ref, query = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    masks = torch.zeros(2, 2, 32, 48)
    masks[:, 0, :16, :16] = 1
    masks[0, 1, 16:, 16:] = 1                                    # sample 1 has one object only
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        out = vos.segment_objects(model, ref, masks, query, selector)
        p = torch.cat([torch.sigmoid(model(ref, masks[:, k:k + 1], query)) for k in range(2)], 1)
        p = p * selector[:, :, None, None]
        q = torch.cat([(1 - p).prod(1, keepdim=True), p], 1).clamp(1e-7, 1 - 1e-7)
    assert out.shape == (2, 3, 32, 48)
    assert torch.allclose(out, torch.log(q / (1 - q)), atol=1e-4)


def test_base_preset_widths_are_dropseg():
    """base: mask patch conv 1->768 16x16, fpn2 ConvT 768->512 k2s2, fpn1 ConvT 768->768, LN2d,
    GELU, ConvT 768->256, compress ResBlock 768->512, UpsampleBlock(512,512,256),
    UpsampleBlock(256,256,256), pred 3x3 256->1, 24x24 two-frame table, drop_path 0.1."""
    m = vos.build_model("base")
    sd = m.state_dict()
    assert sd["mask_patch_embed.proj.weight"].shape == (768, 1, 16, 16)
    assert sd["fpn2.weight"].shape == (768, 512, 2, 2)
    assert sd["fpn1.0.weight"].shape == (768, 768, 2, 2)
    assert isinstance(m.fpn1[1], vos.LayerNorm2d) and isinstance(m.fpn1[2], torch.nn.GELU)
    assert sd["fpn1.3.weight"].shape == (768, 256, 2, 2)
    assert sd["stcn_decoder.compress.conv1.weight"].shape == (512, 768, 3, 3)
    assert sd["stcn_decoder.up_16_8.skip_conv.weight"].shape == (512, 512, 3, 3)
    assert sd["stcn_decoder.up_16_8.out_conv.conv1.weight"].shape == (256, 512, 3, 3)
    assert sd["stcn_decoder.up_8_4.skip_conv.weight"].shape == (256, 256, 3, 3)
    assert "stcn_decoder.up_8_4.out_conv.downsample.weight" not in sd       # 256 -> 256
    assert sd["stcn_decoder.pred.weight"].shape == (1, 256, 3, 3)
    assert sd["pos_embed_two_frame"].shape == (1, 576, 768)
    assert m.cfg.drop_path == 0.1


def test_pad_and_unpad_are_inverse():
    """pad_divide_by pads to multiples of 16 with the odd pixel at the bottom / right
    (37x50 -> 48x64: top 5, bottom 6, left 7, right 7; 480x854 -> 480x864: left/right 5);
    unpad returns the input exactly; a 32x48 input is untouched."""
    x = torch.randn(2, 3, 37, 50)
    padded, pad = vos.pad_divide_by(x)
    assert padded.shape == (2, 3, 48, 64) and pad == (7, 7, 5, 6)
    assert torch.equal(vos.unpad(padded, pad), x)
    assert padded[..., :5, :].abs().sum() == 0 and padded[..., :, -7:].abs().sum() == 0
    _, pad = vos.pad_divide_by(torch.zeros(1, 480, 854))
    assert pad == (5, 5, 0, 0)
    y = torch.randn(1, 32, 48)
    same, pad = vos.pad_divide_by(y)
    assert pad == (0, 0, 0, 0) and torch.equal(vos.unpad(same, pad), y)


def test_processing_size_truncates_like_torchvision_resize():
    """Inference size (B.3): shorter side 480, longer int(480 * long / short) as
    torchvision's Resize(480) in STCN's test sets: 500x833 -> 480x799 (799.68 truncated);
    480p frames and --resolution 0 keep their size."""
    assert vos.processing_size(720, 1280, 480) == (480, 853)
    assert vos.processing_size(500, 833, 480) == (480, 799)
    assert vos.processing_size(833, 500, 480) == (799, 480)
    assert vos.processing_size(480, 854, 480) == (480, 854)
    assert vos.processing_size(37, 50, 0) == (37, 50)


# -------------------------------------------------------------------------- schedules, loss

def test_bootstrap_ratio_schedule_values():
    """Plain CE (p = 1) before 20k; linear 1 -> 0.15 over 20k-70k; 0.15 after."""
    assert vos.bootstrap_ratio(0) == 1.0
    assert vos.bootstrap_ratio(19999) == 1.0
    assert vos.bootstrap_ratio(20000) == 1.0
    assert vos.bootstrap_ratio(45000) == pytest.approx(0.575)
    assert vos.bootstrap_ratio(70000) == pytest.approx(0.15)
    assert vos.bootstrap_ratio(100000) == 0.15


def test_bootstrapped_ce_keeps_the_hardest_pixels():
    """Two classes, target 0, logit gaps 0, ln3, ln7, ln15: per-pixel CE ln2, ln4, ln8, ln16.
    p = 1 -> mean 2.5 ln2; p = 0.5 -> the two largest, 3.5 ln2; p = 0.25 -> ln16."""
    gaps = torch.tensor([0.0, math.log(3), math.log(7), math.log(15)])
    logits = torch.stack([torch.zeros(4), gaps]).view(1, 2, 1, 4)
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    ln2 = math.log(2)
    assert vos.bootstrapped_ce(logits, target, 1.0).item() == pytest.approx(2.5 * ln2, rel=1e-6)
    assert vos.bootstrapped_ce(logits, target, 0.5).item() == pytest.approx(3.5 * ln2, rel=1e-6)
    assert vos.bootstrapped_ce(logits, target, 0.25).item() == pytest.approx(4 * ln2, rel=1e-6)


def test_learning_rate_steps_at_125k():
    """Adam lr 2e-5, x0.1 from iteration 125000 (MultiStepLR stepped every iteration)."""
    assert vos.learning_rate(0, 2e-5) == 2e-5
    assert vos.learning_rate(124999, 2e-5) == 2e-5
    assert vos.learning_rate(125000, 2e-5) == pytest.approx(2e-6)
    assert vos.learning_rate(209999, 2e-5) == pytest.approx(2e-6)


# ---------------------------------------------------------------------------- checkpoint import

EXPECTED_NEW_KEYS_TINY = sorted(
    ["mask_patch_embed.proj.weight", "mask_patch_embed.proj.bias", "pos_embed_two_frame",
     "fpn1.0.weight", "fpn1.0.bias", "fpn1.1.weight", "fpn1.1.bias", "fpn1.3.weight",
     "fpn1.3.bias", "fpn2.weight", "fpn2.bias"]
    + [f"stcn_decoder.{m}.{p}" for m in
       ["compress.conv1", "compress.conv2", "compress.downsample", "up_16_8.skip_conv",
        "up_16_8.out_conv.conv1", "up_16_8.out_conv.conv2", "up_16_8.out_conv.downsample",
        "up_8_4.skip_conv", "up_8_4.out_conv.conv1", "up_8_4.out_conv.conv2", "pred"]
       for p in ["weight", "bias"]])


def test_dropmae_checkpoint_loads_with_exact_key_lists(tiny_dropmae):
    """A DropMAE-format tiny file: missing = exactly DropSeg's new keys (mask patch embedding,
    two-frame table, pyramid, decoder); dropped = exactly the MAE decoder keys + mask_token;
    encoder weights and both frame vectors are copied; the two-frame table is the loaded
    pos_embed resized to the training grid."""
    model = vos.build_model("tiny", 64)
    report = vos.load_backbone(tiny_dropmae, model, verbose=False)
    sd = torch.load(tiny_dropmae, weights_only=True)["model"]
    assert report["kind"] == "dropmae"
    assert report["missing"] == EXPECTED_NEW_KEYS_TINY
    decoder = sorted(k for k in sd if k.startswith("decoder_") or k == "mask_token")
    assert report["dropped"] == decoder and len(decoder) == 34
    for key in ("blocks.3.mlp.fc2.weight", "temporal_pos_embed_x", "temporal_pos_embed_z",
                "patch_embed.proj.weight", "norm.bias"):
        assert torch.equal(model.state_dict()[key], sd[key])
    expected = dropmae.resize_pos_embed(sd["pos_embed"][:, 1:], (4, 4), (6, 6))
    assert torch.allclose(model.pos_embed_two_frame, expected)


def test_mae_and_our_checkpoints_load_with_exact_key_lists(tmp_path, tiny_dropmae):
    """B.4 for the other two formats. MAE (cls_token, no frame vectors): missing = DropSeg's
    new keys + both frame vectors (kept at their random init, as DropSeg's fresh ones), dropped
    = [cls_token]. Ours (a pre-training checkpoint with 'config'): the DropMAE lists. The
    two-frame table is rebuilt from the loaded pos_embed in both."""
    sd = torch.load(tiny_dropmae, weights_only=True)["model"]
    encoder_keys = set(vos.build_model("tiny", 64).state_dict()) - set(EXPECTED_NEW_KEYS_TINY)
    mae = {k: v for k, v in sd.items() if k in encoder_keys and "temporal" not in k}
    mae["cls_token"] = torch.zeros(1, 1, 96)
    mae["pos_embed"] = mae["pos_embed"] + 0.5                        # visible in the table
    torch.save({"model": mae}, tmp_path / "mae.pth")
    model = vos.build_model("tiny", 64)
    report = vos.load_backbone(tmp_path / "mae.pth", model, verbose=False)
    assert report["kind"] == "mae" and report["dropped"] == ["cls_token"]
    assert report["missing"] == sorted(EXPECTED_NEW_KEYS_TINY
                                       + ["temporal_pos_embed_x", "temporal_pos_embed_z"])
    expected = dropmae.resize_pos_embed(mae["pos_embed"][:, 1:], (4, 4), (6, 6))
    assert torch.allclose(model.pos_embed_two_frame, expected)
    torch.save({"model": sd, "config": {"model": "tiny"}}, tmp_path / "ours.pth")
    report = vos.load_backbone(tmp_path / "ours.pth", vos.build_model("tiny", 64), verbose=False)
    assert report["kind"] == "ours" and report["missing"] == EXPECTED_NEW_KEYS_TINY


def test_foreign_key_in_checkpoint_is_an_error(tmp_path, tiny_dropmae):
    """An unexpected key (e.g. a head) is not silently dropped: KeyError naming it."""
    sd = torch.load(tiny_dropmae, weights_only=True)["model"]
    sd["head.weight"] = torch.zeros(2, 96)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(KeyError, match="head.weight"):
        vos.load_backbone(path, vos.build_model("tiny", 64), verbose=False)


# ------------------------------------------------------------------------ readers and errors

def test_davis_palette_colours():
    """DAVIS / VOC colour map: 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128),
    255 (224,224,192)."""
    pal = vos.davis_palette()
    assert len(pal) == 768
    assert pal[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert pal[765:] == [224, 224, 192]


def test_non_palette_annotation_is_an_error_naming_the_file(tmp_path, davis):
    root = copy_davis(davis, tmp_path / "d")
    bad = root / "Annotations" / "480p" / "blobs-b" / "00003.png"
    Image.open(bad).convert("RGB").save(bad)
    ds = vos.PairDataset(vos.davis_train_videos(root), 64)
    with pytest.raises(ValueError, match="blobs-b/00003.png.*palette-indexed"):
        ds.load(ds.videos[1], 3)
    with pytest.raises(ValueError, match="00003.png.*mode 'RGB'"):
        vos.read_mask(bad)


def test_mismatched_frame_counts_are_an_error_naming_the_folder(tmp_path, davis):
    root = copy_davis(davis, tmp_path / "d")
    (root / "Annotations" / "480p" / "blobs-a" / "00004.png").unlink()
    with pytest.raises(ValueError, match=r"blobs-a: 5 annotations for 6 frames.*00004\.png"):
        vos.davis_train_videos(root)
    with pytest.raises(ValueError, match="5 annotations for 6 frames"):
        vos.inference_jobs("davis17_val", root)


def test_missing_imagesets_entry_or_file_is_an_error(tmp_path, davis):
    """A listed sequence without a frame folder names the list file and line; a missing list
    file names its path."""
    root = copy_davis(davis, tmp_path / "d")
    (root / "ImageSets" / "2017" / "val.txt").write_text("blobs-a\nblobs-x\n")
    with pytest.raises(FileNotFoundError, match=r"2017/val.txt:2: sequence 'blobs-x'"):
        vos.davis_sequences(root, 2017, "val")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/test-dev.txt"):
        vos.inference_jobs("davis17_testdev", root)


def test_ytvos_meta_errors_name_the_file(tmp_path, ytvos):
    root = shutil.copytree(ytvos, tmp_path / "y")
    (root / "train" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="train/meta.json"):
        vos.ytvos_train_videos(root)
    (root / "train" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="train/meta.json"):
        vos.ytvos_train_videos(root)


def test_davis_targets_object_count_and_void(tmp_path):
    """2017: objects 1..max id of frame 0 (ids {1, 3} -> 3 objects, object 2 empty), 255 void
    is background; 2016: one object, the union, written as 255."""
    ids = np.zeros((4, 6), np.uint8)
    ids[0, :2], ids[1, :2], ids[2, :] = 1, 3, 255
    path = tmp_path / "00000.png"
    vos.write_index_png(path, ids, vos.davis_palette())
    t17 = vos.davis_targets(path, 2017)
    assert [t.obj_id for t in t17] == [1, 2, 3]
    assert [int(t.mask.sum()) for t in t17] == [2, 0, 2]
    t16 = vos.davis_targets(path, 2016)
    assert len(t16) == 1 and t16[0].obj_id == 255 and int(t16[0].mask.sum()) == 4


# ----------------------------------------------------------------------- data and training

def test_pair_item_shapes_objects_and_determinism(davis, ytvos):
    """Items: normalised frames (3, S, S), binary reference masks of objects present in the
    reference, selector [1, 1] with two objects and [1, 0] with one (DropSeg), labels in
    {0, 1, 2} only for selected objects, deterministic per (seed, epoch, index), different
    across epochs. YouTube-VOS videos get max_jump 5, DAVIS 25."""
    videos = vos.davis_train_videos(davis) + vos.ytvos_train_videos(ytvos)
    assert [v.max_jump for v in videos] == [25, 25, 25, 5, 5]
    ds = vos.PairDataset(videos, 64, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["ref_img"].shape == item["query_img"].shape == (3, 64, 64)
        assert set(item["ref_masks"].unique().tolist()) <= {0.0, 1.0}
        assert item["selector"][0] == 1.0
        assert bool(item["ref_masks"][1].sum() > 0) == bool(item["selector"][1])
        if not item["selector"][1]:
            assert not (item["label"] == 2).any()
        assert set(item["label"].unique().tolist()) <= {0, 1, 2}
    a, b = ds[0], ds[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["ref_img"], a["ref_img"])


def test_item_without_objects_keeps_selector_1_0_and_a_learning_signal(tmp_path, davis):
    """No object in the reference after 5 draws: an all-background item with selector [1, 0]
    (DropSeg's target_object = -1), not [0, 0]: object 1 is an empty mask whose target is
    background, so the loss still has a gradient (with [0, 0] every probability is the clamp
    floor and the gradient is exactly 0)."""
    root = copy_davis(davis, tmp_path / "d")
    for png in (root / "Annotations" / "480p" / "blobs-a").glob("*.png"):
        vos.write_index_png(png, np.zeros(SIZE, np.uint8), vos.davis_palette())
    ds = vos.PairDataset(vos.davis_train_videos(root)[:1], 64)
    item = ds[0]
    assert item["selector"].tolist() == [1.0, 0.0]
    assert item["ref_masks"].abs().sum() == 0 and item["label"].abs().sum() == 0
    torch.manual_seed(0)
    model = vos.build_model("tiny", 64)
    batch = torch.utils.data.default_collate([item])
    logits = vos.segment_objects(model, batch["ref_img"], batch["ref_masks"],
                                 batch["query_img"], batch["selector"])
    vos.bootstrapped_ce(logits, batch["label"], 1.0).backward()
    assert model.stcn_decoder.pred.bias.grad.abs().item() > 0


def test_pair_frames_exclusive_bound_and_time_reversal():
    """Pair rule (B.2): start in [0, n-2], the later frame in [start+1, min(n, start+max_jump))
    (exclusive: with max_jump 3 the gap is 1 or 2, never 3), then reversed with p 0.5.
    n = 10: every frame appears, 50% +- 4% of 4000 pairs have the reference later; n = 2 gives
    (0, 1) or (1, 0)."""
    g = torch.Generator().manual_seed(0)
    pairs = [vos.pair_frames(10, 3, g) for _ in range(4000)]
    assert {abs(a - b) for a, b in pairs} == {1, 2}
    assert {a for a, _ in pairs} | {b for _, b in pairs} == set(range(10))
    assert 0.46 < sum(a > b for a, b in pairs) / len(pairs) < 0.54
    assert {vos.pair_frames(2, 25, g) for _ in range(40)} == {(0, 1), (1, 0)}


def test_augmentation_shared_per_frame_nearest_and_fill(monkeypatch):
    """B.2 augmentation. With the per-frame parts neutralised (affine 0 deg, jitter 0.01 ->
    identity), two identical frames come out identical: flip, crop, jitter 0.1 and grayscale
    are shared. With the real per-frame draws they differ (the affine is per frame). Masks are
    resampled nearest (ids stay in {3, 7} plus the fill 0); a 45 deg turn fills the image
    corner with IM_MEAN (normalised) and the mask corner with 0."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    ids = np.full((80, 100), 3, np.uint8)
    ids[:, 50:] = 7
    mask = Image.fromarray(ids)
    real_jitter = vos.color_jitter_params

    def no_pair_jitter(g, b, c, s):
        params = real_jitter(g, b, c, s)                       # same draws, same stream
        return ([1.0, 1.0, 1.0], params[1]) if b == 0.01 else params

    g = torch.Generator().manual_seed(1)
    imgs, masks = vos.augment_pair([img, img], [mask, mask], 64, g)
    assert not torch.equal(imgs[0], imgs[1])
    assert set(masks.unique().tolist()) <= {0, 3, 7}
    monkeypatch.setattr(vos, "color_jitter_params", no_pair_jitter)
    monkeypatch.setattr(vos, "affine_params", lambda g: (0.0, 0.0))
    for seed in range(4):
        imgs, masks = vos.augment_pair([img, img], [mask, mask], 64,
                                       torch.Generator().manual_seed(seed))
        assert torch.equal(imgs[0], imgs[1]) and torch.equal(masks[0], masks[1])
        assert set(masks.unique().tolist()) <= {3, 7}
    monkeypatch.setattr(vos, "affine_params", lambda g: (45.0, 0.0))
    imgs, masks = vos.augment_pair([img, img], [mask, mask], 64, torch.Generator().manual_seed(0))
    fill = normalize(Image.new("RGB", (1, 1), vos.IM_MEAN))[:, 0, 0]
    assert torch.allclose(imgs[:, :, 0, 0], fill.expand(2, 3), atol=1e-6)
    assert masks[:, 0, 0].tolist() == [0, 0] and set(masks.unique().tolist()) == {0, 3, 7}


def test_affine_identity_and_quarter_turn():
    """apply_affine with 0 deg / 0 shear is the identity; 90 deg on a 4x4 grid maps output
    (row y, col x) to input (row 3 - x, col y) exactly (nearest, pixel centres)."""
    a = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    img = Image.fromarray(a)
    same = np.array(vos.apply_affine(img, 0.0, 0.0, Image.Resampling.NEAREST, 0))
    assert np.array_equal(same, a)
    turned = np.array(vos.apply_affine(img, 90.0, 0.0, Image.Resampling.NEAREST, 0))
    expected = np.array([[a[3 - x, y] for x in range(4)] for y in range(4)])
    assert np.array_equal(turned, expected)


def test_loss_falls_on_a_repeated_batch(davis, tiny_dropmae):
    """The tiny model from a DropMAE checkpoint fits one batch: loss after 12 Adam steps
    (lr 1e-3, plain CE) is below 60% of the first."""
    torch.manual_seed(0)
    ds = vos.PairDataset(vos.davis_train_videos(davis), 64, seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    model = vos.build_model("tiny", 64)
    vos.load_backbone(tiny_dropmae, model, verbose=False)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [vos.train_step(model, batch, opt, scaler, 1.0, torch.device("cpu"), False)["loss"]
              for _ in range(12)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses


def test_train_cli_writes_run_folder_and_resumes(tmp_path, davis, ytvos, tiny_dropmae):
    """train: config.json, log.jsonl (one line per iteration at --print-freq 1), atomic
    checkpoints keeping the newest 2; --resume auto continues from the latest iteration; the
    optimizer is Adam (coupled weight decay 1e-7, lr 2e-5), AMP off on the CPU."""
    out = tmp_path / "run"
    common = ["train", "--model", "tiny", "--data-path", str(davis), "--ytvos-path", str(ytvos),
              "--pretrained", str(tiny_dropmae), "--output", str(out), "--batch-size", "2",
              "--size", "64", "--workers", "0", "--print-freq", "1", "--save-every", "1",
              "--davis-repeat", "1"]
    vos.main(common + ["--iterations", "3"])
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == ["checkpoint-2.pth",
                                                                   "checkpoint-3.pth"]
    assert not list(out.glob("*.tmp"))
    config = json.loads((out / "config.json").read_text())
    assert config["train_items"] == 5 and config["lr"] == 2e-5 and config["lr_steps"] == [125000]
    vos.main(common + ["--iterations", "4", "--resume", "auto"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["it"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["epoch"] == 2 and all(math.isfinite(r["loss"]) for r in log)
    ckpt = torch.load(out / "checkpoint-4.pth", weights_only=True)
    assert ckpt["it"] == 4 and ckpt["config"]["model"] == "tiny"
    group = ckpt["optimizer"]["param_groups"][0]               # Adam, not AdamW (B.2)
    assert group["lr"] == 2e-5 and group["weight_decay"] == 1e-7
    assert tuple(group["betas"]) == (0.9, 0.999) and group["decoupled_weight_decay"] is False
    assert ckpt["config"]["max_jump"] == 25 and ckpt["config"]["amp"] is False   # CPU: no AMP


def test_ytvos_subset_file_and_max_jump(tmp_path, ytvos, davis):
    """--ytvos-subset (DropSeg's yv_subset.txt) keeps only the listed videos; a name not in
    meta.json is an error naming the file and line. --max-jump below 10 with YouTube-VOS
    (which gets max_jump // 5) stops before anything runs."""
    (tmp_path / "yv_subset.txt").write_text("vid1\n\n")
    subset = vos.ytvos_train_videos(ytvos, subset=tmp_path / "yv_subset.txt")
    assert [v.name for v in subset] == ["ytvos/vid1"]
    (tmp_path / "bad.txt").write_text("vid0\nvidX\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: video 'vidX'"):
        vos.ytvos_train_videos(ytvos, subset=tmp_path / "bad.txt")
    with pytest.raises(SystemExit, match="max-jump 8"):
        vos.main(["train", "--model", "tiny", "--data-path", str(davis), "--ytvos-path",
                  str(ytvos), "--output", str(tmp_path / "run"), "--max-jump", "8"])


def test_unknown_argument_is_an_error():
    with pytest.raises(SystemExit):
        vos.parse_args(["test", "--dataset", "davis17_val", "--data-path", "d", "--ckpt", "c",
                        "--output", "o", "--bogus", "1"])


# -------------------------------------------------------------------------------- inference

def check_pngs(folder, annotations, mode):
    """Every frame has a PNG of the annotation's size and PIL mode `mode`."""
    for ann in annotations:
        out = folder / ann.name
        with Image.open(out) as im, Image.open(ann) as gt:
            assert im.size == gt.size and im.mode == mode
            if mode == "P":
                assert im.getpalette() == gt.getpalette()


def test_ground_truth_as_prediction_scores_one(tmp_path, davis):
    """Our PNG writer in the toolkit's layout: GT written back scores J&F = 1 in DAVIS-2017
    (palette ids) and DAVIS-2016 (0/255 union masks)."""
    for seq in vos.davis_sequences(davis, 2017, "val"):
        _, anns = vos.davis_frames(davis, seq, all_annotated=True)
        for ann in anns:
            ids, pal = vos.read_mask(ann)
            vos.write_index_png(tmp_path / "r17" / seq / ann.name, ids, pal)
            vos.write_index_png(tmp_path / "r16" / seq / ann.name,
                                np.where(ids > 0, 255, 0).astype(np.uint8), None)
    r17 = evaluate_davis(davis, tmp_path / "r17", "val", 2017)
    r16 = evaluate_davis(davis, tmp_path / "r16", "val", 2016)
    assert r17["J&F-Mean"] == 1.0 and r17["n_objects"] == 9
    assert r16["J&F-Mean"] == 1.0 and r16["n_objects"] == 3


def test_inference_davis17_val_official_layout(tmp_path, davis, finetuned):
    """test --dataset davis17_val: one palette PNG per frame, annotation size and palette,
    frame 0 = its GT, ids within 1..K; scored by eval.davis; fps in timing.json."""
    out = tmp_path / "d17"
    result = vos.main(["test", "--dataset", "davis17_val", "--data-path", str(davis), "--ckpt",
                       str(finetuned), "--output", str(out), "--resolution", "0"])
    for seq in vos.davis_sequences(davis, 2017, "val"):
        _, anns = vos.davis_frames(davis, seq, all_annotated=True)
        check_pngs(out / seq, anns, "P")
        gt0 = vos.read_mask(anns[0])[0]
        assert np.array_equal(vos.read_mask(out / seq / anns[0].name)[0], gt0)
        for ann in anns[1:]:
            assert vos.read_mask(out / seq / ann.name)[0].max() <= gt0.max()
    assert 0.0 <= result["J&F-Mean"] <= 1.0 and result["n_objects"] == 9
    assert (out / "global_results-val.csv").is_file()
    assert json.loads((out / "timing.json").read_text())["frames"] == 3 * FRAMES


def test_amp_flag_is_ignored_on_cpu(davis, finetuned):
    """--amp is fp16 autocast on CUDA only: on the CPU the masks are those of fp32."""
    model, _ = vos.load_finetuned(finetuned, torch.device("cpu"))
    frames, anns = vos.davis_frames(davis, "blobs-a", all_annotated=True)
    targets = vos.davis_targets(anns[0], 2017)
    runs = [list(vos.segment_sequence(model, frames, targets, 0, torch.device("cpu"), amp))
            for amp in (False, True)]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(*runs))


def test_inference_davis16_resized_and_padded(tmp_path, davis, finetuned):
    """davis16_val at a 48-px short side (48x72 -> padded 48x80): 0/255 grey PNGs at the
    annotation size, frame 0 = 255 x union of the objects."""
    out = tmp_path / "d16"
    result = vos.main(["test", "--dataset", "davis16_val", "--data-path", str(davis), "--ckpt",
                       str(finetuned), "--output", str(out), "--resolution", "48"])
    _, anns = vos.davis_frames(davis, "blobs-a", all_annotated=True)
    check_pngs(out / "blobs-a", anns, "L")
    first = np.array(Image.open(out / "blobs-a" / anns[0].name))
    assert np.array_equal(first, np.where(vos.read_mask(anns[0])[0] > 0, 255, 0))
    assert set(np.unique(np.array(Image.open(out / "blobs-a" / anns[2].name)))) <= {0, 255}
    assert result["year"] == 2016 and result["n_objects"] == 3


def test_inference_davis17_testdev_zip(tmp_path, davis, finetuned):
    """test-dev (first-frame annotations only): <seq>/<frame>.png and a submission zip with the
    same names."""
    root = copy_davis(davis, tmp_path / "td")
    for seq in ("blobs-a", "blobs-b", "blobs-c"):
        for png in sorted((root / "Annotations" / "480p" / seq).glob("*.png"))[1:]:
            png.unlink()
    (root / "ImageSets" / "2017" / "test-dev.txt").write_text("blobs-a\nblobs-c\n")
    out = tmp_path / "out"
    assert vos.main(["test", "--dataset", "davis17_testdev", "--data-path", str(root), "--ckpt",
                     str(finetuned), "--output", str(out), "--resolution", "0"]) is None
    names = sorted(zipfile.ZipFile(out / "submission.zip").namelist())
    expected = [f"{s}/{t:05d}.png" for s in ("blobs-a", "blobs-c") for t in range(FRAMES)]
    assert names == sorted(expected)


def test_inference_ytvos_objects_from_their_first_frame(tmp_path, ytvos, finetuned):
    """ytvos19_valid: Annotations/<vid>/<frame>.png for every frame and the zip; an object that
    enters later is absent before its first annotated frame and equals its mask there."""
    out = tmp_path / "yt"
    vos.main(["test", "--dataset", "ytvos19_valid", "--data-path", str(ytvos), "--ckpt",
              str(finetuned), "--output", str(out), "--resolution", "0"])
    meta = json.loads((ytvos / "valid" / "meta.json").read_text())["videos"]
    names = zipfile.ZipFile(out / "submission.zip").namelist()
    assert len(names) == 2 * FRAMES and all(n.startswith("Annotations/vid") for n in names)
    late = [(vid, int(k), o["frames"][0]) for vid, v in meta.items()
            for k, o in v["objects"].items() if o["frames"][0] != "00000"]
    assert late, "the synthetic valid split has an object entering later"
    vid, k, first = late[0]
    for frame in sorted((out / "Annotations" / vid).glob("*.png")):
        pred = vos.read_mask(frame)[0]
        if frame.stem < first:
            assert not (pred == k).any()
        elif frame.stem == first:
            given = vos.read_mask(ytvos / "valid" / "Annotations" / vid / f"{first}.png")[0] == k
            assert np.array_equal(pred == k, given)


# ------------------------------------------------------- released DropSeg checkpoints load

class OfficialNorm2d(torch.nn.Module):
    """DropSeg's `Norm2d`: an nn.LayerNorm named `ln` over the channels of a (B, C, H, W) map."""

    def __init__(self, dim):
        super().__init__()
        self.ln = torch.nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OfficialDropSeg(torch.nn.Module):
    """The module structure of the released DropSeg network (jimmy-dq/DropSeg
    model/models_vit.py: timm 0.3.2 VisionTransformer with num_classes=1000 and global_pool,
    plus mask_patch_embed, fpn1 / fpn2 Sequentials, the STCN decoder and the two frozen multi-
    frame tables set after construction), at the tiny widths, with its backbone forward as the
    official code orders it: (patches + mask) + frame vector per frame, then the two-frame
    table; at another grid the table's first half is resized (bicubic) and used twice."""

    def __init__(self, D=96, depth=4, heads=3, grid=4, pre_grid=6, c16=64, c8=64, c4=32):
        super().__init__()
        torch.manual_seed(5)
        rnd = lambda *s: torch.nn.Parameter(torch.randn(*s) * 0.02)  # noqa: E731
        self.cls_token = rnd(1, 1, D)
        self.pos_embed = rnd(1, 1 + pre_grid * pre_grid, D)
        self.patch_embed = dropmae.PatchEmbed(16, 3, D)
        self.blocks = torch.nn.ModuleList(dropmae.Block(D, heads, 4.0, 0.0) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(D, eps=1e-6)
        self.head = torch.nn.Linear(D, 1000)
        self.fc_norm = torch.nn.LayerNorm(D, eps=1e-6)
        self.mask_patch_embed = dropmae.PatchEmbed(16, 1, D)
        self.fpn1 = torch.nn.Sequential(torch.nn.ConvTranspose2d(D, D, 2, 2), OfficialNorm2d(D),
                                        torch.nn.GELU(), torch.nn.ConvTranspose2d(D, c4, 2, 2))
        self.fpn2 = torch.nn.Sequential(torch.nn.ConvTranspose2d(D, c8, 2, 2))
        self.stcn_decoder = vos.Decoder(D, c16, c8, c4)          # STCN's own module names
        self.temporal_pos_embed_x = rnd(1, 1, D)
        self.temporal_pos_embed_z = rnd(1, 1, D)
        with torch.no_grad():
            for p in self.parameters():                          # nothing left at 1 / 0
                p.add_(torch.randn_like(p) * 0.05)
        self.grid = grid
        table = torch.randn(1, grid * grid, D) * 0.02
        cls = self.pos_embed[:, :1].detach()
        self.pos_embed_two_frame = torch.nn.Parameter(torch.cat([cls, table, table], 1),
                                                      requires_grad=False)
        self.pos_embed_three_frame = torch.nn.Parameter(torch.cat([cls, table, table, table], 1),
                                                        requires_grad=False)

    def forward(self, ref, mask, query):
        B, _, H, W = query.shape
        h, w = H // 16, W // 16
        table = self.pos_embed_two_frame[:, 1:1 + self.grid ** 2]
        if (h, w) != (self.grid, self.grid):
            table = torch.nn.functional.interpolate(
                table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2), size=(h, w),
                mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
        memory = self.patch_embed(ref) + self.mask_patch_embed(mask)
        memory = memory + self.temporal_pos_embed_z
        queries = self.patch_embed(query) + self.temporal_pos_embed_x
        x = torch.cat([memory, queries], 1) + torch.cat([table, table], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        m16 = x[:, -h * w:].permute(0, 2, 1).reshape(B, -1, h, w)
        return self.stcn_decoder(m16, self.fpn2(m16), self.fpn1(m16))


def official_layout(ours: dict) -> dict:
    """Our fine-tuned tiny weights in the released file's key layout (the test's own copy of
    the key table), plus the tensors the released file holds that we drop."""
    D = ours["pos_embed"].shape[-1]
    out = {}
    for k, v in ours.items():
        if k.startswith("fpn2."):
            out["fpn2.0." + k[len("fpn2."):]] = v
        elif k.startswith("fpn1.1."):
            out["fpn1.1.ln." + k[len("fpn1.1."):]] = v
        elif k == "pos_embed_two_frame":
            cls = torch.zeros(1, 1, D)
            out[k] = torch.cat([cls, v, v], 1)
            out["pos_embed_three_frame"] = torch.cat([cls, v, v, v], 1)
        else:
            out[k] = v
    out.update({"cls_token": torch.zeros(1, 1, D), "head.weight": torch.ones(1000, D),
                "head.bias": torch.zeros(1000), "fc_norm.weight": torch.ones(D),
                "fc_norm.bias": torch.zeros(D)})
    return out


def test_released_dropseg_structure_loads_strictly_and_segments_as_the_official_forward(tmp_path):
    """A file with the official module structure's own state-dict keys and shapes (fpn2.0.*,
    fpn1.1.ln.*, the (1, 1 + 2*g*g, D) two-frame table, cls/head/fc_norm, the three-frame table)
    loads strictly through `load_finetuned`, picks the tiny preset at 64-px crops, and gives the
    official forward's logits (to float rounding: the sums are ordered differently) at the
    training grid and at a resized 48x80 grid."""
    official = OfficialDropSeg().eval()
    sd = official.state_dict()
    assert {"fpn2.0.weight", "fpn1.1.ln.weight", "fpn1.3.weight", "head.weight",
            "pos_embed_three_frame"} <= set(sd) and "fpn2.weight" not in sd
    torch.save(sd, tmp_path / "official_210000.pth")
    model, config = vos.load_finetuned(tmp_path / "official_210000.pth", torch.device("cpu"))
    assert (config["model"], config["size"]) == ("tiny", 64)
    assert model.state_dict().keys() == vos.build_model("tiny", 64).state_dict().keys()
    g = torch.Generator().manual_seed(0)
    for H, W in ((64, 64), (48, 80)):
        ref, query = torch.randn(2, 3, H, W, generator=g), torch.randn(2, 3, H, W, generator=g)
        mask = (torch.rand(2, 1, H, W, generator=g) > 0.5).float()
        with torch.no_grad():
            ours, theirs = model(ref, mask, query), official(ref, mask, query)
        assert ours.shape == (2, 1, H, W)
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()
        assert ours.std() > 1e-3                                 # not a trivially equal output
    torch.save({"it": 210000, "network": sd, "optimizer": {}, "scheduler": {}},
               tmp_path / "official_checkpoint.pth")
    again, _ = vos.load_finetuned(tmp_path / "official_checkpoint.pth", torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 model.state_dict().values()))


def test_released_dropseg_file_gives_the_native_masks(tmp_path, davis, finetuned):
    """Our fine-tuned weights written in the released layout: `test --ckpt official.pth` loads
    them strictly into the same tensors as the native checkpoint and writes the same PNGs."""
    native = torch.load(finetuned, weights_only=True)["model"]
    torch.save(official_layout(native), tmp_path / "official.pth")
    model, _ = vos.load_finetuned(tmp_path / "official.pth", torch.device("cpu"))
    assert model.state_dict().keys() == native.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in native.items())
    for name, ckpt in (("native", finetuned), ("official", tmp_path / "official.pth")):
        vos.main(["test", "--dataset", "davis17_val", "--data-path", str(davis), "--ckpt",
                  str(ckpt), "--output", str(tmp_path / name), "--resolution", "0"])
    pngs = sorted((tmp_path / "native").glob("*/*.png"))
    assert len(pngs) == 3 * FRAMES
    for png in pngs:
        other = tmp_path / "official" / png.relative_to(tmp_path / "native")
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(other)))


def test_released_dropseg_file_errors_name_the_file_and_key(tmp_path, finetuned):
    """Differing two-frame halves, a wrong shape, or a key outside the table: an error naming
    the file (and the key), never a partial load."""
    base = official_layout(torch.load(finetuned, weights_only=True)["model"])
    bad_halves = dict(base, pos_embed_two_frame=base["pos_embed_two_frame"].clone())
    bad_halves["pos_embed_two_frame"][0, -1, 0] += 1.0
    bad_shape = dict(base, **{"fpn1.1.ln.weight": torch.ones(95)})
    extra = dict(base, **{"blocks.0.attn.relative_position_bias_table": torch.zeros(3, 3)})
    for state, match in ((bad_halves, "bad.pth: the two frames' halves of pos_embed_two_frame differ"),
                         (bad_shape, r"bad.pth: fpn1.1.ln.weight has shape \(95,\)"),
                         (extra, "relative_position_bias_table")):
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        with pytest.raises((ValueError, RuntimeError), match=match):
            vos.load_finetuned(path, torch.device("cpu"))
