"""Optical flow metrics: EPE (Chairs / Sintel / KITTI) and KITTI 2015 Fl-all.

Definitions follow `specs/metrics-dense.md` section 3 (RAFT `evaluate.py` and the KITTI 2015
devkit):

- per pixel `EPE = ||f_pred - f_gt||_2`, computed in float32 like RAFT;
- `chairs` / `sintel`: **no mask** (a dataset's validity is ignored), EPE = mean over all pixels
  of all images (pooled), and the 1px / 3px / 5px rates = fraction of pixels with `EPE < 1/3/5`
  (strict);
- `kitti`: only pixels with `valid >= 0.5` (3rd channel of the flow_occ PNG) count.
  `kitti_epe` = mean over images of the per-image mean EPE (image-weighted, RAFT's
  `kitti-epe`); `fl_all` = 100 x (outliers / valid pixels) pooled over all images, an outlier
  being `EPE > 3 px AND EPE / ||f_gt|| > 0.05` (both strict; `||f_gt|| = 0` -> infinite ratio,
  `0/0` -> not an outlier). We also report the pixel-pooled EPE and 1/3/5px rates on valid
  pixels (`epe_pooled`, `1px`, ...), which RAFT does not.
- An image without any valid pixel has a NaN per-image EPE, which makes `kitti_epe` NaN
  (official behaviour); Fl-all is unaffected. The CLI names such images.

Means are taken in float64 over float32 EPEs, so numbers can differ from RAFT's float32 means in
the 7th significant digit.

File formats (`read_flow` dispatches on the extension):
- `.flo`  Middlebury: float32 magic 202021.25, int32 width, int32 height, then H*W*(u, v)
  float32, little-endian;
- `.png`  KITTI: 16-bit RGB, `u = (R - 2^15) / 64`, `v = (G - 2^15) / 64`, valid = B > 0.
  Pillow decodes 16-bit RGB PNGs to 8 bits, so the PNG is parsed here with zlib + numpy;
- `.npy`  an (H, W, 2) array (u, v) in pixels;
- `.npz`  key `flow` (H, W, 2) and optional key `valid` (H, W).
A file without validity information is valid everywhere.

Command line (GT and predictions matched by relative path without extension, so a prediction
may use any of the four formats):

    python -m eval.flow --format kitti  --gt KITTI/training/flow_occ --pred runs/kitti_flow
    python -m eval.flow --format sintel --gt Sintel/training/flow    --pred runs/sintel_clean
    python -m eval.flow --format chairs --gt FlyingChairs/val_flow   --pred runs/chairs --out m.json
"""
import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from eval.output import write_atomic

FLO_MAGIC = 202021.25
FLOW_EXTS = ('.flo', '.png', '.npy', '.npz')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (no palettes)


# ------------------------------------------------------------------------------------------
# Metrics on arrays


def endpoint_error(pred, gt):
    """Per-pixel end-point error. pred, gt: (H, W, 2) flow in pixels -> (H, W) float32."""
    diff = np.asarray(pred, np.float32) - np.asarray(gt, np.float32)
    return np.sqrt(np.sum(diff * diff, axis=-1))


def kitti_outliers(epe, gt):
    """KITTI Fl outlier map: EPE > 3 px and EPE / |gt| > 5 %, both strict.

    epe: (H, W) float32, gt: (H, W, 2) -> (H, W) bool. |gt| = 0 gives an infinite ratio
    (outlier iff EPE > 3); 0 / 0 is NaN and never an outlier.
    """
    gt = np.asarray(gt, np.float32)
    mag = np.sqrt(np.sum(gt * gt, axis=-1))
    with np.errstate(divide='ignore', invalid='ignore'):
        return (epe > 3.0) & (epe / mag > 0.05)


def pooled_metrics(epes):
    """Chairs / Sintel protocol: every pixel of every image counts (no mask).

    epes: list of (H_i, W_i) EPE maps -> {'epe', '1px', '3px', '5px'} (fractions, strict <).
    """
    flat = np.concatenate([np.ravel(e) for e in epes]).astype(np.float64)
    out = {'epe': float(flat.mean())}
    for px in (1, 3, 5):
        out[f'{px}px'] = float(np.mean(flat < px))
    return out


def kitti_metrics(epes, gts, valids):
    """KITTI-2015 protocol on `valid >= 0.5` pixels.

    epes: list of (H, W) EPE maps, gts: list of (H, W, 2) GT flows, valids: list of (H, W).
    Returns kitti_epe (mean of per-image means; NaN if an image has no valid pixel), fl_all
    (percent, pooled over all valid pixels), epe_pooled and 1px/3px/5px (pooled over valid
    pixels), and per_image_epe (list, NaN for an image without valid pixels).
    """
    per_image, outliers, valid_epes = [], 0, []
    for epe, gt, valid in zip(epes, gts, valids):
        mask = np.asarray(valid) >= 0.5
        e = epe[mask].astype(np.float64)
        per_image.append(float(e.mean()) if e.size else float('nan'))
        outliers += int(np.count_nonzero(kitti_outliers(epe, gt)[mask]))
        valid_epes.append(e)
    flat = np.concatenate(valid_epes) if valid_epes else np.zeros(0)
    n = flat.size
    out = {
        'kitti_epe': float(np.mean(per_image)) if per_image else float('nan'),
        'fl_all': 100.0 * outliers / n if n else float('nan'),
        'epe_pooled': float(flat.mean()) if n else float('nan'),
    }
    for px in (1, 3, 5):
        out[f'{px}px'] = float(np.mean(flat < px)) if n else float('nan')
    out['per_image_epe'] = per_image
    return out


# ------------------------------------------------------------------------------------------
# Middlebury .flo


def read_flo(path):
    """Read a Middlebury .flo file -> (H, W, 2) float32 (u, v)."""
    data = Path(path).read_bytes()
    if len(data) < 12:
        raise ValueError(f'{path}: too short for a .flo header ({len(data)} bytes)')
    magic = np.frombuffer(data, '<f4', 1)[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f'{path}: bad .flo magic {magic!r}, expected {FLO_MAGIC}')
    w, h = (int(v) for v in np.frombuffer(data, '<i4', 2, offset=4))
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * w * h:
        raise ValueError(f'{path}: .flo header says {w}x{h}, file has {len(data)} bytes '
                         f'(expected {12 + 8 * max(w, 0) * max(h, 0)})')
    return np.frombuffer(data, '<f4', 2 * w * h, offset=12).reshape(h, w, 2).astype(np.float32)


def write_flo(path, flow):
    """Write (H, W, 2) flow as a Middlebury .flo file."""
    flow = np.asarray(flow, np.float32)
    h, w, _ = flow.shape
    header = np.array([FLO_MAGIC], '<f4').tobytes() + np.array([w, h], '<i4').tobytes()
    Path(path).write_bytes(header + flow.astype('<f4').tobytes())


# ------------------------------------------------------------------------------------------
# PNG (8/16-bit grey, grey+alpha, RGB, RGBA; not interlaced, no palette)


def _png_chunk(kind, payload):
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', crc)


def _paeth(a, b, c):
    """PNG Paeth predictor on int arrays: the neighbour closest to a + b - c (ties a, b, c)."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(filters, data):
    """Undo PNG row filters. filters: (H,) uint8, data: (H, W, bpp) filtered bytes -> uint8.

    Byte (r, c) depends on its left (r, c-1), upper (r-1, c) and upper-left neighbours, so all
    bytes on one anti-diagonal r + c = s are independent: we sweep the H + W - 1 diagonals,
    each step vectorised over rows (and the bpp bytes of a pixel). About 0.3 s for a
    375x1242 16-bit RGB image; files with only none / up filters take milliseconds.
    """
    h, w, bpp = data.shape
    if np.isin(filters, (0, 2)).all():  # no left neighbour needed: row by row
        out = data.copy()
        for r in range(1, h):
            if filters[r] == 2:
                out[r] += out[r - 1]  # uint8 arithmetic wraps modulo 256
        return out
    data = data.astype(np.int32)
    out = np.zeros((h + 1, w + 1, bpp), np.int32)  # row 0 / column 0: the zero border
    filters = filters.astype(np.int32)[:, None]  # (H, 1)
    for s in range(h + w - 1):
        r = np.arange(max(0, s - w + 1), min(h, s + 1))  # rows crossing diagonal s
        c = s - r
        a, b, ul = out[r + 1, c], out[r, c + 1], out[r, c]  # left, up, up-left: (n, bpp)
        f = filters[r]
        pred = np.where(f == 4, _paeth(a, b, ul), np.where(
            f == 3, (a + b) >> 1, np.where(f == 2, b, np.where(f == 1, a, 0))))
        out[r + 1, c + 1] = (data[r, c] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def read_png(path):
    """Read a non-palette, non-interlaced 8/16-bit PNG -> (H, W, C) uint8 or uint16."""
    blob = Path(path).read_bytes()
    if not blob.startswith(PNG_SIGNATURE):
        raise ValueError(f'{path}: not a PNG file (bad signature)')
    pos, header, idat = 8, None, []
    while pos < len(blob):
        if pos + 8 > len(blob):
            raise ValueError(f'{path}: truncated PNG chunk header at byte {pos}')
        length, kind = struct.unpack('>I4s', blob[pos:pos + 8])
        payload = blob[pos + 8:pos + 8 + length]
        crc = blob[pos + 8 + length:pos + 12 + length]
        if len(payload) != length or len(crc) != 4:
            raise ValueError(f'{path}: truncated PNG chunk {kind!r}')
        if struct.unpack('>I', crc)[0] != zlib.crc32(kind + payload) & 0xFFFFFFFF:
            raise ValueError(f'{path}: CRC mismatch in PNG chunk {kind!r}')
        if kind == b'IHDR':
            header = struct.unpack('>IIBBBBB', payload)
        elif kind == b'IDAT':
            idat.append(payload)
        elif kind == b'IEND':
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f'{path}: PNG without IHDR or IDAT')
    w, h, depth, colour, _, _, interlace = header
    if colour not in PNG_CHANNELS or depth not in (8, 16) or interlace != 0:
        raise ValueError(f'{path}: unsupported PNG (bit depth {depth}, colour type {colour}, '
                         f'interlace {interlace}); need 8/16-bit, no palette, not interlaced')
    bpp = PNG_CHANNELS[colour] * depth // 8  # bytes per pixel
    try:
        raw = zlib.decompress(b''.join(idat))
    except zlib.error as err:
        raise ValueError(f'{path}: corrupt PNG image data ({err})') from None
    if len(raw) != h * (1 + w * bpp):
        raise ValueError(f'{path}: PNG data has {len(raw)} bytes, expected {h * (1 + w * bpp)}')
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * bpp)
    if rows[:, 0].max(initial=0) > 4:
        raise ValueError(f'{path}: unknown PNG filter type {rows[:, 0].max()}')
    pixels = _unfilter(rows[:, 0], rows[:, 1:].reshape(h, w, bpp))
    if depth == 16:
        return pixels.reshape(h, w * bpp).view('>u2').astype(np.uint16).reshape(h, w, -1)
    return pixels.reshape(h, w, -1)


def write_png(path, image, filters=0):
    """Write an (H, W, C) uint8 / uint16 image (C = 1, 2, 3, 4) as a PNG.

    filters: one PNG filter type (0 none, 1 sub, 2 up, 3 average, 4 Paeth) for every row, or a
    sequence with one per row (tests use this to exercise the reader's five filters).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, ch = image.shape
    colour = {v: k for k, v in PNG_CHANNELS.items()}[ch]
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}[image.dtype]
    x = np.ascontiguousarray(image.astype('>u2' if depth == 16 else np.uint8))
    x = x.view(np.uint8).reshape(h, w, -1).astype(np.int32)  # bytes (H, W, bpp)
    padded = np.zeros((h + 1, w + 1, x.shape[2]), np.int32)
    padded[1:, 1:] = x
    a, b, c = padded[1:, :-1], padded[:-1, 1:], padded[:-1, :-1]  # left, up, up-left
    f = np.broadcast_to(np.asarray(filters, np.int32), (h,))[:, None, None]
    pred = np.select([f == 0, f == 1, f == 2, f == 3], [0, a, b, (a + b) >> 1], _paeth(a, b, c))
    body = ((x - pred) & 0xFF).astype(np.uint8).reshape(h, -1)
    raw = np.concatenate([f[:, 0, :].astype(np.uint8), body], axis=1).tobytes()
    ihdr = struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 0)
    Path(path).write_bytes(PNG_SIGNATURE + _png_chunk(b'IHDR', ihdr)
                           + _png_chunk(b'IDAT', zlib.compress(raw, 6)) + _png_chunk(b'IEND', b''))


# ------------------------------------------------------------------------------------------
# KITTI 16-bit PNG flow


def read_kitti_png(path):
    """KITTI flow PNG -> flow (H, W, 2) float32, valid (H, W) float32 in {0, 1}."""
    img = read_png(path)
    if img.dtype != np.uint16 or img.shape[2] != 3:
        raise ValueError(f'{path}: KITTI flow must be a 16-bit RGB PNG, got {img.dtype} '
                         f'with {img.shape[2]} channels')
    flow = (img[:, :, :2].astype(np.float32) - 2.0 ** 15) / 64.0
    return flow, (img[:, :, 2] > 0).astype(np.float32)


def write_kitti_png(path, flow, valid=None):
    """Write (H, W, 2) flow (and (H, W) validity, default all valid) as a KITTI flow PNG.

    Values are rounded to 1/64 px and clipped to the uint16 range (|flow| < 512 px).
    """
    flow = np.asarray(flow, np.float64)
    valid = np.ones(flow.shape[:2]) if valid is None else np.asarray(valid)
    uv = np.clip(np.round(flow * 64.0 + 2 ** 15), 0, 65535)
    img = np.concatenate([uv, (valid > 0)[:, :, None]], axis=2).astype(np.uint16)
    write_png(path, img)


# ------------------------------------------------------------------------------------------
# Any supported file


def read_flow(path):
    """Read a flow file by extension -> flow (H, W, 2) float32, valid (H, W) float32.

    Every error names the file: unreadable or corrupt files (numpy's and the OS's errors are
    wrapped), wrong shapes, and non-finite flow (NaN / inf, with the pixel count), which would
    otherwise make the EPE NaN or inf without saying where it came from.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FLOW_EXTS:
        raise ValueError(f'{path}: unknown flow extension (supported: {FLOW_EXTS})')
    try:
        if ext == '.png':
            flow, valid = read_kitti_png(path)
        elif ext == '.flo':
            flow, valid = read_flo(path), None
        elif ext == '.npy':
            flow, valid = np.load(path), None
        else:
            with np.load(path) as z:
                if 'flow' not in z:
                    raise ValueError(f'{path}: .npz needs a "flow" key, has {sorted(z.keys())}')
                flow = z['flow']
                valid = z['valid'] if 'valid' in z else None
        flow = np.asarray(flow, np.float32)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f'{path}: cannot read ({err})') from None
    except Exception as err:  # OSError, zipfile.BadZipFile, EOFError, pickle errors, ...
        raise ValueError(f'{path}: cannot read ({type(err).__name__}: {err})') from None
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'{path}: flow must be (H, W, 2), got {flow.shape}')
    bad = ~np.isfinite(flow).all(axis=2)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise ValueError(f'{path}: non-finite flow (NaN or inf) in {int(bad.sum())} of {bad.size} '
                         f'pixels, first at (x={x}, y={y})')
    if valid is None:
        valid = np.ones(flow.shape[:2], np.float32)
    elif valid.shape != flow.shape[:2]:
        raise ValueError(f'{path}: valid {valid.shape} does not match flow {flow.shape[:2]}')
    return flow, np.asarray(valid, np.float32)


def index_flow_files(root):
    """{relative path without extension: file} for every flow file under root (recursive)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'{root}: not a directory')
    index = {}
    for p in sorted(root.rglob('*')):
        if p.is_file() and p.suffix.lower() in FLOW_EXTS:
            key = p.relative_to(root).with_suffix('').as_posix()
            if key in index:
                raise ValueError(f'{p}: same name as {index[key]} (one flow file per frame)')
            index[key] = p
    return index


def evaluate_dirs(pred_dir, gt_dir, fmt):
    """Score every GT flow file under gt_dir against the same-named file under pred_dir.

    fmt: 'kitti' (valid mask, per-image EPE, Fl-all) or 'sintel' / 'chairs' (all pixels).
    Returns the metrics dict plus 'n_images', 'images' (the relative names, in order) and
    'n_unused_pred' (prediction files without a GT file, not scored).
    """
    gts, preds = index_flow_files(gt_dir), index_flow_files(pred_dir)
    if not gts:
        raise ValueError(f'{gt_dir}: no flow files ({FLOW_EXTS})')
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise FileNotFoundError(f'{pred_dir}: no prediction for {len(missing)} GT files, '
                                f'first: {missing[0]} (GT {gts[missing[0]]})')
    epes, gt_flows, valids = [], [], []
    for name, gt_path in gts.items():
        gt, valid = read_flow(gt_path)
        pred, _ = read_flow(preds[name])
        if pred.shape != gt.shape:
            raise ValueError(f'{preds[name]}: shape {pred.shape} differs from GT {gt_path} '
                             f'{gt.shape}')
        epes.append(endpoint_error(pred, gt))
        gt_flows.append(gt)
        valids.append(valid)
    if fmt == 'kitti':
        metrics = kitti_metrics(epes, gt_flows, valids)
    elif fmt in ('sintel', 'chairs'):
        metrics = pooled_metrics(epes)
    else:
        raise ValueError(f'unknown format {fmt!r}')
    return {'format': fmt, 'n_images': len(gts), 'n_unused_pred': len(set(preds) - set(gts)),
            **metrics, 'images': list(gts)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pred', required=True, help='folder of predicted flow files')
    parser.add_argument('--gt', required=True, help='folder of ground-truth flow files')
    parser.add_argument('--format', required=True, choices=('kitti', 'sintel', 'chairs'))
    parser.add_argument('--out', help='write the metrics as JSON here')
    args = parser.parse_args(argv)

    try:
        m = evaluate_dirs(args.pred, args.gt, args.format)
    except (FileNotFoundError, ValueError) as err:  # bad input: the message names the file
        parser.exit(2, f'error: {err}\n')
    if args.format == 'kitti':
        empty = [n for n, e in zip(m['images'], m['per_image_epe']) if np.isnan(e)]
        if empty:
            print(f'warning: {len(empty)} images without valid pixels make kitti_epe NaN: '
                  f'{", ".join(empty[:5])}', file=sys.stderr)
        print(f"kitti: {m['n_images']} images  EPE {m['kitti_epe']:.4f} (per-image mean)  "
              f"Fl-all {m['fl_all']:.3f}%  pooled EPE {m['epe_pooled']:.4f}")
    else:
        print(f"{args.format}: {m['n_images']} images  EPE {m['epe']:.4f}  1px {m['1px']:.4f}  "
              f"3px {m['3px']:.4f}  5px {m['5px']:.4f}")
    if m['n_unused_pred']:
        print(f"note: {m['n_unused_pred']} prediction files have no GT file (not scored)",
              file=sys.stderr)
    if args.out:  # after the summary line: a failing write cannot lose the score
        try:
            write_atomic(args.out, json.dumps(m, indent=1) + '\n')
        except OSError as err:
            parser.exit(1, f'error: {err}\n')
    return m


if __name__ == '__main__':
    main()
