"""Video frame-pair data for DropMAE pre-training (Kinetics-style raw videos, decoded with PyAV).

One item = one video: two frames of it, the earlier `img_x` and the later `img_z`, drawn with the
official pair rule (gap 1..frame_gap-1 decoded frames, always forward), each with its own
RandomResizedCrop + horizontal flip + ImageNet normalisation. `len(dataset)` is the number of
videos, so one pair per video per epoch, as in the official `KineticsDataset`
(github jimmy-dq/DropMAE, `dataset_video/KineticsDataset.py`), which decodes with decord.
What we do differently, on purpose:
  - a video that fails to open or decode is skipped by moving on to the next index, as the
    official loader does, but every skip is returned in the item (`skipped`), and a run of
    `max_consecutive_failures` failures in a row is a RuntimeError instead of an endless walk;
  - all randomness of an item is a pure function of (seed, epoch, index), so a resumed run or a
    different number of loader workers draws the same pairs and crops;
  - frames are found by seeking to the keyframe at or before the earlier frame and decoding on
    (one open per pair; for the later frame the packets are read ahead and decoding restarts at
    a keyframe between the two when there is one), never by decoding the whole video; one
    decoder thread per loader worker, as decord's `num_threads=1`;
  - n (frames of a video) comes from the container's metadata at index time, not from a full
    decode; frame k is the frame at time k / fps after the stream's first timestamp, which is
    decord's k-th decoded frame for constant-frame-rate video. The pair rule holds on the
    frames that actually decode: when the metadata overstates n (or the file is truncated), a
    wanted frame past the end raises `ShortVideo` with the true count, the pair is drawn again
    from the frames that decode, and the item reports it (a `FrameNote`, next to the skipped
    videos); two wanted frames never give the same decoded frame (timestamps out of order are
    put back in order, a missing frame gives the next one), and a pair whose decoded gap still
    breaks the rule (frames missing from the stream) is reported the same way.

Layouts (`preset`, `root`):
  k400, k600, k700  <root>/<class>/<id>.{mp4,webm,mkv,avi}  (or <root>/train/<class>/... when
                    <root> has a `train` folder; files directly under <root> are ignored)
  mit               <root>/training/<class>/<id>.mp4        (Moments in Time)
  webvid, folder    every video file anywhere under <root> (recursive)
  synthetic         no files: videos of the synthetic world (below), rendered in memory,
                    deterministic per (seed, index): World(world_seed('pretrain', seed, index),
                    (256, 192), 64 frames, **world knobs of FramePairDataset)
Video files are those with the extensions above (any case); hidden files (`.name`, e.g. macOS
`._x.mp4`) are ignored. The order is sorted and deterministic.

The synthetic world (`World`; the one source of synthetic frames and ground truth in this suite:
the `synthetic` preset, `make-clips`, and the GOT-10k / LaSOT / DAVIS / YouTube-VOS writers of
tasks/ all draw from it, each from its own seed stream `world_seed(name, ...)`):
  - a scene is a textured background, translating when the camera pans, and K textured sprites
    (ellipses, rectangles, convex polygons) back to front, sprite k + 1 in front of sprite k;
    each sprite has its own smooth affine motion: per-axis sinusoidal swing of its centre (so it
    may leave the frame and come back), constant spin, sinusoidal scale;
  - textures are sums of sinusoids in the surface's own coordinates (the background's: world
    coordinates; a sprite's: its own pixels at scale 1), band-limited to `max_freq` cycles per
    pixel on screen, so a frame warped by the exact flow with bilinear sampling matches the other
    frame to a fraction of a grey level away from sprite edges (tests/test_world.py);
  - every frame is point-sampled at pixel centres: a pixel shows the front-most surface that
    contains its centre; masks, boxes and labels are those same pixels;
  - flow(t, s) and tracks(queries) come from the analytic motion (a surface point is mapped to
    the surface's own coordinates at t and back to the screen at s), never from the pixels; a
    point is occluded where a nearer sprite contains it, or outside the frame;
  - everything is a pure function of (seed, size, num_frames, knobs); the knobs (number of
    sprites, speed, spin, zoom, sprite size, texture band limit, shapes, pan) are keyword
    arguments of World with the defaults listed in its docstring.
  Pixel (row i, col j) has centre (x, y) = (j, i); a frame spans x in [-0.5, W - 0.5).
  Used as:
    w = World(world_seed('mine', 0), size=(160, 120), num_frames=24)
    w.frame(t), w.label_map(t), w.masks(t), w.boxes(t), w.visible(t), w.visible_fraction(t)
    flow, valid = w.flow(t, s); tracks, occluded = w.tracks([[t, y, x], ...])

Commands:
  python data.py make-clips --out /tmp/k400_tiny [--classes 3 --per-class 4 --seconds 2 --fps 15 \
      --size 160x120 --seed 0]          # tiny real mp4 clips in the K400 layout
  python data.py index --data k400 --data-path /tmp/k400_tiny --cache /tmp/k400_tiny.json
  python data.py bench --data k400 --data-path /tmp/k400_tiny --pairs 200   # pairs/s

Used by `dropmae.py pretrain` as:
  ds = FramePairDataset('k400', root, frame_gap=50, input_size=224, cache_path=..., seed=seed)
  loader = DataLoader(ds, sampler=..., collate_fn=collate_pairs, ...)
  for epoch ...: ds.set_epoch(epoch); sampler.set_epoch(epoch); for x, z, skipped in loader: ...
`set_epoch` must be called before the epoch's iterator is created, and the loader must not use
`persistent_workers=True` (persistent workers keep their own copy of the dataset and its epoch).
"""
import argparse
import ast
import bisect
import collections
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import stat
import sys
import time
import zlib
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ('k400', 'k600', 'k700', 'mit', 'webvid', 'folder', 'synthetic')
VIDEO_EXTS = ('.mp4', '.webm', '.mkv', '.avi')
INDEX_FORMAT = 'dropmae-video-index'
INDEX_VERSION = 1
RESEEK_GAP = 64                   # frames: farther ahead than this, seek instead of reading on
REORDER_WINDOW = 4                # packets: how late a frame with an out-of-order timestamp may come
SYNTHETIC_SIZE = (256, 192)       # (W, H) of the in-memory synthetic videos
SYNTHETIC_FRAMES = 64             # frames per synthetic video


class VideoError(Exception):
    """A video that cannot be opened or decoded; the message is the reason (no path)."""


# ----------------------------------------------------------------------------------------------
# Finding the videos of a preset

def _is_video(name):
    return not name.startswith('.') and name.lower().endswith(VIDEO_EXTS)


def _videos_in_class_folders(top):
    """Relative paths `<class>/<file>` of the videos one level below `top` (sorted)."""
    paths = []
    for cls in sorted(os.listdir(top)):
        cls_dir = os.path.join(top, cls)
        if cls.startswith('.') or not os.path.isdir(cls_dir):
            continue
        paths += [f'{cls}/{f}' for f in sorted(os.listdir(cls_dir))
                  if _is_video(f) and os.path.isfile(os.path.join(cls_dir, f))]
    return paths


def _videos_recursive(top):
    """Relative paths (with '/') of every video anywhere under `top` (sorted).

    Symbolic links are followed, but each real folder and each real file only once: a link loop
    or a second link to the same video adds nothing. Names with a video extension that are not
    regular files (FIFOs, which would block the reader, sockets, devices, broken links) are
    skipped. Both are counted in one message naming the first of each.
    """
    paths, seen_dirs, seen_files, irregular, repeated = [], set(), set(), [], []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:                               # a link loop or a second link
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))   # a fixed walk order
        rel = os.path.relpath(dirpath, top).replace(os.sep, '/')
        for f in sorted(filenames):
            if not _is_video(f):
                continue
            name = f if rel == '.' else f'{rel}/{f}'
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:                                 # a broken link
                irregular.append(name)
                continue
            if not stat.S_ISREG(st.st_mode):
                irregular.append(name)
            elif (st.st_dev, st.st_ino) in seen_files:
                repeated.append(name)
            else:
                seen_files.add((st.st_dev, st.st_ino))
                paths.append(name)
    if irregular or repeated:
        print(f'index: under {top}: skipped {len(irregular)} video names that are not regular '
              f'files (FIFO, socket, device or broken link)'
              + (f', first {irregular[0]}' if irregular else '')
              + f'; {len(repeated)} links to videos already listed (each real file once)'
              + (f', first {repeated[0]}' if repeated else ''))
    return sorted(paths)


def list_videos(preset, root):
    """Sorted video paths of a preset's layout, relative to `root` ('/'-separated).

    Paths of the k4x0 presets under `<root>/train/...` keep the `train/` prefix, and `mit` paths
    keep `training/`, so `os.path.join(root, rel)` is always the file.
    """
    if preset not in PRESETS or preset == 'synthetic':
        raise ValueError(f'list_videos: preset must be one of {PRESETS[:-1]}, got {preset!r}')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'{preset} data root {root!r} is not a directory')
    if preset in ('k400', 'k600', 'k700'):
        sub = 'train' if os.path.isdir(os.path.join(root, 'train')) else ''
        layout = f'<root>/{sub + "/" if sub else ""}<class>/<id>{{{",".join(VIDEO_EXTS)}}}'
        paths = _videos_in_class_folders(os.path.join(root, sub) if sub else root)
        paths = [f'{sub}/{p}' for p in paths] if sub else paths
    elif preset == 'mit':
        layout = '<root>/training/<class>/<id>.mp4'
        top = os.path.join(root, 'training')
        found = _videos_in_class_folders(top) if os.path.isdir(top) else []
        paths = ['training/' + p for p in found]
    else:
        layout = 'video files anywhere under <root>'
        paths = _videos_recursive(root)
    if not paths:
        raise ValueError(f'no videos found for preset {preset!r} under {root!r} '
                         f'(expected layout: {layout})')
    return paths


# ----------------------------------------------------------------------------------------------
# Opening a video, counting its frames, and the index cache

def _reason(error):
    """Short reason of an FFmpeg/OS error, without the file name (the caller adds the path)."""
    text = getattr(error, 'strerror', None) or str(error)
    return f'{type(error).__name__}: {text}'


def _open(path):
    """(container, first video stream); VideoError when it cannot be opened or has no video."""
    try:
        container = av.open(path, metadata_errors='ignore')
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f'cannot open ({_reason(e)})') from e
    if not container.streams.video:
        container.close()
        raise VideoError('no video stream')
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1      # one thread per loader worker, like decord's default
    return container, stream


def _frame_rate(stream):
    """Frames per second of a stream as a Fraction; VideoError when the stream has none."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoError('no frame rate in the stream')


def count_frames(path):
    """Number of frames of a video, cheapest source first.

    1. the container's frame count (`stream.frames`, e.g. the mp4 sample table);
    2. else duration x frame rate (stream duration, else container duration);
    3. else the number of packets of the video stream (demuxed, not decoded).
    Raises VideoError when the file cannot be opened or read. May be 0 for a video with no frames.
    """
    container, stream = _open(path)
    try:
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        rate = _frame_rate(stream)
        if stream.duration and stream.time_base:
            return max(1, round(stream.duration * stream.time_base * rate))
        if container.duration:                                  # microseconds
            return max(1, round(Fraction(container.duration, 1_000_000) * rate))
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as e:
        raise VideoError(f'cannot read ({_reason(e)})') from e
    finally:
        container.close()


def _count_or_zero(path):
    """(count_frames, None), or (0, reason) for an unreadable file (kept in the index)."""
    try:
        return count_frames(path), None
    except VideoError as e:
        return 0, str(e)


def _read_cache(cache_path, preset, root):
    """{rel path: frames} from a cache written for this (preset, root), else None."""
    if not cache_path or not os.path.isfile(cache_path):
        return None
    try:
        with open(cache_path) as f:
            cache = json.load(f)
    except (OSError, ValueError) as e:
        print(f'index: ignoring unreadable cache {cache_path} ({e})')
        return None
    if (cache.get('format'), cache.get('version')) != (INDEX_FORMAT, INDEX_VERSION):
        print(f'index: ignoring cache {cache_path} (not a version-{INDEX_VERSION} index)')
        return None
    if cache.get('root') != root or cache.get('preset') != preset:
        print(f'index: cache {cache_path} is for {cache.get("preset")} at {cache.get("root")}, '
              f'not {preset} at {root}: re-indexing')
        return None
    try:
        return {rel: int(n) for rel, n in cache['videos']}
    except (KeyError, TypeError, ValueError) as e:
        print(f'index: ignoring cache {cache_path} (bad "videos" table: {e!r})')
        return None


def _write_cache(cache_path, preset, root, videos):
    folder = os.path.dirname(os.path.abspath(cache_path))
    os.makedirs(folder, exist_ok=True)
    tmp = f'{cache_path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:                              # one video per line: diff-able
        f.write(json.dumps({'format': INDEX_FORMAT, 'version': INDEX_VERSION, 'preset': preset,
                            'root': root, 'num_videos': len(videos)})[:-1] + ', "videos": [\n')
        f.write(',\n'.join(json.dumps([rel, n]) for rel, n in videos))
        f.write('\n]}\n')
    os.replace(tmp, cache_path)                            # atomic: readers never see half a file


def index_videos(preset, root, cache_path=None, num_workers=0):
    """The sorted list of (relative path, number of frames) of a preset's videos.

    Frame counts come from `count_frames` (container metadata first). A file that cannot be opened
    stays in the index with 0 frames: the dataset tries it again when it is drawn and reports it
    as skipped then (an index-time warning gives the count). Nothing is dropped silently.

    Cache (`cache_path`, reusable across runs): a JSON object
        {"format": "dropmae-video-index", "version": 1, "preset": "k400", "root": "/abs/root",
         "num_videos": N, "videos": [["class/id.mp4", 300], ...]}
    with one video per line. It is used only when its preset and absolute root match; the
    folder is still listed (cheap, no file is opened), counts are reused for known paths, only
    new paths are opened, and vanished paths are dropped; the cache is rewritten when anything
    changed. Delete it when a video was replaced in place under the same name.
    num_workers > 0 counts frames in that many processes (for first indexing of 240k videos).
    """
    if preset == 'synthetic':
        raise ValueError('index_videos: the synthetic preset has no files to index')
    root = os.path.abspath(root)
    paths = list_videos(preset, root)
    cached = _read_cache(cache_path, preset, root) or {}
    todo = [rel for rel in paths if rel not in cached]
    counts = {rel: cached[rel] for rel in paths if rel in cached}
    if todo:
        full = [os.path.join(root, rel) for rel in todo]
        bar = dict(total=len(todo), desc=f'counting frames ({preset})', disable=len(todo) <= 1000)
        if num_workers > 0:
            with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
                results = list(tqdm(pool.imap(_count_or_zero, full, chunksize=64), **bar))
        else:
            results = [_count_or_zero(p) for p in tqdm(full, **bar)]
        bad = [(rel, reason) for rel, (n, reason) in zip(todo, results) if reason is not None]
        counts.update((rel, n) for rel, (n, _) in zip(todo, results))
        if bad:
            print(f'index: {len(bad)} of {len(todo)} newly indexed videos under {root} could not '
                  f'be read; they stay in the index with 0 frames and are reported when drawn. '
                  f'First: ' + '; '.join(f'{rel}: {reason}' for rel, reason in bad[:3]))
    videos = [(rel, counts[rel]) for rel in paths]
    if cache_path and (todo or len(cached) != len(paths)):
        _write_cache(cache_path, preset, root, videos)
    return videos


# ----------------------------------------------------------------------------------------------
# Decoding frames by index (seek to the keyframe at or before, decode forward)

class _Clock:
    """Frame index <-> pts of a stream: index = round((pts - start) * time_base * rate)."""

    def __init__(self, stream):
        self.time_base = Fraction(stream.time_base)
        self.rate = _frame_rate(stream)
        self.start = stream.start_time if stream.start_time is not None else 0

    def pts_of(self, k):
        return self.start + round(k / (self.rate * self.time_base))

    def index_of(self, pts):
        return math.floor((pts - self.start) * self.time_base * self.rate + Fraction(1, 2))


class _FrameReader:
    """Frames by index from one open video stream, decoding as little as possible.

    `read(k)` returns (index, frame) of frame k (or, if it is missing, the next one; at the end of
    the stream the last decodable frame). The first read seeks to the keyframe at or before k
    (`container.seek(pts, backward=True, any_frame=False)`) and decodes forward. A later read at
    most `reseek_gap` frames further continues without seeking: the packets up to frame k are
    read ahead (demuxed, not decoded) and, when one of them is a keyframe after the current
    position, the decoder is reset and restarts from it, so it costs at most what a seek would.
    If a seek lands after frame k (a wrong container index) or yields nothing, decoding restarts
    from the start of the stream.
    """

    def __init__(self, container, stream, reseek_gap=RESEEK_GAP):
        self.container, self.stream, self.reseek_gap = container, stream, reseek_gap
        self.clock = _Clock(stream)
        self.packets = None                 # demux iterator since the last seek
        self.ahead = collections.deque()    # packets read ahead, not yet decoded
        self.frames = []                    # decoded (index, frame), sorted, not yet consumed
        self.last = None                    # the last consumed (index, frame)
        self.after_seek = False             # the next decoded frame is the first after a seek
        self.from_start = False             # the last seek went to the start of the stream
        self.decoded = 0                    # frames decoded so far (a cost counter for tests)

    def _seek(self, k):
        pts = self.clock.pts_of(k)
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        self.packets = self.container.demux(self.stream)     # seek also resets the decoder
        self.ahead.clear()
        self.frames.clear()
        self.after_seek, self.from_start = True, pts <= self.clock.start

    def _read_ahead(self, k):
        """Demux the packets of frames <= k; restart decoding at the last keyframe among them."""
        index = self.clock.index_of
        while not self.ahead or (self.ahead[-1].dts is not None and index(self.ahead[-1].dts) <= k):
            packet = next(self.packets, None)      # dts <= pts and dts only grows: past k, done
            if packet is None:
                break
            self.ahead.append(packet)
        keys = [i for i, p in enumerate(self.ahead) if p.is_keyframe and p.pts is not None
                and self.last[0] < index(p.pts) <= k]
        if keys:
            for _ in range(keys[-1]):
                self.ahead.popleft()                # never decoded
            self.stream.codec_context.flush_buffers()
            self.frames.clear()

    def _decode_next_packet(self):
        """Decode one packet into self.frames (kept sorted by index: a frame whose timestamp is
        out of order goes to its place); False at the end of the stream."""
        packet = self.ahead.popleft() if self.ahead else next(self.packets, None)
        if packet is None:
            return False
        for frame in packet.decode():
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                raise VideoError('decoded a frame with no timestamp')
            index = self.clock.index_of(pts)
            self.decoded += 1
            if self.last is not None and index <= self.last[0] and not self.after_seek:
                continue                    # arrived after a later frame was returned: passed
            bisect.insort(self.frames, (index, frame), key=lambda entry: entry[0])
        return True

    def _consume_below(self, k):
        while self.frames and self.frames[0][0] < k:
            self.last = self.frames.pop(0)

    def read(self, k):
        """(index, frame) with index >= k (k itself when it exists), else the last frame, or None
        when nothing could be decoded. A missing frame k is given up (for the next frame) only
        after `REORDER_WINDOW` more packets, so a frame whose timestamp comes late is found."""
        self._consume_below(k)
        if self.last is not None and self.last[0] >= k:
            return self.last
        if self.packets is None or self.last is None or k - self.last[0] > self.reseek_gap:
            self._seek(k)
        else:
            self._read_ahead(k)
        waited = 0                                              # packets decoded past a candidate
        while True:
            if self.after_seek and self.frames:                 # the first frames after a seek
                self.after_seek = False
                if self.frames[0][0] > k and not self.from_start:   # the seek overshot frame k
                    self._seek(0)
                    continue
            self._consume_below(k)
            if self.frames:                                     # a candidate >= k is buffered
                if self.frames[0][0] == k or waited >= REORDER_WINDOW:
                    self.last = self.frames.pop(0)
                    return self.last
                waited += 1
            if self._decode_next_packet():
                continue
            if self.after_seek and not self.from_start:         # the seek gave nothing
                self._seek(0)
                continue
            if self.frames:                                     # end: the next existing frame
                self.last = self.frames.pop(0)
            return self.last                                    # (or the last decodable one)


class ShortVideo(VideoError):
    """A wanted frame lies past the last frame that decodes: the container overstates the
    frame count (or the file is truncated). `frames` = the frames that decode (last index + 1)."""

    def __init__(self, wanted, frames):
        super().__init__(wanted, frames)
        self.wanted, self.frames = wanted, frames

    def __str__(self):
        return f'frame {self.wanted} wanted, but only {self.frames} frames decode'


def decode_frames(path, indices, reseek_gap=RESEEK_GAP, return_indices=False):
    """Decode the frames with the given indices (ascending, repeats allowed) with one open.

    Frame index k is the frame whose timestamp is k frame periods after the stream's first
    timestamp: round((pts - start_time) * time_base * frame_rate). Frames are found by
    `_FrameReader` (seek to the keyframe at or before the first; decode on, skipping to a later
    keyframe when there is one, for the next ones). A missing frame k gives the next one that
    exists; two different wanted indices never give the same frame (the later one moves on to
    the next frame). A wanted frame past the last decodable one raises ShortVideo (with the
    number of frames that do decode), never a silent stand-in.
    Returns a list of PIL RGB images, one per index (and, with `return_indices`, the indices of
    the frames found). Raises VideoError on open/decode failure.
    """
    indices = [int(k) for k in indices]
    if indices != sorted(indices) or (indices and indices[0] < 0):
        raise ValueError(f'decode_frames: indices must be ascending and >= 0, got {indices}')
    container, stream = _open(path)
    k = None
    try:
        reader = _FrameReader(container, stream, reseek_gap)
        images, found_indices, previous, wanted_before, image = [], [], None, None, None
        for k in indices:
            found = reader.read(k)
            if found is None:
                raise VideoError(f'no decodable frame (looking for frame {k})')
            if found is previous and k != wanted_before:        # k itself is missing
                found = reader.read(previous[0] + 1)
            if found[0] < k or (found is previous and k != wanted_before):
                raise ShortVideo(k, found[0] + 1)
            if found is not previous:
                image, previous = found[1].to_image(), found   # RGB; only wanted frames converted
            wanted_before = k
            images.append(image)
            found_indices.append(found[0])
        return (images, found_indices) if return_indices else images
    except av.FFmpegError as e:
        raise VideoError(f'decode error looking for frame {k} ({_reason(e)})') from e
    finally:
        container.close()


# ----------------------------------------------------------------------------------------------
# The pair rule and the per-frame augmentation (all randomness from one torch.Generator)

def item_generator(seed, epoch, index):
    """The torch.Generator of one item: a pure function of (seed, epoch, index), all >= 0."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def sample_pair(n, frame_gap, g):
    """Official pair rule on an n-frame video: (start, end) frame indices.

    start ~ uniform [0, n-2], end ~ uniform [start+1, min(n, start+frame_gap) - 1], so the gap
    end - start is in [1, frame_gap-1] and always forward. A 1-frame video gives (0, 0).
    """
    if n < 1 or frame_gap < 2:
        raise ValueError(f'sample_pair: need n >= 1 and frame_gap >= 2, got n={n}, {frame_gap}')
    if n == 1:
        return 0, 0
    start = int(torch.randint(0, n - 1, (1,), generator=g))
    end = int(torch.randint(start + 1, min(n, start + frame_gap), (1,), generator=g))
    return start, end


def random_resized_crop_box(height, width, scale, ratio, g):
    """torchvision's RandomResizedCrop.get_params: the crop box (top, left, h, w) in pixels.

    Up to 10 tries of area fraction ~ U(scale) and aspect w/h ~ logU(ratio), w and h rounded,
    accepted when the box fits; then the fallback: the centre crop of the whole image clamped to
    the ratio range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize(image):
    """PIL RGB image (H, W) -> float tensor (3, H, W): [0, 1] then (x - mean) / std (ImageNet)."""
    x = torch.from_numpy(np.array(image.convert('RGB'), dtype=np.uint8)).permute(2, 0, 1)
    x = x.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def augment(image, size, scale, g, ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop(size, scale, ratio, bicubic), flip p 0.5, normalize -> (3, size, size)."""
    top, left, h, w = random_resized_crop_box(image.height, image.width, scale, ratio, g)
    image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    if torch.rand(1, generator=g).item() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(image)


# ----------------------------------------------------------------------------------------------
# The synthetic world: textured sprites over a panning textured background, with exact truth

SPRITE_SHAPES = ('ellipse', 'rect', 'polygon')


def world_seed(*parts):
    """Entropy for `World(seed)` from ints and strings: ('clips', 0, 7) -> [crc32('clips'), 0, 7].
    Each writer names its own stream, so no two writers draw the same scenes."""
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def world_knob(text):
    """A command-line `--world KEY=VALUE` -> (key, value) for World(**knobs); VALUE is a Python
    literal (0.02, 3, (0.1, 0.2), False). Unknown keys and bad values are errors naming them."""
    key, sep, value = text.partition('=')
    knobs = [p for p in inspect.signature(World).parameters if p not in ('seed', 'size', 'num_frames', 'sprites')]
    if not sep or key not in knobs:
        raise argparse.ArgumentTypeError(f'--world wants KEY=VALUE with KEY one of {knobs}, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f'--world {key}: {value!r} is not a Python literal') from None


@dataclasses.dataclass(frozen=True)
class Texture:
    """An RGB texture of continuous coordinates q (pixels): base + sum_n amp[n] cos(2 pi
    freq[n] . q + phase[n]). Band-limited (|freq| <= the world's max_freq on screen), so a
    bilinear resampling of a rendered frame is accurate to well under one grey level."""
    base: np.ndarray             # (3,) mean RGB, 0..255
    freq: np.ndarray             # (N, 2) cycles per pixel, (fx, fy)
    phase: np.ndarray            # (N,) radians
    amp: np.ndarray              # (N, 3) RGB amplitude of each sinusoid


@dataclasses.dataclass(frozen=True)
class Sprite:
    """One textured shape and its smooth affine motion, in screen pixels.

    At frame t: centre c(t) = centre + velocity t + swing sin(omega t + phi) (per axis),
    angle a(t) = angle + spin t, scale s(t) = exp(zoom sin(zoom_omega t + zoom_phase)).
    A screen point p is the sprite point q = R(-a) (p - c) / s (sprite pixels at scale 1), inside
    the shape when (q_x / radii_x, q_y / radii_y) is inside the unit shape: the disc (ellipse),
    the square [-1, 1]^2 (rect) or the convex polygon `vertices` (polygon). Its colour there is
    `texture` at q, so the texture moves, turns and scales with the sprite."""
    kind: str                    # 'ellipse' | 'rect' | 'polygon'
    radii: tuple                 # (rx, ry) half-extent in pixels at scale 1
    texture: Texture
    centre: tuple                # (x, y) pixels
    velocity: tuple = (0.0, 0.0)  # pixels per frame
    swing: tuple = (0.0, 0.0)    # pixels
    omega: tuple = (0.0, 0.0)    # radians per frame
    phi: tuple = (0.0, 0.0)
    angle: float = 0.0           # radians
    spin: float = 0.0            # radians per frame
    zoom: float = 0.0            # amplitude of log scale
    zoom_omega: float = 0.0
    zoom_phase: float = 0.0
    vertices: tuple = ()         # polygon only: unit-shape vertices (x, y), counter-clockwise

    def unit_area(self):
        """Area of the unit shape (times rx * ry * s^2 = the sprite's area in pixels)."""
        if self.kind == 'ellipse':
            return math.pi
        if self.kind == 'rect':
            return 4.0
        x, y = np.asarray(self.vertices, dtype=np.float64).T
        return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))    # shoelace


def _random_texture(rng, base, n, max_freq, contrast, grating=0.0):
    """A band-limited texture: n sinusoids with |f| log-uniform in [max_freq / 8, max_freq],
    random orientation, amplitude falling as |f|^-0.5 (a 1/f-like spectrum), RMS ~ contrast / 1.4,
    each with its own colour direction; plus, with grating > 0, one dominant oriented grating of
    that amplitude at |f| in [max_freq / 2, max_freq]."""
    mag = max_freq * np.exp(rng.uniform(np.log(1 / 8), 0.0, n))
    if grating:
        mag[0] = max_freq * rng.uniform(0.5, 1.0)
    theta = rng.uniform(0, 2 * np.pi, n)
    freq = mag[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    weight = mag ** -0.5
    alpha = contrast * weight / np.linalg.norm(weight)
    if grating:
        alpha[0] = grating
    colour = rng.normal(0, 1, (n, 3)) + rng.choice([-1.0, 1.0], (n, 1))   # chroma + luminance
    colour /= np.linalg.norm(colour, axis=1, keepdims=True)
    return Texture(np.asarray(base, dtype=np.float64), freq, rng.uniform(0, 2 * np.pi, n),
                   alpha[:, None] * colour)


def _random_polygon(rng):
    """A convex polygon with 3-7 vertices on the unit circle (counter-clockwise), the centre
    well inside it (no gap of 0.9 half-turn or more between neighbouring vertices)."""
    while True:
        a = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
        if np.max(np.diff(np.r_[a, a[0] + 2 * np.pi])) < 0.9 * np.pi:
            return tuple(map(tuple, np.stack([np.cos(a), np.sin(a)], 1)))


def _random_sprite(rng, size, speed, spin, zoom, sprite_size, max_freq, shapes):
    w, h = size
    r = rng.uniform(*sprite_size) * min(w, h)
    aspect = np.exp(rng.uniform(-0.4, 0.4))
    kind = shapes[int(rng.integers(len(shapes)))]
    z = rng.uniform(0, zoom)
    v = speed * max(w, h) * rng.uniform(0.5, 1.5)                  # peak speed, pixels / frame
    direction = rng.uniform(0, 2 * np.pi)
    swing = rng.uniform(0.1, 0.6, 2) * (w, h)
    omega = v * np.abs([np.cos(direction), np.sin(direction)]) / swing
    # the texture: screen frequencies stay <= max_freq down to the smallest scale exp(-z)
    texture = _random_texture(rng, rng.uniform(30, 225, 3), 6, max_freq * math.exp(-z), 25,
                              grating=rng.uniform(25, 50))
    return Sprite(kind, (r * aspect, r / aspect), texture,
                  centre=tuple(rng.uniform(0.15, 0.85, 2) * (w, h)), swing=tuple(swing),
                  omega=tuple(omega), phi=tuple(rng.uniform(0, 2 * np.pi, 2)),
                  angle=float(rng.uniform(0, 2 * np.pi)), spin=float(rng.uniform(-spin, spin)),
                  zoom=float(z), zoom_omega=float(rng.uniform(0.02, 0.15)),
                  zoom_phase=float(rng.uniform(0, 2 * np.pi)),
                  vertices=_random_polygon(rng) if kind == 'polygon' else ())


class World:
    """A synthetic video with exact ground truth; see "The synthetic world" in the docstring.

    World(seed, size=(W, H), num_frames=T, num_objects=None, pan=True, **knobs): deterministic
    from (seed, size, num_frames, knobs); seed an int or a sequence of ints (`world_seed`).
    Knobs (the statistics of the scenes; defaults in brackets):
      num_objects   sprites K [None: 2..5 drawn from the seed]
      speed         peak sprite speed, fraction of the longer frame side per frame [0.03]
      spin          largest rotation speed, radians per frame [0.03]
      zoom          largest log-scale amplitude [0.15: scale between 0.86 and 1.16]
      sprite_size   sprite half-size range, fraction of the shorter frame side [(0.08, 0.25)]
      max_freq      band limit of every texture on screen, cycles per pixel [1/8]
      shapes        kinds drawn from [SPRITE_SHAPES]
      pan, pan_speed  camera pan (the background translating), fraction of the longer side per
                    frame [True, 0.004]
      sprites       explicit list of `Sprite` (back to front) instead of random ones
    Pixel (row i, col j) has centre (x, y) = (j, i); frames span x in [-0.5, W - 0.5].
    """

    def __init__(self, seed, size=(160, 120), num_frames=24, num_objects=None, pan=True,
                 speed=0.03, spin=0.03, zoom=0.15, sprite_size=(0.08, 0.25), max_freq=1 / 8,
                 shapes=SPRITE_SHAPES, pan_speed=0.004, sprites=None):
        w, h = (int(v) for v in size)
        if w < 1 or h < 1 or num_frames < 1:
            raise ValueError(f'World: need size >= 1x1 and num_frames >= 1, got {size}, {num_frames}')
        if not 0 < max_freq < 0.5:
            raise ValueError(f'World: max_freq must be in (0, 0.5) cycles per pixel, got {max_freq}')
        unknown = set(shapes) - set(SPRITE_SHAPES)
        if unknown or not shapes:
            raise ValueError(f'World: shapes must be some of {SPRITE_SHAPES}, got {shapes}')
        rng = np.random.default_rng(seed)
        self.size, self.num_frames = (w, h), int(num_frames)
        # the background: smoother (half the band) and of lower contrast than the sprites
        self.background = _random_texture(rng, rng.uniform(70, 185, 3), 12, max_freq / 2, 35)
        L = max(w, h)
        heading = rng.uniform(0, 2 * np.pi)
        cam_v = pan_speed * L * rng.uniform(0.3, 1.0) * np.array([np.cos(heading), np.sin(heading)])
        cam_a = rng.uniform(0.02, 0.08, 2) * L
        cam_w, cam_phi = rng.uniform(0.03, 0.1, 2), rng.uniform(0, 2 * np.pi, 2)
        if sprites is None:
            k = int(rng.integers(2, 6)) if num_objects is None else int(num_objects)
            sprites = [_random_sprite(rng, (w, h), speed, spin, zoom, sprite_size, max_freq,
                                      tuple(shapes)) for _ in range(k)]
        elif num_objects is not None and num_objects != len(sprites):
            raise ValueError(f'World: num_objects {num_objects} but {len(sprites)} sprites given')
        self.sprites = list(sprites)
        self.num_objects = len(self.sprites)
        t = np.arange(self.num_frames, dtype=np.float64)
        # The poses of every frame, computed once: every later use reads these same floats,
        # so label maps, flow and tracks agree to the last bit.
        self.camera = (np.outer(t, cam_v) + cam_a * np.sin(np.outer(t, cam_w) + cam_phi)
                       if pan else np.zeros((self.num_frames, 2)))       # (T, 2) texture offset
        self.poses = np.zeros((self.num_objects, self.num_frames, 5))  # cx, cy, cos, sin, scale
        for k, sp in enumerate(self.sprites):
            c = (np.asarray(sp.centre) + np.outer(t, sp.velocity)
                 + np.asarray(sp.swing) * np.sin(np.outer(t, sp.omega) + np.asarray(sp.phi)))
            a = sp.angle + sp.spin * t
            s = np.exp(sp.zoom * np.sin(sp.zoom_omega * t + sp.zoom_phase))
            self.poses[k] = np.stack([c[:, 0], c[:, 1], np.cos(a), np.sin(a), s], 1)
        self._planes = [_unit_planes(sp) for sp in self.sprites]
        self._cache = collections.OrderedDict()          # t -> (label map, in-frame shape pixels)

    # -- geometry: screen <-> sprite coordinates and the shape test (one code path for all) --

    def _local(self, k, t, x, y):
        """Screen points -> sprite k's points q at frame(s) t (broadcasting)."""
        cx, cy, c, s, sc = (self.poses[k, t, i] for i in range(5))
        dx, dy = x - cx, y - cy
        return (c * dx + s * dy) / sc, (c * dy - s * dx) / sc

    def _screen(self, k, t, qx, qy):
        """Sprite k's points q -> screen points at frame(s) t (broadcasting)."""
        cx, cy, c, s, sc = (self.poses[k, t, i] for i in range(5))
        return cx + sc * (c * qx - s * qy), cy + sc * (s * qx + c * qy)

    def _inside(self, k, qx, qy):
        """bool: sprite points q inside sprite k's shape."""
        sp = self.sprites[k]
        u, v = qx / sp.radii[0], qy / sp.radii[1]
        if sp.kind == 'ellipse':
            return u * u + v * v <= 1.0
        if sp.kind == 'rect':
            return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for nx, ny, d in self._planes[k]:
            inside &= nx * u + ny * v <= d
        return inside

    def _covered(self, t, x, y, surface):
        """bool: a sprite nearer than `surface` (0 background, k + 1 sprite k) contains the
        screen points (x, y) at frame(s) t."""
        covered = np.zeros(np.broadcast(x, y, surface).shape, dtype=bool)
        for j in range(self.num_objects):
            covered |= (surface <= j) & self._inside(j, *self._local(j, t, x, y))
        return covered

    def _surface_at(self, t, x, y):
        """int: the front-most surface at screen points (x, y) of frame t (0 = background)."""
        surface = np.zeros(np.broadcast(x, y).shape, dtype=np.int64)
        for k in range(self.num_objects):
            surface[self._inside(k, *self._local(k, t, x, y))] = k + 1
        return surface

    def _window(self, k, t):
        """(y0, y1, x0, x1): the pixel rows y0..y1-1, columns x0..x1-1 that can show sprite k."""
        w, h = self.size
        sp, (cx, cy, _, _, sc) = self.sprites[k], self.poses[k, t]
        r = sc * math.hypot(*sp.radii) + 1
        return (max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1),
                max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1))

    def _layers(self, t):
        """(label map int16 (H, W), in-frame pixels of each sprite's whole shape (K,)), cached."""
        t = self._frame_index(t)
        if t not in self._cache:
            w, h = self.size
            label = np.zeros((h, w), dtype=np.int16)
            shape_pixels = np.zeros(self.num_objects, dtype=np.int64)
            for k in range(self.num_objects):
                y0, y1, x0, x1 = self._window(k, t)
                if y1 <= y0 or x1 <= x0:
                    continue
                ys = np.arange(y0, y1, dtype=np.float64)[:, None]
                xs = np.arange(x0, x1, dtype=np.float64)[None, :]
                inside = self._inside(k, *self._local(k, t, xs, ys))
                label[y0:y1, x0:x1][inside] = k + 1
                shape_pixels[k] = inside.sum()
            self._cache[t] = (label, shape_pixels)
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return self._cache[t]

    def _frame_index(self, t):
        if not (isinstance(t, (int, np.integer)) and 0 <= t < self.num_frames):
            raise IndexError(f'World: frame {t!r} is not one of 0..{self.num_frames - 1}')
        return int(t)

    # -- per frame: pixels, labels, masks, boxes, visibility --

    def frame(self, t):
        """Frame t: uint8 (H, W, 3) RGB. Each pixel shows the front-most surface's texture at the
        pixel centre (point sampled: sprite edges are hard, textures band-limited)."""
        label, _ = self._layers(t)
        w, h = self.size
        ox, oy = self.camera[t]
        image = _paint(self.background, np.eye(2), np.array([ox, oy]), 0, h, 0, w)
        for k in range(self.num_objects):
            y0, y1, x0, x1 = self._window(k, t)
            mine = label[y0:y1, x0:x1] == k + 1
            if not mine.any():
                continue
            cx, cy, c, s, sc = self.poses[k, t]
            linear = np.array([[c, s], [-s, c]]) / sc                   # q = linear (p - centre)
            texture = _paint(self.sprites[k].texture, linear, -linear @ [cx, cy], y0, y1, x0, x1)
            image[y0:y1, x0:x1][mine] = texture[mine]
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def video(self):
        """Every frame: uint8 (T, H, W, 3)."""
        return np.stack([self.frame(t) for t in range(self.num_frames)])

    def label_map(self, t):
        """int64 (H, W): 0 background, k + 1 where sprite k is the front-most surface."""
        return self._layers(t)[0].astype(np.int64)

    surface = label_map

    def masks(self, t):
        """bool (K, H, W): the visible (depth-resolved) pixels of each sprite."""
        label = self._layers(t)[0]
        return label[None] == np.arange(1, self.num_objects + 1, dtype=np.int16)[:, None, None]

    def boxes(self, t):
        """float64 (K, 4) [x, y, w, h] of each sprite's visible pixels: columns x..x+w-1, rows
        y..y+h-1 (the extent of `masks(t)[k]`); NaN rows for sprites with no visible pixel."""
        out = np.full((self.num_objects, 4), np.nan)
        for k, mask in enumerate(self.masks(t)):
            cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
            if len(cols):
                out[k] = cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
        return out

    def visible(self, t):
        """bool (K,): the sprite has at least one visible pixel."""
        return self.masks(t).any(axis=(1, 2))

    def in_view(self, t):
        """bool (K,): some pixel of the sprite's whole shape (occluders ignored) is in the frame."""
        return self._layers(t)[1] > 0

    def visible_fraction(self, t):
        """float64 (K,): visible pixels / the area of the whole shape (pixels, occluders and
        frame edges ignored), in [0, 1]; 0 when occluded or out of view, 1 when all in sight."""
        visible = self.masks(t).sum(axis=(1, 2))
        area = np.array([sp.unit_area() * sp.radii[0] * sp.radii[1] for sp in self.sprites])
        area = area * self.poses[:, self._frame_index(t), 4] ** 2
        return np.minimum(visible / area, 1.0)

    # -- between frames: exact flow and point tracks --

    def flow(self, t, s):
        """Forward flow from frame t to frame s, from the analytic motion.

        Returns flow float32 (H, W, 2) [dx, dy]: pixel centre (x, y) of frame t is surface point
        P of its front-most surface, which is at (x, y) + flow in frame s; and valid bool (H, W):
        False where P is covered at s by a nearer sprite, or falls outside frame s.
        """
        t, s = self._frame_index(t), self._frame_index(s)
        w, h = self.size
        label = self.label_map(t)
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        tx, ty = self._move(t, s, x, y, label)
        valid = _in_frame(tx, ty, w, h) & ~self._covered(s, tx, ty, label)
        return np.stack([tx - x, ty - y], -1).astype(np.float32), valid

    def _move(self, t, s, x, y, surface):
        """Screen points (x, y) on `surface` at frame t -> their positions at frame(s) s."""
        x, y, surface = np.broadcast_arrays(x, y, surface)
        out_x = x + (self.camera[t, 0] - self.camera[s, 0])     # the background: the pan alone
        out_y = y + (self.camera[t, 1] - self.camera[s, 1])
        for k in range(self.num_objects):
            on = surface == k + 1
            if on.any():
                qx, qy = self._local(k, t if np.ndim(t) == 0 else t[on], x[on], y[on])
                out_x[on], out_y[on] = self._screen(k, s if np.ndim(s) == 0 else s[on], qx, qy)
        return out_x, out_y

    def tracks(self, query_points):
        """Point tracks of TAP-Vid queries (t, y, x) (N, 3) in pixels, t an integer frame.

        Returns tracks float32 (N, T, 2) as (x, y) in every frame, and occluded bool (N, T):
        the surface point under the query (its front-most surface at frame t) is covered by a
        nearer sprite at that frame, or lies outside it. tracks[n, s] = (x, y) + flow(t, s)[y, x]
        for an integer query.
        """
        q = np.asarray(query_points, dtype=np.float64).reshape(-1, 3)
        t = q[:, 0].astype(np.int64)
        if not np.array_equal(t, q[:, 0]) or t.min(initial=0) < 0 or t.max(initial=0) >= self.num_frames:
            raise ValueError(f'World.tracks: query frames must be integers 0..{self.num_frames - 1}')
        x, y = q[:, 2:3], q[:, 1:2]                                    # (N, 1) each
        surface = self._surface_at(t[:, None], x, y)[:, 0]             # (N,) at the query frame
        n, T, w, h = len(q), self.num_frames, *self.size
        frames = np.broadcast_to(np.arange(T), (n, T))
        tx, ty = self._move(np.broadcast_to(t[:, None], (n, T)), frames,
                            np.broadcast_to(x, (n, T)), np.broadcast_to(y, (n, T)),
                            np.broadcast_to(surface[:, None], (n, T)))
        occluded = ~_in_frame(tx, ty, w, h) | self._covered(frames, tx, ty, surface[:, None])
        return np.stack([tx, ty], -1).astype(np.float32), occluded


def _unit_planes(sprite):
    """Half-planes n . (u, v) <= d whose intersection is a polygon sprite's unit shape."""
    if sprite.kind != 'polygon':
        return []
    p = np.asarray(sprite.vertices, dtype=np.float64)
    edge = np.roll(p, -1, axis=0) - p
    normal = np.stack([edge[:, 1], -edge[:, 0]], 1)               # outward for counter-clockwise
    return [(float(nx), float(ny), float(nx * px + ny * py))
            for (nx, ny), (px, py) in zip(normal, p)]


def _in_frame(x, y, w, h):
    """bool: screen points inside the frame, x in [-0.5, W - 0.5), y in [-0.5, H - 0.5)."""
    return (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)


def _paint(texture, linear, offset, y0, y1, x0, x1):
    """The texture at q = linear @ (x, y) + offset for pixel centres y0..y1-1 x x0..x1-1:
    float64 (h, w, 3). Each sinusoid is a plane wave in (x, y), cos(gx x + gy y + psi) =
    cos(gx x) cos(gy y + psi) - sin(gx x) sin(gy y + psi), so the sum is one matrix product."""
    g = 2 * np.pi * texture.freq @ linear                          # (N, 2) radians per pixel
    psi = 2 * np.pi * texture.freq @ offset + texture.phase        # (N,)
    xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
    gx, gy = np.outer(xs, g[:, 0]), np.outer(ys, g[:, 1]) + psi     # (w, N), (h, N)
    cols = np.concatenate([np.cos(gx), np.sin(gx)], 1)             # (w, 2N)
    rows = np.concatenate([np.cos(gy), -np.sin(gy)], 1)            # (h, 2N)
    amp = np.concatenate([texture.amp, texture.amp], 0)            # (2N, 3)
    out = (rows[:, None, :] * amp.T[None]).reshape(-1, amp.shape[0]) @ cols.T   # (h * 3, w)
    return out.reshape(len(ys), 3, len(xs)).transpose(0, 2, 1) + texture.base


# ----------------------------------------------------------------------------------------------
# The dataset

class FramePairDataset(torch.utils.data.Dataset):
    """One (img_x, img_z) frame pair per video; see the module docstring for layouts and rules.

    Item i -> (img_x (3, S, S) float, earlier frame; img_z (3, S, S), later frame;
               skipped: list of "path: reason" for the videos that failed while serving i).
    A failing video i is skipped by moving on to i+1, i+2, ... (wrapping around), with the same
    random stream of item i; after min(max_consecutive_failures, len) failures in a row, a
    RuntimeError lists them. The item may also be asked for as `(epoch, i)` (what `EpochOrder`
    yields), so that persistent loader workers need no `set_epoch`.
    """

    def __init__(self, preset, root=None, frame_gap=50, input_size=224, scale=(0.2, 1.0),
                 cache_path=None, seed=0, num_synthetic=256, max_consecutive_failures=50,
                 world=None):
        if preset not in PRESETS:
            raise ValueError(f'FramePairDataset: preset must be one of {PRESETS}, got {preset!r}')
        if frame_gap < 2:
            raise ValueError(f'FramePairDataset: frame_gap must be >= 2, got {frame_gap}')
        if seed < 0 or max_consecutive_failures < 1:
            raise ValueError('FramePairDataset: need seed >= 0 and max_consecutive_failures >= 1')
        self.preset, self.frame_gap, self.input_size = preset, frame_gap, input_size
        self.scale, self.seed, self.epoch = tuple(scale), seed, 0
        self.max_consecutive_failures = max_consecutive_failures
        self.world = dict(world or {})          # knobs of the synthetic preset's World
        self.frames_of = {}              # video -> frames that decode, where the index was wrong
        if preset == 'synthetic':
            self.root = None
            self.videos = [(f'synthetic/{i:06d}', SYNTHETIC_FRAMES) for i in range(num_synthetic)]
        else:
            if root is None:
                raise ValueError(f'FramePairDataset: preset {preset!r} needs a root folder')
            self.root = os.path.abspath(root)
            self.videos = index_videos(preset, self.root, cache_path)

    def set_epoch(self, epoch):
        """Select the epoch's pairs and crops (call before creating the epoch's loader iterator)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.videos)

    def path(self, j):
        rel = self.videos[j][0]
        return rel if self.root is None else os.path.join(self.root, rel)

    def load_pair(self, j, g):
        """(earlier, later, notes): PIL frames of video j by the pair rule on the frames that
        decode, and FrameNotes on what did not match the container; VideoError on failure."""
        if self.preset == 'synthetic':
            world = World(world_seed('pretrain', self.seed, j), SYNTHETIC_SIZE, SYNTHETIC_FRAMES,
                          **self.world)
            start, end = sample_pair(SYNTHETIC_FRAMES, self.frame_gap, g)
            return Image.fromarray(world.frame(start)), Image.fromarray(world.frame(end)), []
        n = self.frames_of.get(j, self.videos[j][1])
        if n == 0:                       # unreadable at index time (or empty): try it once more
            n = count_frames(self.path(j))
            if n == 0:
                raise VideoError('no frames')
        start, end = sample_pair(n, self.frame_gap, g)
        notes = []
        try:
            images, (a, b) = decode_frames(self.path(j), [start, end], return_indices=True)
        except ShortVideo as e:          # learn the true length, draw the pair again from it
            self.frames_of[j] = e.frames
            notes.append(FrameNote(f'{self.path(j)}: the container says {n} frames but only '
                                   f'{e.frames} decode; pair drawn again from those'))
            n = e.frames
            start, end = sample_pair(n, self.frame_gap, g)
            images, (a, b) = decode_frames(self.path(j), [start, end], return_indices=True)
        if n > 1 and not 1 <= b - a <= self.frame_gap - 1:
            notes.append(FrameNote(f'{self.path(j)}: frames {a} and {b} decoded for the pair '
                                   f'({start}, {end}): gap {b - a} outside 1..{self.frame_gap - 1} '
                                   f'(frames missing from the stream)'))
        return images[0], images[1], notes

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        g = item_generator(self.seed, epoch, i)
        skipped = []
        tries = min(self.max_consecutive_failures, len(self))
        for t in range(tries):
            j = (i + t) % len(self)
            try:
                img_x, img_z, notes = self.load_pair(j, g)
            except VideoError as e:
                skipped.append(f'{self.path(j)}: {e}')
                continue
            except Exception as e:                      # a bug, not a bad file: stop, name it
                raise RuntimeError(f'{self.path(j)}: unexpected error while reading a frame pair '
                                   f'(item {i}): {e!r}') from e
            x = augment(img_x, self.input_size, self.scale, g)  # independent crop + flip per frame
            z = augment(img_z, self.input_size, self.scale, g)
            return x, z, skipped + notes
        raise RuntimeError(
            f'every one of the {tries} videos tried for item {i} (from {self.path(i)} on) failed '
            f'to open or decode; check the data under {self.root}. First failures:\n  '
            + '\n  '.join(skipped[:5]))


class FrameNote(str):
    """A report that travels in an item's `skipped` list but is not a skip: a video whose frames
    differ from what its container says (the pair was drawn again, or its gap breaks the rule).
    `summarize_skipped` counts these apart."""

    def __reduce__(self):                # survives the loader's worker queues as a FrameNote
        return FrameNote, (str(self),)


class EpochOrder(torch.utils.data.Sampler):
    """The sampler of a loader that lives across epochs: `set(epoch, order)` before each epoch,
    then it yields `(epoch, i)` for i in order. The epoch travels with each index, so workers
    kept alive between epochs (`persistent_workers`) draw the right epoch's pairs and crops. On
    a small dataset (the tiny scale: 4 iterations per epoch) this saves starting the workers
    anew every epoch, which took longer than the epoch itself."""

    def __init__(self):
        self.epoch, self.order = 0, []

    def set(self, epoch, order):
        self.epoch, self.order = int(epoch), list(order)

    def __iter__(self):
        return ((self.epoch, i) for i in self.order)

    def __len__(self):
        return len(self.order)


def collate_pairs(batch):
    """[(x, z, skipped), ...] -> (x (B, 3, S, S), z (B, 3, S, S), all skipped entries)."""
    xs, zs, skipped = zip(*batch)
    return torch.stack(xs), torch.stack(zs), [s for item in skipped for s in item]


def count_skips(entries):
    """The number of real skips among `skipped` entries (FrameNotes are not skips)."""
    return sum(not isinstance(e, FrameNote) for e in entries)


def summarize_skipped(skipped):
    """Once-per-epoch report of skipped videos: the count, then each unique entry with its count;
    then, apart, the FrameNotes (videos whose decoded frames differ from their container)."""
    notes = [e for e in skipped if isinstance(e, FrameNote)]
    skips = [e for e in skipped if not isinstance(e, FrameNote)]
    lines = []
    for what, entries in (('skipped videos', skips), ('frame-count notes', notes)):
        if not entries and what != 'skipped videos':
            continue
        if not entries:
            lines.append('skipped videos: none')
            continue
        counts = {}
        for entry in entries:
            counts[str(entry)] = counts.get(str(entry), 0) + 1
        noun = 'skips' if what == 'skipped videos' else 'notes'
        lines.append(f'{what}: {len(entries)} {noun} of {len(counts)} unique videos')
        lines += [f'  {e}' + (f' (x{c})' if c > 1 else '') for e, c in sorted(counts.items())]
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Writing tiny real clips, and the decode benchmark

def encode_clip(path, frames, fps=15, gop=8, pts_offset=0, codec=None, faststart=False):
    """Encode uint8 frames (T, H, W, 3) (H, W even) to a video file; returns the codec used.

    libx264 (keyframe every `gop` frames, B-frames on) when the PyAV build has it, else mpeg4.
    `pts_offset` (frames) starts the timestamps late, to exercise streams with a start offset.
    `faststart` puts the mp4 index (moov) before the frames, as in web-downloaded videos.
    """
    codec = codec or ('libx264' if 'libx264' in av.codecs_available else 'mpeg4')
    frames = list(frames)
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f'encode_clip: width and height must be even for yuv420p, got {w}x{h}')
    options = {'movflags': 'faststart'} if faststart else {}
    with av.open(path, 'w', options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = Fraction(1, fps)
        if codec == 'libx264':
            stream.options = {'preset': 'veryfast', 'crf': '20', 'bf': '2', 'sc_threshold': '0'}
        else:
            stream.options = {'qscale': '4'}
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format='rgb24')
            frame.pts = pts_offset + t
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return codec


def write_synthetic_clips(out_dir, num_classes=3, per_class=4, seconds=2.0, fps=15,
                          size=(160, 120), seed=0, codec=None, **world):
    """Write `num_classes * per_class` tiny clips `<out_dir>/class_<c>/clip_<c>_<k>.mp4` (K400
    layout) of `round(seconds * fps)` frames of size (W, H), clip i of them the synthetic
    `World(world_seed('clips', seed, i), size, frames, **world)`; returns their paths (sorted)."""
    paths = []
    n = max(1, round(seconds * fps))
    for c in range(num_classes):
        os.makedirs(os.path.join(out_dir, f'class_{c:02d}'), exist_ok=True)
        for k in range(per_class):
            scene = World(world_seed('clips', seed, c * per_class + k), size, n, **world)
            path = os.path.join(out_dir, f'class_{c:02d}', f'clip_{c:02d}_{k:03d}.mp4')
            encode_clip(path, (scene.frame(t) for t in range(n)), fps=fps, codec=codec)
            paths.append(path)
    return paths


def bench_decode(root, n_pairs, preset='k400'):
    """Full items per second (index once, then n_pairs x: decode both frames + two crops)."""
    ds = FramePairDataset(preset, root, input_size=224)
    t0 = time.perf_counter()
    for i in range(n_pairs):
        ds[i % len(ds)]
        if (i + 1) % len(ds) == 0:
            ds.set_epoch(ds.epoch + 1)
    return n_pairs / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Command line

def _parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH, e.g. 160x120, got {text!r}')
    return w, h


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('make-clips', help='write tiny synthetic mp4 clips in the K400 layout')
    p.add_argument('--out', required=True)
    p.add_argument('--classes', type=int, default=3)
    p.add_argument('--per-class', type=int, default=4)
    p.add_argument('--seconds', type=float, default=2.0)
    p.add_argument('--fps', type=int, default=15)
    p.add_argument('--size', type=_parse_size, default=(160, 120), help='WxH')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--world', type=world_knob, action='append', default=[], metavar='KEY=VALUE',
                   help='a knob of the synthetic World, e.g. speed=0.02 (repeatable)')
    p.add_argument('--codec', choices=['libx264', 'mpeg4'], default=None,
                   help='default libx264 when PyAV has it (B-frames, like most Kinetics files); '
                        'mpeg4 gives the same bytes on every run, which libx264 here does not')
    p = sub.add_parser('index', help='index a dataset (frame counts), print a summary')
    p.add_argument('--data', choices=[x for x in PRESETS if x != 'synthetic'], default='k400')
    p.add_argument('--data-path', required=True)
    p.add_argument('--cache', default=None, help='index cache file (JSON), read and written')
    p.add_argument('--workers', type=int, default=0, help='processes counting frames')
    p = sub.add_parser('bench', help='items per second (decode + crops) on one core')
    p.add_argument('--data', choices=[x for x in PRESETS if x != 'synthetic'], default='k400')
    p.add_argument('--data-path', required=True)
    p.add_argument('--pairs', type=int, default=200)
    args = parser.parse_args(argv)

    if args.command == 'make-clips':
        t0 = time.perf_counter()
        paths = write_synthetic_clips(args.out, args.classes, args.per_class, args.seconds,
                                      args.fps, args.size, args.seed, args.codec, **dict(args.world))
        codec = args.codec or ('libx264' if 'libx264' in av.codecs_available else 'mpeg4')
        print(f'wrote {len(paths)} clips ({codec}, {args.size[0]}x{args.size[1]}, '
              f'{round(args.seconds * args.fps)} frames) to {args.out} '
              f'in {time.perf_counter() - t0:.1f} s')
    elif args.command == 'index':
        t0 = time.perf_counter()
        videos = index_videos(args.data, args.data_path, args.cache, args.workers)
        n = np.array([c for _, c in videos])
        print(f'{args.data} at {args.data_path}: {len(videos)} videos, {int(n.sum())} frames, '
              f'frames per video min {n.min()} median {int(np.median(n))} max {n.max()}, '
              f'{int((n == 0).sum())} unreadable; {time.perf_counter() - t0:.1f} s')
    elif args.command == 'bench':
        rate = bench_decode(args.data_path, args.pairs, args.data)
        print(f'{args.data} at {args.data_path}: {rate:.1f} pairs/s (decode + 2 crops, 1 process)')


if __name__ == '__main__':
    sys.exit(main())
