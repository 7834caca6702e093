"""ASAD: the mask's hard properties and its sampling law against the official-style sampler.

Tests taking the `path` fixture run twice: with the fused CPU kernel (asad_race.c; skipped
where no C compiler builds it) and with the torch ops path (`dropmae.RACE_KERNEL = False`)."""
import pytest
import torch

import dropmae
from dropmae import asad_mask, asad_num_drops


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    """Which implementation of the draw runs on the CPU."""
    if request.param == "kernel" and dropmae._race_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is not built")
    monkeypatch.setattr(dropmae, "RACE_KERNEL", request.param == "kernel")
    return request.param


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


def test_weights_match_the_row_by_row_spec_formula():
    """`asad_weights` (one pass over views of the frame blocks) equals the spec's W built row by
    row, for every (sample, head) of a batch; and a non-contiguous input gives the same W."""
    from dropmae import asad_weights
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 40, 40, generator=gen) * 3.0
    w = asad_weights(logits.softmax(-1))
    assert w.shape == (2, 3, 40, 20)
    for b in range(2):
        for h in range(3):
            assert torch.allclose(w[b, h].double(), reference_weights(logits[b, h]), rtol=1e-5, atol=1e-12)
    swapped = logits.transpose(0, 1).softmax(-1)                               # non-contiguous
    assert torch.allclose(asad_weights(swapped.transpose(0, 1)), w)


def test_k_formula_matches_spec_for_vit_b():
    """K = int(P * (L/2 - 1)) * L: 19 * 392 = 7448 for L = 392, P = 0.1."""
    assert asad_num_drops(392, 0.1) == 7448
    assert asad_num_drops(392, 0.0) == 0
    assert asad_num_drops(8, 0.34) == 8


def test_mask_properties_exact_count_no_diagonal_no_cross_frame(path):
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


def test_no_gradient_flows_through_the_sampling(path):
    """The mask comes from detached logits: no graph is attached."""
    logits = torch.randn(1, 2, 16, 16, requires_grad=True)
    drop = asad_mask(logits, 0.5)
    assert drop.grad_fn is None and not drop.requires_grad


def test_extreme_p_drops_every_off_diagonal_same_frame_position(path):
    """P = 1 gives K = L * (L/2 - 1): all same-frame positions except the diagonal."""
    logits = torch.randn(2, 10, 10)
    drop = asad_mask(logits, 1.0)
    h = 5
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:h, :h] = True
    expected[h:, h:] = True
    expected.fill_diagonal_(False)
    assert (drop == expected).all()


def test_sampling_law_matches_multinomial_without_replacement(path):
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


def test_attention_with_asad_equals_the_explicit_masked_softmax(path):
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


# --------------------------------------------------------------------------------------------
# The sampler's law against exact probabilities, and the attention that uses it
# --------------------------------------------------------------------------------------------

def exact_set_probabilities(w, k: int) -> dict:
    """P(the k drawn positions are exactly S), for every S, when k positions are drawn one by one
    without replacement with probability proportional to w (the law of
    `torch.multinomial(w, k, replacement=False)`), by the recursion over drawn sets
    P(S + j) += P(S) * w_j / (sum(w) - w(S)). Keys are bitmasks. Small n only (2^n states)."""
    w = [float(x) for x in w]
    total = sum(w)
    layer = {0: 1.0}
    for _ in range(k):
        nxt = {}
        for s, prob in layer.items():
            rest = total - sum(w[j] for j in range(len(w)) if s >> j & 1)
            for j, wj in enumerate(w):
                if wj > 0 and not s >> j & 1:
                    nxt[s | 1 << j] = nxt.get(s | 1 << j, 0.0) + prob * wj / rest
        layer = nxt
    return layer


def chi_square_p(drawn_sets, exact: dict) -> float:
    """Pearson goodness-of-fit p-value of observed drawn sets (bitmasks) against exact set
    probabilities; cells expected below 5 are pooled into one."""
    from scipy.stats import chi2
    n = len(drawn_sets)
    observed = {}
    for s in drawn_sets:
        observed[s] = observed.get(s, 0) + 1
    assert set(observed) <= set(exact), "a set outside the support was drawn"
    stat, pool_e, pool_o, cells = 0.0, 0.0, 0, 0
    for s, prob in exact.items():
        if n * prob < 5:
            pool_e, pool_o = pool_e + n * prob, pool_o + observed.get(s, 0)
        else:
            stat += (observed.get(s, 0) - n * prob) ** 2 / (n * prob)
            cells += 1
    if pool_e > 0:
        stat += (pool_o - pool_e) ** 2 / pool_e
        cells += 1
    return float(chi2.sf(stat, cells - 1))


def bitmasks(indices: torch.Tensor) -> list[int]:
    """(N, k) drawn indices -> one bitmask per row."""
    return (2 ** indices.long()).sum(1).tolist()


P_MIN = 1e-3     # goodness-of-fit threshold; all draws come from fixed seeds


@pytest.mark.parametrize("branch", ["threshold", "plain race", "fallback"])
def test_race_top_k_matches_exact_set_probabilities(branch, path):
    """The joint law of the k drawn positions (not just the marginals) against the exact
    without-replacement law, in each branch of `race_top_k`: the default threshold with about
    half of the rows completing the race (step 4) and half not, t = inf (every position a
    candidate: the textbook race), and tiny t (every row takes step 4). n = 12 with a zero
    weight, heavy and light weights; k = 4; 20000 draws; chi-square p > 1e-3."""
    from dropmae import race_top_k
    w = torch.tensor([3.0, 0.05, 1.0, 0.0, 0.4, 2.5, 0.2, 0.7, 0.1, 1.5, 0.3, 6.0])
    n_draws, k = 20000, 4
    ws = w.expand(n_draws, -1).contiguous()
    t = {"threshold": None, "plain race": torch.full((n_draws,), float("inf")),
         "fallback": torch.full((n_draws,), 1e-30)}[branch]
    if branch == "threshold":            # t with sum_j P(key_j < t) = k: rows split between paths
        lo, hi = 0.0, 100.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (1 - torch.exp(-w.double() * mid)).sum() < k else (lo, mid)
        t = torch.full((n_draws,), lo)
    gen = torch.Generator().manual_seed(11)
    drawn = race_top_k(ws, k, gen, t=t)
    if branch == "threshold":            # both paths taken: rows with >= k keys below t, and not
        keys = -torch.log1p(-torch.rand(n_draws, 12, generator=torch.Generator().manual_seed(1))) / w
        assert 0.2 < ((keys < lo).sum(1) >= k).double().mean() < 0.8
    assert drawn.shape == (n_draws, k)
    assert (drawn.sort(1).values.diff(dim=1) > 0).all()                       # distinct
    assert not (drawn == 3).any()                                             # zero weight
    assert chi_square_p(bitmasks(drawn), exact_set_probabilities(w, k)) > P_MIN


def test_race_top_k_chi_square_detects_a_wrong_law():
    """The goodness-of-fit test has power: sampling with replacement-style marginals (top-k of
    the weights perturbed by uniform noise instead of the race) fails it."""
    w = torch.tensor([3.0, 0.05, 1.0, 0.0, 0.4, 2.5, 0.2, 0.7, 0.1, 1.5, 0.3, 6.0])
    gen = torch.Generator().manual_seed(11)
    wrong = torch.topk(w * torch.rand(20000, 12, generator=gen), 4, dim=1).indices
    assert chi_square_p(bitmasks(wrong), exact_set_probabilities(w, 4)) < 1e-6


def test_asad_mask_matches_exact_set_probabilities_small_l(path):
    """End to end at L = 6 (two frames of 3 tokens): the drawn set of K = 6 positions among the
    12 same-frame off-diagonal ones follows the exact without-replacement law over the spec's
    W (built independently, row by row, by `reference_weights`); 20000 draws; p > 1e-3."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 6, generator=gen) * 2.0
    w = reference_weights(logits)                                             # (6, 3)
    n_draws, p = 20000, 0.5                                                   # K = 1 * 6
    drop = asad_mask(logits.expand(n_draws, 6, 6), p, torch.Generator().manual_seed(4))
    rows, cols = torch.arange(6).repeat_interleave(3), torch.arange(3).repeat(6)
    keys = drop[:, rows, cols + (rows >= 3) * 3]                              # (N, 18) in W order
    assert (keys.sum(1) == 6).all()
    drawn = keys.nonzero()[:, 1].view(n_draws, 6)
    assert chi_square_p(bitmasks(drawn), exact_set_probabilities(w.flatten(), 6)) > P_MIN


def test_threshold_path_agrees_with_the_plain_race_at_a_larger_size(monkeypatch):
    """At L = 64 (K = 192 of 1984 candidates per matrix), where the threshold really prunes,
    per-position drop frequencies of `asad_mask` agree with the plain race (t = inf) on the same
    W: sum of squared z-scores over the 2048 positions, chi-square p > 1e-3 (3000 draws each).
    Also: the pruned path did prune (fewer candidates than positions) in this test. (The torch
    ops path, whose bytes can be watched; `test_kernel_agrees_with_the_torch_path` checks the
    kernel at the ViT-B shape.)"""
    from scipy.stats import chi2
    monkeypatch.setattr(dropmae, "RACE_KERNEL", False)
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 64, generator=gen) * 3.0
    n_draws, p, L, h = 3000, 0.1, 64, 32
    k = asad_num_drops(L, p)
    seen = {}
    real_levels = dropmae.race_levels

    def spy(shape, generator=None, device=None):
        lv = real_levels(shape, generator, device)
        seen["levels"] = lv
        return lv
    monkeypatch.setattr(dropmae, "race_levels", spy)
    fast = asad_mask(logits.expand(n_draws, L, L), p, torch.Generator().manual_seed(6))
    w = dropmae.asad_weights(logits.softmax(-1)).reshape(1, -1).expand(n_draws, -1).contiguous()
    t = dropmae.race_threshold(w[:1], k)
    candidates = (seen["levels"][:1] < w[:1] * dropmae.RACE_LEVELS * t).sum()
    assert k < candidates < 0.5 * L * h                                       # pruned
    plain = dropmae.race_top_k(w, k, torch.Generator().manual_seed(7),
                               t=torch.full((n_draws,), float("inf")))
    plain_freq = torch.zeros(n_draws, L * h).scatter_(1, plain, 1.0).mean(0)
    rows, cols = torch.arange(L).repeat_interleave(h), torch.arange(h).repeat(L)
    fast_freq = fast[:, rows, cols + (rows >= h) * h].double().mean(0)
    pooled = (fast_freq + plain_freq.double()) / 2
    var = 2 * pooled * (1 - pooled) / n_draws
    live = var > 0
    z2 = ((fast_freq - plain_freq.double())[live] ** 2 / var[live]).sum().item()
    assert chi2.sf(z2, int(live.sum())) > P_MIN
    assert (fast_freq - plain_freq.double()).abs().max() < 0.05


def test_fixed_seed_gives_identical_masks(path):
    """torch.manual_seed (or a generator) fixes every draw; another seed changes it."""
    logits = torch.randn(2, 4, 40, 40)
    torch.manual_seed(21)
    a = asad_mask(logits, 0.2)
    torch.manual_seed(21)
    b = asad_mask(logits, 0.2)
    c = asad_mask(logits, 0.2, torch.Generator().manual_seed(21))
    d = asad_mask(logits, 0.2, torch.Generator().manual_seed(21))
    assert torch.equal(a, b) and torch.equal(c, d) and not torch.equal(a, asad_mask(logits, 0.2))


@pytest.mark.parametrize("cpu_kernel", [True, False])
def test_asad_attention_equals_the_float_mask_attention(monkeypatch, cpu_kernel, path):
    """`asad_attention` (the CPU's explicit forward + flash backward, or the generic SDPA path
    used on GPUs, with blocks of one sample forced) draws exactly `asad_drop_indices`' drops
    from the same logits, and its output and gradients equal SDPA with the plain additive float
    mask to 1e-6 and 2e-6 (float32 rounding: the CPU forward sums in another order)."""
    import torch.nn.functional as F
    monkeypatch.setattr(dropmae, "ASAD_CPU_KERNEL", cpu_kernel)
    monkeypatch.setitem(dropmae.ASAD_BLOCK_BYTES, "cpu", 4 * 4 * 24 * 24)    # 1 sample per block
    B, H, N, hd = 3, 4, 24, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, hd, generator=gen, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, N, hd, generator=gen)
    torch.manual_seed(9)
    out = dropmae.asad_attention(q, k, v, hd ** -0.5, 0.25)
    grads = torch.autograd.grad(out, (q, k, v), g)
    torch.manual_seed(9)
    logits = torch.matmul(q.detach(), k.detach().transpose(-2, -1)).mul_(hd ** -0.5)
    drop = asad_mask(logits, 0.25)
    bias = torch.zeros(B, H, N, N).masked_fill(drop, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    assert (out - ref).abs().max() < 1e-6
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() < 2e-6
    explicit = logits.masked_fill(drop, float("-inf")).softmax(-1) @ v.detach()
    assert (out - explicit).abs().max() < 1e-5                                # the official form


def test_asad_attention_keeps_no_mask_for_backward():
    """What the decoder attention keeps for backward: nothing of size B x heads x N x N (the
    drops as int32 indices instead)."""
    from dropmae import Attention
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 20, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        attn(x, drop_p=0.3).sum().backward()
    assert saved and max(t.numel() for t in saved) < 2 * 4 * 20 * 20
    assert any(t.dtype == torch.int32 and t.shape == (2, 4, asad_num_drops(20, 0.3)) for t in saved)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def z_square_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """p-value of sum_i z_i^2 for the difference of the column means of a and b (draws x
    statistics; independent draws), each z_i with the two samples' own variances; chi-square
    with one degree of freedom per column that varies."""
    from scipy.stats import chi2
    a, b = a.double(), b.double()
    var = a.var(0) / a.shape[0] + b.var(0) / b.shape[0]
    live = var > 0
    assert torch.equal(a.mean(0)[~live], b.mean(0)[~live])                     # constant columns
    z2 = ((a.mean(0) - b.mean(0))[live] ** 2 / var[live]).sum().item()
    return float(chi2.sf(z2, int(live.sum())))


def test_kernel_agrees_with_the_torch_path():
    """The fused kernel and the torch ops path draw from the same law: per-position drop
    frequencies at L = 64 (3000 draws each, against the plain race t = inf: no pruning at all),
    and at the ViT-B shape L = 392 (K = 7448) with peaked attention (logits x 4, so some weights
    make W t >> 1) the number of drops per row of the (L, L) matrix and per key column (256
    draws each); sum of squared z-scores, chi-square p > 1e-3. Also exact K, no diagonal, no
    cross-frame at that shape."""
    if dropmae._race_kernel() is None:
        pytest.skip("no C compiler: the fused kernel is not built")
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 64, generator=gen) * 3.0
    n_draws, p, L, h = 3000, 0.1, 64, 32
    fast = asad_mask(logits.expand(n_draws, L, L), p, torch.Generator().manual_seed(6))
    w = dropmae.asad_weights(logits.softmax(-1)).reshape(1, -1).expand(n_draws, -1).contiguous()
    dropmae.RACE_KERNEL = False
    try:
        plain = dropmae.race_top_k(w, asad_num_drops(L, p), torch.Generator().manual_seed(7),
                                   t=torch.full((n_draws,), float("inf")))
    finally:
        dropmae.RACE_KERNEL = True
    rows, cols = torch.arange(L).repeat_interleave(h), torch.arange(h).repeat(L)
    plain_drop = torch.zeros(n_draws, L * h).scatter_(1, plain, 1.0)
    assert z_square_p(fast[:, rows, cols + (rows >= h) * h], plain_drop) > P_MIN

    logits = torch.randn(392, 392, generator=gen) * 4.0
    n_draws, L = 256, 392
    k = asad_num_drops(L, p)
    masks = {}
    for kernel in (True, False):
        dropmae.RACE_KERNEL = kernel
        try:
            masks[kernel] = asad_mask(logits.expand(n_draws, L, L), p, torch.Generator().manual_seed(8))
        finally:
            dropmae.RACE_KERNEL = True
    fast, ref = masks[True], masks[False]
    assert (fast.sum((1, 2)) == k).all()
    assert not fast.diagonal(dim1=-2, dim2=-1).any()
    assert not fast[:, :196, 196:].any() and not fast[:, 196:, :196].any()
    assert z_square_p(fast.sum(2), ref.sum(2)) > P_MIN                       # per row
    assert z_square_p(fast.sum(1), ref.sum(1)) > P_MIN                       # per key column


@pytest.mark.parametrize("openmp", [True, False])
def test_kernel_draw_does_not_depend_on_the_thread_count(monkeypatch, openmp):
    """The kernel splits the matrices among torch's threads (its OpenMP ones, or Python threads
    where it is built without OpenMP); each matrix's draw depends only on the seed and its
    place, so 1, 2 and 3 threads give identical drops, with either way of splitting (the
    parameter False runs the Python threads alone)."""
    lib = dropmae._race_kernel()
    if lib is None:
        pytest.skip("no C compiler: the fused kernel is not built")
    if openmp and not lib.openmp:
        pytest.skip("the kernel was built without OpenMP")
    monkeypatch.setattr(lib, "openmp", openmp)
    logits = torch.randn(3, 4, 40, 40)
    threads = torch.get_num_threads()
    draws = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for split in (openmp, False):                                    # and Python threads
                monkeypatch.setattr(lib, "openmp", split)
                draws.append(dropmae.asad_drop_indices(logits, 0.2, torch.Generator().manual_seed(3)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(draws[0], d) for d in draws[1:])
