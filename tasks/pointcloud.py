"""Point-DropTrack: 3-D single-object tracking on KITTI LiDAR with the ViT blocks of DropMAE.

The extended DropMAE paper evaluates on point clouds but its 3-D tracker is not public; this
design is ours (specs/pointcloud.md): the pre-trained ViT blocks, final norm and frame vectors
load unchanged through `dropmae.load_pretrained`; a Point-MAE-style tokeniser (farthest-point
centres, kNN groups normalised to their centre, a mini-PointNet, an MLP position embedding) and
M2-Track-style heads (per-token targetness, box motion, refinement) are new and start random.
Input and loss follow M2-Track (Open3DSOT) in velodyne coordinates; scoring is eval/kitti3d.py.
The file reads in data-flow order: configs, box geometry, KITTI files, crops and training pairs,
the tokeniser, the model, losses, checkpoints, training, the tracker, the command line.

Commands:
    # synthetic LiDAR scenes (data.LidarWorld) written in the KITTI tracking layout
    python tasks/pointcloud.py synthetic --out /tmp/kitti_synth
    python tasks/pointcloud.py train --category Car --model tiny --data-path /tmp/kitti_synth \\
        --output runs/p3d_car_tiny
    python tasks/pointcloud.py test --category Car --split test --data-path /tmp/kitti_synth \\
        --ckpt runs/p3d_car_tiny/checkpoint-0006.pth --output runs/p3d_car_tiny/test
    python tasks/pointcloud.py test ... --tracker previous     # the box that never moves

    # full scale, one model per category (KITTI tracking `training` folder: velodyne/, label_02/,
    # calib/); 60 epochs at batch 64 in total (time: see reproduce/table_3d.py, an estimate)
    torchrun --nproc_per_node=2 tasks/pointcloud.py train --category Car --model base \\
        --data-path /data/kitti/tracking/training --pretrained dropmae_k400_vitb.pth \\
        --batch-size 32 --output runs/p3d_car --resume auto
    python tasks/pointcloud.py test --category Car --split test --data-path /data/kitti/tracking/training \\
        --ckpt runs/p3d_car/checkpoint-0060.pth --output runs/p3d_car/test --test-seeds 0 1 2

Output of `test`: one `<scene>_<track id>.txt` per tracklet (eval/kitti3d.py's format: one line
per label row, first frame included, `frame h w l x y z ry` in the label's camera convention,
bottom-face centre, 6 decimals), plus `config.json`, `timing.json` (frames per second of crop +
model, per tracklet and overall) and `metrics.json` (velodyne-mode and camera-mode scores).
Checkpoint selection: the last epoch; the val scenes 17-18 only watch training (never 19-20).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import dropmae  # noqa: E402
from dropmae import ViTEncoder, get_config  # noqa: E402
from eval import kitti3d as K  # noqa: E402


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class PointConfig:
    """Model and crop geometry (specs/pointcloud.md section 1)."""
    encoder: str = "base"              # dropmae preset of the ViT blocks
    num_points: int = 1024             # points per frame after resampling
    groups: int = 128                  # G: farthest-point centres (tokens) per frame
    group_size: int = 32               # k: neighbours per group, centre included
    pointnet: tuple = (128, 256, 512)  # mini-PointNet widths (Point-MAE's Encoder)
    pos_hidden: int = 128              # position MLP 3 -> pos_hidden -> D
    head: tuple = (256, 128)           # motion / previous-box MLP widths
    refine: int = 256                  # refinement feature width
    bb_scale: float = 1.25             # crop box = (w, l, h) * bb_scale + 2 bb_offset
    bb_offset: float = 2.0
    pos_every_block: bool = False      # Point-MAE re-adds the position embedding per block
    drop_path: float = 0.1


POINT_PRESETS = {
    "base": PointConfig(),                                            # ViT-B blocks, the spec
    "tiny": PointConfig(encoder="tiny", num_points=256, groups=32, group_size=16,
                        pointnet=(32, 48, 96), pos_hidden=32, head=(64, 32), refine=64,
                        drop_path=0.0),                               # tests and CPU runs
}

# M2-Track's recipe moved to AdamW + ViT blocks (specs/pointcloud.md section 3, "Ours").
COMMON = dict(epochs=60, batch_size=64, lr=1e-3, backbone_mult=0.1, weight_decay=1e-4, lr_drop=20,
              candidates=4, seed=0, val_every=5, augment=True, seg_weight=0.1, center_weight=2.0,
              angle_weight=10.0, jitter_xy=0.3, jitter_yaw_deg=1.5, preload_offset=10.0,
              min_prev_points=10, min_crop_points=20)
# One config per category as in Open3DSOT; they are the same recipe (Pedestrian at batch 64 is
# Open3DSOT#33's advice; train >= 3 seeds for Pedestrian, Van and Cyclist).
CATEGORY_CONFIGS = {c: dict(COMMON) for c in ("Car", "Pedestrian", "Van", "Cyclist")}
# The tiny model on the synthetic scenes of `synthetic` (CPU): see README / reproduce/table_3d.py.
TINY_TRAIN = dict(epochs=6, batch_size=16, lr=2e-3, lr_drop=5, val_every=3, candidates=2)

SPLITS = {"train": range(0, 17), "val": range(17, 19), "test": range(19, 21)}
# The one gap in KITTI tracking: scene 0001 has no scans for frames 177-180. The protocol
# (Open3DSOT `_get_frame_from_anno`) substitutes a one-point cloud at the origin; every other
# missing scan is an error.
TOLERATED_MISSING = {("0001", f) for f in range(177, 181)}
TINY_TAG = "  [tiny model: tiny scale, not comparable with the paper]"


def resolve_train_config(category: str, model: str, overrides: dict) -> dict:
    """The category's config, then TINY_TRAIN for `--model tiny`, then the command line (None =
    not given)."""
    if category not in CATEGORY_CONFIGS:
        raise ValueError(f"unknown category {category!r}; choose from {sorted(CATEGORY_CONFIGS)}")
    cfg = dict(CATEGORY_CONFIGS[category], category=category)
    if model == "tiny":
        cfg.update(TINY_TRAIN)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


# --------------------------------------------------------------------------------------------
# Box geometry (numpy). Boxes are eval/kitti3d.py's velodyne "up boxes" (7,):
#   [x, y, z, l, w, h, yaw]: geometric centre, length along yaw about +z.
# Offsets / local boxes (4,): [dx, dy, dz, dyaw] in some box's frame.
# --------------------------------------------------------------------------------------------

def wrap_angle(a):
    """Angles wrapped to (-pi, pi]."""
    a = np.asarray(a, np.float64)
    return a - 2 * np.pi * np.ceil((a - np.pi) / (2 * np.pi))


def velo_to_cam_matrix(tr_velo_cam, r_rect=None) -> np.ndarray:
    """(4, 4) velodyne -> label camera frame: [Tr; 0 0 0 1], premultiplied by R_rect if given
    (the protocol drops R_rect: see the calibration quirk in `read_calib`)."""
    m = np.eye(4)
    m[:3] = np.asarray(tr_velo_cam, np.float64)[:3]
    if r_rect is not None:
        rect = np.eye(4)
        rect[:3, :3] = r_rect
        m = rect @ m
    return m


def labels_to_boxes(labels, tr_velo_cam, r_rect=None) -> np.ndarray:
    """(N, 7) label boxes [h w l x y z ry] (camera, bottom centre) -> (N, 7) velodyne up boxes.
    eval/kitti3d.py's `velodyne_boxes` (yaw = -(ry + pi/2), ry used as is), yaw wrapped to (-pi, pi]."""
    boxes = K.velodyne_boxes(labels, velo_to_cam_matrix(tr_velo_cam, r_rect)[:3])
    boxes[:, 6] = wrap_angle(boxes[:, 6])
    return boxes


def boxes_to_labels(boxes, tr_velo_cam, r_rect=None) -> np.ndarray:
    """(N, 7) velodyne up boxes -> (N, 7) label boxes: centre_cam = M [c; 1], y += h/2,
    ry = -yaw - pi/2 wrapped to (-pi, pi]."""
    b = np.atleast_2d(np.asarray(boxes, np.float64))
    m = velo_to_cam_matrix(tr_velo_cam, r_rect)
    c = m @ np.concatenate([b[:, :3], np.ones((len(b), 1))], 1).T      # (4, N)
    l, w, h = b[:, 3], b[:, 4], b[:, 5]
    return np.stack([h, w, l, c[0], c[1] + h / 2, c[2], wrap_angle(-b[:, 6] - np.pi / 2)], -1)


def to_box_frame(points, box) -> np.ndarray:
    """(M, >=3) points -> (M, 3) in the box frame: R(yaw)^T (p - centre)."""
    d = np.asarray(points, np.float64)[:, :3] - box[:3]
    c, s = math.cos(box[6]), math.sin(box[6])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], -1)


def from_box_frame(points, box) -> np.ndarray:
    """Inverse of `to_box_frame`: (M, 3) box-frame points -> velodyne."""
    p = np.asarray(points, np.float64)
    c, s = math.cos(box[6]), math.sin(box[6])
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], -1) + box[:3]


def apply_offset(box, offset) -> np.ndarray:
    """box (7,) (+) offset (4,): rotate by dyaw about +z around its centre and move the centre by
    R(yaw) (dx, dy, dz); the size is unchanged (Open3DSOT `getOffsetBB`, use_z, radians)."""
    out = np.array(box, np.float64)
    c, s = math.cos(box[6]), math.sin(box[6])
    dx, dy, dz, dyaw = offset
    out[:3] += (c * dx - s * dy, s * dx + c * dy, dz)
    out[6] = wrap_angle(box[6] + dyaw)
    return out


def offset_between(a, b) -> np.ndarray:
    """The offset (4,) with a (+) offset == b (centre and yaw; sizes are a's)."""
    d = to_box_frame(np.asarray(b, np.float64)[None, :3], a)[0]
    return np.array([*d, wrap_angle(b[6] - a[6])])


def in_box(local, size, scale=1.0, offset=0.0, strict=False) -> np.ndarray:
    """(M,) bool: box-frame points within the box of size (l, w, h) * scale + 2 offset."""
    half = np.asarray(size, np.float64) * scale / 2 + offset
    a = np.abs(np.asarray(local)[:, :3])
    return (a < half).all(1) if strict else (a <= half).all(1)


# --------------------------------------------------------------------------------------------
# KITTI tracking files (specs/pointcloud.md section 2)
# --------------------------------------------------------------------------------------------

CALIB_NUMBERS = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R_rect": 9, "Tr_velo_cam": 12, "Tr_imu_velo": 12}
CALIB_ALIASES = {"R0_rect": "R_rect", "Tr_velo_to_cam": "Tr_velo_cam", "Tr_imu_to_velo": "Tr_imu_velo"}


def read_calib(path) -> dict:
    """A KITTI tracking calib file -> {'P0'..'P3': (3, 4), 'R_rect': (3, 3), 'Tr_velo_cam': (3, 4),
    'Tr_imu_velo': (3, 4)}. Keys are found with or without a colon.

    The quirk: Open3DSOT, P2B and CXTrack reshape every line to 3 x 4, so R_rect (9 numbers)
    fails and is silently dropped; the labels (rectified) are then mapped with inv(Tr_velo_cam)
    alone. We read R_rect, and the callers drop it unless `--use-r-rect` is given.
    """
    out = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            name = fields[0][:-1] if fields[0].endswith(":") else fields[0]      # `P0:` and `R_rect`
            key = CALIB_ALIASES.get(name, name)
            if key not in CALIB_NUMBERS:
                continue                                   # other keys are not used
            if len(fields) - 1 != CALIB_NUMBERS[key]:
                raise ValueError(f"{path}:{lineno}: {key} has {len(fields) - 1} numbers, "
                                 f"expected {CALIB_NUMBERS[key]}")
            try:
                values = np.array([float(v) for v in fields[1:]])
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
            out[key] = values.reshape(3, 3) if key == "R_rect" else values.reshape(3, 4)
    if "Tr_velo_cam" not in out:
        raise ValueError(f"{path}: no Tr_velo_cam line")
    return out


def read_scan(path) -> np.ndarray:
    """A velodyne `.bin` -> float32 (N, 4): x, y, z, reflectance (little-endian float32)."""
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 4:
        raise ValueError(f"{path}: {os.path.getsize(path)} bytes is not a whole number of "
                         "16-byte points (truncated file?)")
    return raw.reshape(-1, 4).astype(np.float32)


@dataclass
class Tracklet:
    """The label rows of one track id in one scene, sorted by frame (gaps are not filled)."""
    scene: str
    track_id: int
    frames: np.ndarray          # (T,) int
    lines: np.ndarray           # (T,) label-file line of each row
    labels: np.ndarray          # (T, 7) label boxes [h w l x y z ry]
    boxes: np.ndarray           # (T, 7) velodyne up boxes

    @property
    def name(self) -> str:
        return f"{self.scene}_{self.track_id:04d}"


def scene_names(split_or_scenes) -> list[str]:
    """'train' | 'val' | 'test' | iterable of ints -> ['0000', ...]."""
    scenes = SPLITS[split_or_scenes] if isinstance(split_or_scenes, str) else split_or_scenes
    return [f"{int(s):04d}" for s in scenes]


class KittiTracking:
    """Tracklets of one category in some scenes of a KITTI tracking root, and their scans.

    root: holds `velodyne/<scene>/<frame:06d>.bin`, `label_02/<scene>.txt`, `calib/<scene>.txt`.
    category: Car | Pedestrian | Van | Cyclist | All (the four). Boxes are in velodyne mode.
    """

    def __init__(self, root, category="Car", split="train", use_r_rect=False):
        self.root, self.category, self.use_r_rect = Path(root), category, use_r_rect
        self.scenes = scene_names(split)
        types = set(K.ALL_CATEGORIES) if category == "All" else {category}
        if not types <= set(K.ALL_CATEGORIES):
            raise ValueError(f"unknown category {category!r}; choose from {K.ALL_CATEGORIES} or All")
        self.calib, self.tracklets = {}, []
        for scene in self.scenes:
            label_path = self.root / "label_02" / f"{scene}.txt"
            calib_path = self.root / "calib" / f"{scene}.txt"
            for p in (label_path, calib_path):
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: missing (KITTI tracking layout: label_02/, calib/, velodyne/)")
            self.calib[scene] = read_calib(calib_path)
            rows = {}
            for lineno, frame, tid, kind, box in K.read_tracking_labels(label_path):
                if kind not in types:
                    continue
                if not (np.isfinite(box).all() and (box[:3] > 0).all()):
                    raise ValueError(f"{label_path}:{lineno}: invalid {kind} box (h w l x y z ry = {box})")
                track = rows.setdefault(tid, {})
                if frame in track:
                    raise ValueError(f"{label_path}:{lineno}: track {tid} has frame {frame} twice")
                track[frame] = (lineno, box)
            for tid in sorted(rows):
                frames = sorted(rows[tid])
                labels = np.stack([rows[tid][f][1] for f in frames])
                self.tracklets.append(Tracklet(
                    scene, tid, np.array(frames), np.array([rows[tid][f][0] for f in frames]),
                    labels, labels_to_boxes(labels, *self.transform(scene))))

    def transform(self, scene) -> tuple:
        """(Tr_velo_cam, R_rect or None) of a scene, as the boxes use them."""
        c = self.calib[scene]
        return c["Tr_velo_cam"], (c.get("R_rect") if self.use_r_rect else None)

    def scan_path(self, scene, frame) -> Path:
        return self.root / "velodyne" / scene / f"{int(frame):06d}.bin"

    def scan(self, scene, frame, line=None) -> np.ndarray:
        """float32 (N, 4) scan; a tolerated missing scan is one point at the origin."""
        path = self.scan_path(scene, frame)
        if not path.is_file():
            if (scene, int(frame)) in TOLERATED_MISSING:
                return np.zeros((1, 4), np.float32)
            where = f"{self.root / 'label_02' / f'{scene}.txt'}:{line}: " if line is not None else ""
            raise FileNotFoundError(f"{where}frame {int(frame)} has no scan {path}")
        return read_scan(path)

    def source_files(self) -> list[Path]:
        """Every label, calib and scan file the tracklets use (the cache fingerprint)."""
        files = {self.root / "label_02" / f"{s}.txt" for s in self.scenes}
        files |= {self.root / "calib" / f"{s}.txt" for s in self.scenes}
        files |= {self.scan_path(t.scene, f) for t in self.tracklets for f in t.frames}
        return sorted(files)

    def num_frames(self) -> int:
        return int(sum(len(t.frames) for t in self.tracklets))


def fingerprint(files) -> str:
    """sha1 over (path, size, mtime_ns) of each file ('missing' for absent ones)."""
    h = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


class TrackletCache:
    """Tracklets with their clouds cut to each GT box's axis-aligned bounds +- `offset` m (the
    anchors' `--preloading`), so an epoch does not re-read every `.bin`.

    Stored as one `.npz` per (category, scenes, R_rect mode, offset) in `cache_dir`, with the
    fingerprint of every source file; a changed, added or removed file rebuilds it.
    Fields: names, boxes (F, 7), frame_ptr / points (the frame f cloud is
    points[frame_ptr[f]:frame_ptr[f+1]], xyz float32), track_ptr (tracklet j = frames
    track_ptr[j]:track_ptr[j+1]).
    """

    def __init__(self, ds: KittiTracking, offset=10.0, cache_dir=None, verbose=True):
        key = (f"{ds.category}_{ds.scenes[0]}-{ds.scenes[-1]}_{len(ds.scenes)}_velodyne"
               f"{'_rrect' if ds.use_r_rect else ''}_off{offset:g}")
        stamp = fingerprint(ds.source_files()) + f"|{offset}|{ds.use_r_rect}"
        path = Path(cache_dir) / f"tracklets_{key}.npz" if cache_dir else None
        if path is not None and path.is_file():
            with np.load(path) as z:
                if str(z["fingerprint"]) == stamp:
                    self._set({k: z[k] for k in z.files})
                    self.path, self.rebuilt = path, False
                    return
        t0 = time.time()
        pts, ptr, boxes, names, track_ptr = [], [0], [], [], [0]
        for t in ds.tracklets:
            for frame, line, box in zip(t.frames, t.lines, t.boxes):
                cloud = ds.scan(t.scene, frame, line)[:, :3]
                corners = from_box_frame(np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                                                   for sz in (-1, 1)]) * box[3:6] / 2, box)
                lo, hi = corners.min(0) - offset, corners.max(0) + offset
                keep = cloud[((cloud >= lo) & (cloud <= hi)).all(1)] if offset >= 0 else cloud
                pts.append(keep)
                ptr.append(ptr[-1] + len(keep))
                boxes.append(box)
            names.append(t.name)
            track_ptr.append(len(boxes))
        fields = dict(points=np.concatenate(pts).astype(np.float32) if pts else np.zeros((0, 3), np.float32),
                      frame_ptr=np.array(ptr, np.int64), boxes=np.array(boxes, np.float64).reshape(-1, 7),
                      names=np.array(names), track_ptr=np.array(track_ptr, np.int64),
                      fingerprint=np.array(stamp))
        self._set(fields)
        self.path, self.rebuilt = path, True
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, **fields)
            os.replace(tmp, path)
        if verbose:
            print(f"tracklet cache: {len(names)} {ds.category} tracklets, {len(boxes)} frames, "
                  f"{len(fields['points'])} points (offset {offset:g} m) in {time.time() - t0:.1f} s"
                  + (f" -> {path}" if path else ""))

    def _set(self, f):
        self.points, self.frame_ptr, self.boxes = f["points"], f["frame_ptr"], f["boxes"]
        self.names, self.track_ptr = [str(n) for n in f["names"]], f["track_ptr"]

    def cloud(self, frame_index: int) -> np.ndarray:
        return self.points[self.frame_ptr[frame_index]:self.frame_ptr[frame_index + 1]]


# --------------------------------------------------------------------------------------------
# Crops, resampling, the prior, training pairs (M2-Track's `motion_processing`)
# --------------------------------------------------------------------------------------------

def crop(cloud, ref_box, size, cfg: PointConfig) -> np.ndarray:
    """(M, >=3) velodyne points -> (m, 3) in ref_box's frame, strictly inside the axis-aligned
    box of size (l, w, h) * bb_scale + 2 bb_offset around it."""
    local = to_box_frame(cloud, ref_box)
    return local[in_box(local, size, cfg.bb_scale, cfg.bb_offset, strict=True)]


def resample(points, n: int, rng: np.random.Generator) -> np.ndarray:
    """(m, 3) -> (n, 3): a random choice, with replacement when m < n; m <= 2 gives zeros
    (Open3DSOT `regularize_pc`)."""
    m = len(points)
    if m <= 2:
        return np.zeros((n, 3), np.float32)
    return np.asarray(points, np.float32)[rng.choice(m, size=n, replace=n > m)]


def make_input(prev_cloud, cur_cloud, ref_box, size, prev_is_gt: bool, cfg: PointConfig,
               rng: np.random.Generator):
    """The model input of one pair: (z (N, 4), x (N, 4), counts (2,)): xyz in ref_box's frame plus
    the prior (frame t-1: inside ref_box * 1.25 -> 1 / 0, or 0.8 / 0.2 when ref_box is not a GT
    box; frame t: 0.5). counts: points in the previous box, points in the current crop."""
    prev = resample(crop(prev_cloud, ref_box, size, cfg), cfg.num_points, rng)
    cur_crop = crop(cur_cloud, ref_box, size, cfg)
    cur = resample(cur_crop, cfg.num_points, rng)
    hi, lo = (1.0, 0.0) if prev_is_gt else (0.8, 0.2)
    inside = in_box(prev, size, cfg.bb_scale)
    prior = np.where(inside, hi, lo)[:, None]
    n_prev = int(in_box(to_box_frame(prev_cloud, ref_box), size).sum())
    z = np.concatenate([prev, prior], 1).astype(np.float32)
    x = np.concatenate([cur, np.full((len(cur), 1), 0.5)], 1).astype(np.float32)
    return z, x, (n_prev, len(cur_crop))


def augment(cloud, box, rng: np.random.Generator):
    """Open3DSOT `apply_augmentation`: the points inside box * 1.25 move with the box by
    U(+-0.3 m)^3 and a yaw of U(+-10 deg), after a random flip in x and y in the box frame."""
    local = to_box_frame(cloud, box)
    mask = in_box(local, box[[3, 4, 5]], 1.25)
    part = local[mask]
    if rng.random() < 0.5:
        part[:, 0] *= -1
    if rng.random() < 0.5:
        part[:, 1] *= -1
    new_box = apply_offset(box, [*rng.uniform(-0.3, 0.3, 3), np.deg2rad(rng.uniform(-10, 10))])
    out = np.array(cloud[:, :3], np.float64)
    out[mask] = from_box_frame(part, new_box)
    return out, new_box


class TrainPairs(torch.utils.data.Dataset):
    """Every frame of every cached tracklet x `candidates` (M2-Track): frames t-1 (t-1 = t for the
    first frame) and t around a reference box = the previous GT box (candidate 0) or that box
    jittered by U(+-0.3 m) in x, y and U(+-1.5 deg) in yaw. A sample whose previous box holds
    <= min_prev_points points or whose current crop holds <= min_crop_points is replaced by a
    random other one. All randomness of item i is a function of (seed, epoch, i).

    Item: z, x (N, 4) float32; gt_prev, gt_cur (4,) [x, y, z, yaw] of the GT boxes in the
    reference frame; motion (4,) = offset_between(gt_prev, gt_cur); size (3,) l, w, h.
    """

    def __init__(self, cache: TrackletCache, cfg: PointConfig, train_cfg: dict, train=True):
        self.cache, self.cfg, self.tc, self.train = cache, cfg, train_cfg, train
        self.candidates = train_cfg["candidates"] if train else 1
        self.frames = np.arange(len(cache.boxes))
        first = set(cache.track_ptr[:-1].tolist())
        self.prev = np.array([f if f in first else f - 1 for f in self.frames])
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.frames) * self.candidates

    def sample(self, index: int, rng):
        frame, cand = divmod(index, self.candidates)
        if not self.train:
            cand = 0
        prev_cloud, cur_cloud = self.cache.cloud(self.prev[frame]), self.cache.cloud(frame)
        prev_box, cur_box = self.cache.boxes[self.prev[frame]], self.cache.boxes[frame]
        if self.train and self.tc["augment"]:
            prev_cloud, prev_box = augment(prev_cloud, prev_box, rng)
            cur_cloud, cur_box = augment(cur_cloud, cur_box, rng)
        ref = prev_box
        if cand:
            j = self.tc["jitter_xy"]
            ref = apply_offset(prev_box, [rng.uniform(-j, j), rng.uniform(-j, j), 0.0,
                                          np.deg2rad(rng.uniform(-1, 1) * self.tc["jitter_yaw_deg"])])
        size = prev_box[3:6]
        z, x, (n_prev, n_crop) = make_input(prev_cloud, cur_cloud, ref, size, cand == 0, self.cfg, rng)
        gt_prev, gt_cur = offset_between(ref, prev_box), offset_between(ref, cur_box)
        ok = n_prev > self.tc["min_prev_points"] and n_crop > self.tc["min_crop_points"]
        item = dict(z=z, x=x, gt_prev=gt_prev.astype(np.float32), gt_cur=gt_cur.astype(np.float32),
                    motion=offset_between(prev_box, cur_box).astype(np.float32),
                    size=size.astype(np.float32))
        return item, ok

    def __getitem__(self, index):
        rng = np.random.default_rng([self.tc["seed"], self.epoch, index])
        for _ in range(50):
            item, ok = self.sample(index, rng)
            if ok or not self.train:
                return {k: torch.from_numpy(v) for k, v in item.items()}
            index = int(rng.integers(len(self)))
        raise RuntimeError("50 samples in a row had too few points: is the category present "
                           "with points in these scenes?")


# --------------------------------------------------------------------------------------------
# Tokeniser (Point-MAE `Group` + `Encoder` + `pos_embed`, plain torch)
# --------------------------------------------------------------------------------------------

def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, 3) -> (B, n) indices: start at point 0, then repeatedly the point farthest from the
    chosen set (pointnet2's `furthest_point_sample`; ties go to the lowest index)."""
    B, N, _ = xyz.shape
    idx = torch.zeros(B, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), device=xyz.device, dtype=xyz.dtype)
    far = torch.zeros(B, dtype=torch.long, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    for i in range(n):
        idx[:, i] = far
        d = ((xyz - xyz[rows, far][:, None]) ** 2).sum(-1)             # (B, N)
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1)
    return idx


def knn(xyz: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, 3), (B, G, 3) -> (B, G, k) indices of the k nearest points of each centre, nearest
    first (squared Euclidean distance)."""
    d = ((centres[:, :, None] - xyz[:, None]) ** 2).sum(-1)             # (B, G, N)
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


class PointBN(nn.BatchNorm1d):
    """BatchNorm1d over the last axis of (..., C): the per-point BN of a 1x1-conv PointNet."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def shared_mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Per-point Linear -> BN -> ReLU -> Linear (Point-MAE's Conv1d(k=1) pairs, channels last)."""
    return nn.Sequential(nn.Linear(cin, hidden), PointBN(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class MiniPointNet(nn.Module):
    """Point-MAE's `Encoder` on 4 channels: 4->c1, BN, ReLU, ->c2; max; concat the global feature
    to every point; ->c3, BN, ReLU, ->D; max. (B, G, k, 4) -> (B, G, D). Point-MAE writes the
    per-point layers as Conv1d(kernel 1); Linear on channels-last is the same map, and faster."""

    def __init__(self, dim: int, widths=(128, 256, 512), in_chans: int = 4):
        super().__init__()
        c1, c2, c3 = widths
        self.first = shared_mlp(in_chans, c1, c2)
        self.second = shared_mlp(2 * c2, c3, dim)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        f = self.first(groups)                                            # (B, G, k, c2)
        glob = f.max(2, keepdim=True).values.expand_as(f)
        return self.second(torch.cat([glob, f], -1)).max(2).values        # (B, G, D)


class PointTokenizer(nn.Module):
    """(B, N, 4) points [xyz, prior] -> tokens (B, G, D) and centres (B, G, 3)."""

    def __init__(self, dim: int, cfg: PointConfig):
        super().__init__()
        self.groups, self.group_size = cfg.groups, cfg.group_size
        self.encoder = MiniPointNet(dim, cfg.pointnet)

    def group(self, points: torch.Tensor):
        """-> centres (B, G, 3), groups (B, G, k, 4): xyz relative to the centre, prior."""
        xyz = points[..., :3].contiguous()
        centres = gather(xyz, farthest_point_sample(xyz, self.groups))
        nbr = gather(points, knn(xyz, centres, self.group_size))          # (B, G, k, 4)
        rel = torch.cat([nbr[..., :3] - centres[:, :, None], nbr[..., 3:]], -1)
        return centres, rel

    def forward(self, points: torch.Tensor):
        centres, groups = self.group(points)
        return self.encoder(groups), centres


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def mlp_bn(widths) -> nn.Sequential:
    """Linear layers with BN + ReLU between them: widths (d0, d1, ..., dn)."""
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(widths[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Local boxes (B, 4) [x, y, z, yaw]: a (+) b = (a.xyz + R(a.yaw) b.xyz, a.yaw + b.yaw)."""
    c, s = torch.cos(a[:, 3]), torch.sin(a[:, 3])
    return torch.stack([a[:, 0] + c * b[:, 0] - s * b[:, 1], a[:, 1] + s * b[:, 0] + c * b[:, 1],
                        a[:, 2] + b[:, 2], a[:, 3] + b[:, 3]], -1)


def into_frame(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(B, M, 3) points -> the frame of local boxes (B, 4): R(yaw)^T (p - centre)."""
    d = points - box[:, None, :3]
    c, s = torch.cos(box[:, 3])[:, None], torch.sin(box[:, 3])[:, None]
    return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], -1)


class PointDropTrack(nn.Module):
    """Two frames of points in the reference box's frame -> targetness and boxes (B, 4) local.

    Tokens of frame t-1 (+ position + temporal_pos_embed_z) and frame t (+ position +
    temporal_pos_embed_x) run jointly through the ViT blocks (DropTrack's template `_z`, search
    `_x`). patch_embed and pos_embed exist only to load checkpoints: they are frozen and unused.
    """

    def __init__(self, cfg: PointConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ViTEncoder(get_config(cfg.encoder, drop_path=cfg.drop_path))
        for p in (*self.backbone.patch_embed.parameters(), self.backbone.pos_embed):
            p.requires_grad_(False)
        D = self.backbone.cfg.embed_dim
        self.tokenizer = PointTokenizer(D, cfg)
        self.pos_mlp = nn.Sequential(nn.Linear(3, cfg.pos_hidden), nn.GELU(), nn.Linear(cfg.pos_hidden, D))
        self.seg_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2))
        self.motion_mlp = mlp_bn((D, *cfg.head, 4))
        self.prev_mlp = mlp_bn((D, *cfg.head, 4))
        self.refine_proj = nn.Linear(D, cfg.refine)
        self.refine_point = shared_mlp(cfg.refine + 3, cfg.refine, cfg.refine)
        self.refine_mlp = mlp_bn((cfg.refine, cfg.refine // 2, 4))

    def encode(self, z: torch.Tensor, x: torch.Tensor):
        """z, x (B, N, 4) -> features (B, 2G, D), centres (B, 2G, 3)."""
        bb = self.backbone
        tok_z, cen_z = self.tokenizer(z)
        tok_x, cen_x = self.tokenizer(x)
        centres = torch.cat([cen_z, cen_x], 1)
        pos = self.pos_mlp(centres)                                       # (B, 2G, D)
        G = tok_z.shape[1]
        frame = torch.cat([bb.temporal_pos_embed_z.expand(-1, G, -1),
                           bb.temporal_pos_embed_x.expand(-1, G, -1)], 1)
        tokens = torch.cat([tok_z, tok_x], 1) + frame + pos
        if self.cfg.pos_every_block:                                      # Point-MAE's variant
            for blk in bb.blocks:
                tokens = blk(tokens + pos)
            return bb.norm(tokens), centres
        return bb.forward_tokens(tokens), centres

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> dict:
        feat, centres = self.encode(z, x)                                 # (B, 2G, D)
        G = feat.shape[1] // 2
        logits = self.seg_head(feat)                                      # (B, 2G, 2)
        p = logits.float().softmax(-1)[..., 1:].to(feat.dtype)            # (B, 2G, 1)
        pooled = (p * feat).max(1).values                                 # (B, D)
        motion = self.motion_mlp(pooled).float()                          # (B, 4) t-1 -> t
        prev = self.prev_mlp(pooled).float()                              # previous box, local
        stage1 = compose(prev, motion)
        # refinement on the frame-t tokens, in the stage-1 box frame
        local = into_frame(centres[:, G:].float(), stage1.detach())       # (B, G, 3)
        h = torch.cat([local.to(feat.dtype), self.refine_proj(feat[:, G:])], -1)
        h = self.refine_point(h)                                          # (B, G, R)
        h = (h * p[:, G:]).max(1).values                                  # (B, R)
        final = compose(stage1, self.refine_mlp(h).float())
        return {"logits": logits.float(), "centres": centres.float(), "motion": motion, "prev": prev,
                "stage1": stage1, "final": final}


def build_model(name: str = "base", **overrides) -> PointDropTrack:
    return PointDropTrack(dataclasses.replace(POINT_PRESETS[name], **overrides))


# --------------------------------------------------------------------------------------------
# Loss (M2-Track `compute_loss`, weights of `cfgs/M2_track_kitti.yaml`)
# --------------------------------------------------------------------------------------------

def targetness_labels(centres: torch.Tensor, gt_prev, gt_cur, size, scale=1.25) -> torch.Tensor:
    """(B, 2G) long: 1 where a group centre lies in its frame's GT box * 1.25."""
    G = centres.shape[1] // 2
    half = size[:, None] * scale / 2                                      # (B, 1, 3)
    inz = (into_frame(centres[:, :G], gt_prev).abs() <= half).all(-1)
    inx = (into_frame(centres[:, G:], gt_cur).abs() <= half).all(-1)
    return torch.cat([inz, inx], 1).long()


def compute_loss(out: dict, batch: dict, w: dict) -> tuple[torch.Tensor, dict]:
    """Targetness CE (class weights [0.5, 2.0]) x seg_weight, plus for each of final, stage-1
    (vs current GT), previous (vs previous GT) and motion (vs GT motion): smooth-L1 on the centre
    x center_weight + smooth-L1 on sin(yaw) x angle_weight."""
    labels = targetness_labels(out["centres"], batch["gt_prev"], batch["gt_cur"], batch["size"])
    seg = F.cross_entropy(out["logits"].reshape(-1, 2), labels.reshape(-1),
                          weight=torch.tensor([0.5, 2.0], device=labels.device))
    stats = {"seg": seg.item()}
    total = w["seg_weight"] * seg
    for name, target in (("final", "gt_cur"), ("stage1", "gt_cur"), ("prev", "gt_prev"), ("motion", "motion")):
        pred, gt = out[name], batch[target]
        centre = F.smooth_l1_loss(pred[:, :3], gt[:, :3])
        angle = F.smooth_l1_loss(torch.sin(pred[:, 3]), torch.sin(gt[:, 3]))
        total = total + w["center_weight"] * centre + w["angle_weight"] * angle
        stats[f"{name}_centre"] = centre.item()
    stats["loss"] = total.item()
    with torch.no_grad():
        stats["final_dist"] = (out["final"][:, :3] - batch["gt_cur"][:, :3]).norm(dim=1).mean().item()
    return total, stats


def lr_at(epoch: int, base: float, drop: int) -> float:
    """StepLR(step_size=drop, gamma=0.1) after each epoch: epoch e (1-based) at base * 0.1 ** ((e-1) // drop)."""
    return base * 0.1 ** ((epoch - 1) // drop)


def param_groups(model: PointDropTrack, lr: float, backbone_mult: float, weight_decay: float, verbose=True):
    """Two groups: the ViT blocks, norm and frame vectors (`backbone.*`, trainable) at
    lr * backbone_mult (DropTrack's x0.1); the tokeniser and heads at lr. Weight decay on all."""
    back = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    new = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    if verbose:
        print(f"param groups: tokeniser + heads {len(new)} tensors at lr {lr:g}, ViT blocks + frame vectors "
              f"{len(back)} tensors at lr {lr * backbone_mult:g}; weight decay {weight_decay:g}")
    return [{"params": new, "lr_mult": 1.0, "lr": lr, "weight_decay": weight_decay},
            {"params": back, "lr_mult": backbone_mult, "lr": lr * backbone_mult, "weight_decay": weight_decay}]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
#   | keys                                              | from                                |
#   |---------------------------------------------------|-------------------------------------|
#   | backbone.blocks.*, backbone.norm.*                | the pre-trained checkpoint          |
#   | backbone.temporal_pos_embed_{x,z}                 | the pre-trained checkpoint (DropMAE,|
#   |                                                   | TwinMAE, ours); kept at init for MAE|
#   | backbone.patch_embed.*, backbone.pos_embed        | loaded, frozen, unused              |
#   | tokenizer.*, pos_mlp.*, seg_head.*, motion_mlp.*, | new (random init), every row        |
#   | prev_mlp.*, refine_*                              |                                     |

PRETRAINED_PREFIXES = ("backbone.",)
NEW_PREFIXES = ("tokenizer.", "pos_mlp.", "seg_head.", "motion_mlp.", "prev_mlp.", "refine_")


def key_table(model: PointDropTrack) -> dict:
    """{'pretrained': [...], 'new': [...]} state-dict keys; every key is in exactly one (asserted)."""
    keys = list(model.state_dict())
    pre = [k for k in keys if k.startswith(PRETRAINED_PREFIXES)]
    new = [k for k in keys if k.startswith(NEW_PREFIXES)]
    other = sorted(set(keys) - set(pre) - set(new))
    assert not other, f"keys outside the key table: {other[:8]}"
    return {"pretrained": pre, "new": new}


def load_pretrained_blocks(src, model: PointDropTrack, verbose: bool = True) -> dict:
    """A DropMAE / MAE / our pre-training checkpoint -> model.backbone via dropmae.load_pretrained
    (decoder keys and mask_token dropped; MAE lacks the two frame vectors). Asserts that exactly
    the key table's pre-trained keys were loaded (less MAE's frame vectors), nothing else."""
    report = dropmae.load_pretrained(src, model.backbone, verbose=verbose)
    table = key_table(model)
    loaded = {f"backbone.{k}" for k in model.backbone.state_dict()} - {f"backbone.{k}" for k in report["missing"]}
    allowed_missing = {"temporal_pos_embed_x", "temporal_pos_embed_z"} if report["kind"] == "mae" else set()
    assert set(report["missing"]) <= allowed_missing, report["missing"]
    assert loaded <= set(table["pretrained"]) and not loaded & set(table["new"])
    report["new"] = table["new"]
    return report


def load_tracker_checkpoint(path) -> PointDropTrack:
    """Our `train` checkpoint (path or dict with 'model' and 'point') -> model in eval mode (strict)."""
    ckpt = path if isinstance(path, dict) else dropmae.load_checkpoint(path)
    if "point" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a tasks/pointcloud.py checkpoint (needs 'model' and 'point')")
    point = ckpt["point"]
    cfg = PointConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in point.items()})
    model = PointDropTrack(cfg)
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def collate(batch: list[dict]) -> dict:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def _reduce(values: dict, device) -> dict:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def run_epoch(net, loader, optimizer, cfg, device, amp: str, train: bool) -> dict:
    """One pass -> means of the loss statistics (over all ranks)."""
    from tqdm import tqdm
    net.train(train)
    sums, n = {}, 0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    bar = tqdm(loader, desc="train" if train else "val", leave=False, disable=not dropmae.is_main())
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.set_grad_enabled(train), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                           enabled=dtype is not None):
            out = net(batch["z"], batch["x"])
        loss, stats = compute_loss(out, batch, cfg)
        if train:
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        B = batch["z"].shape[0]
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v * B
        n += B
        bar.set_postfix_str(f"loss {stats['loss']:.3f}")
    sums["n"] = n
    sums = _reduce(sums, device)
    n = max(sums.pop("n"), 1)
    return {k: v / n for k, v in sums.items()} | {"samples": int(n)}


def train(args) -> Path:
    keys = ("epochs", "batch_size", "lr", "lr_drop", "seed", "candidates", "val_every")
    cfg = resolve_train_config(args.category, args.model, {k: getattr(args, k) for k in keys})
    point = POINT_PRESETS[args.model]
    rank, world, local_rank, device = dropmae.init_distributed()
    torch.manual_seed(cfg["seed"] + rank)
    np.random.seed(cfg["seed"] + rank)
    amp = dropmae.resolve_amp(args.amp, device)
    run = dropmae.make_run_dir(args.output, {"category": args.category, "model": args.model, "train": cfg,
                                             "point": dataclasses.asdict(point), "world_size": world,
                                             "pretrained": args.pretrained, "amp": amp,
                                             "use_r_rect": args.use_r_rect})
    logger = dropmae.JsonlLogger(run)
    main = dropmae.is_main()
    if main:
        print(json.dumps({"train": cfg, "point": dataclasses.asdict(point), "world_size": world, "amp": amp}))
        print(f"schedule: lr {cfg['lr']:g} (ViT blocks x{cfg['backbone_mult']:g}) for epochs 1-{cfg['lr_drop']}, "
              f"then x0.1 every {cfg['lr_drop']}; {cfg['epochs']} epochs; batch {cfg['batch_size']} per process "
              f"x {world}; checkpoint = the last epoch (val scenes only watch training)")

    # data: crop caches are built by rank 0 first, then read by every rank
    cache_dir = Path(args.cache_dir) if args.cache_dir else run / "cache"
    datasets = {}
    for split in ("train", "val") if cfg["val_every"] else ("train",):
        ds = KittiTracking(args.data_path, args.category, split, args.use_r_rect)
        if main:
            TrackletCache(ds, cfg["preload_offset"], cache_dir)
        if world > 1:
            torch.distributed.barrier()
        cache = TrackletCache(ds, cfg["preload_offset"], cache_dir, verbose=False)
        datasets[split] = TrainPairs(cache, point, cfg, train=split == "train")
    loaders = {}
    for split, ds in datasets.items():
        sampler = (torch.utils.data.distributed.DistributedSampler(ds, world, rank, shuffle=split == "train",
                                                                   seed=cfg["seed"])
                   if world > 1 else None)
        generator = torch.Generator().manual_seed(cfg["seed"])
        loaders[split] = torch.utils.data.DataLoader(
            ds, batch_size=cfg["batch_size"], sampler=sampler, shuffle=sampler is None and split == "train",
            generator=generator, num_workers=args.workers, collate_fn=collate, drop_last=split == "train",
            pin_memory=device.type == "cuda")
    if main:
        print(f"{args.category}: {len(datasets['train'])} training samples per epoch "
              f"({len(datasets['train'].frames)} frames x {cfg['candidates']} candidates)")

    # model and optimizer
    model = PointDropTrack(point)
    if args.pretrained:
        load_pretrained_blocks(args.pretrained, model, verbose=main)
    elif main:
        print("no --pretrained: the ViT blocks start random (the scratch row)")
    model.to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["lr"], cfg["backbone_mult"], cfg["weight_decay"], main),
                                  lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"])
    start = 1
    resume, ckpt = dropmae.resume_checkpoint(run, args.resume, required=("model", "optimizer", "epoch", "rng"))
    if resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        dropmae.set_rng_state(ckpt["rng"])
        start = ckpt["epoch"] + 1
        if main:
            print(f"resumed from {resume} (epoch {ckpt['epoch']})")

    # loop
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.time()
        lr = lr_at(epoch, cfg["lr"], cfg["lr_drop"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        record = {"epoch": epoch, "lr": lr}
        for split, loader in loaders.items():
            if split == "val" and epoch % cfg["val_every"] and epoch != cfg["epochs"]:
                continue
            datasets[split].set_epoch(epoch if split == "train" else 0)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            if split == "train":
                loader.generator.manual_seed(cfg["seed"] * 1000 + epoch)
            stats = run_epoch(net, loader, optimizer, cfg, device, amp, split == "train")
            record.update({f"{split}_{k}": v for k, v in stats.items()})
        record["epoch_time_s"] = time.time() - t0
        logger.log(**record)
        if main:
            print(json.dumps(record))
        dropmae.save_checkpoint(run / f"checkpoint-{epoch:04d}.pth", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "point": dataclasses.asdict(point), "config": {"train": cfg, "category": args.category,
                                                            "use_r_rect": args.use_r_rect},
            "rng": dropmae.rng_state()})
        if main:
            for p in run.glob("checkpoint-*.pth"):
                e = int(p.stem.split("-")[1])
                if e <= epoch - args.keep_last and e != cfg["epochs"]:
                    p.unlink()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run


# --------------------------------------------------------------------------------------------
# Tracking, result files, scoring
# --------------------------------------------------------------------------------------------

def test_rng(seed: int, scene: str, track_id: int, frame: int) -> np.random.Generator:
    """The resampling generator of one test frame: a function of (seed, scene, track, frame)."""
    return np.random.default_rng([seed, int(scene), int(track_id), int(frame)])


class PointTracker:
    """Tracks one tracklet from its first-frame box. `model=None` is the "previous box" baseline:
    every frame repeats the box of the frame before, i.e. the first box."""

    def __init__(self, model: PointDropTrack | None, cfg: PointConfig | None = None, device="cpu", seed=0):
        self.model = model.to(device).eval() if model is not None else None
        self.cfg = cfg if cfg is not None else (model.cfg if model is not None else POINT_PRESETS["tiny"])
        self.device, self.seed = torch.device(device), seed

    @torch.no_grad()
    def track(self, ds: KittiTracking, t: Tracklet) -> tuple[np.ndarray, np.ndarray]:
        """-> boxes (T, 7) velodyne, seconds (T,) per frame (crop + model; frame 0 is 0)."""
        boxes = [t.boxes[0].copy()]
        seconds = [0.0]
        size = t.boxes[0][3:6]
        prev_cloud = ds.scan(t.scene, t.frames[0], t.lines[0])
        for i in range(1, len(t.frames)):
            cur_cloud = ds.scan(t.scene, t.frames[i], t.lines[i])
            t0 = time.perf_counter()
            ref = boxes[-1]
            if self.model is None:
                box = ref.copy()
            else:
                rng = test_rng(self.seed, t.scene, t.track_id, t.frames[i])
                z, x, _ = make_input(prev_cloud, cur_cloud, ref, size, i == 1, self.cfg, rng)
                out = self.model(torch.from_numpy(z)[None].to(self.device), torch.from_numpy(x)[None].to(self.device))
                box = apply_offset(ref, out["final"][0].double().cpu().numpy())
                box[3:6] = size
            boxes.append(box)
            seconds.append(time.perf_counter() - t0)
            prev_cloud = cur_cloud
        return np.array(boxes), np.array(seconds)


def write_tracklet(path, frames, boxes, tr_velo_cam, r_rect=None):
    """One result file: a line `frame h w l x y z ry` (6 decimals) per row, written atomically."""
    labels = boxes_to_labels(boxes, tr_velo_cam, r_rect)
    text = "".join(f"{int(f)} " + " ".join(f"{v:.6f}" for v in lab) + "\n" for f, lab in zip(frames, labels))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def score(out_dir, ds: KittiTracking) -> dict:
    """Velodyne-mode (official height overlap) and camera-mode scores from eval/kitti3d.py."""
    scenes = [int(s) for s in ds.scenes]
    kw = dict(category=ds.category, scenes=scenes)
    velo = K.evaluate(out_dir, ds.root / "label_02", coords="velodyne", calib_dir=ds.root / "calib", **kw)
    cam = K.evaluate(out_dir, ds.root / "label_02", coords="camera", **kw)
    return {"velodyne": {k: v for k, v in velo.items() if k != "per_tracklet"},
            "camera": {k: v for k, v in cam.items() if k != "per_tracklet"},
            "per_tracklet": velo["per_tracklet"]}


def summary_line(category, split, m: dict, fps: float | None, tiny: bool) -> str:
    v, c = m["velodyne"], m["camera"]
    return (f"kitti3d {category} {split}: {v['n_tracklets']} tracklets, {v['n_frames']} frames  "
            f"Success {v['success']:.2f}  Precision {v['precision']:.2f} (velodyne, official height; "
            f"camera mode {c['success']:.2f} / {c['precision']:.2f})" + (f"  {fps:.1f} FPS" if fps else "")
            + (TINY_TAG if tiny else ""))


def run_test(ds: KittiTracking, tracker: PointTracker, out_dir, label: str = "") -> dict:
    """Track every tracklet of ds, write the result files and timing.json, score them."""
    from tqdm import tqdm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing = {}
    for t in tqdm(ds.tracklets, desc=f"tracklets {label}".strip(), unit="trk", leave=False):
        boxes, seconds = tracker.track(ds, t)
        write_tracklet(out_dir / f"{t.name}.txt", t.frames, boxes, *ds.transform(t.scene))
        timing[t.name] = {"frames": len(t.frames), "seconds": float(seconds.sum())}
    tracked = sum(v["frames"] - 1 for v in timing.values())
    seconds = sum(v["seconds"] for v in timing.values())
    fps = tracked / seconds if seconds > 0 else float("inf")
    (out_dir / "timing.json").write_text(json.dumps({"fps": fps, "frames_tracked": tracked, "seconds": seconds,
                                                     "device": str(tracker.device), "per_tracklet": timing}, indent=1))
    metrics = score(out_dir, ds)
    metrics["fps"] = fps
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def test(args) -> dict:
    """Track and score each split of `--split` (several: one sub-folder per split) -> summaries."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tiny = None, False
    if args.tracker == "model":
        if not args.ckpt:
            raise SystemExit("error: --ckpt is needed with --tracker model")
        model = load_tracker_checkpoint(args.ckpt)
        tiny = model.cfg.encoder == "tiny"
    out_root = Path(args.output)
    out_root.mkdir(parents=True, exist_ok=True)
    config = {"category": args.category, "splits": args.split, "tracker": args.tracker, "ckpt": args.ckpt,
              "point": dataclasses.asdict(model.cfg) if model else None, "test_seeds": args.test_seeds,
              "use_r_rect": args.use_r_rect, "device": device, "coords": "velodyne (camera mode printed beside)",
              "thresholds": {"prior_first_frame": [1.0, 0.0], "prior_after": [0.8, 0.2],
                             "empty_crop": "<= 2 points -> zeros", "size": "first frame",
                             "height_overlap": "official [c - h, c]"}}
    (out_root / "config.json").write_text(json.dumps(config, indent=1, default=str))
    summaries = {}
    for split in args.split:
        ds = KittiTracking(args.data_path, args.category, split, args.use_r_rect)
        if not ds.tracklets:
            raise SystemExit(f"error: no {args.category} tracklets in the {split} scenes of {args.data_path}")
        split_dir = out_root if len(args.split) == 1 else out_root / split
        results = []
        for seed in args.test_seeds:
            out = split_dir if len(args.test_seeds) == 1 else split_dir / f"seed_{seed}"
            m = run_test(ds, PointTracker(model, device=device, seed=seed), out, f"{split} seed {seed}")
            line = summary_line(args.category, split, m, m["fps"] if model else None, tiny)
            print(f"resampling seed {seed}: {line}" if model else line + "  [previous box: never moves]")
            results.append(m)
        s = np.array([r["velodyne"]["success"] for r in results])
        p = np.array([r["velodyne"]["precision"] for r in results])
        summary = {"category": args.category, "split": split, "tracker": args.tracker,
                   "success": float(s.mean()), "precision": float(p.mean()),
                   "success_std": float(s.std()), "precision_std": float(p.std()), "seeds": args.test_seeds,
                   "fps": float(np.mean([r["fps"] for r in results])) if model else None,
                   "n_frames": results[0]["velodyne"]["n_frames"], "n_tracklets": results[0]["velodyne"]["n_tracklets"],
                   "camera_success": results[0]["camera"]["success"],
                   "camera_precision": results[0]["camera"]["precision"]}
        if len(results) > 1:
            print(f"{args.category} {split} over seeds {args.test_seeds}: Success {s.mean():.2f} +- {s.std():.2f}  "
                  f"Precision {p.mean():.2f} +- {p.std():.2f}" + (TINY_TAG if tiny else ""))
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        summaries[split] = summary
    (out_root / "summaries.json").write_text(json.dumps(summaries, indent=1))
    return summaries[args.split[0]] if len(args.split) == 1 else summaries


# --------------------------------------------------------------------------------------------
# Synthetic LiDAR scenes in the KITTI tracking layout (the scenes come from data.LidarWorld)
# --------------------------------------------------------------------------------------------

SYNTH_KINDS = ("Car", "Car", "Van", "Pedestrian", "Pedestrian", "Cyclist")
SYNTH_RRECT_SCENE = "0004"          # the one scene whose labels went through a non-identity R_rect
SYNTH_GAP = ("0003", 3, (5, 6))     # (scene, track id, frames without a label row)
SYNTH_MISSING = ("0001", 170, (178, 179))   # scene 0001 starts at frame 170; two scans absent
SYNTH_DISTRACTOR_SCENE = "0019"     # a second car beside car 0
SYNTH_EMPTY = ("0017", 0, 4)        # (scene, track id, frame) with no return on the target


def _rotation(rx, ry, rz) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def synthetic_calib(rng) -> dict:
    """KITTI-like calibration: Tr_velo_cam = small rotation x the axis permutation (camera x = -velo
    y, y = -velo z, z = velo x), KITTI-like translation; P0-P3 of a 1242 x 375 camera."""
    perm = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
    tr = np.zeros((3, 4))
    tr[:, :3] = _rotation(*rng.normal(0, 0.005, 3)) @ perm
    tr[:, 3] = [-0.004, -0.076, -0.272] + rng.normal(0, 0.005, 3)
    p = np.array([[721.5, 0, 609.6, 0], [0, 721.5, 172.9, 0], [0, 0, 1, 0]])
    ps = [p + np.array([[0, 0, 0, b], [0, 0, 0, 0], [0, 0, 0, 0]]) for b in (0, -387.6, 44.9, -337.4)]
    return {"P": ps, "R_rect": np.eye(3), "Tr_velo_cam": tr,
            "Tr_imu_velo": np.array([[1.0, 0, 0, -0.81], [0, 1, 0, 0.32], [0, 0, 1, -0.8]])}


def write_calib(path, calib: dict):
    fmt = lambda a: " ".join(f"{v:.12e}" for v in np.asarray(a).reshape(-1))  # noqa: E731
    lines = [f"P{i}: {fmt(p)}" for i, p in enumerate(calib["P"])]
    lines += [f"R_rect {fmt(calib['R_rect'])}", f"Tr_velo_cam {fmt(calib['Tr_velo_cam'])}",
              f"Tr_imu_velo {fmt(calib['Tr_imu_velo'])}"]
    Path(path).write_text("\n".join(lines) + "\n")


def label_line(frame, tid, kind, label, p2) -> str:
    """17 columns: frame id type truncated occluded alpha left top right bottom h w l x y z ry."""
    h, w, l, x, y, z, ry = label
    corners = np.array([[sx * l / 2, -sy * h, sz * w / 2] for sx in (-1, 1) for sy in (0, 1) for sz in (-1, 1)])
    c, s = math.cos(ry), math.sin(ry)
    cam = corners @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]) + [x, y, z]
    if (cam[:, 2] > 0.1).all():
        uv = cam @ p2[:, :3].T + p2[:, 3]
        uv = uv[:, :2] / uv[:, 2:]
        bbox = [max(uv[:, 0].min(), 0), max(uv[:, 1].min(), 0), min(uv[:, 0].max(), 1241), min(uv[:, 1].max(), 374)]
    else:
        bbox = [-1.0, -1.0, -1.0, -1.0]
    alpha = wrap_angle(ry - math.atan2(x, z))
    vals = [0.0, 0, alpha, *bbox, *label]
    return f"{frame} {tid} {kind} {vals[0]:.2f} {vals[1]} " + " ".join(f"{v:.6f}" for v in vals[2:])


def write_synthetic(out, seed: int = 0, num_scenes: int = 21, frames=(8, 20)) -> Path:
    """21 synthetic scenes (data.LidarWorld) in the KITTI tracking layout under `out`.

    Each scene: 2 Cars, a Van, 2 Pedestrians, a Cyclist (track ids 0-5), Misc rows for the parked
    boxes (ids 100+), a DontCare row (id -1) per frame, 8-20 frames. Special cases, each once:
    SYNTH_RRECT_SCENE (R_rect not the identity), SYNTH_GAP (a tracklet with a frame gap),
    SYNTH_MISSING (scene 0001 numbered from frame 170, scans 178-179 absent: the frames the
    protocol tolerates), SYNTH_DISTRACTOR_SCENE (a same-class car beside car 0),
    SYNTH_EMPTY (a frame with no return on the target). Returns `out`.
    """
    out = Path(out)
    for sub in ("velodyne", "label_02", "calib"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for s in range(num_scenes):
        scene = f"{s:04d}"
        rng = np.random.default_rng([seed, s, 99])
        T = int(rng.integers(frames[0], frames[1] + 1))
        empty = (SYNTH_EMPTY[1], SYNTH_EMPTY[2]) if scene == SYNTH_EMPTY[0] else None
        world = data.LidarWorld(seed * 1000 + s, T, SYNTH_KINDS, distractor=scene == SYNTH_DISTRACTOR_SCENE,
                                empty=empty)
        calib = synthetic_calib(rng)
        if scene == SYNTH_RRECT_SCENE:
            calib["R_rect"] = _rotation(0.006, -0.004, 0.008)
        write_calib(out / "calib" / f"{scene}.txt", calib)
        first = SYNTH_MISSING[1] if scene == SYNTH_MISSING[0] else 0
        (out / "velodyne" / scene).mkdir(exist_ok=True)
        lines = []
        for t in range(T):
            frame = first + t
            if not (scene == SYNTH_MISSING[0] and frame in SYNTH_MISSING[2]):
                world.scan(t).astype("<f4").tofile(out / "velodyne" / scene / f"{frame:06d}.bin")
            labels = boxes_to_labels(world.boxes(t), calib["Tr_velo_cam"], calib["R_rect"])
            for k, (kind, lab) in enumerate(zip(world.kinds, labels)):
                if scene == SYNTH_GAP[0] and k == SYNTH_GAP[1] and t in SYNTH_GAP[2]:
                    continue
                lines.append(label_line(frame, k, kind, lab, calib["P"][2]))
            misc = boxes_to_labels(world.clutter, calib["Tr_velo_cam"], calib["R_rect"])
            for c, (kind, lab) in enumerate(zip(world.clutter_kinds, misc)):
                if kind == "Misc":
                    lines.append(label_line(frame, 100 + c, "Misc", lab, calib["P"][2]))
            lines.append(f"{frame} -1 DontCare -1 -1 -10 500.0 150.0 540.0 190.0 -1000 -1000 -1000 "
                         "-1000 -1000 -1000 -10")
        (out / "label_02" / f"{scene}.txt").write_text("\n".join(lines) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Point-DropTrack: train, test, synthetic KITTI data.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one category (torchrun for several GPUs)")
    tr.add_argument("--category", required=True, choices=sorted(CATEGORY_CONFIGS))
    tr.add_argument("--model", default="base", choices=sorted(POINT_PRESETS))
    tr.add_argument("--data-path", required=True, help="KITTI tracking training root (velodyne/, label_02/, calib/)")
    tr.add_argument("--pretrained", default=None, help="DropMAE / MAE / our pre-training checkpoint (none: scratch)")
    tr.add_argument("--output", required=True)
    tr.add_argument("--resume", default=None, help="'auto' (latest in --output) or a checkpoint path")
    tr.add_argument("--epochs", type=int, help="60 (6 for --model tiny)")
    tr.add_argument("--batch-size", type=int, help="per process (64 in total in the recipe)")
    tr.add_argument("--lr", type=float)
    tr.add_argument("--lr-drop", type=int, help="StepLR step in epochs (20)")
    tr.add_argument("--candidates", type=int, help="reference boxes per frame (4)")
    tr.add_argument("--val-every", type=int, help="epochs between val-loss passes (0: none)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--amp", default=None, choices=("bf16", "fp16", "off"), help="default bf16 on GPU, off on CPU")
    tr.add_argument("--workers", type=int, default=4, help="data-loader processes per GPU")
    tr.add_argument("--cache-dir", default=None, help="tracklet crop caches (default <output>/cache)")
    tr.add_argument("--keep-last", type=int, default=2)
    tr.add_argument("--use-r-rect", action="store_true", help="map labels with R_rect Tr_velo_cam (a variant)")
    te = sub.add_parser("test", help="track every tracklet from its first box, write the files, score")
    te.add_argument("--category", required=True, choices=sorted(CATEGORY_CONFIGS) + ["All"])
    te.add_argument("--split", nargs="+", default=["test"], choices=sorted(SPLITS),
                    help="scene split(s): train 0-16, val 17-18, test 19-20; several: one sub-folder each")
    te.add_argument("--data-path", required=True)
    te.add_argument("--ckpt", default=None)
    te.add_argument("--tracker", default="model", choices=("model", "previous"),
                    help="previous: the baseline box that never moves")
    te.add_argument("--output", required=True)
    te.add_argument("--test-seeds", type=int, nargs="+", default=[0], help="resampling seeds (mean +- std)")
    te.add_argument("--device", default=None)
    te.add_argument("--use-r-rect", action="store_true")
    sy = sub.add_parser("synthetic", help="write synthetic LiDAR scenes in the KITTI tracking layout")
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "test":
        return test(args)
    t0 = time.time()
    print(f"wrote 21 synthetic scenes to {write_synthetic(args.out, args.seed)} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
