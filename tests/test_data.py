"""Tests of data.py: layouts, index cache, seek-based decoding, the pair rule, the augmentation,
failure handling and determinism. Run: .venv/bin/python -m pytest -q tests/test_data.py"""
import json
import os
import shutil

import av
import numpy as np
import pytest
import torch

import data

FPS = 15
NUM_FRAMES = 30            # 2 s at 15 fps; libx264 keyframe every 8 frames, B-frames on


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    """A tiny K400-layout folder: 2 classes x 3 clips of 30 frames (160x120)."""
    root = str(tmp_path_factory.mktemp('k400'))
    paths = data.write_synthetic_clips(root, num_classes=2, per_class=3, seconds=2.0, fps=FPS)
    return root, paths


def sequential_frames(path):
    """Every frame of a video by one decode from the start: list of (H, W, 3) uint8."""
    with av.open(path) as container:
        return [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]


def write_bad_files(folder):
    """A truncated mp4 (first half of valid bytes), a zero-byte mp4, a text file named .mp4."""
    os.makedirs(folder, exist_ok=True)
    good = os.path.join(folder, 'tmp_good.mp4')
    data.encode_clip(good, data.World(1, (64, 48), 8).video(), fps=FPS)
    raw = open(good, 'rb').read()
    os.remove(good)
    with open(os.path.join(folder, 'a_truncated.mp4'), 'wb') as f:
        f.write(raw[:len(raw) // 2])
    open(os.path.join(folder, 'b_empty.mp4'), 'wb').close()
    with open(os.path.join(folder, 'c_text.mp4'), 'w') as f:
        f.write('this is not a video\n')
    return ['a_truncated.mp4', 'b_empty.mp4', 'c_text.mp4']


# ---------------------------------------------------------------- generated clips and decoding

def test_generated_clips_decode_with_keyframes_and_b_frames(clips):
    """make-clips writes real mp4s: 30 frames each, several keyframes and B-frames (so seeking
    and frame reordering are exercised), and the container's frame count says 30."""
    root, paths = clips
    assert len(paths) == 6 and all(p.endswith('.mp4') for p in paths)
    with av.open(paths[0]) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == NUM_FRAMES
    assert sum(f.key_frame for f in frames) >= 3
    assert any(f.pict_type == av.video.frame.PictureType.B for f in frames)
    assert data.count_frames(paths[0]) == NUM_FRAMES


def test_seek_decode_equals_sequential_decode(clips):
    """Frame k from seek + forward decode is pixel-identical to frame k of a full decode: first,
    around keyframes, the last; pairs continuing the decode and pairs forced to re-seek."""
    path = clips[1][2]
    ref = sequential_frames(path)
    for k in (0, 1, 6, 7, 8, 9, 15, 16, 17, 28, NUM_FRAMES - 1):
        (img,) = data.decode_frames(path, [k])
        assert np.array_equal(np.asarray(img), ref[k]), k
    for pair, gap in (((3, 20), data.RESEEK_GAP), ((2, 27), 0), ((5, 5), 0), ((0, 29), 64)):
        x, z = data.decode_frames(path, list(pair), reseek_gap=gap)
        assert np.array_equal(np.asarray(x), ref[pair[0]]), pair
        assert np.array_equal(np.asarray(z), ref[pair[1]]), pair


def test_stream_with_start_offset(tmp_path):
    """Frame index counts from the stream's first timestamp: a clip whose timestamps start 7
    frames late still gives frame k = the k-th decoded frame."""
    scene = data.World(3, (96, 64), 20)
    path = str(tmp_path / 'offset.mp4')
    data.encode_clip(path, scene.video(), fps=FPS, pts_offset=7)
    with av.open(path) as container:
        assert container.streams.video[0].start_time > 0
    ref = sequential_frames(path)
    for k in (0, 5, 8, 19):
        (img,) = data.decode_frames(path, [k])
        assert np.array_equal(np.asarray(img), ref[k]), k


def test_frame_past_the_end_is_a_short_video_not_a_stand_in(clips):
    """A wanted frame past the last one that decodes (frame count too high) raises ShortVideo
    with the true count; the last frame is never returned in its place (a same-frame pair)."""
    path = clips[1][0]
    with pytest.raises(data.ShortVideo, match='frame 40 wanted, but only 30 frames decode') as e:
        data.decode_frames(path, [NUM_FRAMES - 1, NUM_FRAMES + 10])
    assert e.value.frames == NUM_FRAMES


def test_count_frames_without_container_count(tmp_path):
    """A Matroska file has no frame count in the container: duration x rate gives it."""
    scene = data.World(2, (64, 48), 12)
    path = str(tmp_path / 'clip.mkv')
    data.encode_clip(path, scene.video(), fps=FPS)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0
    assert data.count_frames(path) == 12


# ---------------------------------------------------------------- the pair rule

def test_pair_rule_gap_range_over_many_draws():
    """Official rule: gap end - start in [1, frame_gap - 1], always forward, end < n."""
    g = torch.Generator().manual_seed(0)
    for n, frame_gap in ((2, 50), (10, 3), (30, 50), (300, 50), (60, 2)):
        for _ in range(300):
            start, end = data.sample_pair(n, frame_gap, g)
            assert 0 <= start <= n - 2 and start + 1 <= end <= min(n, start + frame_gap) - 1
    assert data.sample_pair(2, 50, g) == (0, 1)


def test_pair_rule_distribution_n10_gap3():
    """n = 10, frame_gap = 3: P(start = s) = 1/9 for s in 0..8; end | start uniform on
    [s+1, min(10, s+3) - 1], i.e. {s+1, s+2} for s <= 7 and {9} for s = 8."""
    g = torch.Generator().manual_seed(1)
    draws = 18000
    counts = {}
    for _ in range(draws):
        pair = data.sample_pair(10, 3, g)
        counts[pair] = counts.get(pair, 0) + 1
    expected = {(s, e): 1 / 9 / (2 if s <= 7 else 1)
                for s in range(9) for e in range(s + 1, min(10, s + 3))}
    assert set(counts) == set(expected)
    for pair, p in expected.items():
        assert abs(counts[pair] / draws - p) < 0.012, (pair, counts[pair] / draws, p)


def test_one_frame_video_gives_same_frame_twice(tmp_path):
    """A 1-frame video gives (0, 0): both images are that frame."""
    assert data.sample_pair(1, 50, torch.Generator().manual_seed(0)) == (0, 0)
    folder = tmp_path / 'one'
    folder.mkdir()
    frame = data.World(0, (64, 48), 1).frame(0)
    data.encode_clip(str(folder / 'single.mp4'), [frame], fps=FPS)
    ds = data.FramePairDataset('folder', str(folder), input_size=32)
    assert ds.videos == [('single.mp4', 1)]
    x, z, notes = ds.load_pair(0, torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(x), np.asarray(z))
    assert np.array_equal(np.asarray(x), sequential_frames(str(folder / 'single.mp4'))[0])
    img_x, img_z, skipped = ds[0]
    assert img_x.shape == img_z.shape == (3, 32, 32) and skipped == [] and notes == []


# ---------------------------------------------------------------- failures

def test_bad_videos_are_skipped_and_reported(tmp_path, clips):
    """Truncated, zero-byte and text-as-mp4 files: indexed with 0 frames, then skipped by moving
    to the next index, each listed in `skipped` as "path: reason"."""
    root = tmp_path / 'k400'
    bad = write_bad_files(str(root / 'class_a'))
    shutil.copy(clips[1][0], root / 'class_a' / 'd_good.mp4')
    ds = data.FramePairDataset('k400', str(root), input_size=32)
    assert ds.videos == [(f'class_a/{b}', 0) for b in bad] + [('class_a/d_good.mp4', NUM_FRAMES)]
    x, z, skipped = ds[0]
    assert x.shape == z.shape == (3, 32, 32)
    assert [s.split(': ')[0] for s in skipped] == [str(root / 'class_a' / b) for b in bad]
    assert all(len(s.split(': ', 1)[1]) > 0 for s in skipped)
    assert ds[3][2] == []                                    # the good one alone
    x2, z2, skipped2 = ds[2]                                 # c_text, then d_good
    assert len(skipped2) == 1 and 'c_text.mp4' in skipped2[0]
    report = data.summarize_skipped(skipped + skipped2)
    assert report.startswith('skipped videos: 4 skips of 3 unique videos')
    assert 'c_text.mp4' in report and '(x2)' in report
    assert data.summarize_skipped([]) == 'skipped videos: none'


def test_all_bad_folder_raises_clear_error(tmp_path):
    """Every video failing is a RuntimeError naming the tried paths, not an endless loop; with
    max_consecutive_failures smaller than the folder, it stops after that many."""
    root = tmp_path / 'bad'
    write_bad_files(str(root / 'class_a'))
    ds = data.FramePairDataset('k400', str(root))
    with pytest.raises(RuntimeError, match='every one of the 3 videos') as info:
        ds[1]
    assert 'b_empty.mp4' in str(info.value) and 'a_truncated.mp4' in str(info.value)
    ds = data.FramePairDataset('k400', str(root), max_consecutive_failures=2)
    with pytest.raises(RuntimeError, match='every one of the 2 videos'):
        ds[0]


# ---------------------------------------------------------------- index and cache

def test_index_cache_written_reused_and_invalidated(tmp_path, clips, monkeypatch):
    """The cache is written; a second call opens no video; another root re-indexes; a new file
    is the only one counted."""
    root, _ = clips
    cache = str(tmp_path / 'index.json')
    first = data.index_videos('k400', root, cache)
    assert len(first) == 6 and all(n == NUM_FRAMES for _, n in first)
    saved = json.load(open(cache))
    assert saved['root'] == os.path.abspath(root) and saved['preset'] == 'k400'
    assert [tuple(v) for v in saved['videos']] == first

    def no_open(path):
        raise AssertionError(f'opened {path}')
    monkeypatch.setattr(data, 'count_frames', no_open)
    assert data.index_videos('k400', root, cache) == first

    other = str(tmp_path / 'other')
    shutil.copytree(root, other)
    opened = []
    monkeypatch.setattr(data, 'count_frames', lambda path: opened.append(path) or 5)
    assert data.index_videos('k400', other, cache) == [(rel, 5) for rel, _ in first]
    assert len(opened) == 6 and json.load(open(cache))['root'] == os.path.abspath(other)

    shutil.copy(os.path.join(other, first[0][0]), os.path.join(other, 'class_00', 'zz_new.mp4'))
    opened.clear()
    videos = data.index_videos('k400', other, cache)
    assert opened == [os.path.join(other, 'class_00', 'zz_new.mp4')] and len(videos) == 7


def test_preset_layouts(tmp_path):
    """k400 (class folders, or train/<class>), mit (training/<class>), webvid and folder
    (recursive): the right files, sorted; hidden and non-video files ignored; empty -> error."""
    def touch(*parts):
        path = tmp_path.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')

    for p in (('k', 'b_cls', '2.mp4'), ('k', 'b_cls', '1.WEBM'), ('k', 'a_cls', 'x.mkv'),
              ('k', 'a_cls', 'notes.txt'), ('k', 'a_cls', '._x.mp4'), ('k', 'loose.mp4'),
              ('k', 'a_cls', 'deeper', 'y.mp4')):
        touch(*p)
    assert data.list_videos('k400', str(tmp_path / 'k')) == ['a_cls/x.mkv', 'b_cls/1.WEBM',
                                                             'b_cls/2.mp4']
    touch('kt', 'train', 'c', 'v.avi')
    touch('kt', 'val', 'c', 'w.mp4')
    assert data.list_videos('k700', str(tmp_path / 'kt')) == ['train/c/v.avi']
    touch('mit', 'training', 'jumping', 'j1.mp4')
    touch('mit', 'validation', 'jumping', 'j2.mp4')
    assert data.list_videos('mit', str(tmp_path / 'mit')) == ['training/jumping/j1.mp4']
    touch('wv', '000001_000050', '1066.mp4')
    touch('wv', '2.mp4')
    touch('wv', '2.json')
    assert data.list_videos('webvid', str(tmp_path / 'wv')) == ['000001_000050/1066.mp4', '2.mp4']
    assert data.list_videos('folder', str(tmp_path / 'mit')) == ['training/jumping/j1.mp4',
                                                                 'validation/jumping/j2.mp4']
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='empty'):
        data.list_videos('k400', str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='missing'):
        data.FramePairDataset('k400', str(tmp_path / 'missing'))


# ---------------------------------------------------------------- augmentation

def test_random_resized_crop_box_within_scale_and_ratio():
    """torchvision's algorithm: the box fits, its area fraction is in scale and its aspect in
    ratio (up to the rounding of w and h to integers), over many draws."""
    g = torch.Generator().manual_seed(0)
    height, width, scale, ratio = 120, 160, (0.2, 1.0), (3 / 4, 4 / 3)
    for _ in range(2000):
        top, left, h, w = data.random_resized_crop_box(height, width, scale, ratio, g)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        lo = (w - 0.5) * (h - 0.5) / (height * width)
        hi = (w + 0.5) * (h + 0.5) / (height * width)
        assert lo <= scale[1] and hi >= scale[0]
        assert (w - 0.5) / (h + 0.5) <= ratio[1] and (w + 0.5) / (h - 0.5) >= ratio[0]


def test_random_resized_crop_fallback_is_clamped_centre_crop():
    """No box of area >= 20% fits a 1000x100 strip at aspect <= 4/3: after 10 tries the
    fallback is h = 100, w = round(100 * 4/3) = 133, centred: left = (1000 - 133) // 2 = 433;
    transposed for a 100x1000 strip; a square image falls back to the whole image."""
    g = torch.Generator().manual_seed(0)
    ratio = (3 / 4, 4 / 3)
    assert data.random_resized_crop_box(100, 1000, (0.2, 1.0), ratio, g) == (0, 433, 100, 133)
    assert data.random_resized_crop_box(1000, 100, (0.2, 1.0), ratio, g) == (433, 0, 133, 100)
    assert data.random_resized_crop_box(50, 50, (2.0, 3.0), (3 / 4, 4 / 3), g) == (0, 0, 50, 50)


def test_augment_output_size_and_normalisation_of_constant_image():
    """A constant (255, 0, 128) image gives, in every pixel of every crop, ((255, 0, 128)/255 -
    mean) / std = (0.515/0.229, -0.456/0.224, 0.0959608/0.225) = (2.248908, -2.035714, 0.426492)."""
    from PIL import Image
    image = Image.new('RGB', (160, 120), (255, 0, 128))
    expected = torch.tensor([2.248908, -2.035714, 0.426492]).view(3, 1, 1).expand(3, 48, 48)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = data.augment(image, 48, (0.2, 1.0), g)
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert torch.allclose(x, expected, atol=1e-5)


# ---------------------------------------------------------------- the dataset

def test_items_are_a_function_of_seed_epoch_index(clips):
    """Same (seed, epoch, index) -> identical tensors (fresh dataset objects); another epoch or
    seed -> different pairs/crops."""
    root, _ = clips
    a = data.FramePairDataset('k400', root, input_size=64, seed=3)
    b = data.FramePairDataset('k400', root, input_size=64, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, za, _ = a[4]
    xb, zb, _ = b[4]
    assert torch.equal(xa, xb) and torch.equal(za, zb)
    b.set_epoch(3)
    assert not torch.equal(b[4][0], xa)
    c = data.FramePairDataset('k400', root, input_size=64, seed=4)
    c.set_epoch(2)
    assert not torch.equal(c[4][0], xa)


def test_items_do_not_depend_on_loader_workers():
    """The same batches with 0 and 2 DataLoader workers (synthetic preset)."""
    ds = data.FramePairDataset('synthetic', input_size=32, num_synthetic=6, seed=1)
    ds.set_epoch(5)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers,
                                             collate_fn=data.collate_pairs)
        batches.append(list(loader))
    for (x0, z0, s0), (x2, z2, s2) in zip(*batches):
        assert torch.equal(x0, x2) and torch.equal(z0, z2) and s0 == s2 == []


def test_epoch_order_with_persistent_workers_serves_each_epochs_items():
    """A loader that lives across epochs (persistent workers, EpochOrder sampler) gives, in
    every epoch, the batches of a fresh dataset set to that epoch: (epoch, i) items carry the
    epoch into the workers, which never see set_epoch."""
    ds = data.FramePairDataset('synthetic', input_size=32, num_synthetic=6, seed=1)
    order = data.EpochOrder()
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=order, num_workers=1,
                                         persistent_workers=True, collate_fn=data.collate_pairs)
    for epoch, indices in ((0, [5, 1, 3, 0]), (7, [2, 4]), (8, [2, 4])):
        order.set(epoch, indices)
        got = torch.cat([x for x, _, _ in loader])
        fresh = data.FramePairDataset('synthetic', input_size=32, num_synthetic=6, seed=1)
        fresh.set_epoch(epoch)
        want = torch.stack([fresh[i][0] for i in indices])
        assert got.shape == (len(indices), 3, 32, 32) and torch.equal(got, want)
    assert not torch.equal(ds[(7, 2)][0], ds[(8, 2)][0])     # the epoch changes the crop


def test_collate_pairs_shapes_and_skipped():
    """collate_pairs stacks to (B, 3, S, S) and concatenates the skipped lists in order."""
    x = torch.zeros(3, 16, 16)
    batch = [(x, x + 1, ['a: r']), (x, x + 1, []), (x, x + 1, ['b: r', 'c: r'])]
    xs, zs, skipped = data.collate_pairs(batch)
    assert xs.shape == zs.shape == (3, 3, 16, 16) and torch.equal(zs, torch.ones(3, 3, 16, 16))
    assert skipped == ['a: r', 'b: r', 'c: r']


def test_synthetic_preset_moves_and_is_deterministic():
    """Synthetic videos: same (seed, index) -> same frames; frames change over time; different
    index -> different video; items have the requested size."""
    ds = data.FramePairDataset('synthetic', num_synthetic=4, input_size=32)
    g = torch.Generator().manual_seed(0)
    x, z = (np.asarray(im) for im in ds.load_pair(3, g)[:2])
    assert x.shape == (data.SYNTHETIC_SIZE[1], data.SYNTHETIC_SIZE[0], 3) and x.dtype == np.uint8
    again = data.FramePairDataset('synthetic', num_synthetic=4, input_size=32)
    assert all(np.array_equal(a, np.asarray(b))
               for a, b in zip((x, z), again.load_pair(3, torch.Generator().manual_seed(0))[:2]))
    assert not np.array_equal(x, z)
    other = np.asarray(ds.load_pair(2, torch.Generator().manual_seed(0))[0])
    assert not np.array_equal(x, other)
    assert len(ds) == 4 and ds[3][0].shape == (3, 32, 32)
    knobs = data.FramePairDataset('synthetic', num_synthetic=4, input_size=32, world={'num_objects': 1})
    assert not np.array_equal(x, np.asarray(knobs.load_pair(3, torch.Generator().manual_seed(0))[0]))


def test_cli_make_clips_index_and_unknown_argument(tmp_path, capsys):
    """`make-clips` then `index` print their summaries; an unknown argument is an error."""
    out = str(tmp_path / 'clips')
    data.main(['make-clips', '--out', out, '--classes', '2', '--per-class', '1', '--seconds', '0.4',
               '--size', '64x48'])
    assert sorted(os.listdir(out)) == ['class_00', 'class_01']
    data.main(['index', '--data', 'k400', '--data-path', out, '--cache', str(tmp_path / 'c.json')])
    printed = capsys.readouterr().out
    assert 'wrote 2 clips' in printed and '2 videos, 12 frames' in printed
    data.main(['bench', '--data-path', out, '--pairs', '2'])
    assert 'pairs/s' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        data.main(['index', '--data-path', out, '--bogus', '1'])


def test_make_clips_mpeg4_is_byte_identical_run_to_run(tmp_path, capsys):
    """`make-clips --codec mpeg4` (the tiny Table 1 data) writes MPEG-4 Part 2 streams, and the
    same bytes when run again in the same process."""
    outs = [str(tmp_path / f'run{k}') for k in range(2)]
    for out in outs:
        data.main(['make-clips', '--out', out, '--classes', '1', '--per-class', '3', '--seconds', '0.8',
                   '--size', '64x48', '--codec', 'mpeg4'])
    assert 'wrote 3 clips (mpeg4, 64x48' in capsys.readouterr().out
    names = sorted(os.listdir(os.path.join(outs[0], 'class_00')))
    assert len(names) == 3
    for name in names:
        first, again = (open(os.path.join(o, 'class_00', name), 'rb').read() for o in outs)
        assert len(first) > 500 and first == again, name
    with av.open(os.path.join(outs[0], 'class_00', names[0])) as c:
        assert c.streams.video[0].codec_context.name == 'mpeg4'


def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, clips, capsys):
    """A cache file that is not valid JSON is ignored with a message, then rewritten."""
    cache = tmp_path / 'index.json'
    cache.write_text('{"format": "dropmae-video-index", "vers')
    videos = data.index_videos('k400', clips[0], str(cache))
    assert 'ignoring unreadable cache' in capsys.readouterr().out
    assert [tuple(v) for v in json.loads(cache.read_text())['videos']] == videos


def test_reader_decodes_from_nearby_keyframes_only(clips):
    """Keyframes every 8 frames: frame 28 costs a seek to 24 and a few decodes, never the whole
    video; going on from frame 3 to 20 skips (without decoding) to the keyframe at 16."""
    path = clips[1][1]
    ref = sequential_frames(path)
    with av.open(path) as container:
        reader = data._FrameReader(container, container.streams.video[0])
        index, frame = reader.read(28)
        assert index == 28 and np.array_equal(frame.to_ndarray(format='rgb24'), ref[28])
        assert reader.decoded <= 8
    with av.open(path) as container:
        reader = data._FrameReader(container, container.streams.video[0])
        reader.read(3)
        before = reader.decoded
        index, frame = reader.read(20)
        assert index == 20 and np.array_equal(frame.to_ndarray(format='rgb24'), ref[20])
        assert reader.decoded - before <= 8                  # not the 17+ frames from 4 to 20


def test_truncated_faststart_mp4_fails_at_decode(tmp_path):
    """An mp4 with its index first, cut in half, opens and reports its full frame count, but
    decoding past the cut is a VideoError naming the frame (so the dataset skips it)."""
    scene = data.World(1, (160, 120), 30)
    path = str(tmp_path / 'fs.mp4')
    data.encode_clip(path, scene.video(), fps=FPS,
                     faststart=True)
    raw = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(raw[:len(raw) // 2])
    assert data.count_frames(path) == 30
    with pytest.raises(data.VideoError, match='decode error looking for frame 28'):
        data.decode_frames(path, [3, 28])


def test_mpeg4_clip_seek_decode_equals_sequential(tmp_path):
    """The mpeg4 fallback encoder (PyAV wheels without libx264) gives seekable clips too."""
    scene = data.World(4, (96, 64), 20)
    path = str(tmp_path / 'm.mp4')
    assert data.encode_clip(path, scene.video(), fps=FPS,
                            codec='mpeg4') == 'mpeg4'
    ref = sequential_frames(path)
    assert len(ref) == 20 and data.count_frames(path) == 20
    for pair in ((0, 19), (9, 12)):
        x, z = data.decode_frames(path, list(pair))
        assert np.array_equal(np.asarray(x), ref[pair[0]])
        assert np.array_equal(np.asarray(z), ref[pair[1]])


def test_augment_is_torchvision_crop_then_bicubic_resize_then_flip():
    """augment = torchvision's RandomResizedCrop on a PIL image (box from get_params, then
    `img.crop(box).resize(size, BICUBIC)`), then RandomHorizontalFlip (flip when the next
    uniform < 0.5), ToTensor, Normalize; the draws come from the one generator in that order."""
    from PIL import Image
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    flips = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = data.random_resized_crop_box(90, 120, (0.2, 1.0), (3 / 4, 4 / 3), g)
        flip = torch.rand(1, generator=g).item() < 0.5
        expected = image.crop((left, top, left + w, top + h)).resize((40, 40), Image.BICUBIC)
        if flip:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 255
        mean, std = torch.tensor(data.IMAGENET_MEAN), torch.tensor(data.IMAGENET_STD)
        ours = data.augment(image, 40, (0.2, 1.0), torch.Generator().manual_seed(seed))
        assert torch.allclose(ours, (pixels - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-6)
        flips += flip
    assert 0 < flips < 8                                     # both branches were exercised


def test_unexpected_error_names_the_video(tmp_path, clips, monkeypatch):
    """A failure that is not a bad video (a bug) is not skipped: a RuntimeError naming the file."""
    ds = data.FramePairDataset('k400', clips[0], input_size=32)

    def broken(path, indices, **kwargs):
        raise ZeroDivisionError('oops')
    monkeypatch.setattr(data, 'decode_frames', broken)
    with pytest.raises(RuntimeError, match=r'class_00/clip_00_001\.mp4: unexpected error .*oops'):
        ds[1]
