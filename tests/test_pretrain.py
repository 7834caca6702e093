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
CKPT_KEYS = {"model", "optimizer", "epoch", "step", "scaler", "args", "config", "rng"}


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


def test_resume_gives_the_same_weights_as_a_straight_run(straight_run, tmp_path):
    """2 iterations, stop (--max-steps), --resume auto for 2 more == 4 straight (ASAD on)."""
    tiny_run(tmp_path, "--max-steps", "2")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0.pth"]
    first = load(tmp_path / "checkpoint-0.pth")
    assert (first["epoch"], first["step"]) == (0, 2)
    tiny_run(tmp_path, "--resume", "auto")
    resumed, straight = load(tmp_path / "checkpoint-1.pth"), load(straight_run / "checkpoint-1.pth")
    assert (resumed["epoch"], resumed["step"]) == (1, 4)
    before = load(straight_run / "checkpoint-0.pth")["model"]
    moved = max((straight["model"][k] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-3                                            # epoch 1 did train
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=1e-6, msg=k)
    for s, r in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        torch.testing.assert_close(r["exp_avg_sq"], s["exp_avg_sq"], rtol=0, atol=1e-9)
    losses = lambda run: [r["loss"] for r in read_log(run) if r.get("epoch") == 1 and "loss" in r]
    assert losses(tmp_path) == pytest.approx(losses(straight_run), abs=1e-6)


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
        assert {"epoch", "step", "loss", "lr", "samples_per_s", "data_time_s", "skipped"} <= set(r)
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0
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


def test_torchrun_two_processes_match_one_process_with_the_global_batch(tmp_path):
    """2 gloo processes x batch 2 == 1 process x batch 4, after 4 iterations.

    DistributedSampler(shuffle=True) deals the shuffled order round-robin, so the two ranks'
    batch t together hold exactly the single process's batch t (8 videos: no padding), and the
    masking noise is a function of the sample index, so the masks agree too. ASAD is off
    (--P 0): its draws come from each process's own generator and would differ. --blr also
    checks lr = blr * (batch x world) / 256 = 1e-3 in both runs.
    """
    common = ["dropmae.py", "pretrain", "--model", "tiny", "--data", "synthetic",
              "--num-synthetic", "8", "--epochs", "2", "--num-workers", "0", "--P", "0",
              "--blr", "0.064", "--warmup-epochs", "0", "--save-every", "1", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    runs = {"single": [sys.executable] + common + ["--batch-size", "4"],
            "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={free_port()}"] + common + ["--batch-size", "2"]}
    for name, cmd in runs.items():
        done = subprocess.run(cmd + ["--output", str(tmp_path / name)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    single, ddp = (load(tmp_path / n / "checkpoint-1.pth") for n in runs)
    assert single["args"]["lr"] == ddp["args"]["lr"] == pytest.approx(1e-3)
    assert ddp["args"]["world_size"] == 2 and len(ddp["rng"]) == 2
    before = load(tmp_path / "single" / "checkpoint-0.pth")["model"]
    assert max((single["model"][k] - v).abs().max().item() for k, v in before.items()) > 5e-4
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=0, atol=5e-5, msg=k)
    losses = lambda n: [r["loss"] for r in read_log(tmp_path / n) if "step" in r]
    assert len(losses("ddp")) == 4 and losses("ddp") == pytest.approx(losses("single"), rel=1e-5)
