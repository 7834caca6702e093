"""Tests for tasks/pointcloud.py (Point-DropTrack) and data.LidarWorld. Rules: specs/pointcloud.md,
metrics-dense.md section 4. Data: synthetic LiDAR scenes written in the KITTI tracking layout."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import dropmae
from tasks import pointcloud as P


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """21 scenes of 8-10 frames in the KITTI tracking layout."""
    return P.write_synthetic(tmp_path_factory.mktemp("kitti"), seed=0, frames=(8, 10))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return P.build_model("tiny").eval()


# ----------------------------------------------------------------------------------------------
# tokeniser: FPS, kNN, groups, PointNet
# ----------------------------------------------------------------------------------------------

def test_fps_picks_the_known_farthest_points():
    # the integers 0..10 on a line, stored shuffled with 0 first: from 0 the farthest is 10,
    # then 5 (5 m from both)
    xs = np.array([0, 7, 3, 10, 5, 1, 9, 2, 8, 4, 6], float)
    pts = torch.tensor(np.stack([xs, np.zeros(11), np.zeros(11)], 1))[None]
    assert xs[P.farthest_point_sample(pts, 3)[0].numpy()].tolist() == [0, 10, 5]
    # square corners from corner 0: the opposite corner, then the two others (a tie, 2 m from
    # both chosen ones) in storage order
    sq = torch.tensor([[[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]]])
    assert P.farthest_point_sample(sq, 4)[0].tolist() == [0, 2, 1, 3]
    assert torch.equal(P.farthest_point_sample(pts, 6), P.farthest_point_sample(pts, 6))


def test_knn_equals_brute_force():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(2, 60, 3))
    centres = xyz[:, [0, 7, 33]]
    idx = P.knn(torch.tensor(xyz), torch.tensor(centres), 8).numpy()
    for b in range(2):
        for g in range(3):
            ref = np.argsort(np.linalg.norm(xyz[b] - centres[b, g], axis=1))[:8]
            assert idx[b, g].tolist() == ref.tolist()
    assert (idx[:, :, 0] == [[0, 7, 33]] * 2).all()                    # the centre comes first


def test_groups_centred_prior_reaches_pointnet_and_permutation_invariance(tiny):
    torch.manual_seed(0)
    pts = torch.cat([torch.randn(2, 256, 3) * 2, torch.rand(2, 256, 1)], -1)
    centres, groups = tiny.tokenizer.group(pts)
    G, k = tiny.cfg.groups, tiny.cfg.group_size
    assert centres.shape == (2, G, 3) and groups.shape == (2, G, k, 4)
    assert torch.equal(groups[:, :, 0, :3], torch.zeros(2, G, 3))      # centre at the origin
    with torch.no_grad():
        tokens = tiny.tokenizer.encoder(groups)
        perm = torch.randperm(k)
        assert torch.allclose(tiny.tokenizer.encoder(groups[:, :, perm]), tokens, atol=1e-6)
        other = groups.clone()
        other[..., 3] = 1 - other[..., 3]
        assert (tiny.tokenizer.encoder(other) - tokens).abs().max() > 1e-3
        tok, cen = tiny.tokenizer(pts)
    assert tok.shape == (2, G, tiny.backbone.cfg.embed_dim) and torch.equal(cen, centres)


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------

def test_label_velodyne_round_trip_and_offsets_exact():
    rng = np.random.default_rng(1)
    tr = P.synthetic_calib(rng)["Tr_velo_cam"]
    labels = np.array([[1.5, 1.6, 3.9, 2.0, 1.7, 15.0, 0.4], [1.7, 0.6, 0.8, -4.0, 1.6, 8.0, -3.0]])
    boxes = P.labels_to_boxes(labels, tr)
    assert np.allclose(P.boxes_to_labels(boxes, tr), labels, atol=1e-12)
    assert np.allclose(boxes[:, 6], P.wrap_angle(-(labels[:, 6] + np.pi / 2)))
    # (+): a box at yaw 0.3 moved by (1, 0.5, 0.2, 0.1) in its frame
    box = np.array([10.0, -2.0, -1.0, 3.9, 1.6, 1.5, 0.3])
    moved = P.apply_offset(box, [1.0, 0.5, 0.2, 0.1])
    c, s = math.cos(0.3), math.sin(0.3)
    assert np.allclose(moved[:3], [10 + c - 0.5 * s, -2 + s + 0.5 * c, -0.8], atol=1e-12)
    assert moved[6] == pytest.approx(0.4) and np.array_equal(moved[3:6], box[3:6])
    assert np.allclose(P.offset_between(box, moved), [1.0, 0.5, 0.2, 0.1], atol=1e-12)
    # the torch composition used by the heads is the same operation
    a = torch.tensor([[1.0, 2.0, 0.5, 0.3]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.5, 0.2, 0.1]], dtype=torch.float64)
    ref = P.apply_offset(np.array([1.0, 2.0, 0.5, 1, 1, 1, 0.3]), b[0].numpy())
    assert np.allclose(P.compose(a, b)[0].numpy(), ref[[0, 1, 2, 6]], atol=1e-12)
    assert P.wrap_angle(np.pi) == pytest.approx(np.pi) and P.wrap_angle(-np.pi) == pytest.approx(np.pi)


def test_crop_keeps_exactly_the_enlarged_box_and_resampling_rules():
    cfg = P.POINT_PRESETS["tiny"]
    rng = np.random.default_rng(2)
    cloud = rng.uniform(-10, 10, (5000, 3))
    ref = np.array([1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.7])
    local = P.crop(cloud, ref, ref[3:6], cfg)
    c, s = math.cos(0.7), math.sin(0.7)
    d = cloud - ref[:3]
    loc = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    half = np.array([4.0, 2.0, 1.5]) * 1.25 / 2 + 2.0
    keep = (np.abs(loc) < half).all(1)
    assert len(local) == keep.sum() and np.allclose(local, loc[keep])
    few = rng.normal(size=(10, 3))
    out = P.resample(few, 256, np.random.default_rng(5))
    assert out.shape == (256, 3) and {tuple(p) for p in out} <= {tuple(p) for p in few.astype(np.float32)}
    assert np.array_equal(out, P.resample(few, 256, np.random.default_rng(5)))
    assert not P.resample(few[:2], 256, np.random.default_rng(0)).any()
    assert len({tuple(p) for p in P.resample(cloud, 256, np.random.default_rng(0))}) == 256  # no repeats


# ----------------------------------------------------------------------------------------------
# KITTI files
# ----------------------------------------------------------------------------------------------

def test_synthetic_scene_reads_back_in_camera_and_velodyne(synth):
    ds = P.KittiTracking(synth, "All", [0, 4])
    for scene, r_rect_scene in (("0000", False), ("0004", True)):
        rng = np.random.default_rng([0, int(scene), 99])
        T = int(rng.integers(8, 11))
        world = data.LidarWorld(int(scene), T, P.SYNTH_KINDS)
        calib = P.read_calib(Path(synth) / "calib" / f"{scene}.txt")
        assert r_rect_scene == (not np.allclose(calib["R_rect"], np.eye(3)))
        for t in ds.tracklets:
            if t.scene != scene:
                continue
            truth = np.stack([world.boxes(f)[t.track_id] for f in t.frames])
            ref_labels = P.boxes_to_labels(truth, calib["Tr_velo_cam"], calib["R_rect"])
            assert np.allclose(t.labels, ref_labels, atol=2e-6)          # camera (6 decimals)
            if r_rect_scene:                                            # the protocol drops R_rect
                exact = P.labels_to_boxes(t.labels, calib["Tr_velo_cam"], calib["R_rect"])
                assert np.allclose(exact, truth, atol=1e-5)
                # predicted shift: inv(Tr) R_rect Tr c - c, a few cm at these ranges
                m = P.velo_to_cam_matrix(calib["Tr_velo_cam"])
                mr = P.velo_to_cam_matrix(calib["Tr_velo_cam"], calib["R_rect"])
                pred = (np.linalg.inv(m) @ mr @ np.c_[truth[:, :3], np.ones(len(truth))].T).T[:, :3]
                assert np.allclose(t.boxes[:, :3], pred, atol=1e-5)
                assert np.abs(t.boxes[:, :3] - truth[:, :3]).max() > 0.02
            else:
                assert np.allclose(t.boxes, truth, atol=1e-5)
    T = int(np.random.default_rng([0, 0, 99]).integers(8, 11))
    assert np.array_equal(ds.scan("0000", 3), data.LidarWorld(0, T, P.SYNTH_KINDS).scan(3))


def test_categories_splits_gap_missing_scans(synth):
    assert [list(P.SPLITS[s]) for s in ("train", "val", "test")] == [list(range(17)), [17, 18], [19, 20]]
    cars = P.KittiTracking(synth, "Car", "train")
    assert len(cars.tracklets) == 34 and {t.track_id for t in cars.tracklets} == {0, 1}
    everything = P.KittiTracking(synth, "All", "test")
    assert len(everything.tracklets) == 2 * 6 + 1                       # + the distractor car
    assert {t.track_id for t in P.KittiTracking(synth, "Van", "val").tracklets} == {2}
    gap = [t for t in P.KittiTracking(synth, "Pedestrian", [3]).tracklets if t.track_id == 3][0]
    assert 5 not in gap.frames and 6 not in gap.frames and 7 in gap.frames
    one = P.KittiTracking(synth, "Car", [1])
    assert one.tracklets[0].frames[0] == 170
    assert np.array_equal(one.scan("0001", 178), np.zeros((1, 4), np.float32))   # tolerated
    os.rename(one.scan_path("0001", 175), one.scan_path("0001", 175).with_suffix(".gone"))
    try:
        with pytest.raises(FileNotFoundError, match=r"label_02/0001.txt:\d+: frame 175 has no scan .*000175.bin"):
            P.TrackletCache(one, 10.0, None, verbose=False)
    finally:
        os.rename(one.scan_path("0001", 175).with_suffix(".gone"), one.scan_path("0001", 175))


def test_calib_with_and_without_colon_and_malformed_files(tmp_path):
    nums = " ".join(["1"] * 12)
    (tmp_path / "a.txt").write_text(f"P0: {nums}\nR_rect {' '.join(['0'] * 9)}\nTr_velo_cam: {nums}\n")
    c = P.read_calib(tmp_path / "a.txt")
    assert c["P0"].shape == (3, 4) and c["R_rect"].shape == (3, 3) and c["Tr_velo_cam"].sum() == 12
    (tmp_path / "b.txt").write_text(f"P0: {nums}\nTr_velo_cam {' '.join(['1'] * 11)}\n")
    with pytest.raises(ValueError, match=r"b.txt:2: Tr_velo_cam has 11 numbers, expected 12"):
        P.read_calib(tmp_path / "b.txt")
    (tmp_path / "c.txt").write_text(f"P0: {nums}\n")
    with pytest.raises(ValueError, match="c.txt: no Tr_velo_cam"):
        P.read_calib(tmp_path / "c.txt")
    np.arange(10, dtype="<f4").tofile(tmp_path / "x.bin")              # 40 bytes: 2.5 points
    with pytest.raises(ValueError, match=r"x.bin: 40 bytes .*truncated"):
        P.read_scan(tmp_path / "x.bin")


def test_label_with_wrong_column_count_names_file_and_line(synth, tmp_path):
    root = tmp_path / "k"
    for sub in ("label_02", "calib"):
        (root / sub).mkdir(parents=True)
    (root / "calib" / "0000.txt").write_text((Path(synth) / "calib" / "0000.txt").read_text())
    lines = (Path(synth) / "label_02" / "0000.txt").read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:16])
    (root / "label_02" / "0000.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"label_02/0000.txt:3: 16 columns, expected 17"):
        P.KittiTracking(root, "Car", [0])


def test_cache_is_rebuilt_when_a_source_changes(synth, tmp_path):
    ds = P.KittiTracking(synth, "Cyclist", "val")
    first = P.TrackletCache(ds, 10.0, tmp_path, verbose=False)
    again = P.TrackletCache(ds, 10.0, tmp_path, verbose=False)
    assert first.rebuilt and not again.rebuilt
    assert np.array_equal(first.points, again.points) and first.names == again.names
    t = ds.tracklets[0]                                                 # frame 1: cut to the box +- 10 m
    box, cloud = t.boxes[1], ds.scan(t.scene, t.frames[1])[:, :3]
    corners = P.from_box_frame(np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * box[3:6] / 2, box)
    keep = ((cloud >= corners.min(0) - 10) & (cloud <= corners.max(0) + 10)).all(1)
    assert np.array_equal(first.cloud(first.track_ptr[0] + 1), cloud[keep]) and 0 < keep.sum() < len(cloud)
    scan = ds.scan_path(ds.tracklets[0].scene, ds.tracklets[0].frames[1])
    st = os.stat(scan)
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert P.TrackletCache(ds, 10.0, tmp_path, verbose=False).rebuilt
    finally:
        os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_lidar_world_sparsity_occlusion_and_determinism():
    w = data.LidarWorld(3, 12, ("Car", "Pedestrian"), distractor=True, empty=(1, 4))
    n = np.stack([w.target_points(t) for t in range(12)])
    assert n[4, 1] == 0 and (n < 10).any() and n.max() > 30
    scan = w.scan(2)
    assert scan.dtype == np.float32 and scan.shape[1] == 4 and 1500 < len(scan) < 6000
    assert np.array_equal(scan, data.LidarWorld(3, 12, ("Car", "Pedestrian"), distractor=True,
                                                empty=(1, 4)).scan(2))
    b = w.boxes(5)
    assert np.allclose(b[:, 2] - b[:, 5] / 2, data.LIDAR_GROUND_Z)    # standing on the ground
    assert np.hypot(*(b[0, :2] - b[2, :2])) < 3.5                      # the distractor beside


# ----------------------------------------------------------------------------------------------
# model, loss, checkpoints
# ----------------------------------------------------------------------------------------------

def _batch(synth, n=8):
    ds = P.KittiTracking(synth, "Car", [0, 1, 2])
    cfg = P.resolve_train_config("Car", "tiny", {})
    pairs = P.TrainPairs(P.TrackletCache(ds, 10.0, None, verbose=False), P.POINT_PRESETS["tiny"], cfg)
    return P.collate([pairs[i] for i in range(n)]), cfg


def test_training_pairs_targets_and_determinism(synth):
    b, cfg = _batch(synth, 4)
    assert b["z"].shape == (4, 256, 4) and b["x"].shape == (4, 256, 4)
    assert set(b["z"][0, :, 3].unique().tolist()) <= {0.0, 1.0}        # candidate 0: GT reference
    assert (b["x"][..., 3] == 0.5).all()
    again, _ = _batch(synth, 4)
    assert all(torch.equal(b[k], again[k]) for k in b)
    # the motion label composes the previous GT into the current GT
    assert torch.allclose(P.compose(b["gt_prev"].double(), b["motion"].double()),
                          b["gt_cur"].double(), atol=1e-5)


def test_loss_finite_and_falls_on_a_repeated_batch(synth):
    torch.manual_seed(0)
    b, cfg = _batch(synth, 8)
    model = P.build_model("tiny").train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    losses = []
    for _ in range(12):
        loss, stats = P.compute_loss(model(b["z"], b["x"]), b, cfg)
        assert math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_empty_crops_give_finite_boxes(tiny):
    zeros = torch.zeros(2, 256, 4)
    out = tiny(zeros, zeros)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_save_then_load_gives_identical_outputs(tiny, tmp_path):
    path = tmp_path / "checkpoint-0001.pth"
    dropmae.save_checkpoint(path, {"model": tiny.state_dict(), "point": P.dataclasses.asdict(tiny.cfg), "epoch": 1})
    back = P.load_tracker_checkpoint(path)
    torch.manual_seed(1)
    z, x = torch.randn(2, 256, 4), torch.randn(2, 256, 4)
    with torch.no_grad():
        a, b = tiny(z, x), back(z, x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_rows_load_with_only_the_expected_missing_keys(tmp_path):
    torch.manual_seed(0)
    mae = dropmae.DropMAE(dropmae.get_config("tiny"))
    model = P.build_model("tiny")
    report = P.load_pretrained_blocks({"model": mae.state_dict()}, model, verbose=False)
    assert report["kind"] == "dropmae" and report["missing"] == []
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert torch.equal(model.backbone.temporal_pos_embed_z, mae.temporal_pos_embed_z)
    assert all(k.startswith(P.NEW_PREFIXES) for k in report["new"]) and "tokenizer.encoder.first.0.weight" in report["new"]
    # image MAE: no frame vectors, a cls token -> exactly the two frame vectors keep their init
    state = {k: v for k, v in mae.state_dict().items() if not k.startswith("temporal_pos_embed")
             and not k.startswith("decoder_") and k != "mask_token"}
    state["cls_token"] = torch.zeros(1, 1, 96)
    fresh = P.build_model("tiny")
    report = P.load_pretrained_blocks({"model": state}, fresh, verbose=False)
    assert report["kind"] == "mae" and report["missing"] == ["temporal_pos_embed_x", "temporal_pos_embed_z"]
    bad = dict(state, **{"blocks.0.extra": torch.zeros(1)})
    with pytest.raises(KeyError, match="blocks.0.extra"):
        P.load_pretrained_blocks({"model": bad}, P.build_model("tiny"), verbose=False)
    table = P.key_table(fresh)
    assert len(table["pretrained"]) + len(table["new"]) == len(fresh.state_dict())
    assert not any(p.requires_grad for p in fresh.backbone.patch_embed.parameters())


# ----------------------------------------------------------------------------------------------
# tracking, files, scores
# ----------------------------------------------------------------------------------------------

def _straight_line_root(tmp_path, step=0.37, T=7):
    """One Car tracklet driving straight along velodyne x, `step` m per frame; identity R_rect."""
    root = tmp_path / "line"
    for sub in ("label_02", "calib", "velodyne/0019"):
        (root / sub).mkdir(parents=True)
    calib = P.synthetic_calib(np.random.default_rng(0))
    P.write_calib(root / "calib" / "0019.txt", calib)
    boxes = np.array([[10 + step * t, 2.0, -0.98, 4.0, 1.6, 1.5, 0.0] for t in range(T)])
    labels = P.boxes_to_labels(boxes, calib["Tr_velo_cam"])
    (root / "label_02" / "0019.txt").write_text(
        "".join(P.label_line(t, 0, "Car", lab, calib["P"][2]) + "\n" for t, lab in enumerate(labels)))
    for t in range(T):
        np.zeros((5, 4), "<f4").tofile(root / "velodyne" / "0019" / f"{t:06d}.bin")
    return root


def test_oracle_scores_100_and_the_never_moving_box_scores_the_hand_computed_value(tmp_path):
    root = _straight_line_root(tmp_path)
    ds = P.KittiTracking(root, "Car", [19])
    t = ds.tracklets[0]
    oracle = tmp_path / "oracle"
    oracle.mkdir()
    P.write_tracklet(oracle / f"{t.name}.txt", t.frames, t.boxes, *ds.transform("0019"))
    lines = (oracle / "0019_0000.txt").read_text().splitlines()
    assert len(lines) == 7 and lines[0].split()[0] == "0"
    assert np.allclose([float(v) for v in lines[0].split()[1:]], t.labels[0], atol=1e-6)
    m = P.score(oracle, ds)
    assert m["velodyne"]["precision"] == pytest.approx(100.0, abs=1e-9)
    # 6-decimal files: IoU 1 - 1e-6 may miss the threshold 1.0 -> at most 2.5 points off
    assert 97.5 <= m["velodyne"]["success"] <= 100.0 and 97.5 <= m["camera"]["success"] <= 100.0
    # previous box (never moves): distance 0.37 t, IoU (4 - d) / (4 + d) for same-size boxes
    stay = P.run_test(ds, P.PointTracker(None), tmp_path / "stay")
    d = 0.37 * np.arange(7)
    iou = (4 - d) / (4 + d)
    iou[0] = 1.0
    succ = [np.mean(iou >= th) for th in np.linspace(0, 1, 21)]
    prec = [np.mean(d <= th) for th in np.linspace(0, 2, 21)]
    hand_s = 100 * sum((succ[i] + succ[i + 1]) / 2 * 0.05 for i in range(20))
    hand_p = 100 * sum((prec[i] + prec[i + 1]) / 2 * 0.1 for i in range(20)) / 2
    assert stay["velodyne"]["success"] == pytest.approx(hand_s, abs=1e-6)
    assert stay["velodyne"]["precision"] == pytest.approx(hand_p, abs=1e-6)
    assert stay["velodyne"]["success"] < m["velodyne"]["success"]


def test_test_command_writes_files_timing_and_scores(synth, tiny, tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    dropmae.save_checkpoint(path, {"model": tiny.state_dict(), "point": P.dataclasses.asdict(tiny.cfg)})
    summary = P.main(["test", "--category", "Cyclist", "--split", "val", "--data-path", str(synth),
                      "--ckpt", str(path), "--output", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "kitti3d Cyclist val: 2 tracklets" in out and "tiny scale, not comparable with the paper" in out
    ds = P.KittiTracking(synth, "Cyclist", "val")
    for t in ds.tracklets:
        lines = (tmp_path / "out" / f"{t.name}.txt").read_text().splitlines()
        assert [int(l.split()[0]) for l in lines] == t.frames.tolist()
    assert (tmp_path / "out" / "timing.json").is_file() and summary["fps"] > 0
    assert 0 <= summary["success"] <= 100 and summary["n_frames"] == ds.num_frames()


def test_train_command_run_folder_and_resume(synth, tmp_path):
    args = ["train", "--category", "Cyclist", "--model", "tiny", "--data-path", str(synth), "--output",
            str(tmp_path / "run"), "--workers", "0", "--candidates", "1", "--val-every", "0", "--batch-size", "32"]
    P.main(args + ["--epochs", "1"])
    run = tmp_path / "run"
    assert {"config.json", "git.txt", "env.json", "log.jsonl", "checkpoint-0001.pth"} <= {p.name for p in run.iterdir()}
    P.main(args + ["--epochs", "2", "--resume", "auto"])
    log = [l for l in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and '"epoch": 2' in log[1]
    ckpt = torch.load(run / "checkpoint-0002.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["category"] == "Cyclist"
    assert not (run / "cache").is_dir() or any((run / "cache").iterdir())
