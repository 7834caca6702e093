"""reproduce/flow_probe.py: the held-out worlds are disjoint from the training stream, and the
zero-flow EPE it prints is the mean |flow| of the held-out centre crops, computed by hand."""
import numpy as np
import pytest

from reproduce import flow_probe


def test_probe_scores_zero_flow_on_held_out_worlds():
    args = flow_probe.parse_args(["--steps", "1", "--batch", "2", "--held-out", "3", "--crop", "32",
                                  "--eval-every", "1"])
    rec = flow_probe.run(args)[-1]
    mags = []
    for k in range(3):
        _, _, f = flow_probe.make_pair(flow_probe.HELD_OUT_SEEDS + k, args)
        H, W = f.shape[:2]
        mags.append(np.linalg.norm(f[(H - 32) // 2:(H - 32) // 2 + 32, (W - 32) // 2:(W - 32) // 2 + 32], axis=2))
    assert rec["zero_epe"] == pytest.approx(float(np.mean(mags)), rel=1e-5)
    assert rec["mean_flow_std_gt"] > 0.5                 # the held-out pairs move, and differently
    assert flow_probe.HELD_OUT_SEEDS - flow_probe.TRAIN_SEEDS > 1_000_000
    # the correlation flags reach the model; the held-out pairs and their zero-flow EPE do not change
    args_c = flow_probe.parse_args(["--steps", "1", "--batch", "2", "--held-out", "3", "--crop", "32",
                                    "--eval-every", "1", "--corr-radius", "1", "--corr-match"])
    rec_c = flow_probe.run(args_c)[-1]
    assert rec_c["zero_epe"] == rec["zero_epe"] and rec_c["epe"] != rec["epe"]


def test_brightness_control_pair():
    args = flow_probe.parse_args(["--control", "brightness"])
    img1, img2, f = flow_probe.make_pair(flow_probe.HELD_OUT_SEEDS, args)
    u, v = f[0, 0]
    assert np.all(f == f[0, 0])                          # one (u, v) for the whole pair
    inside = (img1[..., 0] > 30) & (img1[..., 0] < 220) & (img1[..., 1] > 30) & (img1[..., 1] < 220)
    d = img2.astype(np.float64) - img1
    assert np.abs(d[..., 0][inside] - 8 * u).max() <= 0.51   # rounded to grey levels
    assert np.abs(d[..., 1][inside] - 8 * v).max() <= 0.51
    assert np.all(d[..., 2] == 0)
