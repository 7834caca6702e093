"""The two-frame MAE, the encoder API and checkpoint import."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dropmae
from dropmae import DropMAE, ViTEncoder, get_config, load_pretrained


def official_base_keys() -> dict[str, tuple]:
    """The official `mae_vit_base_patch16` DropMAE state dict, key -> shape, from the spec."""
    D, d, ppc = 768, 512, 16 * 16 * 3
    keys = {"patch_embed.proj.weight": (D, 3, 16, 16), "patch_embed.proj.bias": (D,),
            "pos_embed": (1, 197, D), "temporal_pos_embed_x": (1, 1, D),
            "temporal_pos_embed_z": (1, 1, D), "norm.weight": (D,), "norm.bias": (D,),
            "decoder_embed.weight": (d, D), "decoder_embed.bias": (d,), "mask_token": (1, 1, d),
            "decoder_pos_embed": (1, 197, d), "decoder_temporal_pos_embed_x": (1, 1, d),
            "decoder_temporal_pos_embed_z": (1, 1, d), "decoder_norm.weight": (d,),
            "decoder_norm.bias": (d,), "decoder_pred.weight": (ppc, d), "decoder_pred.bias": (ppc,)}

    def block(prefix, w):
        return {f"{prefix}.norm1.weight": (w,), f"{prefix}.norm1.bias": (w,),
                f"{prefix}.attn.qkv.weight": (3 * w, w), f"{prefix}.attn.qkv.bias": (3 * w,),
                f"{prefix}.attn.proj.weight": (w, w), f"{prefix}.attn.proj.bias": (w,),
                f"{prefix}.norm2.weight": (w,), f"{prefix}.norm2.bias": (w,),
                f"{prefix}.mlp.fc1.weight": (4 * w, w), f"{prefix}.mlp.fc1.bias": (4 * w,),
                f"{prefix}.mlp.fc2.weight": (w, 4 * w), f"{prefix}.mlp.fc2.bias": (w,)}
    for i in range(12):
        keys.update(block(f"blocks.{i}", D))
    for i in range(8):
        keys.update(block(f"decoder_blocks.{i}", d))
    return keys


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return DropMAE(get_config("base"))


def test_base_state_dict_has_the_official_keys_and_shapes(base_model):
    """Key names and shapes identical to the official model (spec's list)."""
    ours = {k: tuple(v.shape) for k, v in base_model.state_dict().items()}
    assert ours == official_base_keys()


def test_official_layout_state_dict_loads_strict(base_model):
    """A state dict built from the spec's key list loads with strict=True."""
    gen = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=gen) for k, s in official_base_keys().items()}
    base_model.load_state_dict(sd, strict=True)
    assert torch.equal(base_model.temporal_pos_embed_z, sd["temporal_pos_embed_z"])


def test_joint_masking_keeps_25_percent_of_392_tokens(base_model):
    """One mask over both frames: 98 of 392 kept, and the split between frames varies."""
    torch.manual_seed(0)
    x = torch.randn(4, 392, 8)
    kept, mask, ids_restore = DropMAE.random_masking(x, 0.75)
    assert kept.shape == (4, 98, 8)
    assert (mask.sum(1) == 294).all()
    per_frame = (1 - mask[:, :196]).sum(1)
    assert len(set(per_frame.tolist())) > 1                 # not 49 + 49 every time
    # the restored order puts every kept token back in its original place
    full = torch.cat([kept, torch.zeros(4, 294, 8)], 1)
    restored = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 8))
    keep = mask == 0
    assert torch.equal(restored[keep], x[keep])
    base_model.eval()
    with torch.no_grad():
        _, pred, mask = base_model(torch.randn(1, 3, 224, 224), torch.randn(1, 3, 224, 224))
    assert pred.shape == (1, 392, 768) and mask.sum().item() == 294


def test_fixed_noise_gives_identical_forwards():
    """`noise` fixes the masking: two forwards agree exactly (eval mode, no ASAD draw); in
    train mode the same seed reproduces the ASAD draw too."""
    torch.manual_seed(0)
    model = DropMAE(get_config("tiny"))
    x, z = torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96)
    noise = torch.rand(2, 72)
    model.eval()
    a = model(x, z, noise=noise)
    b = model(x, z, noise=noise)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    model.train()
    torch.manual_seed(5)
    c = model(x, z, noise=noise)
    torch.manual_seed(5)
    d = model(x, z, noise=noise)
    assert torch.equal(c[1], d[1])
    assert not torch.equal(a[1], c[1])                      # ASAD changes the training forward


def test_loss_falls_on_a_repeated_batch():
    """The tiny DropMAE learns: loss after 40 AdamW steps on one batch is well below the start."""
    torch.manual_seed(0)
    model = DropMAE(get_config("tiny"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    x = F.interpolate(torch.randn(2, 3, 3, 3), size=(96, 96), mode="bilinear")   # smooth: learnable
    z = torch.roll(x, shifts=8, dims=-1)
    noise = torch.rand(2, 72)
    losses = []
    for _ in range(40):
        loss, _, _ = model(x, z, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0]


def test_norm_pix_loss_is_zero_for_the_normalised_target():
    """Per-patch normalisation with the unbiased variance and eps 1e-6, as MAE."""
    model = DropMAE(get_config("tiny"))
    x, z = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96)
    target = torch.cat([model.patchify(x), model.patchify(z)], 1)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = (target - mean) / (var + 1e-6) ** 0.5
    mask = torch.ones(1, 72)
    assert model.forward_loss(x, z, pred, mask).item() < 1e-10
    assert torch.allclose(model.forward_loss(x, z, pred + 0.5, mask), torch.tensor(0.25))


def test_patchify_roundtrip():
    model = DropMAE(get_config("tiny"))
    img = torch.randn(2, 3, 96, 96)
    assert torch.equal(model.unpatchify(model.patchify(img)), img)
    # patch 1 holds pixels of rows 0..15, columns 16..31, channel last
    assert torch.equal(model.patchify(img)[0, 1].view(16, 16, 3), img[0, :, :16, 16:32].permute(1, 2, 0))


def test_sincos_table_values_by_hand():
    """dim 8, 2x2 grid: first half encodes the column, second the row, [sin, cos] over
    frequencies 1 and 1/100; the cls row is zeros."""
    t = dropmae.sincos_pos_embed_2d(8, 2, 2, cls_token=True)[0]
    assert t.shape == (5, 8) and not t[0].any()
    s1, c1, s2, c2 = np.sin(1), np.cos(1), np.sin(0.01), np.cos(0.01)
    row0_col1 = [s1, s2, c1, c2, 0, 0, 1, 1]                 # token 1 of the grid (row 0, col 1)
    row1_col0 = [0, 0, 1, 1, s1, s2, c1, c2]
    assert np.allclose(t[2].numpy(), row0_col1, atol=1e-7)
    assert np.allclose(t[3].numpy(), row1_col0, atol=1e-7)


def test_encoder_any_image_size_and_frames():
    """The encoder embeds any multiple of the patch, resizes the table bicubically, adds the
    named frame vector, and encodes several frames jointly."""
    torch.manual_seed(0)
    enc = ViTEncoder(get_config("tiny"))
    img = torch.randn(1, 3, 64, 128)
    tokens = enc.embed(img, "z")
    grid = enc.patch_embed.grid(64, 128)
    table = F.interpolate(enc.pos_embed[:, 1:].reshape(1, 6, 6, 96).permute(0, 3, 1, 2), size=grid,
                          mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 32, 96)
    expected = enc.patch_embed(img) + table + enc.temporal_pos_embed_z
    assert torch.allclose(tokens, expected, atol=1e-6)
    assert torch.equal(enc.spatial_pos_embed((6, 6)), enc.pos_embed[:, 1:])
    out = enc(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 96, 96), frames=("z", "x"))
    assert out.shape == (2, 16 + 36, 96)
    assert enc(torch.randn(2, 3, 32, 48)).shape == (2, 6, 96)
    with pytest.raises(ValueError, match="multiple of the patch"):
        enc.embed(torch.randn(1, 3, 50, 64))


def test_save_then_load_gives_identical_outputs(tmp_path):
    """Our checkpoint format round-trips through the one loader."""
    torch.manual_seed(0)
    model = DropMAE(get_config("tiny")).eval()
    path = tmp_path / "checkpoint-0.pth"
    torch.save({"model": model.state_dict(), "config": vars(model.cfg), "epoch": 0}, path)
    torch.manual_seed(1)
    other = DropMAE(get_config("tiny")).eval()
    report = load_pretrained(path, other, verbose=False)
    assert report["kind"] == "ours" and report["missing"] == [] and report["dropped"] == []
    x, z, noise = torch.randn(1, 3, 96, 96), torch.randn(1, 3, 96, 96), torch.rand(1, 72)
    assert torch.equal(model(x, z, noise=noise)[1], other(x, z, noise=noise)[1])


def test_official_dropmae_checkpoint_into_encoder(tmp_path):
    """An official-format file (with argparse args) loads into an encoder; the decoder and
    mask_token are dropped and nothing is missing."""
    mae = DropMAE(get_config("tiny"))
    path = tmp_path / "official.pth"
    torch.save({"model": mae.state_dict(), "epoch": 399, "args": argparse.Namespace(P=0.1)}, path)
    enc = ViTEncoder(get_config("tiny"))
    report = load_pretrained(path, enc, verbose=False)
    assert report["kind"] == "dropmae" and report["missing"] == []
    assert "mask_token" in report["dropped"] and all(
        k.startswith("decoder_") or k == "mask_token" for k in report["dropped"])
    assert torch.equal(enc.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)


def test_mae_imagenet_checkpoint_reports_missing_frame_vectors(tmp_path):
    """MAE checkpoints carry cls_token and no frame vectors: cls dropped, vectors kept at init."""
    enc_src = ViTEncoder(get_config("tiny"))
    sd = {k: v for k, v in enc_src.state_dict().items() if not k.startswith("temporal")}
    sd["cls_token"] = torch.zeros(1, 1, 96)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": sd}, path)
    enc = ViTEncoder(get_config("tiny"))
    init_x = enc.temporal_pos_embed_x.detach().clone()
    report = load_pretrained(path, enc, verbose=False)
    assert report["kind"] == "mae"
    assert report["missing"] == ["temporal_pos_embed_x", "temporal_pos_embed_z"]
    assert report["dropped"] == ["cls_token"]
    assert torch.equal(enc.temporal_pos_embed_x, init_x)
    full = DropMAE(get_config("tiny"))                     # encoder-only MAE into the full model
    report = load_pretrained(path, full, verbose=False)
    assert "decoder_pred.weight" in report["missing"] and "mask_token" in report["missing"]


def test_loader_fails_loudly_on_unknown_keys_and_shapes(tmp_path):
    """Unexpected keys and shape mismatches are errors that name the file."""
    sd = DropMAE(get_config("tiny")).state_dict()
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(KeyError, match="odd.pth.*head.weight"):
        load_pretrained(path, ViTEncoder(get_config("tiny")), verbose=False)
    small = {"model": DropMAE(get_config("tiny", embed_dim=48, num_heads=3)).state_dict()}
    torch.save(small, path)
    with pytest.raises(ValueError, match="odd.pth: shape mismatch"):
        load_pretrained(path, ViTEncoder(get_config("tiny")), verbose=False)
    task_param_missing = ViTEncoder(get_config("tiny"))
    task_param_missing.pos_embed_x = torch.nn.Parameter(torch.zeros(1, 4, 96))
    ok = {"model": DropMAE(get_config("tiny")).state_dict()}
    with pytest.raises(KeyError, match="pos_embed_x"):
        load_pretrained(ok, task_param_missing, verbose=False)
    report = load_pretrained(ok, task_param_missing, expect_missing=["pos_embed_x"], verbose=False)
    assert report["missing"] == ["pos_embed_x"]


def test_image_mae_mode_is_one_frame_mae():
    """img_z None: MAE on one frame (L = N = 36 tokens, 9 kept), no frame vectors used, the
    loss on that frame's patches only; its gradient leaves the frame vectors untouched."""
    torch.manual_seed(0)
    model = DropMAE(get_config("tiny")).train()
    x = torch.randn(2, 3, 96, 96)
    loss, pred, mask = model(x, None, noise=torch.rand(2, 36))
    assert pred.shape == (2, 36, 768) and (mask.sum(1) == 27).all()
    loss.backward()
    assert model.temporal_pos_embed_x.grad is None and model.decoder_temporal_pos_embed_z.grad is None
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_forward_is_the_official_arithmetic_bit_for_bit():
    """The official `forward_encoder` / `forward_decoder` / `forward_loss` written out in the
    official order (patch + frame vector, then + spatial table; the decoder the same), reusing
    our blocks: loss, pred and mask are equal exactly, not just to rounding. Float addition is
    not associative, so the other order (table first) differs in the last bit somewhere."""
    torch.manual_seed(0)
    model = DropMAE(get_config("tiny")).eval()
    x, z, noise = torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96), torch.rand(2, 72)
    with torch.no_grad():
        pos, dpos = model.pos_embed[:, 1:], model.decoder_pos_embed[:, 1:]
        tx = model.patch_embed(x) + model.temporal_pos_embed_x + pos
        tz = model.patch_embed(z) + model.temporal_pos_embed_z + pos
        assert not torch.equal(tx, model.patch_embed(x) + pos + model.temporal_pos_embed_x)
        kept, mask, ids_restore = DropMAE.random_masking(torch.cat([tx, tz], 1), 0.75, noise)
        for blk in model.blocks:
            kept = blk(kept)
        h = model.decoder_embed(model.norm(kept))
        h = torch.cat([h, model.mask_token.repeat(2, 72 - h.shape[1], 1)], 1)
        h = torch.gather(h, 1, ids_restore.unsqueeze(-1).repeat(1, 1, h.shape[2]))
        h[:, :36] = h[:, :36] + model.decoder_temporal_pos_embed_x
        h[:, 36:] = h[:, 36:] + model.decoder_temporal_pos_embed_z
        h[:, :36] = h[:, :36] + dpos
        h[:, 36:] = h[:, 36:] + dpos
        for blk in model.decoder_blocks:
            h = blk(h)
        pred = model.decoder_pred(model.decoder_norm(h))
        target = torch.cat([model.patchify(x), model.patchify(z)], 1)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        ours = model(x, z, 0.75, noise)
    assert torch.equal(ours[1], pred) and torch.equal(ours[2], mask) and torch.equal(ours[0], loss)
