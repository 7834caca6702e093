"""The `pretrain` command: lr schedule, weight-decay groups, resume, DDP, checkpoints, run folder.

Runs use the `tiny` model on `synthetic` data (and once on real mp4 clips) with a few
iterations, on the CPU. In-process runs call `dropmae.main([...])`; the DDP test launches
`torch.distributed.run` in subprocesses (gloo, OMP_NUM_THREADS=1, a free port, a timeout).
"""
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import dropmae
from dropmae import DropMAE, ViTEncoder, get_config, load_pretrained, lr_at, mask_noise, param_groups

REPO = Path(__file__).resolve().parents[1]
CKPT_KEYS = {"model", "optimizer", "epoch", "step", "iteration", "epoch_iterations", "scaler",
             "args", "config", "rng"}


def tiny_run(out, *extra):
    """A CPU run of the tiny model: 4 synthetic videos, batch 2, so 2 iterations per epoch."""
    return dropmae.main(["pretrain", "--model", "tiny", "--data", "synthetic", "--cpu",
                         "--num-synthetic", "4", "--batch-size", "2", "--num-workers", "0",
                         "--epochs", "2", "--warmup-epochs", "1", "--lr", "1e-3",
                         "--save-every", "1", "--log-every", "1", "--output", str(out), *extra])


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """2 epochs x 2 iterations in one go, ASAD on (P 0.1): checkpoint-0 and checkpoint-1."""
    out = tmp_path_factory.mktemp("straight")
    tiny_run(out)
    return out


# ---- schedule and parameter groups -------------------------------------------------------

def test_lr_at_warmup_then_half_cycle_cosine_official_values():
    """MAE lr_sched: linear warmup over 40 epochs to 2.4e-3, then cosine to min_lr at 400."""
    args = Namespace(lr=2.4e-3, min_lr=0.0, warmup_epochs=40, epochs=400)
    assert lr_at(0.0, args) == 0.0                                   # warmup start
    assert lr_at(0.5, args) == pytest.approx(2.4e-3 * 0.5 / 40)     # fractional epoch: 3e-5
    assert lr_at(20.0, args) == pytest.approx(1.2e-3)               # warmup middle
    assert lr_at(40.0, args) == pytest.approx(2.4e-3)               # warmup end = peak
    assert lr_at(130.0, args) == pytest.approx(1.2e-3 * (1 + math.sqrt(0.5)))  # t = 1/4
    assert lr_at(220.0, args) == pytest.approx(1.2e-3)              # cosine middle
    assert lr_at(400.0, args) == pytest.approx(0.0, abs=1e-18)      # cosine end
    args.min_lr = 1e-5
    assert lr_at(220.0, args) == pytest.approx(1e-5 + (2.4e-3 - 1e-5) * 0.5)
    assert lr_at(400.0, args) == pytest.approx(1e-5)


def test_param_groups_timm_add_weight_decay_rule(capsys):
    """wd 0 for ndim 1 or '.bias', wd 0.05 for the rest incl. the 1x1xD tokens; pos tables out."""
    model = DropMAE(get_config("tiny"))
    no_decay, decay = param_groups(model, 0.05)
    assert "timm 0.3.2 add_weight_decay" in capsys.readouterr().out
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    # tiny: encoder depth 4, decoder depth 2. Decayed: patch conv, 2 frame vectors, 4 matrices
    # per block (qkv, proj, fc1, fc2) x 6 blocks, decoder_embed, mask_token, 2 decoder frame
    # vectors, decoder_pred = 1 + 2 + 24 + 1 + 1 + 2 + 1 = 32.
    # Not decayed: patch bias, 8 per block (2 LN x 2, 4 biases) x 6, norm x 2, decoder_norm x 2,
    # decoder_embed.bias, decoder_pred.bias = 1 + 48 + 2 + 2 + 1 + 1 = 55.
    assert (len(decay["names"]), len(no_decay["names"])) == (32, 55)
    # patch 96*3*16*16 + frame vectors 2*96 + encoder blocks 4*(96*288 + 96*96 + 2*96*384)
    # + decoder_embed 96*64 + mask 64 + 2*64 + decoder blocks 2*(64*192 + 64*64 + 2*64*256)
    # + decoder_pred 64*768
    assert sum(p.numel() for p in decay["params"]) == (
        73728 + 192 + 442368 + 6144 + 64 + 128 + 98304 + 49152)
    for name in ("mask_token", "temporal_pos_embed_x", "temporal_pos_embed_z",
                 "decoder_temporal_pos_embed_x", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"):
        assert name in decay["names"]
    for name in ("blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.3.attn.qkv.bias",
                 "norm.weight", "decoder_pred.bias", "patch_embed.proj.bias"):
        assert name in no_decay["names"]
    everything = decay["names"] + no_decay["names"]
    assert "pos_embed" not in everything and "decoder_pos_embed" not in everything
    assert len(everything) == sum(p.requires_grad for p in model.parameters())


def test_mask_noise_is_a_function_of_seed_epoch_and_sample_index():
    """Row b depends only on (seed, epoch, indices[b]): not on the batch it sits in."""
    a = mask_noise(0, 3, [5, 7], 72)
    assert a.shape == (2, 72) and 0.0 <= a.min() and a.max() < 1.0
    assert torch.equal(a[1], mask_noise(0, 3, [7], 72)[0])
    assert not torch.equal(a[1], mask_noise(0, 4, [7], 72)[0])     # new epoch, new mask
    assert not torch.equal(a[1], mask_noise(1, 3, [7], 72)[0])     # new seed, new mask


# ---- runs ---------------------------------------------------------------------------------

def test_unknown_argument_is_an_error():
    """argparse rejects flags it does not know (exit code 2)."""
    with pytest.raises(SystemExit) as err:
        dropmae.main(["pretrain", "--model", "tiny", "--batchsize", "2"])
    assert err.value.code == 2


def assert_same_training_state(a: dict, b: dict, atol: float = 1e-6):
    """Two checkpoints hold the same weights and AdamW moments (float tolerance)."""
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=0, atol=atol, msg=k)
    for s, r in zip(b["optimizer"]["state"].values(), a["optimizer"]["state"].values()):
        torch.testing.assert_close(r["exp_avg_sq"], s["exp_avg_sq"], rtol=0, atol=1e-9)


def step_losses(run) -> list[float]:
    return [r["loss"] for r in read_log(run) if "step" in r]


@pytest.mark.parametrize("stop", [1, 2])
def test_resume_gives_the_same_weights_as_a_straight_run(straight_run, tmp_path, stop):
    """--max-steps 1 (mid-epoch 0) or 2 (end of epoch 0), then --resume auto, == 4 iterations
    straight (ASAD on). Mid-epoch, the checkpoint records the iteration, the resume continues
    at the next one, and the partial checkpoint-0 is overwritten once epoch 0 is complete."""
    tiny_run(tmp_path, "--max-steps", str(stop))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0.pth"]
    first = load(tmp_path / "checkpoint-0.pth")
    assert (first["epoch"], first["step"], first["iteration"], first["epoch_iterations"]) == \
        (0, stop, stop, 2)
    tiny_run(tmp_path, "--resume", "auto")
    straight = load(straight_run / "checkpoint-1.pth")
    before = load(straight_run / "checkpoint-0.pth")
    moved = max((straight["model"][k] - v).abs().max().item() for k, v in before["model"].items())
    assert moved > 1e-3                                            # epoch 1 did train
    for epoch, reference in ((0, before), (1, straight)):
        resumed = load(tmp_path / f"checkpoint-{epoch}.pth")
        assert (resumed["epoch"], resumed["step"], resumed["iteration"]) == (epoch, 2 * epoch + 2, 2)
        assert_same_training_state(resumed, reference)
    assert step_losses(tmp_path) == pytest.approx(step_losses(straight_run), abs=1e-6)


def test_explicit_resume_path_into_another_folder(straight_run, tmp_path):
    """--resume PATH (not 'auto') continues from that file, here in a fresh run folder: epoch 1
    only, the same result as the straight run; a missing file is a clear error."""
    tiny_run(tmp_path, "--resume", str(straight_run / "checkpoint-0.pth"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth"]
    assert_same_training_state(load(tmp_path / "checkpoint-1.pth"), load(straight_run / "checkpoint-1.pth"))
    assert [r["step"] for r in read_log(tmp_path) if "step" in r] == [2, 3]
    with pytest.raises(FileNotFoundError, match="nope.pth: no such checkpoint"):
        tiny_run(tmp_path / "b", "--resume", str(tmp_path / "nope.pth"))


def test_accum_iter_2_equals_batch_x2_and_drops_the_epoch_tail(tmp_path):
    """--accum-iter 2 with batch 2 makes the update of batch 4 (loss / accum_iter, one AdamW step
    per 2 iterations, lr set at the first of them). 6 videos: 3 iterations per epoch at batch 2,
    so the 3rd iteration's gradient is a partial accumulation, dropped at the epoch's end as the
    official zero_grad does (batch 4 drops those 2 videos with drop_last). After 2 epochs the
    weights agree; the effective batch and lr are the same (--blr 0.064: 0.064 * 4 / 256).
    Tolerance 2e-5: the key part of each qkv bias has a true gradient of 0 (softmax ignores a
    shift of all logits), so its gradient is rounding noise that AdamW scales up to ~1e-6
    differences; a gradient leaking into the next epoch moves 87 tensors by ~8e-4."""
    common = ["pretrain", "--model", "tiny", "--data", "synthetic", "--cpu", "--num-synthetic", "6",
              "--num-workers", "0", "--epochs", "2", "--warmup-epochs", "0", "--blr", "0.064",
              "--P", "0", "--save-every", "1", "--log-every", "1"]
    dropmae.main(common + ["--batch-size", "4", "--output", str(tmp_path / "big")])
    dropmae.main(common + ["--batch-size", "2", "--accum-iter", "2", "--output", str(tmp_path / "acc")])
    big, acc = load(tmp_path / "big" / "checkpoint-1.pth"), load(tmp_path / "acc" / "checkpoint-1.pth")
    assert big["args"]["eff_batch"] == acc["args"]["eff_batch"] == 4
    assert big["args"]["lr"] == acc["args"]["lr"] == pytest.approx(1e-3)
    assert acc["step"] == 6 and big["step"] == 2
    assert_same_training_state(acc, big, atol=2e-5)
    lrs = [r["lr"] for r in read_log(tmp_path / "acc") if "step" in r]
    # set at each update's first iteration on the fractional epoch e: 1e-3 * (1 + cos(pi e / 2)) / 2
    # e = 0, 0, 2/3 (the dropped tail starts an update), 1, 1, 5/3
    c = lambda e: 1e-3 * (1 + math.cos(math.pi * e / 2)) / 2
    assert lrs == pytest.approx([1e-3, 1e-3, 7.5e-4, 5e-4, 5e-4, c(5 / 3)])
    assert c(5 / 3) == pytest.approx(6.69873e-5)


def test_loader_workers_do_not_change_the_run(straight_run, tmp_path):
    """--num-workers 2 gives the same losses and weights as --num-workers 0 (ASAD on): items are
    functions of (seed, epoch, index) and the loader does not draw from the global RNG."""
    tiny_run(tmp_path, "--num-workers", "2")
    assert step_losses(tmp_path) == pytest.approx(step_losses(straight_run), abs=1e-6)
    assert_same_training_state(load(tmp_path / "checkpoint-1.pth"), load(straight_run / "checkpoint-1.pth"))


def test_bad_command_lines_are_clear_errors(tmp_path):
    """--data k400 without --data-path, an empty folder, fewer videos than one batch, and
    --accum-iter 0 fail with a message (no run starts)."""
    with pytest.raises(ValueError, match="--data k400 needs --data-path"):
        dropmae.main(["pretrain", "--model", "tiny", "--data", "k400", "--output", str(tmp_path / "a")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        dropmae.main(["pretrain", "--model", "tiny", "--data", "folder", "--data-path",
                      str(tmp_path / "empty"), "--cpu", "--output", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="3 videos give no full batch of 4"):
        tiny_run(tmp_path / "c", "--num-synthetic", "3", "--batch-size", "4")
    for flag in ("--accum-iter", "--batch-size"):
        with pytest.raises(SystemExit) as err:
            tiny_run(tmp_path / "d", flag, "0")
        assert err.value.code == 2


def test_rng_state_round_trip_restores_every_generator():
    """rng_state / set_rng_state: torch, python (incl. its cached gauss) and numpy (incl. its
    cached normal) continue exactly; the state survives a weights_only save and load."""
    import io
    import random

    import numpy as np
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    random.gauss(0, 1)                                   # leaves a cached second normal
    np.random.normal()                                   # likewise in numpy
    buf = io.BytesIO()
    torch.save(dropmae.rng_state(), buf)
    draw = lambda: (torch.rand(3).tolist(), random.gauss(0, 1), random.random(),
                    float(np.random.normal()), float(np.random.rand()))
    expected = draw()
    buf.seek(0)
    dropmae.set_rng_state(torch.load(buf, weights_only=True))
    assert draw() == expected


def test_checkpoint_is_atomic_complete_and_loads_as_ours(straight_run):
    """checkpoint-<epoch>.pth: no .tmp left, weights_only load, the listed entries, kind 'ours'."""
    assert sorted(p.name for p in straight_run.iterdir() if "checkpoint" in p.name) == \
        ["checkpoint-0.pth", "checkpoint-1.pth"]
    assert not list(straight_run.glob("*.tmp"))
    ckpt = load(straight_run / "checkpoint-1.pth")
    assert set(ckpt) == CKPT_KEYS
    assert ckpt["config"] == dataclasses.asdict(get_config("tiny", P=0.1))
    assert ckpt["args"]["model"] == "tiny" and ckpt["args"]["lr"] == 1e-3
    assert ckpt["args"]["eff_batch"] == 2 and ckpt["args"]["amp"] == "off"
    assert len(ckpt["rng"]) == 1                                   # one state per process
    assert (ckpt["epoch"], ckpt["step"], ckpt["iteration"], ckpt["epoch_iterations"]) == (1, 4, 2, 2)
    assert load_pretrained(straight_run / "checkpoint-1.pth", DropMAE(get_config("tiny")),
                           verbose=False)["kind"] == "ours"
    report = load_pretrained(straight_run / "checkpoint-1.pth", ViTEncoder(get_config("tiny")),
                             verbose=False)
    assert report["kind"] == "ours" and "mask_token" in report["dropped"]


def test_run_folder_is_self_describing(straight_run):
    """config.json, git.txt, env.json and log.jsonl with the per-step and per-epoch fields."""
    config = json.loads((straight_run / "config.json").read_text())
    assert config["config"]["depth"] == 4 and config["args"]["batch_size"] == 2
    assert (straight_run / "git.txt").read_text().startswith("commit")
    assert "torch" in json.loads((straight_run / "env.json").read_text())
    log = read_log(straight_run)
    steps = [r for r in log if "step" in r]
    epochs = [r for r in log if "train_loss" in r]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]            # --log-every 1
    for r in steps:
        assert {"epoch", "step", "loss", "lr", "grad_norm", "samples_per_s", "data_time_s",
                "skipped"} <= set(r)
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0
    # the gradient norm of each update (accum 1: every step); step 0 has lr 0 but a gradient
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in steps)
    # lr on the fractional epoch: warmup 1 epoch of 2 iterations, peak 1e-3, cosine over epoch 1
    assert [r["lr"] for r in steps] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert epochs[0]["skipped"] == 0 and epochs[0]["skipped_videos"] == "skipped videos: none"


def test_non_finite_loss_stops_with_rank_epoch_step_and_keeps_the_checkpoint(tmp_path, capsys):
    """A NaN at step 3 (epoch 1): exit code 1, a message naming rank/epoch/step, checkpoint-0 kept."""
    with pytest.raises(SystemExit) as err:
        tiny_run(tmp_path, "--debug-nan-at-step", "3")
    assert err.value.code == 1
    out = capsys.readouterr().out
    assert "non-finite loss nan on rank 0 at epoch 1, step 3" in out
    assert f"Last good checkpoint: {tmp_path / 'checkpoint-0.pth'}" in out
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0.pth"]
    ckpt = load(tmp_path / "checkpoint-0.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_mp4_clips_train_and_a_broken_video_is_reported(tmp_path):
    """Real mp4 clips in the K400 layout; a corrupt file is reported in the epoch line."""
    from data import write_synthetic_clips
    clips = tmp_path / "k400"
    write_synthetic_clips(clips, num_classes=2, per_class=2, seconds=1.0, fps=10, size=(128, 96))
    broken = clips / "class_00" / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    run = tmp_path / "run"
    dropmae.main(["pretrain", "--model", "tiny", "--data", "k400", "--data-path", str(clips),
                  "--cpu", "--batch-size", "5", "--num-workers", "0", "--epochs", "1",
                  "--output", str(run)])
    assert (run / "video_index.json").is_file()                  # default index cache
    log = read_log(run)
    assert math.isfinite(log[0]["loss"]) and log[0]["skipped"] == 1
    assert log[-1]["skipped"] == 1 and f"{broken}: " in log[-1]["skipped_videos"]
    assert set(load(run / "checkpoint-0.pth")) == CKPT_KEYS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_with_accumulation_match_one_process_with_the_global_batch(tmp_path):
    """2 gloo processes x batch 1 x --accum-iter 2 == 1 process x batch 4, after 2 epochs.

    DistributedSampler(shuffle=True) deals the shuffled order round-robin, so the two ranks'
    first two iterations together hold exactly the single process's first batch (8 videos: no
    padding), and the masking noise is a function of the sample index, so the masks agree too.
    The gradients of the first iteration stay local (DDP no_sync) and are averaged with the
    second's at the update; loss / accum_iter and DDP's mean over ranks make the batch-4 mean.
    ASAD is off (--P 0): its draws come from each process's own generator and would differ.
    --blr checks lr = blr * (batch x accum x world) / 256 = 1e-3 in both runs.
    """
    common = ["pretrain", "--model", "tiny", "--data", "synthetic", "--num-synthetic", "8",
              "--epochs", "2", "--num-workers", "0", "--P", "0", "--blr", "0.064",
              "--warmup-epochs", "0", "--save-every", "1", "--log-every", "1"]
    dropmae.main(common + ["--cpu", "--batch-size", "4", "--output", str(tmp_path / "single")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "dropmae.py"] + common + [
           "--batch-size", "1", "--accum-iter", "2", "--output", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    single, ddp = (load(tmp_path / n / "checkpoint-1.pth") for n in ("single", "ddp"))
    assert single["args"]["lr"] == ddp["args"]["lr"] == pytest.approx(1e-3)
    assert ddp["args"]["world_size"] == 2 and ddp["args"]["eff_batch"] == 4 and len(ddp["rng"]) == 2
    assert (single["step"], ddp["step"]) == (4, 8)
    before = load(tmp_path / "single" / "checkpoint-0.pth")["model"]
    assert max((single["model"][k] - v).abs().max().item() for k, v in before.items()) > 5e-4
    assert_same_training_state(ddp, single, atol=5e-5)
    epoch_losses = lambda n: [r["train_loss"] for r in read_log(tmp_path / n) if "train_loss" in r]
    assert epoch_losses("ddp") == pytest.approx(epoch_losses("single"), rel=1e-5)
