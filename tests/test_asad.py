"""ASAD: the mask's hard properties and its sampling law against the official-style sampler."""
import pytest
import torch

from dropmae import asad_mask, asad_num_drops


def reference_weights(logits: torch.Tensor) -> torch.Tensor:
    """The spec's W for one (L, L) logit matrix, built row by row: (L, L/2) float64."""
    L = logits.shape[-1]
    h = L // 2
    attn = logits.softmax(-1)
    w = torch.zeros(L, h, dtype=torch.float64)
    for i in range(L):
        own = slice(0, h) if i < h else slice(h, L)
        other = slice(h, L) if i < h else slice(0, h)
        f_tem = attn[i, other].max() + 1e-6
        spatial = attn[i, own].double() + 1e-6
        spatial[i % h] = 0.0
        w[i] = f_tem * spatial / spatial.sum()
    return w


def reference_draw(w: torch.Tensor, p: float) -> torch.Tensor:
    """As the official code: one `torch.multinomial` draw without replacement over the whole
    (L x L/2) weight matrix. Returns the (L, L) bool mask."""
    L, h = w.shape
    k = asad_num_drops(L, p)
    flat = torch.multinomial(w.flatten(), k, replacement=False)
    drop = torch.zeros(L, L, dtype=torch.bool)
    for f in flat.tolist():
        i, c = divmod(f, h)
        drop[i, c + (0 if i < h else h)] = True
    return drop


def test_k_formula_matches_spec_for_vit_b():
    """K = int(P * (L/2 - 1)) * L: 19 * 392 = 7448 for L = 392, P = 0.1."""
    assert asad_num_drops(392, 0.1) == 7448
    assert asad_num_drops(392, 0.0) == 0
    assert asad_num_drops(8, 0.34) == 8


def test_mask_properties_exact_count_no_diagonal_no_cross_frame():
    """Exactly K drops per (sample, head); never the diagonal; never across frames."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 72, 72) * 3
    drop = asad_mask(logits, 0.1)
    L, h = 72, 36
    assert drop.dtype == torch.bool and drop.shape == logits.shape
    assert (drop.sum(dim=(-1, -2)) == asad_num_drops(L, 0.1)).all()
    assert not drop.diagonal(dim1=-2, dim2=-1).any()
    assert not drop[..., :h, h:].any() and not drop[..., h:, :h].any()


def test_p_zero_is_twinmae_and_odd_length_is_an_error():
    """P = 0 drops nothing (TwinMAE); an odd token count cannot be two frames."""
    assert not asad_mask(torch.randn(2, 16, 16), 0.0).any()
    with pytest.raises(ValueError):
        asad_mask(torch.randn(2, 15, 15), 0.1)


def test_no_gradient_flows_through_the_sampling():
    """The mask comes from detached logits: no graph is attached."""
    logits = torch.randn(1, 2, 16, 16, requires_grad=True)
    drop = asad_mask(logits, 0.5)
    assert drop.grad_fn is None and not drop.requires_grad


def test_extreme_p_drops_every_off_diagonal_same_frame_position():
    """P = 1 gives K = L * (L/2 - 1): all same-frame positions except the diagonal."""
    logits = torch.randn(2, 10, 10)
    drop = asad_mask(logits, 1.0)
    h = 5
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:h, :h] = True
    expected[h:, h:] = True
    expected.fill_diagonal_(False)
    assert (drop == expected).all()


def test_sampling_law_matches_multinomial_without_replacement():
    """Per-position drop frequencies of the vectorised sampler match the official-style
    sampler (loop + torch.multinomial without replacement) on one fixed (L = 8) logit matrix.

    With N draws each, a frequency has standard deviation <= 0.5 / sqrt(N); the difference of
    two independent estimates <= 0.71 / sqrt(N) = 0.0058 for N = 15000. We allow 0.03 (5 sigma)
    and also require the vectorised frequencies to differ clearly from uniform sampling, so the
    test can fail if the weights were ignored."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 8, generator=gen) * 2.5
    p, n = 0.34, 15000                                      # K = 8 drops out of 24 candidates
    torch.manual_seed(1)
    ours = asad_mask(logits.expand(n, 8, 8), p).double().mean(0)
    torch.manual_seed(2)
    w = reference_weights(logits)
    ref = torch.stack([reference_draw(w, p) for _ in range(n)]).double().mean(0)
    assert (ours - ref).abs().max() < 0.03
    candidates = ref > 0
    assert ours[candidates].std() > 0.05                   # far from uniform 8/24 everywhere
    assert abs(ours.sum().item() - 8) < 1e-9               # exactly K per draw on average too


def test_attention_with_asad_equals_the_explicit_masked_softmax():
    """The decoder attention (SDPA with the additive ASAD mask) equals the official form:
    logits, -inf at the drawn positions, softmax, times v; and dropped keys get zero weight."""
    from dropmae import Attention
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 20, 32)
    torch.manual_seed(7)
    out = attn(x, drop_p=0.3)
    torch.manual_seed(7)
    q, k, v = attn.qkv(x).reshape(2, 20, 3, 4, 8).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    drop = asad_mask(logits, 0.3)
    probs = logits.masked_fill(drop, float("-inf")).softmax(-1)
    expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 20, 32))
    assert torch.allclose(out, expected, atol=1e-5)
    torch.manual_seed(7)
    _, maps = attn(x, drop_p=0.3, return_attn=True)       # the explicit path draws the same mask
    assert torch.allclose(maps, probs, atol=1e-6)
    assert (maps[drop] == 0).all() and drop.sum() == 2 * 4 * asad_num_drops(20, 0.3)
