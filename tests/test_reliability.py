"""Bad input as a hostile user gives it: every case a clear error naming the file, a count
where input is skipped, never a hang or a silent acceptance (issue 15, one test per defect).

Defects pinned here: 3 and 9 (checkpoint reader), 4 (frame counts that lie, truncated videos,
out-of-order timestamps), 5 (resume past a corrupt checkpoint), 6 (range-checked flags), 7 (disk
full while saving), 8 (a pre-training checkpoint given to tasks/vos.py test), 10 (flow),
11 (TAP-Vid pickles), 12 (evaluators print first, write atomically), 13 (attention video
count), 16 (DAVIS with empty first frames), the `folder` preset (link loops, FIFOs).
Defects 1 and 2 (tasks/vot.py test) are in tests/test_vot.py.
"""
import datetime
import errno
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import data
import dropmae
from eval import davis, flow, tapvid
from tasks import vos

REPO = Path(__file__).resolve().parents[1]


def tiny_pretrain_checkpoint(path):
    """A checkpoint as `dropmae.py pretrain` writes it (model, config, optimizer, epoch, step)."""
    torch.manual_seed(0)
    model = dropmae.DropMAE(dropmae.get_config("tiny"))
    torch.save({"model": model.state_dict(), "config": vars(model.cfg), "optimizer": {},
                "epoch": 0, "step": 1}, path)
    return path


# ---------------------------------------------------------------- 3, 9: the checkpoint reader

@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """A good checkpoint and five bad ones: missing, empty, truncated, random bytes, pickled
    objects (a datetime.date: not a tensor, a container or a Namespace)."""
    root = tmp_path_factory.mktemp("ckpts")
    good = tiny_pretrain_checkpoint(root / "good.pth")
    raw = good.read_bytes()
    (root / "empty.pth").write_bytes(b"")
    (root / "truncated.pth").write_bytes(raw[:len(raw) // 2])
    (root / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"model": {}, "day": datetime.date(2026, 12, 1)}, root / "objects.pth")
    return root


@pytest.mark.parametrize("name, says", [
    ("missing.pth", "no such checkpoint file"),
    ("empty.pth", r"empty file \(0 bytes\)"),
    ("truncated.pth", "truncated checkpoint"),
    ("random.pth", "corrupt or not a torch checkpoint"),
    ("objects.pth", r"pickles Python objects \(datetime.date\).*pass --trust-pickle"),
])
def test_checkpoint_reader_says_what_is_wrong_and_names_the_file(bad_checkpoints, name, says):
    """Defect 3 and 9: each bad file gets its own reason, always with the path; only the one
    that pickles objects mentions --trust-pickle; read_checkpoint gives the same errors."""
    path = bad_checkpoints / name
    error = FileNotFoundError if name == "missing.pth" else dropmae.CheckpointError
    with pytest.raises(error, match=f"{path}: .*{says}") as caught:
        dropmae.load_checkpoint(path)
    assert ("--trust-pickle" in str(caught.value)) == (name == "objects.pth")
    with pytest.raises(error, match=str(path)):
        dropmae.read_checkpoint(path)


def test_trusted_pickle_loads_and_corrupt_files_stay_clear_with_trust(bad_checkpoints):
    """Defect 3: with --trust-pickle the object file loads; random and truncated files still
    get the named corrupt/truncated error, never a raw UnpicklingError."""
    ckpt = dropmae.load_checkpoint(bad_checkpoints / "objects.pth", trust_pickle=True)
    assert ckpt["day"] == datetime.date(2026, 12, 1)
    for name, says in (("random.pth", "corrupt"), ("truncated.pth", "truncated")):
        with pytest.raises(dropmae.CheckpointError, match=f"{name}: {says}"):
            dropmae.load_checkpoint(bad_checkpoints / name, trust_pickle=True)
    assert set(dropmae.load_checkpoint(bad_checkpoints / "good.pth")) >= {"model", "config"}


def test_only_the_readers_call_torch_load_or_pickle_load():
    """The one checkpoint reader (dropmae.load_checkpoint) and the trusted TAP-Vid reader
    (eval/tapvid.py read_pickle) are the only call sites outside the tests (reproduce/pipeline.py's
    `load_foreign` goes through load_checkpoint)."""
    out = subprocess.run(["git", "grep", "-n", r"torch\.load(\|pickle\.load(", "--", "*.py"],
                         cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    sites = sorted({line.split(":")[0] for line in out if not line.startswith("tests/")})
    assert set(sites) <= {"dropmae.py", "eval/tapvid.py"}, sites
    body = (REPO / "dropmae.py").read_text()
    calls = [ln for ln in body.splitlines() if "torch.load(" in ln and "`" not in ln]
    assert len(calls) == 2                        # both in load_checkpoint (plain, then trusted)


# ---------------------------------------------------------------- 8: the wrong kind of checkpoint

def test_vos_test_with_a_pretraining_or_truncated_checkpoint(tmp_path):
    """Defect 8: tasks/vos.py test names the file and says it is a pre-training checkpoint (it
    needs a DropSeg one); a truncated file is named as truncated. No KeyError, no raw torch error."""
    ckpt = tiny_pretrain_checkpoint(tmp_path / "checkpoint-0.pth")
    argv = ["test", "--dataset", "davis17_val", "--data-path", str(tmp_path), "--output",
            str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=f"{ckpt}: this is a pre-training checkpoint "
                                         r"\(dropmae.py pretrain\).*needs a DropSeg checkpoint"):
        vos.main(argv + ["--ckpt", str(ckpt)])
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=f"{cut}: truncated checkpoint"):
        vos.main(argv + ["--ckpt", str(cut)])
    from tasks import vot                          # the tracker's test says the same
    with pytest.raises(dropmae.CheckpointError, match=f"{ckpt}: this is a pre-training checkpoint"
                                                      ".*needs a DropTrack checkpoint"):
        vot.load_tracker_checkpoint(ckpt)


# ---------------------------------------------------------------- 5: resume past a corrupt one

def test_resume_auto_falls_back_past_a_corrupt_latest_checkpoint(tmp_path, capsys):
    """Defect 5: the newest checkpoint is truncated: --resume auto names it, moves it aside to
    .corrupt and continues from the previous good one; with every one corrupt it stops with a
    message naming them."""
    run = tmp_path / "run"
    dropmae.main(["pretrain", "--model", "tiny", "--data", "synthetic", "--cpu", "--num-synthetic",
                  "2", "--batch-size", "2", "--num-workers", "0", "--epochs", "2",
                  "--warmup-epochs", "1", "--lr", "1e-3", "--save-every", "1", "--output", str(run)])
    latest = run / "checkpoint-1.pth"
    latest.write_bytes(latest.read_bytes()[:2000])
    capsys.readouterr()
    dropmae.main(["pretrain", "--model", "tiny", "--data", "synthetic", "--cpu", "--num-synthetic",
                  "2", "--batch-size", "2", "--num-workers", "0", "--epochs", "2",
                  "--warmup-epochs", "1", "--lr", "1e-3", "--save-every", "1", "--output", str(run),
                  "--resume", "auto"])
    err = capsys.readouterr()
    assert f"{latest}: truncated checkpoint" in err.err and "moved it aside" in err.err
    assert "resumed from" in err.out and "checkpoint-0.pth" in err.out
    assert (run / "checkpoint-1.pth.corrupt").is_file()
    assert torch.load(latest, weights_only=True)["epoch"] == 1       # epoch 1 trained again
    for p in run.glob("checkpoint-*.pth"):
        p.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="no readable checkpoint.*checkpoint-1.pth.*checkpoint-0.pth"):
        dropmae.resume_checkpoint(run, "auto")


# ---------------------------------------------------------------- 6: range-checked flags

@pytest.mark.parametrize("argv, says", [
    (["--mask-ratio", "1.5"], r"--mask-ratio: must be in \[0, 1\), got 1.5"),
    (["--mask-ratio", "-0.1"], r"--mask-ratio: must be in \[0, 1\), got -0.1"),
    (["--P", "2"], r"--P: must be in \[0, 1\), got 2"),
    (["--P", "nan"], r"--P: must be in \[0, 1\), got nan"),
])
def test_probability_and_ratio_flags_are_range_checked(argv, says, capsys, tmp_path):
    """Defect 6: an out-of-range ratio is an argparse error naming the flag and the range
    (before the fix, a one-step run that trains silently)."""
    with pytest.raises(SystemExit):
        dropmae.main(["pretrain", "--model", "tiny", "--data", "synthetic", "--cpu",
                      "--num-synthetic", "2", "--batch-size", "2", "--num-workers", "0",
                      "--epochs", "1", "--max-steps", "1", "--output", str(tmp_path), *argv])
    assert re.search(says, capsys.readouterr().err)


def test_vos_ratio_flags_are_range_checked(capsys):
    for flag, value in (("--bootstrap-p", "0"), ("--bootstrap-p", "1.2"), ("--lr-gamma", "3")):
        with pytest.raises(SystemExit):
            vos.parse_args(["train", "--output", "x", flag, value])
        assert f"{flag}: must be in (0, 1], got {value}" in capsys.readouterr().err
    assert vos.parse_args(["train", "--output", "x", "--bootstrap-p", "1"]).bootstrap_p == 1.0


# ---------------------------------------------------------------- 7: disk full while saving

def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Defect 7: the write fails with ENOSPC half-way: a message saying the disk is full with
    the path, no .tmp left behind, the previous checkpoint intact."""
    path = tmp_path / "checkpoint-3.pth"
    dropmae.save_checkpoint(path, {"epoch": 2, "w": torch.arange(4)})
    before = path.read_bytes()

    def full_disk(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(dropmae.torch, "save", full_disk)
    with pytest.raises(OSError, match=f"{path}: the disk is full.*previous checkpoint is intact") as e:
        dropmae.save_checkpoint(path, {"epoch": 3})
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---------------------------------------------------------------- 4: lying frame counts

FPS = 15


def index_clip(path, n, faststart=True):
    """n frames whose every pixel holds 8 t + 4 (frame t can be read back from any pixel)."""
    frames = [np.full((32, 48, 3), 8 * t + 4, np.uint8) for t in range(n)]
    data.encode_clip(str(path), frames, fps=FPS, gop=8, codec="mpeg4", faststart=faststart)
    return path


def frame_number(image):
    """t of a frame of `index_clip`, from a PIL image or a normalised (3, S, S) item tensor."""
    if torch.is_tensor(image):
        return int((image[0, 0, 0] * data.IMAGENET_STD[0] + data.IMAGENET_MEAN[0]) * 255) // 8
    return int(np.asarray(image)[16, 24, 0]) // 8


def video_packets(path):
    with av.open(str(path)) as c:
        return [(p.pts, p.dts, p.pos) for p in c.demux(c.streams.video[0]) if p.size]


def cut_after(src, dst, frames):
    """Keep the first `frames` frames' bytes of a faststart mp4 (its index, written first,
    still says all of them): the container lies about its frame count, as a truncated copy."""
    pos = video_packets(src)[frames][2]
    dst.write_bytes(src.read_bytes()[:pos])
    return dst


def swap_timestamps(src, dst, i):
    """Remux with the timestamps of frames i and i + 1 swapped (decode order unchanged, dts
    kept increasing): the decoder then gives timestamps out of order, as in some trailers."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        o = out.add_stream_from_template(stream)
        packets = [p for p in inp.demux(stream) if p.size]
        pts = [p.pts for p in packets]
        step = pts[1] - pts[0]
        pts[i], pts[i + 1] = pts[i + 1], pts[i]
        for k, p in enumerate(packets):
            p.pts, p.dts, p.stream = pts[k], (k - 1) * step, o
            out.mux(p)
    return dst


def test_truncated_video_pairs_keep_the_rule_and_are_reported(tmp_path):
    """Defect 4: the container says 30 frames, 12 decode. Every pair of 60 draws is two
    different decoded frames, forward, gap in 1..frame_gap-1, both < 12; the first draw that
    runs past the end is reported (a FrameNote naming the file), and no report is a skip."""
    folder = tmp_path / "videos"
    folder.mkdir()
    good = index_clip(tmp_path / "full.mp4", 30)
    cut_after(good, folder / "cut.mp4", 12)
    assert data.count_frames(str(folder / "cut.mp4")) == 30
    ds = data.FramePairDataset("folder", str(folder), frame_gap=50, input_size=8)
    notes = []
    for epoch in range(60):
        x, z, entries = ds[epoch, 0]
        a, b = frame_number(x), frame_number(z)
        assert 1 <= b - a <= 49 and b < 12, (epoch, a, b)
        notes += entries
    assert len(notes) == 1 and "cut.mp4: the container says 30 frames but only 12 decode" in notes[0]
    assert data.count_skips(notes) == 0
    summary = data.summarize_skipped(notes)
    assert summary.startswith("skipped videos: none\nframe-count notes: 1 notes of 1 unique")


def test_out_of_order_timestamps_never_give_a_same_frame_pair(tmp_path):
    """Defect 4: frames 10 and 11 carry each other's timestamps. Frame k is still the frame
    with timestamp k, so the pair (10, 11) is two different frames, and every pair around
    the swap is forward with two different frames."""
    good = index_clip(tmp_path / "good.mp4", 30, faststart=False)
    bad = swap_timestamps(good, tmp_path / "swapped.mp4", 10)
    assert [frame_number(im) for im in data.decode_frames(str(bad), [10, 11])] == [11, 10]
    for pair in ((9, 10), (9, 11), (11, 12), (10, 12), (3, 11), (11, 25)):
        x, z = data.decode_frames(str(bad), list(pair))
        assert frame_number(x) != frame_number(z), pair
    images, found = data.decode_frames(str(bad), [10, 11], return_indices=True)
    assert found == [10, 11]


def drop_frames(src, dst, first, last):
    """Remux without the packets of frames first..last (every frame of `index_clip` is a
    keyframe): the stream then has a hole in its timestamps, as a video with lost frames."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        o = out.add_stream_from_template(stream)
        for k, p in enumerate(p for p in inp.demux(stream) if p.size):
            if not first <= k <= last:
                p.stream = o
                out.mux(p)
    return dst


def test_pair_across_missing_frames_is_reported(tmp_path, monkeypatch):
    """Defect 4: frames 10-14 are missing from the stream; the pair (9, 10) decodes frames 9
    and 15, a gap of 6 that breaks frame_gap 3: the item says so, naming the file. (Frame k is
    read at the stream's nominal 15 fps here; its average rate, 25 frames in 2 s, is lower.)"""
    folder = tmp_path / "v"
    folder.mkdir()
    drop_frames(index_clip(tmp_path / "full.mp4", 30, faststart=False), folder / "holes.mp4", 10, 14)
    ds = data.FramePairDataset("folder", str(folder), frame_gap=3, input_size=8)
    monkeypatch.setattr(data, "_frame_rate", lambda stream: stream.base_rate)
    monkeypatch.setattr(data, "sample_pair", lambda n, gap, g: (9, 10))
    x, z, notes = ds.load_pair(0, torch.Generator())
    assert (frame_number(x), frame_number(z)) == (9, 15)
    assert len(notes) == 1 and "holes.mp4: frames 9 and 15 decoded for the pair (9, 10): gap 6 " \
        "outside 1..2" in notes[0]


def test_reading_stays_keyframe_seeking(tmp_path):
    """Decoding cost stays that of seeking: frame 28 of a 30-frame clip with a keyframe every 8
    frames decodes at most 8 + REORDER_WINDOW frames."""
    path = str(index_clip(tmp_path / "k.mp4", 30))
    with av.open(path) as container:
        reader = data._FrameReader(container, container.streams.video[0])
        assert reader.read(28)[0] == 28 and reader.decoded <= 8 + data.REORDER_WINDOW


# ---------------------------------------------------------------- folder preset

def test_folder_preset_follows_each_real_path_once_and_skips_fifos(tmp_path, capsys):
    """A link loop (sub/loop -> root) and a second link to a video add nothing; a FIFO named
    .mp4 (which would block the reader) is skipped; the message counts both."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    index_clip(root / "sub" / "a.mp4", 4)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "b.mp4").symlink_to(root / "sub" / "a.mp4")
    os.mkfifo(root / "sub" / "pipe.mp4")
    assert data.list_videos("folder", str(root)) == ["b.mp4"]
    out = capsys.readouterr().out
    assert "skipped 1 video names that are not regular files" in out and "sub/pipe.mp4" in out
    assert "1 links to videos already listed" in out


# ---------------------------------------------------------------- 10: flow files

def test_flow_rejects_non_finite_predictions_and_names_bad_files(tmp_path, capsys):
    """Defect 10: a NaN/inf prediction names the file and the pixel count; an unreadable .npy
    / .npz names the file (no bare numpy error)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    np.save(gt / "a.npy", np.zeros((4, 5, 2), np.float32))
    bad = np.zeros((4, 5, 2), np.float32)
    bad[1, 2, 0], bad[3, 4, 1] = np.nan, np.inf
    np.save(pred / "a.npy", bad)
    with pytest.raises(SystemExit):
        flow.main(["--format", "sintel", "--gt", str(gt), "--pred", str(pred)])
    err = capsys.readouterr().err
    assert f"{pred / 'a.npy'}: non-finite flow (NaN or inf) in 2 of 20 pixels, first at (x=2, y=1)" in err
    (pred / "a.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=f"{pred / 'a.npy'}: cannot read"):
        flow.read_flow(pred / "a.npy")
    (pred / "b.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=f"{pred / 'b.npz'}: cannot read"):
        flow.read_flow(pred / "b.npz")


# ---------------------------------------------------------------- 11: TAP-Vid pickles

class Crafted:
    """Unpickling this calls a function of our choosing (here a harmless one): what a crafted
    pickle does with os.system."""

    def __reduce__(self):
        return (print, ("crafted pickle ran code",))


def tapvid_example(n=2, t=4):
    rng = np.random.default_rng(0)
    return {"points": rng.uniform(0, 1, (n, t, 2)).astype(np.float32),
            "occluded": np.zeros((n, t), bool), "video": np.zeros((t, 2, 2, 3), np.uint8)}


def test_tapvid_pickles_follow_the_trust_rule(tmp_path, capsys):
    """Defect 11: an official-style pickle (arrays in dicts) loads without any flag; one that
    would run code is refused naming the file and --trust-pickle (and runs nothing); with
    --trust-pickle it loads; a corrupt one is named; --help states the rule."""
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"v": tapvid_example()}))
    assert set(tapvid.read_tapvid_gt(tmp_path / "ok.pkl")) == {"v"}
    (tmp_path / "crafted.pkl").write_bytes(pickle.dumps({"v": {**tapvid_example(), "x": Crafted()}}))
    with pytest.raises(ValueError, match=r"crafted.pkl: the pickle holds a Python object "
                                         r"\(builtins.print\).*pass --trust-pickle"):
        tapvid.read_tapvid_gt(tmp_path / "crafted.pkl")
    assert "crafted pickle ran code" not in capsys.readouterr().out
    assert set(tapvid.read_tapvid_gt(tmp_path / "crafted.pkl", trust_pickle=True)) == {"v"}
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "ok.pkl").read_bytes()[:50])
    with pytest.raises(ValueError, match="cut.pkl: truncated or corrupt pickle"):
        tapvid.read_tapvid_gt(tmp_path / "cut.pkl")
    with pytest.raises(SystemExit):
        tapvid.main(["--help"])
    assert "--trust-pickle" in capsys.readouterr().out


def test_tapvid_rejects_nan_in_predictions_and_visible_gt(tmp_path):
    """Defect 11: NaN in a prediction, or at a visible GT point, is an error naming the file;
    NaN at an occluded GT point (never scored) is accepted."""
    ex = tapvid_example()
    ex["points"][0, 2] = np.nan
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps({"v": ex}))
    with pytest.raises(ValueError, match=r"gt.pkl: video 'v': non-finite GT points at 1 visible"):
        tapvid.read_tapvid_gt(tmp_path / "gt.pkl")
    ex["occluded"][0, 2] = True
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps({"v": ex}))
    gt = tapvid.read_tapvid_gt(tmp_path / "gt.pkl")
    preds = tmp_path / "pred"
    preds.mkdir()
    tracks = np.zeros((2, 4, 2))
    tracks[1, 3, 1] = np.nan
    np.savez(preds / "v.npz", tracks=tracks, occluded=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"v.npz: non-finite predicted tracks .* at 1 of 8 points"):
        tapvid.read_predictions(preds, list(gt))
    (preds / "v.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"v.npz: cannot read the .npz"):
        tapvid.read_predictions(preds, list(gt))


# ---------------------------------------------------------------- 12, 16: DAVIS outputs and data

def write_davis(root, gt, pred):
    """One sequence 'seq' of (T, H, W) ids in the DAVIS layout (palette PNGs) -> (davis, results)."""
    from PIL import Image
    davis_root, results = root / "DAVIS", root / "results"
    for t in range(len(gt)):
        for folder, ids in ((davis_root / "Annotations" / "480p" / "seq", gt[t]),
                            (results / "seq", pred[t])):
            folder.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(ids.astype(np.uint8), "P")
            im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            im.save(folder / f"{t:05d}.png")
    (davis_root / "ImageSets" / "2017").mkdir(parents=True)
    (davis_root / "ImageSets" / "2017" / "val.txt").write_text("seq\n")
    return davis_root, results


def test_davis_prints_the_score_first_and_writes_atomically(tmp_path, monkeypatch, capsys):
    """Defect 12: the disk fills while the CSVs are written: the score is already on the
    console, the error names the file, and no 0-byte or partial file is left."""
    gt = np.zeros((3, 6, 8), np.uint8)
    gt[:, 1:4, 2:5] = 1
    davis_root, results = write_davis(tmp_path, gt, gt)
    out = tmp_path / "out"
    real = os.replace

    def full(src, dst):
        if str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SystemExit, match=r"global_results-val.csv: cannot write \(No space left"):
        davis.main(["--davis-path", str(davis_root), "--results", str(results), "--out", str(out)])
    assert capsys.readouterr().out.startswith("DAVIS-2017 val: J&F 100.00")
    assert list(out.iterdir()) == []


def test_flow_and_tapvid_print_the_summary_before_a_failing_write(tmp_path, monkeypatch, capsys):
    """Defect 12, the other evaluators: --out on a full disk: the summary line is printed, the
    error names the file, nothing partial is left."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    np.save(gt / "a.npy", np.zeros((4, 5, 2), np.float32))
    np.save(pred / "a.npy", np.ones((4, 5, 2), np.float32))
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps({"v": tapvid_example()}))
    np.savez(pred / "v.npz", tracks=np.zeros((2, 4, 2)), occluded=np.zeros((2, 4), bool))

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    runs = [(flow.main, ["--format", "sintel", "--gt", str(gt), "--pred", str(pred)], "sintel: 1 images"),
            (tapvid.main, ["--gt", str(tmp_path / "gt.pkl"), "--pred", str(pred), "--query-mode",
                           "first"], "tapvid first: 1 videos")]
    for main, argv, summary in runs:
        out = tmp_path / "o" / "m.json"
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(out)])
        printed = capsys.readouterr()
        assert printed.out.startswith(summary) and f"{out}: cannot write (No space left" in printed.err
        assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_davis_empty_first_frames_name_the_sequence_and_file(tmp_path):
    """Defect 16: every first-frame annotation empty: the error names the sequence and the
    annotation file (the official toolkit returns NaN)."""
    gt = np.zeros((3, 6, 8), np.uint8)
    davis_root, results = write_davis(tmp_path, gt, gt)
    first = davis_root / "Annotations" / "480p" / "seq" / "00000.png"
    with pytest.raises(ValueError, match=f"no object to evaluate.*seq \\({first}\\)"):
        davis.evaluate_davis(davis_root, results)


# ---------------------------------------------------------------- 13: attention video count

def test_attention_counts_skipped_videos_and_distinct_videos(tmp_path, capsys):
    """Defect 13: of three videos one is unreadable: the dataset replaces it by its neighbour,
    which must not count twice: 2 distinct videos used, 1 skipped, both in the JSON."""
    from reproduce.attention import main
    folder = tmp_path / "vids"
    folder.mkdir()
    for k in range(2):
        index_clip(folder / f"v{k}.mp4", 6)
    (folder / "v2.mp4").write_text("not a video")
    ckpt = tiny_pretrain_checkpoint(tmp_path / "c.pth")
    main(["--ckpt", str(ckpt), "--ckpt", str(ckpt), "--names", "a", "b", "--data", "folder",
          "--data-path", str(folder), "--videos", "3", "--out", str(tmp_path / "att")])
    saved = json.loads((tmp_path / "att" / "attention.json").read_text())
    assert saved["videos"] == 2 and saved["videos_asked"] == 3
    assert sorted(Path(p).name for p in saved["videos_used"]) == ["v0.mp4", "v1.mp4"]
    assert len(saved["skipped_videos"]) == 1 and "v2.mp4" in saved["skipped_videos"][0]
    assert "2 distinct videos used (3 asked, 3 in the set); 1 skipped" in capsys.readouterr().out
