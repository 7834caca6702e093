"""reproduce/bench_gpu.py on a CPU: it refuses clearly, and its FLOP formula is exact."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dropmae import DropMAE, get_config
from reproduce import bench_gpu


def test_refuses_without_cuda(monkeypatch, capsys):
    """No CUDA device: exit status 2 and a message that says so; nothing is measured."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main(["--out", "unused.json"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "make bench" in err


def test_forward_flops_formula_equals_torch_flop_counter():
    """`mae_forward_flops` equals torch's FlopCounterMode on a real forward (tiny preset, two
    frames, eval mode, math attention so that the attention products are counted), and at
    ViT-B batch 64 it is the hand-computed value."""
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = DropMAE(cfg).eval()
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, x.flip(-1), 0.75)
    assert counter.get_total_flops() == bench_gpu.mae_forward_flops(cfg, 2)
    # ViT-B: L 392, 98 kept; per sample 2*392*768*768 + 12*98*(24*768^2 + 4*98*768)
    #        + 2*98*768*512 + 8*392*(24*512^2 + 4*392*512) + 2*392*512*768
    per = (2 * 392 * 768 * 768 + 12 * 98 * (24 * 768 ** 2 + 4 * 98 * 768) + 2 * 98 * 768 * 512
           + 8 * 392 * (24 * 512 ** 2 + 4 * 392 * 512) + 2 * 392 * 512 * 768)
    assert bench_gpu.mae_forward_flops(get_config("base"), 64) == 64 * per
    assert bench_gpu.mae_train_flops(get_config("base"), 64) == 3 * 64 * per


def test_peak_lookup_and_paper_rate():
    """Peak by GPU name substring (longest match first); the official pipeline's rate implied
    by the paper: 400 epochs x 237,568 clips in 21.1 h on 64 GPUs, about 20 samples/s per GPU."""
    assert bench_gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert bench_gpu.peak_tflops("Some Unknown GPU") is None
    assert 19.5 < bench_gpu.PAPER["official_samples_per_s_per_gpu"] < 20.0
