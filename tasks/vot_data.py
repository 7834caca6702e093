"""DropTrack data: tracking datasets in their official layouts, the crop, the training pairs.

Helper of `tasks/vot.py` (the model, training and inference live there). Behaviour follows
OSTrack/DropTrack's `lib/train/data/*` and `lib/train/dataset/*` (specs/vot.md A.1, A.5, A.6);
the code is ours. Boxes are `[x, y, w, h]` in pixels (top-left corner, width, height) unless a
name says otherwise (`xyxy`, `cxcywh`, `_norm` = divided by the crop side).

Datasets (each a small class; `root` is the folder the official archive unpacks to):
    GOT10k(root, split)     <root>/<split>/list.txt, <root>/<split>/<seq>/{%08d.jpg,
                            groundtruth.txt, absence.label, cover.label, meta_info.ini};
                            split train|val|test, or vottrain|votval (indices into
                            train/list.txt from pytracking's got10k_vot_{train,val}_split.txt,
                            looked up in <root>/ or <root>/train/)
    LaSOT(root, split)      <root>/<class>/<class>-<n>/{img/%08d.jpg, groundtruth.txt,
                            full_occlusion.txt, out_of_view.txt}; split train|test reads the
                            release's training_set.txt / testing_set.txt; split all = every
                            sequence found (LaSOT_ext)
    TNL2K(root)             <root>/<seq>/{imgs/*, groundtruth.txt}
    TrackingNet(root, sets) <root>/<TRAIN_k|TEST>/{frames/<seq>/<i>.jpg, anno/<seq>.txt}
    COCO17(root)            <root>/annotations/instances_train2017.json, images in
                            <root>/train2017/ (DropTrack) or <root>/images/train2017/ (OSTrack);
                            every iscrowd == 0 annotation is a one-frame sequence
Visibility (what the sampler may draw): GOT-10k `absence == 0 & cover > 0`, LaSOT
`full_occlusion == 0 & out_of_view == 0`, TrackingNet and COCO every box; always also w, h > 0.
Every malformed file is an error naming the file (and line); nothing is skipped silently.

Synthetic data for smoke runs and tests: `write_synthetic(root)` writes GOT-10k and LaSOT layouts
of sequences of the synthetic world (`data.World`: one sprite is the target, the others
distractors and occluders), with cover / absence / occlusion / out-of-view labels from the world.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data import World, world_seed
from eval.sot import read_boxes, read_flags, read_numbers, read_sequence_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------

def xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) [x, y, w, h] -> [x1, y1, x2, y2] with x2 = x + w (continuous)."""
    return torch.cat([b[..., :2], b[..., :2] + b[..., 2:]], dim=-1)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) [cx, cy, w, h] -> [x1, y1, x2, y2]."""
    return torch.cat([b[..., :2] - 0.5 * b[..., 2:], b[..., :2] + 0.5 * b[..., 2:]], dim=-1)


# ----------------------------------------------------------------------------------------------
# The crop (OSTrack `processing_utils.py`) and the inverse mapping of the tracker
# ----------------------------------------------------------------------------------------------

def crop_window(box, factor: float) -> tuple[int, int, int]:
    """Square crop around a box: (x1, y1, side) with side = ceil(sqrt(w*h) * factor), centred.

    x1 = round(cx - side/2) with Python's round (half to even), as the official code.
    """
    x, y, w, h = (float(v) for v in box)
    side = math.ceil(math.sqrt(w * h) * factor)
    if side < 1:
        raise ValueError(f"box {list(box)} is too small to crop (side {side})")
    return round(x + 0.5 * w - side * 0.5), round(y + 0.5 * h - side * 0.5), side


def _resize_source(side: int, out: int) -> np.ndarray:
    """Bilinear resize side -> out with half-pixel centres and no antialiasing (what
    `cv.resize(INTER_LINEAR)` and `F.interpolate(align_corners=False)` do): the source position
    (crop pixels) each output pixel interpolates at, (out,) float64, clamped to [0, side - 1]
    (both clamp there: a tap past the last pixel reads the last pixel)."""
    return ((np.arange(out) + 0.5) * (side / out) - 0.5).clip(0.0, side - 1)


def _reads_padding(src: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(out,) bool: one of the two taps of `src` with weight > 0 lies outside crop pixels lo..hi-1."""
    i0 = np.floor(src)
    outside = lambda i: (i < lo) | (i >= hi)
    return outside(i0) | ((src > i0) & outside(i0 + 1))


def sample_target(image: np.ndarray, box, factor: float, out_size: int, with_mask: bool = False):
    """Crop a zero-padded square of side ceil(sqrt(wh)*factor) centred on `box`, resize to out_size.

    image: (H, W, 3) uint8 RGB. Returns crop (3, out, out) uint8, resize_factor = out / side, and
    with `with_mask` the padding mask (out, out) bool (True where the resized crop reads
    padding). Resizing is bilinear with half-pixel centres and no antialiasing (what
    `cv.resize(INTER_LINEAR)` does). The padded side x side crop is never built: the output is
    interpolated straight from the image part inside the crop, zeros outside it
    (`grid_sample(padding_mode='zeros')`), so memory and time stay bounded by the image and the
    output however large the box (a 600x400 box gives side 2450: 86 -> 9 ms on one core, no
    70 MB float crop). Official quirk kept: when the crop reaches past the right (bottom) image
    edge, the last image column (row) is replaced by padding too (`x2_pad = max(x2 - W + 1, 0)`
    in `sample_target`).
    """
    H, W = image.shape[:2]
    x1, y1, side = crop_window(box, factor)
    x2, y2 = x1 + side, y1 + side
    sx1, sy1 = max(x1, 0), max(y1, 0)                   # the image part inside the crop
    sx2 = x2 if x2 < W else W - 1                        # quirk: drops column W-1 when padded
    sy2 = y2 if y2 < H else H - 1
    src = _resize_source(side, out_size)                 # (out,) crop pixels, same for x and y
    crop = torch.zeros(3, out_size, out_size, dtype=torch.uint8)
    if sx2 > sx1 and sy2 > sy1:
        data = torch.from_numpy(np.ascontiguousarray(image[sy1:sy2, sx1:sx2])).permute(2, 0, 1)[None].float()
        h, w = sy2 - sy1, sx2 - sx1
        gx = torch.from_numpy((2 * (src + x1 - sx1) + 1) / w - 1).float()   # grid_sample's [-1, 1]
        gy = torch.from_numpy((2 * (src + y1 - sy1) + 1) / h - 1).float()
        grid = torch.stack([gx[None, :].expand(out_size, -1), gy[:, None].expand(-1, out_size)], -1)[None]
        crop = F.grid_sample(data, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        crop = crop.round_().clamp_(0, 255).to(torch.uint8)                  # (3, out, out)
    scale = out_size / side
    if not with_mask:
        return crop, scale
    pad_y = _reads_padding(src, sy1 - y1, sy2 - y1)      # separable: the data is a rectangle
    pad_x = _reads_padding(src, sx1 - x1, sx2 - x1)
    return crop, scale, torch.from_numpy(pad_y[:, None] | pad_x[None, :])


def box_in_crop_norm(box, box_extract, resize_factor: float, out_size: int) -> torch.Tensor:
    """Training label: `box` in the crop taken around `box_extract`, divided by out_size -> (4,).

    Official `transform_image_to_crop`: the crop centre is (out - 1) / 2, while inference maps
    back with out / 2 (`map_box_back`), a half output-pixel offset we keep as published.
    """
    box, ext = torch.as_tensor(box, dtype=torch.float64), torch.as_tensor(box_extract, dtype=torch.float64)
    centre = (out_size - 1) / 2 + (box[:2] + 0.5 * box[2:] - ext[:2] - 0.5 * ext[2:]) * resize_factor
    wh = box[2:] * resize_factor
    return (torch.cat([centre - 0.5 * wh, wh]) / out_size).float()


def map_box_back(box_cxcywh, prev_box, resize_factor: float, out_size: int) -> list[float]:
    """Inference: a (cx, cy, w, h) box in search-crop pixels at image scale -> image [x, y, w, h].

    `box_cxcywh` is the decoded box times out_size / resize_factor (crop pixels, original image
    scale); the crop is taken as centred exactly on the previous box (official `map_box_back`).
    """
    cx, cy, w, h = (float(v) for v in box_cxcywh)
    half = 0.5 * out_size / resize_factor
    px, py, pw, ph = (float(v) for v in prev_box)
    cx += px + 0.5 * pw - half
    cy += py + 0.5 * ph - half
    return [cx - 0.5 * w, cy - 0.5 * h, w, h]


def clip_box(box, H: int, W: int, margin: int = 10) -> list[float]:
    """Official `clip_box`: keep at least `margin` px of the box inside the image, w, h >= margin."""
    x1, y1, w, h = (float(v) for v in box)
    x2, y2 = x1 + w, y1 + h
    x1 = min(max(0.0, x1), W - margin)
    x2 = min(max(float(margin), x2), W)
    y1 = min(max(0.0, y1), H - margin)
    y2 = min(max(float(margin), y2), H)
    return [x1, y1, max(float(margin), x2 - x1), max(float(margin), y2 - y1)]


def normalize_image(crop: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 or float in [0, 255] -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=crop.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=crop.device).view(3, 1, 1) * 255
    return (crop.float() - mean) / std


# ----------------------------------------------------------------------------------------------
# Reading the official files (every error names file and line). Boxes, 0/1 flags, numbers and
# sequence lists are read by eval/sot.py's readers, the ones the scores use.
# ----------------------------------------------------------------------------------------------

def read_cover(path, length: int) -> np.ndarray:
    """GOT-10k `cover.label`: one visible-ratio class 0..8 per frame -> (length,) int64."""
    cover = read_numbers(path)
    if len(cover) != length:
        raise ValueError(f"{path}: {len(cover)} values, the annotation has {length} frames")
    bad = cover[~np.isin(cover, np.arange(9))]
    if len(bad):
        raise ValueError(f"{path}: cover classes are 0..8, found {bad[0]:g}")
    return cover.astype(np.int64)


def read_image(path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise OSError(f"{path}: cannot read image: {err}") from None


def _numbered_frames(folder: Path, exts=(".jpg", ".jpeg", ".png")) -> list[Path]:
    """Image files of a folder sorted by their numeric stem (TrackingNet `0.jpg, 1.jpg, ...`)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir() if p.suffix.lower() in exts and not p.name.startswith(".")]
    try:
        return sorted(files, key=lambda p: int(p.stem))
    except ValueError:
        return sorted(files)


# ----------------------------------------------------------------------------------------------
# Datasets. Interface: name, is_video, names (sequence names), sequence_info(i) -> {boxes (T, 4),
# visible (T,) bool}, frame_path(i, f), frame_paths(i) (every frame, for inference).
# ----------------------------------------------------------------------------------------------

class GOT10k:
    """GOT-10k; visible = absence == 0 and cover > 0 and w, h > 0."""
    is_video = True

    def __init__(self, root, split: str = "train"):
        self.root, self.split, self.name = Path(root), split, f"got10k_{split}"
        if split in ("vottrain", "votval"):
            self.dir = self.root / "train"
            split_file = next((d / f"got10k_vot_{split[3:]}_split.txt" for d in (self.root, self.dir)
                               if (d / f"got10k_vot_{split[3:]}_split.txt").is_file()), None)
            if split_file is None:
                raise FileNotFoundError(
                    f"{self.root}: got10k_vot_{split[3:]}_split.txt not found (copy it from "
                    "pytracking's ltr/data_specs/ into the GOT-10k root)")
            everything = read_sequence_list(self.dir / "list.txt")
            ids = read_numbers(split_file)                   # indices into train/list.txt
            if not np.isin(ids, np.arange(len(everything))).all():
                raise ValueError(f"{split_file}: indices must be integers 0..{len(everything) - 1} "
                                 f"(rows of {self.dir / 'list.txt'})")
            self.names = [everything[int(i)] for i in ids]
        elif split in ("train", "val", "test"):
            self.dir = self.root / split
            self.names = read_sequence_list(self.dir / "list.txt")
        else:
            raise ValueError(f"unknown GOT-10k split {split!r}")

    def __len__(self):
        return len(self.names)

    def sequence_info(self, i: int) -> dict:
        d = self.dir / self.names[i]
        boxes = read_boxes(d / "groundtruth.txt")
        valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        if self.split == "test":                        # only the first box, no labels released
            return {"boxes": boxes, "visible": valid}
        absence = read_flags(d / "absence.label", len(boxes))
        cover = read_cover(d / "cover.label", len(boxes))
        return {"boxes": boxes, "visible": ~absence & (cover > 0) & valid}

    def frame_path(self, i: int, f: int) -> Path:
        return self.dir / self.names[i] / f"{f + 1:08d}.jpg"

    def frame_paths(self, i: int) -> list[Path]:
        return _numbered_frames(self.dir / self.names[i])


class LaSOT:
    """LaSOT / LaSOT_ext; visible = not full_occlusion, not out_of_view, w, h > 0."""
    is_video = True

    def __init__(self, root, split: str = "train"):
        self.root, self.split, self.name = Path(root), split, f"lasot_{split}"
        if split in ("train", "test"):
            listing = self.root / ("training_set.txt" if split == "train" else "testing_set.txt")
            if not listing.is_file():
                raise FileNotFoundError(f"{listing}: not found; the LaSOT release ships "
                                        "training_set.txt / testing_set.txt (the official split)")
            self.names = read_sequence_list(listing)
        elif split == "all":
            self.names = sorted(p.parent.name for p in self.root.glob("*/*/groundtruth.txt"))
            if not self.names:
                raise FileNotFoundError(f"{self.root}: no <class>/<class>-<n>/groundtruth.txt found")
        else:
            raise ValueError(f"unknown LaSOT split {split!r}")

    def __len__(self):
        return len(self.names)

    def seq_dir(self, i: int) -> Path:
        name = self.names[i]
        return self.root / name.rsplit("-", 1)[0] / name

    def sequence_info(self, i: int) -> dict:
        d = self.seq_dir(i)
        boxes = read_boxes(d / "groundtruth.txt")
        occluded = read_flags(d / "full_occlusion.txt", len(boxes))
        out_of_view = read_flags(d / "out_of_view.txt", len(boxes))
        valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        return {"boxes": boxes, "visible": ~occluded & ~out_of_view & valid}

    def frame_path(self, i: int, f: int) -> Path:
        return self.seq_dir(i) / "img" / f"{f + 1:08d}.jpg"

    def frame_paths(self, i: int) -> list[Path]:
        return _numbered_frames(self.seq_dir(i) / "img")


class TNL2K:
    """TNL2K test set: <root>/<seq>/imgs/ (sorted) and groundtruth.txt; visible = w, h > 0."""
    is_video = True

    def __init__(self, root):
        self.root, self.name = Path(root), "tnl2k"
        self.names = sorted(p.parent.name for p in self.root.glob("*/groundtruth.txt"))
        if not self.names:
            raise FileNotFoundError(f"{self.root}: no <seq>/groundtruth.txt found")

    def __len__(self):
        return len(self.names)

    def sequence_info(self, i: int) -> dict:
        boxes = read_boxes(self.root / self.names[i] / "groundtruth.txt")
        return {"boxes": boxes, "visible": (boxes[:, 2] > 0) & (boxes[:, 3] > 0)}

    def frame_paths(self, i: int) -> list[Path]:
        return _numbered_frames(self.root / self.names[i] / "imgs")

    def frame_path(self, i: int, f: int) -> Path:
        return self.frame_paths(i)[f]


class TrackingNet:
    """TrackingNet chunks TRAIN_0..11 / TEST; visible = w, h > 0."""
    is_video = True

    def __init__(self, root, sets=tuple(f"TRAIN_{k}" for k in range(12))):
        self.root, self.name = Path(root), "trackingnet"
        self.items = []                                      # (chunk, sequence)
        for chunk in sets:
            anno = self.root / chunk / "anno"
            if not anno.is_dir():
                raise FileNotFoundError(f"{anno}: TrackingNet annotation folder not found")
            self.items += [(chunk, p.stem) for p in sorted(anno.glob("*.txt"))]
        self.names = [s for _, s in self.items]

    def __len__(self):
        return len(self.items)

    def sequence_info(self, i: int) -> dict:
        chunk, seq = self.items[i]
        boxes = read_boxes(self.root / chunk / "anno" / f"{seq}.txt")
        return {"boxes": boxes, "visible": (boxes[:, 2] > 0) & (boxes[:, 3] > 0)}

    def frame_path(self, i: int, f: int) -> Path:
        chunk, seq = self.items[i]
        return self.root / chunk / "frames" / seq / f"{f}.jpg"

    def frame_paths(self, i: int) -> list[Path]:
        chunk, seq = self.items[i]
        return _numbered_frames(self.root / chunk / "frames" / seq)


class COCO17:
    """COCO 2017 train: each iscrowd == 0 instance is a one-frame 'sequence'."""
    is_video = False

    def __init__(self, root, split: str = "train2017"):
        self.root, self.name = Path(root), "coco17"
        ann_file = self.root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file():
            raise FileNotFoundError(f"{ann_file}: COCO annotation file not found")
        self.img_dir = next((d for d in (self.root / split, self.root / "images" / split) if d.is_dir()),
                            self.root / split)
        data = json.loads(ann_file.read_text())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        self.anns = [(files[a["image_id"]], a["bbox"]) for a in data["annotations"] if a["iscrowd"] == 0]
        self.names = [f"{f}#{k}" for k, (f, _) in enumerate(self.anns)]

    def __len__(self):
        return len(self.anns)

    def sequence_info(self, i: int) -> dict:
        box = np.asarray([self.anns[i][1]], dtype=np.float64)
        if box.shape != (1, 4) or not np.isfinite(box).all():
            raise ValueError(f"{self.names[i]}: bad COCO bbox {self.anns[i][1]}")
        return {"boxes": box, "visible": (box[:, 2] > 0) & (box[:, 3] > 0)}

    def frame_path(self, i: int, f: int) -> Path:
        return self.img_dir / self.anns[i][0]


@dataclass
class TestSequence:
    """One inference sequence: its frames, the first-frame box, and the annotation if public."""
    name: str
    frames: list
    init_box: list
    gt: np.ndarray | None = None


def test_sequences(dataset) -> list[TestSequence]:
    """Every sequence of a dataset object for inference (frames listed from disk)."""
    out = []
    for i, name in enumerate(dataset.names):
        boxes = dataset.sequence_info(i)["boxes"]
        frames = dataset.frame_paths(i)
        if not frames:
            raise FileNotFoundError(f"{name}: no frames found")
        if len(boxes) > 1 and len(boxes) != len(frames):
            raise ValueError(f"{name}: {len(frames)} frames but {len(boxes)} annotation rows")
        out.append(TestSequence(name, frames, boxes[0].tolist(), boxes if len(boxes) > 1 else None))
    return out


# ----------------------------------------------------------------------------------------------
# Training pairs: the causal sampler (TrackingSampler) and the processing (STARKProcessing)
# ----------------------------------------------------------------------------------------------

def sample_visible(visible: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> int | None:
    """A random visible index in [lo, hi) (clipped to the sequence), or None."""
    ids = np.flatnonzero(visible[max(lo, 0):min(hi, len(visible))]) + max(lo, 0)
    return int(rng.choice(ids)) if len(ids) else None


def sample_causal_pair(visible: np.ndarray, max_gap: int, rng: np.random.Generator) -> tuple[int, int]:
    """Official 'causal' mode: template t = a visible frame in [0, T-1); search = a visible
    frame in [t+1, t+max_gap+gap_inc) (pytracking's `_sample_visible_ids` excludes the upper
    end); when there is none, gap_inc += 5 and both are drawn again."""
    gap_inc = 0
    while True:
        t = sample_visible(visible, 0, len(visible) - 1, rng)
        if t is None:
            raise ValueError("no visible template frame")
        s = sample_visible(visible, t + 1, t + max_gap + gap_inc, rng)
        if s is not None:
            return t, s
        gap_inc += 5


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> gray replicated to 3 channels (cv.COLOR_RGB2GRAY weights)."""
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def hflip_frame(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip a full frame and its box; x' = (W - 1) - (x + w), pytracking's pixel convention."""
    W = image.shape[1]
    return image[:, ::-1], np.array([W - 1 - box[0] - box[2], box[1], box[2], box[3]])


def jitter_box(box: np.ndarray, center_jitter: float, scale_jitter: float, rng) -> np.ndarray:
    """size' = size * exp(N(0,1) * s); centre' = centre + sqrt(w'h') * c * (U[0,1) - 0.5)."""
    size = box[2:] * np.exp(rng.standard_normal(2) * scale_jitter)
    centre = box[:2] + 0.5 * box[2:] + math.sqrt(size.prod()) * center_jitter * (rng.random(2) - 0.5)
    return np.concatenate([centre - 0.5 * size, size])


def make_crop(image, box, factor, out_size, center_jitter, scale_jitter, rng, train: bool, stride: int = 16):
    """Jittered crop + per-crop transforms of one frame -> (image (3, S, S) normalised, box_norm (4,))
    or None when rejected (crop side < 1, or the padding mask all ones at full or 1/16 size)."""
    jittered = jitter_box(box, center_jitter, scale_jitter, rng)
    if math.ceil(math.sqrt(max(jittered[2] * jittered[3], 0.0)) * factor) < 1:
        return None
    crop, scale, mask = sample_target(image, jittered, factor, out_size, with_mask=True)
    feat = out_size // stride
    if mask.all() or F.interpolate(mask[None, None].float(), size=feat).bool().all():
        return None
    box_norm = box_in_crop_norm(box, jittered, scale, out_size)
    img = crop.float() / 255.0
    if train:
        img = (img * rng.uniform(0.8, 1.2)).clamp_(0.0, 1.0)         # ToTensorAndJitter(0.2)
        if rng.random() < 0.5:                                          # RandomHorizontalFlip_Norm
            img = img.flip(-1)
            box_norm = torch.stack([1 - box_norm[0] - box_norm[2], box_norm[1], box_norm[2], box_norm[3]])
    return normalize_image(img * 255.0), box_norm


class TrackingPairs(torch.utils.data.Dataset):
    """`samples_per_epoch` (template, search) training pairs drawn from several datasets.

    Item `idx` of epoch `e` is a pure function of (seed, e, idx): resumed runs and any number of
    loader workers draw the same pairs. Returns a dict: template (3, Sz, Sz), search (3, Sx, Sx)
    (ImageNet-normalised), search_box / template_box (4,) xywh divided by the crop side,
    errors (list of "file: reason" strings of the data errors met and resampled), rejected
    (number of draws rejected by the crop checks).
    """

    def __init__(self, datasets, ratios, samples_per_epoch: int, sizes=(192, 384), factors=(2.0, 5.0),
                 center_jitter=(0.0, 4.5), scale_jitter=(0.0, 0.5), max_gap: int = 200, train: bool = True,
                 seed: int = 0, max_tries: int = 100):
        assert len(datasets) == len(ratios) and len(datasets) > 0
        self.datasets = datasets
        self.p = np.asarray(ratios, dtype=np.float64) / np.sum(ratios)
        self.samples, self.sizes, self.factors = samples_per_epoch, sizes, factors
        self.center_jitter, self.scale_jitter = center_jitter, scale_jitter
        self.max_gap, self.train, self.seed, self.max_tries = max_gap, train, seed, max_tries
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.samples

    def _pick_sequence(self, ds, rng) -> tuple[int, dict]:
        """A random sequence; videos need more than 4 visible frames and at least 20 frames."""
        for _ in range(1000):
            i = int(rng.integers(len(ds)))
            info = ds.sequence_info(i)
            vis = info["visible"]
            if not ds.is_video or (vis.sum() > 4 and len(vis) >= 20):
                return i, info
        raise RuntimeError(f"{ds.name}: no sequence with > 4 visible frames and >= 20 frames in 1000 draws")

    def __getitem__(self, idx: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        errors, rejected = [], 0
        for _ in range(self.max_tries):
            ds = self.datasets[int(rng.choice(len(self.datasets), p=self.p))]
            try:
                i, info = self._pick_sequence(ds, rng)
                t, s = sample_causal_pair(info["visible"], self.max_gap, rng) if ds.is_video else (0, 0)
                frames = [read_image(ds.frame_path(i, f)) for f in (t, s)]
            except (OSError, ValueError) as err:               # data errors: counted, resampled
                errors.append(str(err))
                continue
            boxes = [info["boxes"][t].copy(), info["boxes"][s].copy()]
            if rng.random() < 0.05:                              # joint ToGrayscale(0.05)
                frames = [to_grayscale(f) for f in frames]
            if rng.random() < 0.5:                               # joint RandomHorizontalFlip(0.5)
                frames, boxes = map(list, zip(*[hflip_frame(f, b) for f, b in zip(frames, boxes)]))
            out = [make_crop(frames[k], boxes[k], self.factors[k], self.sizes[k], self.center_jitter[k],
                             self.scale_jitter[k], rng, self.train) for k in (0, 1)]
            if out[0] is None or out[1] is None:
                rejected += 1
                continue
            return {"template": out[0][0], "search": out[1][0], "template_box": out[0][1],
                    "search_box": out[1][1], "errors": errors, "rejected": rejected}
        raise RuntimeError(f"no valid training pair in {self.max_tries} draws "
                           f"({rejected} rejected crops); data errors: {errors[-5:]}")


def collate_pairs(items: list[dict]) -> dict:
    """Stack the tensors; concatenate the error lists and sum the rejections."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("template", "search", "template_box", "search_box")}
    out["errors"] = [e for it in items for e in it["errors"]]
    out["rejected"] = sum(it["rejected"] for it in items)
    return out


# ----------------------------------------------------------------------------------------------
# Synthetic sequences in the official layouts (tests and CPU smoke runs)
# ----------------------------------------------------------------------------------------------

def synthetic_sequence(seed_parts, T: int = 24, size=(160, 120), attempts: int = 100, **world):
    """One single-object tracking sequence of the synthetic world (`data.World`).

    The target is one sprite of `World(world_seed(*seed_parts, a), size, T, **world)` for the
    first attempt a = 0, 1, ... that has a sprite at least half visible at frame 0 and visible in
    at least half of the frames; of those sprites, the one with the largest mean visible fraction
    (the others are distractors, and occluders when they pass in front). Returns frames (T, H, W, 3) uint8, boxes (T, 4) float64 (the
    visible extent [x, y, w, h]; NaN where the target is not visible), visible_fraction (T,)
    (visible pixels / its whole area) and in_view (T,) bool (some pixel of its whole shape lies
    in the frame, occluders ignored).
    """
    if T < 1:
        raise ValueError(f"a synthetic sequence needs at least 1 frame, got T={T}")
    for a in range(attempts):
        w = World(world_seed(*seed_parts, a), size, T, **world)
        fraction = np.stack([w.visible_fraction(t) for t in range(T)])          # (T, K)
        ok = (fraction[0] >= 0.5) & (2 * (fraction > 0).sum(0) >= T)
        if ok.any():
            k = int(np.argmax(np.where(ok, fraction.mean(0), -1.0)))
            boxes = np.stack([w.boxes(t)[k] for t in range(T)])
            in_view = np.array([w.in_view(t)[k] for t in range(T)])
            return w.video(), boxes, fraction[:, k], in_view
    raise RuntimeError(f"no synthetic world {seed_parts} in {attempts} attempts has a sprite "
                       f"visible at frame 0 and in half of the {T} frames (size {size}, {world})")


def cover_class(fraction: np.ndarray) -> np.ndarray:
    """GOT-10k `cover.label` class of a visible fraction: 0 when nothing is visible, else
    ceil(8 * fraction) in 1..8 (8: fully visible)."""
    return np.where(fraction > 0, np.clip(np.ceil(8 * fraction), 1, 8), 0).astype(np.int64)


def _write_frames(folder: Path, frames, pattern: str):
    folder.mkdir(parents=True, exist_ok=True)
    for t, img in enumerate(frames):
        Image.fromarray(img).save(folder / pattern.format(t + 1), quality=95)


def write_got10k_sequence(split_dir: Path, name: str, frames, boxes, cover, absence, test: bool = False):
    d = split_dir / name
    _write_frames(d, frames, "{:08d}.jpg")
    rows = boxes[:1] if test else boxes
    (d / "groundtruth.txt").write_text("".join(",".join(f"{v:.4f}" for v in b) + "\n" for b in rows))
    if not test:
        (d / "absence.label").write_text("".join(f"{a}\n" for a in absence))
        (d / "cover.label").write_text("".join(f"{c}\n" for c in cover))
    H, W = frames.shape[1:3]
    (d / "meta_info.ini").write_text("[METAINFO]\nurl: https://example.invalid\nbegin_time: 00:00:00\n"
                                     f"end_time: 00:00:01\nobject_class: thing\nresolution: ({W}, {H})\n")


def write_synthetic(root, seed: int = 0, T: int = 24, size=(160, 120), n_train: int = 2, n_val: int = 2,
                    n_test: int = 1, **world) -> dict:
    """Write GOT-10k (train n_train, val n_val, test n_test) and LaSOT (2 classes x 2, half
    train) layouts of T-frame sequences of the synthetic world (`synthetic_sequence`, knobs
    `world`); sequence k of a split is the world stream ('got10k', seed, split, k), so the val
    sequences do not change with n_train.

    Labels come from the world: GOT-10k cover = `cover_class(visible fraction)`, absence = 1
    where the target's whole shape is out of the frame, and where nothing of it is visible the
    last visible box (GOT-10k keeps a box on absent frames). LaSOT: out_of_view = 1 where its
    shape is out of the frame, full_occlusion = 1 where it is in the frame but covered; GT
    [0, 0, 0, 0] where nothing is visible. Boxes are the visible extent.
    Returns {"got10k": root/got10k, "lasot": root/lasot}.
    """
    if T < 1:
        raise ValueError(f"write_synthetic: --frames must be >= 1, got {T}")
    root = Path(root)
    got = root / "got10k"
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        names = [f"GOT-10k_{split.capitalize()}_{k:06d}" for k in range(1, n + 1)]
        (got / split).mkdir(parents=True, exist_ok=True)
        (got / split / "list.txt").write_text("".join(f"{s}\n" for s in names))
        for k, name in enumerate(names):
            frames, boxes, fraction, in_view = synthetic_sequence(("got10k", seed, split, k), T, size, **world)
            for t in range(1, T):                            # GOT-10k keeps a box on absent frames
                if np.isnan(boxes[t, 0]):
                    boxes[t] = boxes[t - 1]
            absence = (~in_view).astype(np.int64)
            write_got10k_sequence(got / split, name, frames, boxes, cover_class(fraction), absence,
                                  test=(split == "test"))
    lasot = root / "lasot"
    train, test = [], []
    for cls in ("bird", "cat"):
        for n in (1, 2):
            name = f"{cls}-{n}"
            frames, boxes, fraction, in_view = synthetic_sequence(("lasot", seed, name), T, size, **world)
            d = lasot / cls / name
            _write_frames(d / "img", frames, "{:08d}.jpg")
            boxes = np.nan_to_num(boxes, nan=0.0).astype(np.int64)
            (d / "groundtruth.txt").write_text("".join(",".join(str(int(v)) for v in b) + "\n" for b in boxes))
            occluded = in_view & (fraction == 0)
            (d / "full_occlusion.txt").write_text(",".join(str(int(v)) for v in occluded) + "\n")
            (d / "out_of_view.txt").write_text(",".join(str(int(not v)) for v in in_view) + "\n")
            (d / "nlp.txt").write_text(f"the {cls}\n")
            (train if n == 1 else test).append(name)
    (lasot / "training_set.txt").write_text("".join(f"{s}\n" for s in train))
    (lasot / "testing_set.txt").write_text("".join(f"{s}\n" for s in test))
    return {"got10k": got, "lasot": lasot}
