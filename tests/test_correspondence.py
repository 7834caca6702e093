"""Tests of tasks/correspondence.py (label propagation): the pure propagation core on raw-pixel
features, hand-computed affinity weights, DINO's size and output rules, and the command line on a
synthetic DAVIS folder scored with eval.davis.
Run: .venv/bin/python -m pytest -q tests/test_correspondence.py"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dropmae
import tasks.correspondence as corr
import tasks.vos as vos


def pixel_features(img):
    """Raw-pixel features: each pixel's 3x3 neighbourhood of colours, (H, W, 27)."""
    H, W = img.shape[-2:]
    return F.unfold(img[None], 3, padding=1)[0].T.reshape(H, W, 27)


def test_pure_translation_recovered_with_raw_pixel_features():
    """A camera pan over a static random texture (frame t = the window shifted by (t, 2t)
    pixels, both objects inside every window): propagating frame 0's labels with raw-pixel
    features and DINO's defaults (7 previous frames, top-5, radius 12, T 0.1) recovers the
    shifted masks: object IoU and accuracy >= 0.99 (exact here), both on the pixels whose content
    was visible in frame 0 (the newly entering strip has nothing to match)."""
    g = torch.Generator().manual_seed(0)
    H, W, T = 24, 32, 6
    canvas = torch.rand(3, H + T, W + 2 * T, generator=g) * 2 - 1           # zero-mean colours
    labels = torch.zeros(H + T, W + 2 * T, dtype=torch.long)
    labels[6:16, 12:20] = 1
    labels[14:22, 18:28] = 2
    pixels = pixel_features(canvas)                      # features move with the content
    feats = torch.stack([pixels[t:t + H, 2 * t:2 * t + W] for t in range(T)])   # (T, H, W, 27)
    truth = [labels[t:t + H, 2 * t:2 * t + W] for t in range(T)]
    first = F.one_hot(truth[0], 3).permute(2, 0, 1).float()
    soft = torch.stack(list(corr.propagate_labels(feats, first)))           # (T, 3, H, W)
    assert soft.shape == (T, 3, H, W) and torch.equal(soft[0], first)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for t in range(1, T):
        pred = soft[t].argmax(0)
        seen = (rows + t < H) & (cols + 2 * t < W)                          # content of frame 0
        assert (pred == truth[t])[seen].float().mean() >= 0.99
        for k in (1, 2):
            inter = ((pred == k) & (truth[t] == k) & seen).sum().item()
            union = (((pred == k) | (truth[t] == k)) & seen).sum().item()
            assert inter / union >= 0.99, (t, k, inter / union)


def test_propagate_step_hand_computed_weights():
    """One context frame, sources (1,0), (0,1), (-1,0), target (1,0), T = 1: similarities
    1, 0, -1; top-2 keeps 1 and 0 -> weights e/(e+1), 1/(e+1). Labels [1,0],[0,1],[0,1] ->
    target [e/(e+1), 1/(e+1)]. Ties at the k-th value are kept: top-1 with two equal best
    sources averages them."""
    src = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])             # (1, 3, 2)
    lab = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])                 # (1, 2, 3)
    tgt = torch.tensor([[1.0, 0.0]])                                         # (1, 2)
    out = corr.propagate_step(tgt, src, lab, topk=2, temperature=1.0, allowed=None)
    e = math.e
    assert torch.allclose(out[:, 0], torch.tensor([e / (e + 1), 1 / (e + 1)]), atol=1e-6)
    src_tie = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    out = corr.propagate_step(tgt, src_tie, lab, topk=1, temperature=0.1, allowed=None)
    assert torch.allclose(out[:, 0], torch.tensor([0.5, 0.5]), atol=1e-6)


def test_neighbourhood_is_a_square_window_and_applies_to_frame_zero():
    """radius 1 on a 3x4 grid: corner cell sees 4 cells, inner cell 9; radius 0 = no mask.
    The mask also restricts frame 0: a perfect match 3 cells away is ignored at radius 1."""
    allowed = corr.neighbourhood(3, 4, 1)
    assert allowed.shape == (12, 12)
    assert allowed[0].sum() == 4 and allowed[5].sum() == 9
    assert corr.neighbourhood(3, 4, 0) is None
    feats = torch.zeros(2, 1, 4, 2)
    feats[0, 0, 3] = torch.tensor([1.0, 0.0])        # frame 0: the match sits at column 3
    feats[0, 0, :3] = torch.tensor([0.0, 1.0])
    feats[1, 0, 0] = torch.tensor([1.0, 0.0])        # frame 1, column 0 looks like it
    feats[1, 0, 1:] = torch.tensor([0.0, 1.0])
    first = torch.tensor([[[1.0, 1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]]])  # (2, 1, 4)
    near = list(corr.propagate_labels(feats, first, topk=1, radius=1))[1]
    far = list(corr.propagate_labels(feats, first, topk=1, radius=0))[1]
    assert near[:, 0, 0].argmax() == 0 and far[:, 0, 0].argmax() == 1


def test_frame_size_follows_dino():
    """Shorter side 480, longer side rounded down to a multiple of 64."""
    assert corr.frame_size(480, 854) == (480, 832)
    assert corr.frame_size(854, 480) == (832, 480)
    assert corr.frame_size(720, 1280) == (480, 832)
    assert corr.frame_size(70, 100, short_side=0, multiple=16) == (64, 96)


def test_soft_to_ids_min_max_normalises_each_channel():
    """Channels [0.1, 0.5, 0.3] and [0.4, 0.45, 0.44] have raw argmax [1, 1, 1]; after
    per-channel min-max ([0, 1, .5] and [0, 1, .8]) the argmax is [0, 0, 1] (ties -> first).
    An all-zero channel is left alone. Nearest resize to the output size."""
    soft = torch.tensor([[[0.1, 0.5, 0.3]], [[0.4, 0.45, 0.44]], [[0.0, 0.0, 0.0]]])
    assert corr.soft_to_ids(soft, 1, (1, 3)).tolist() == [[0, 0, 1]]
    up = corr.soft_to_ids(soft, 1, (2, 6))
    assert up.tolist() == [[0, 0, 0, 0, 1, 1]] * 2


def test_one_hot_labels_nearest_downsampling():
    ids = np.zeros((32, 48), np.uint8)
    ids[:16, :16] = 2
    lab = corr.one_hot_labels(ids, (2, 3), 3)
    assert lab.shape == (3, 2, 3)
    assert lab.argmax(0).tolist() == [[2, 0, 0], [0, 0, 0]]
    assert torch.equal(lab.sum(0), torch.ones(2, 3))


def test_cli_writes_davis_pngs_and_scores(tmp_path):
    """On a synthetic DAVIS folder with a tiny DropMAE checkpoint: one palette PNG per frame at
    the annotation size, frame 0 = GT, ids <= K; eval.davis scores it; every frame vector
    choice runs."""
    root = vos.write_synthetic_davis(tmp_path / "DAVIS", n_frames=5, size=(64, 96))
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()}, ckpt)
    for frame in ("x", "none"):
        out = tmp_path / f"out_{frame}"
        result = corr.main(["--model", "tiny", "--data-path", str(root), "--pretrained", str(ckpt),
                            "--output", str(out), "--short-side", "0", "--multiple", "16",
                            "--frame", frame])
        assert 0.0 <= result["J&F-Mean"] <= 1.0 and result["n_objects"] == 9
    for seq in vos.davis_sequences(root, 2017, "val"):
        _, anns = vos.davis_frames(root, seq, all_annotated=True)
        gt0 = vos.read_mask(anns[0])[0]
        for ann in anns:
            pred, pal = vos.read_mask(out / seq / ann.name)
            assert pred.shape == gt0.shape and pal == vos.davis_palette()
            assert pred.max() <= gt0.max()
        assert np.array_equal(vos.read_mask(out / seq / anns[0].name)[0], gt0)


def test_mae_checkpoint_is_encoded_without_a_frame_vector(tmp_path):
    """An MAE file has no temporal_pos_embed_x / _z; the encoder's would be random N(0, 1)
    vectors added to every token, so --frame x falls back to none there. A DropMAE file keeps
    --frame x and loads its vector."""
    torch.manual_seed(0)
    state = dropmae.ViTEncoder(dropmae.get_config("tiny")).state_dict()
    mae = {k: v for k, v in state.items() if not k.startswith("temporal_pos_embed")}
    mae["cls_token"] = torch.zeros(1, 1, 96)
    torch.save({"model": mae}, tmp_path / "mae.pth")
    encoder, frame = corr.load_encoder(tmp_path / "mae.pth", "tiny", "x")
    assert frame == "none"
    assert torch.equal(encoder.state_dict()["blocks.0.attn.qkv.weight"],
                       state["blocks.0.attn.qkv.weight"])
    torch.save({"model": dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()},
               tmp_path / "dropmae.pth")
    ref = torch.load(tmp_path / "dropmae.pth", weights_only=True)["model"]
    encoder, frame = corr.load_encoder(tmp_path / "dropmae.pth", "tiny", "x")
    assert frame == "x"
    assert torch.equal(encoder.temporal_pos_embed_x, ref["temporal_pos_embed_x"])


def test_bad_frame_size_is_an_error_naming_the_annotation(tmp_path):
    """Frames that round to zero tokens (--multiple larger than the frame) -> ValueError."""
    root = vos.write_synthetic_davis(tmp_path / "DAVIS", sequences=("s",), n_frames=3,
                                     size=(32, 48))
    torch.save({"model": dropmae.DropMAE(dropmae.get_config("tiny")).state_dict()},
               tmp_path / "t.pth")
    with pytest.raises(ValueError, match="s/00000.png.*multiple of the patch size"):
        corr.main(["--model", "tiny", "--data-path", str(root), "--pretrained",
                   str(tmp_path / "t.pth"), "--output", str(tmp_path / "o"), "--short-side", "0"])
