#!/usr/bin/env python3
"""Image-decoding fixtures: a small corpus of real photos in every file variant users have, with the pixels the
official loaders give for each file.

For every file the expected pixels are Pillow's `np.array(ImageOps.exif_transpose(Image.open(f)).convert("RGB"))`
(what `transformers.image_utils.load_image` gives; plain `Image.open(f).convert("RGB")` is stored too where the
file has an EXIF orientation), except for 16-bit files, whose reference is `cv2.imread(f, cv2.IMREAD_COLOR)`
(converted to RGB): Pillow clips 16-bit grayscale to 255 where OpenCV keeps the high byte. Every file is also
read with OpenCV and the number of bytes in which the two loaders disagree is recorded, with a note.

Writes `crates/segment-anything/tests/fixtures/decode/`: the variant files under `files/`, the expected pixels as
RGB PNGs under `expected/` (lossless; photos too large to store are checked by SHA-256 of the raw RGB bytes), and
`cases.json`. Deterministic: re-running it gives the same files.

    python tools/reference/gen_decode_fixtures.py [--out DIR]

Needs the pinned reference requirements (Pillow, opencv-python-headless, imagecodecs, tifffile, numpy) and, for
the arithmetic-coded JPEG, `jpegtran` from Debian's `libjpeg-turbo-progs` (the case is skipped without it).
"""

import argparse
import hashlib
import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageOps, JpegImagePlugin, features

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "assets" / "images"


def photo(name):
    return np.array(Image.open(IMAGES / name).convert("RGB"))


def crops():
    chelsea = photo("chelsea.png")
    coffee = photo("coffee.png")
    astronaut = photo("astronaut.png")
    rocket = photo("rocket.jpg")
    camera = np.array(Image.open(IMAGES / "camera.png").convert("L"))
    return {
        "cat": chelsea[50:153, 100:261],  # 161×103: partial MCUs on both axes
        "cup": coffee[100:251, 150:347],  # 197×151
        "astro": astronaut[60:188, 150:278],  # 128×128: whole MCUs
        "rocket": rocket[100:199, 200:331],  # 131×99
        "camera": camera[100:221, 150:271],  # 121×121 grayscale
        "small": coffee[160:197, 220:281],  # 61×37, for the orientation cases
    }


# ----------------------------------------------------------------------------------------------------------
# A PNG writer for the colour types and bit depths Pillow cannot write (2/4-bit gray, 16-bit colour, tRNS, Adam7).


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack_row(row, depth):
    """One scanline of samples (1-D uint array) at `depth` bits per sample, big-endian, MSB first."""
    if depth == 8:
        return row.astype(np.uint8).tobytes()
    if depth == 16:
        return row.astype(">u2").tobytes()
    bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - depth :].reshape(-1)
    return np.packbits(bits).tobytes()


def write_png(path, samples, color_type, depth, palette=None, trns=None, interlace=False, exif=None):
    """samples: H×W×C array of sample values (palette indices for colour type 3)."""
    if samples.ndim == 2:
        samples = samples[:, :, None]
    h, w, c = samples.shape

    def scanlines(img):
        out = bytearray()
        for y in range(img.shape[0]):
            out += b"\x00" + pack_row(img[y].reshape(-1), depth)
        return bytes(out)

    if interlace:
        raw = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += scanlines(sub)
    else:
        raw = scanlines(samples)
    out = b"\x89PNG\r\n\x1a\n"
    out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0))
    if palette is not None:
        out += png_chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    if exif is not None:
        out += png_chunk(b"eXIf", exif)
    out += png_chunk(b"IDAT", zlib.compress(raw, 9))
    out += png_chunk(b"IEND", b"")
    path.write_bytes(out)


def exif_orientation(n):
    e = Image.Exif()
    e[274] = n
    return e.tobytes()


# ----------------------------------------------------------------------------------------------------------


def pil_save(path, arr, fmt, mode=None, **kw):
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, fmt, **kw)


def cv2_save(path, rgb, params):
    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok, path


def make_files(d, c):
    """Write every variant into `d`; returns [(name, file name, note)]."""
    cases = []

    def add(name, ext, writer, note=""):
        f = f"{name}.{ext}"
        writer(d / f)
        cases.append((name, f, note))

    # --- JPEG: quality levels and chroma subsampling (Pillow's encoder; 4:4:0 and 4:1:1 through OpenCV's).
    add("jpeg_q75_420", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", quality=75, subsampling=2))
    add("jpeg_q50_420", "jpg", lambda p: pil_save(p, c["cup"], "JPEG", quality=50, subsampling=2))
    add("jpeg_q95_420", "jpg", lambda p: pil_save(p, c["astro"], "JPEG", quality=95, subsampling=2))
    add("jpeg_q90_422", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", quality=90, subsampling=1))
    add("jpeg_q90_444", "jpg", lambda p: pil_save(p, c["cup"], "JPEG", quality=90, subsampling=0))
    add("jpeg_q100_444", "jpg", lambda p: pil_save(p, c["rocket"], "JPEG", quality=100, subsampling=0))
    add("jpeg_q85_440", "jpg", lambda p: cv2_save(p, c["cat"], [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440]))
    add("jpeg_q85_411", "jpg", lambda p: cv2_save(p, c["cup"], [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411]))
    add("jpeg_progressive_420", "jpg", lambda p: pil_save(p, c["astro"], "JPEG", quality=85, progressive=True))
    add("jpeg_progressive_444", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", quality=90, subsampling=0, progressive=True))
    add("jpeg_optimized_huffman", "jpg", lambda p: pil_save(p, c["rocket"], "JPEG", quality=80, optimize=True))
    add("jpeg_restart_markers", "jpg", lambda p: cv2_save(p, c["cup"], [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_RST_INTERVAL, 3]))
    add("jpeg_restart_rows_progressive", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", quality=80, progressive=True, restart_marker_rows=1))
    add("jpeg_gray", "jpg", lambda p: pil_save(p, c["camera"], "JPEG", quality=85))
    add("jpeg_gray_progressive", "jpg", lambda p: pil_save(p, c["camera"], "JPEG", quality=70, progressive=True))
    add("jpeg_cmyk_adobe", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", mode="CMYK", quality=90))
    cmyk = np.array(Image.fromarray(c["cup"]).convert("CMYK"))
    add("jpeg_ycck", "jpg", lambda p: p.write_bytes(imagecodecs.jpeg8_encode(255 - cmyk, level=90, colorspace="CMYK", outcolorspace="YCCK")))
    add("jpeg_rgb_no_transform", "jpg", lambda p: pil_save(p, c["cat"], "JPEG", quality=90, keep_rgb=True, subsampling=0))
    add("jpeg_icc_profile", "jpg", lambda p: Image.fromarray(c["rocket"]).save(p, "JPEG", quality=85, icc_profile=Image.open(IMAGES / "rocket.jpg").info["icc_profile"]))
    add("jpeg_1x1", "jpg", lambda p: pil_save(p, c["cat"][40:41, 60:61], "JPEG", quality=90))
    add("jpeg_7x5_420", "jpg", lambda p: pil_save(p, c["cup"][10:15, 20:27], "JPEG", quality=75))
    add("jpeg_17x9_422", "jpg", lambda p: pil_save(p, c["astro"][30:39, 40:57], "JPEG", quality=80, subsampling=1))
    if shutil.which("jpegtran"):
        def arith(p):
            src = io.BytesIO()
            Image.fromarray(c["cup"]).save(src, "JPEG", quality=85)
            p.write_bytes(subprocess.run(["jpegtran", "-arithmetic"], input=src.getvalue(), capture_output=True, check=True).stdout)

        add("jpeg_arithmetic", "jpg", arith, "arithmetic coding (re-coded losslessly by jpegtran -arithmetic)")
    # Lossless JPEG (SOF3), which Pillow and OpenCV read through libjpeg-turbo 3.
    add("jpeg_lossless", "jpg", lambda p: p.write_bytes(imagecodecs.jpeg8_encode(c["cat"], lossless=True)))
    add("jpeg_lossless_gray", "jpg", lambda p: p.write_bytes(imagecodecs.jpeg8_encode(c["camera"], lossless=True, predictor=7)))
    # Big-endian ("MM") EXIF, as some cameras write it.
    be_exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, 6, 0, 0)
    add("jpeg_exif_big_endian_6", "jpg", lambda p: pil_save(p, c["small"], "JPEG", quality=85, exif=be_exif))
    # EXIF orientation 1–8 on a non-square 4:2:0 photo.
    for n in range(1, 9):
        add(f"jpeg_exif_orientation_{n}", "jpg", lambda p, n=n: pil_save(p, c["small"], "JPEG", quality=85, exif=exif_orientation(n)))

    # --- PNG: every colour type and bit depth.
    g = c["camera"]
    rgb = c["cat"]
    def ramp(a):
        return (np.add.outer(np.arange(a.shape[0]), np.arange(a.shape[1])) * 3 % 256).astype(np.uint16)

    alpha = ramp(rgb)
    for depth in (1, 2, 4):
        add(f"png_gray{depth}", "png", lambda p, d=depth: write_png(p, g >> (8 - d), 0, d))
    add("png_gray8", "png", lambda p: write_png(p, g, 0, 8))
    add("png_gray16", "png", lambda p: write_png(p, g.astype(np.uint16) * 257 + 91, 0, 16), "16-bit")
    add("png_gray8_trns", "png", lambda p: write_png(p, g, 0, 8, trns=struct.pack(">H", int(g[0, 0]))))
    add("png_graya8", "png", lambda p: write_png(p, np.dstack([g, ramp(g)]), 4, 8))
    add("png_graya16", "png", lambda p: write_png(p, np.dstack([g.astype(np.uint16) * 256 + 200, ramp(g) * 257]), 4, 16), "16-bit")
    add("png_rgb8", "png", lambda p: write_png(p, rgb, 2, 8))
    add("png_rgb8_trns", "png", lambda p: write_png(p, rgb, 2, 8, trns=struct.pack(">HHH", *map(int, rgb[0, 0]))))
    rgb16 = rgb.astype(np.uint16) * 256 + (np.arange(rgb.size).reshape(rgb.shape) * 37 % 256).astype(np.uint16)
    add("png_rgb16", "png", lambda p: write_png(p, rgb16, 2, 16), "16-bit")
    add("png_rgba8", "png", lambda p: write_png(p, np.dstack([rgb, alpha]), 6, 8))
    add("png_rgba16", "png", lambda p: write_png(p, np.dstack([rgb16, alpha * 257]), 6, 16), "16-bit")
    quant = Image.fromarray(c["cup"]).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = np.array(quant)
    pal = np.array(quant.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    for depth in (1, 2, 4, 8):
        n = 1 << depth
        add(f"png_palette{depth}", "png", lambda p, d=depth, n=n: write_png(p, idx.astype(np.uint16) % n, 3, d, palette=pal[:n]))
    add("png_palette8_trns", "png", lambda p: write_png(p, idx, 3, 8, palette=pal, trns=bytes((i * 7) % 256 for i in range(200))))
    add("png_interlaced_rgb8", "png", lambda p: write_png(p, c["cup"], 2, 8, interlace=True))
    add("png_interlaced_gray4", "png", lambda p: write_png(p, g >> 4, 0, 4, interlace=True))
    add("png_exif_orientation_6", "png", lambda p: write_png(p, c["small"], 2, 8, exif=exif_orientation(6)[6:] if exif_orientation(6).startswith(b"Exif") else exif_orientation(6)))

    # --- WebP: lossy and lossless, with and without alpha.
    rgba = np.dstack([rgb, alpha.astype(np.uint8)])
    add("webp_lossy", "webp", lambda p: pil_save(p, c["cat"], "WEBP", quality=80))
    add("webp_lossy_q30_odd", "webp", lambda p: pil_save(p, c["cup"][:37, :53], "WEBP", quality=30))
    add("webp_lossy_alpha", "webp", lambda p: pil_save(p, rgba, "WEBP", quality=80))
    add("webp_lossless", "webp", lambda p: pil_save(p, c["cup"], "WEBP", lossless=True))
    add("webp_lossless_alpha", "webp", lambda p: pil_save(p, rgba, "WEBP", lossless=True))
    anim = [Image.fromarray(c["cat"]), Image.fromarray(np.ascontiguousarray(c["cat"][::-1]))]
    add("webp_animated", "webp", lambda p: anim[0].save(p, "WEBP", save_all=True, append_images=anim[1:], duration=100, quality=80), "first frame")
    add("webp_exif_orientation_6", "webp", lambda p: pil_save(p, c["small"], "WEBP", quality=90, exif=exif_orientation(6)))

    # --- TIFF: 8 and 16 bit, the usual compressions, tiles, planes, byte orders.
    add("tiff_rgb8", "tif", lambda p: pil_save(p, rgb, "TIFF"))
    add("tiff_rgb8_lzw", "tif", lambda p: pil_save(p, c["cup"], "TIFF", compression="tiff_lzw"))
    add("tiff_rgb8_deflate", "tif", lambda p: pil_save(p, c["astro"], "TIFF", compression="tiff_adobe_deflate"))
    add("tiff_rgb8_packbits", "tif", lambda p: pil_save(p, c["rocket"], "TIFF", compression="packbits"))
    add("tiff_gray8", "tif", lambda p: pil_save(p, g, "TIFF"))
    add("tiff_rgba8", "tif", lambda p: pil_save(p, rgba, "TIFF"))
    add("tiff_gray16", "tif", lambda p: tifffile.imwrite(p, g.astype(np.uint16) * 257 + 91), "16-bit")
    add("tiff_rgb16", "tif", lambda p: tifffile.imwrite(p, rgb16, photometric="rgb"), "16-bit")
    add("tiff_rgb16_bigendian", "tif", lambda p: tifffile.imwrite(p, rgb16, photometric="rgb", byteorder=">"), "16-bit")
    add("tiff_rgb8_tiled", "tif", lambda p: tifffile.imwrite(p, c["cup"], photometric="rgb", tile=(32, 32)))
    add("tiff_rgb8_planar", "tif", lambda p: tifffile.imwrite(p, np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate"))
    add("tiff_jpeg", "tif", lambda p: pil_save(p, rgb, "TIFF", compression="jpeg", quality=80))
    add("tiff_jpeg_strips_ycbcr", "tif", lambda p: tifffile.imwrite(p, c["cup"], photometric="ycbcr", compression="jpeg", compressionargs={"level": 85}, rowsperstrip=32))
    add("tiff_jpeg_tiles", "tif", lambda p: tifffile.imwrite(p, c["cup"], photometric="rgb", compression="jpeg", compressionargs={"level": 85}, tile=(64, 64)))
    add("tiff_jpeg_gray", "tif", lambda p: tifffile.imwrite(p, g, compression="jpeg", compressionargs={"level": 85}, rowsperstrip=40))
    add("tiff_gray8_miniswhite", "tif", lambda p: tifffile.imwrite(p, g, photometric="miniswhite"))
    add("tiff_bilevel", "tif", lambda p: tifffile.imwrite(p, g > 128))
    add("tiff_bilevel_group4", "tif", lambda p: pil_save(p, g, "TIFF", mode="1", compression="group4"))
    add("tiff_gray8_lzw_predictor", "tif", lambda p: pil_save(p, g, "TIFF", compression="tiff_lzw", tiffinfo={317: 2}))
    add("tiff_cmyk8", "tif", lambda p: pil_save(p, rgb, "TIFF", mode="CMYK"))
    add("tiff_orientation_6", "tif", lambda p: tifffile.imwrite(p, c["small"], photometric="rgb", extratags=[(274, "H", 1, 6, False)]))

    # --- BMP and GIF.
    add("bmp_rgb24", "bmp", lambda p: pil_save(p, rgb, "BMP"))
    add("bmp_palette8", "bmp", lambda p: quant.save(p, "BMP"))
    add("bmp_1bit", "bmp", lambda p: pil_save(p, g, "BMP", mode="1"))
    add("bmp_rgba32", "bmp", lambda p: pil_save(p, rgba, "BMP"))
    add("bmp_opencv", "bmp", lambda p: cv2_save(p, c["astro"], []))
    add("gif", "gif", lambda p: quant.save(p, "GIF"))
    add("gif_transparent", "gif", lambda p: quant.save(p, "GIF", transparency=int(idx[0, 0])))
    frames = [Image.fromarray(c["cup"]).quantize(64), Image.fromarray(np.ascontiguousarray(c["cup"][::-1])).quantize(64)]
    add("gif_animated", "gif", lambda p: frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0), "first frame")
    add("gif_gray", "gif", lambda p: pil_save(p, g, "GIF", mode="L"))
    return cases


def make_error_files(d, c):
    """Files neither loader should accept (or that Pillow refuses); returns [(name, file name, note)]."""
    good = io.BytesIO()
    Image.fromarray(c["cat"]).save(good, "JPEG", quality=75)
    jpg = good.getvalue()
    png = io.BytesIO()
    Image.fromarray(c["cat"]).save(png, "PNG")
    png = png.getvalue()
    webp = io.BytesIO()
    Image.fromarray(c["cat"]).save(webp, "WEBP", quality=80)
    webp = webp.getvalue()
    out = []

    def add(name, data, note):
        (d / name).write_bytes(data)
        out.append((name.rsplit(".", 1)[0], name, note))

    add("err_jpeg_truncated.jpg", jpg[: len(jpg) * 6 // 10], "JPEG cut at 60 % of its bytes")
    add("err_jpeg_corrupt_header.jpg", jpg[:20] + b"\x00" * 200 + jpg[220:], "JPEG with its tables overwritten by zeros")
    add("err_png_truncated.png", png[: len(png) // 2], "PNG cut in half")
    add("err_png_bad_crc.png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], "PNG with a corrupt IDAT byte")
    add("err_webp_truncated.webp", webp[: len(webp) // 2], "WebP cut in half")
    add("err_not_an_image.jpg", b"this is a text file, not a JPEG\n", "text with a .jpg name")
    add("err_empty.png", b"", "empty file")
    twelve = imagecodecs.jpeg8_encode((c["camera"].astype(np.uint16) * 16), level=90, bitspersample=12)
    add("err_jpeg_12bit.jpg", twelve, "12-bit JPEG")
    return out


def pillow_read(path, transpose=True):
    try:
        im = Image.open(path)
        if transpose:
            im = ImageOps.exif_transpose(im)
        return np.array(im.convert("RGB")), im.mode, None
    except Exception as e:  # noqa: BLE001 - any refusal is the expected outcome for error files
        return None, None, f"{type(e).__name__}: {e}"


def cv2_read(path, transpose=True):
    flags = cv2.IMREAD_COLOR if transpose else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        a = cv2.imread(str(path), flags)
    except cv2.error as e:
        return None, str(e).strip().splitlines()[-1]
    if a is None:
        return None, "cv2.imread returned None"
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB), None


def differ(a, b):
    if a is None or b is None:
        return None
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    return int((a != b).sum())


def sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a, np.uint8).tobytes()).hexdigest()


def save_expected(d, name, arr):
    f = f"{name}.png"
    Image.fromarray(arr).save(d / f, "PNG", optimize=True)
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "crates/segment-anything/tests/fixtures/decode")
    args = ap.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    (out / "expected").mkdir()
    c = crops()
    records = []
    for name, f, note in make_files(out / "files", c):
        path = out / "files" / f
        pil, mode, perr = pillow_read(path)
        assert perr is None, (f, perr)
        pil_raw, _, _ = pillow_read(path, transpose=False)
        cv, cerr = cv2_read(path)
        cv_raw, _ = cv2_read(path, transpose=False)
        sixteen = "16-bit" in note
        reference = "opencv" if sixteen else "pillow"
        expected = cv if sixteen else pil
        expected_raw = cv_raw if sixteen else pil_raw
        other = pil if sixteen else cv
        rec = {
            "name": name,
            "file": f"files/{f}",
            "format": Image.open(path).format,
            "pillow_mode": mode,
            "size": [int(expected.shape[1]), int(expected.shape[0])],
            "reference": reference,
            "expected": f"expected/{save_expected(out / 'expected', name, expected)}",
            "expected_sha256": sha256(expected),
            "opencv_error": cerr,
            "pillow_vs_opencv_differing_bytes": differ(other, expected),
            "note": note,
        }
        if f.endswith(".jpg"):
            im = Image.open(path)
            rec["jpeg_sampling"] = JpegImagePlugin.get_sampling(im) if im.mode != "L" else None
            rec["jpeg_progressive"] = bool(im.info.get("progressive", False))
        if not np.array_equal(expected_raw, expected):
            rec["expected_without_exif"] = f"expected/{save_expected(out / 'expected', name + '_no_exif', expected_raw)}"
            rec["pillow_vs_opencv_differing_bytes_without_exif"] = differ(pil_raw if sixteen else cv_raw, expected_raw)
        records.append(rec)
    errors = []
    for name, f, note in make_error_files(out / "files", c):
        path = out / "files" / f
        pil, _, perr = pillow_read(path)
        cv, cerr = cv2_read(path)
        errors.append(
            {
                "name": name,
                "file": f"files/{f}",
                "note": note,
                "pillow": perr if pil is None else "decoded",
                "opencv": cerr if cv is None else "decoded",
            }
        )
    # The committed photos themselves, end to end (checked by hash: too large to store twice).
    photos = []
    for f in ["rocket.jpg", "coffee.jpg", "chelsea.png", "camera.png"]:
        path = IMAGES / f
        if not path.exists():
            continue
        pil, mode, _ = pillow_read(path)
        cv, _ = cv2_read(path)
        photos.append(
            {
                "file": f"assets/images/{f}",
                "pillow_mode": mode,
                "size": [int(pil.shape[1]), int(pil.shape[0])],
                "expected_sha256": sha256(pil),
                # Pillow's convert("L"), what a 1-channel model is given.
                "expected_gray_sha256": sha256(np.array(ImageOps.exif_transpose(Image.open(path)).convert("L"))),
                "pillow_vs_opencv_differing_bytes": differ(cv, pil),
            }
        )
    meta = {
        "generator": "tools/reference/gen_decode_fixtures.py",
        "versions": {
            "pillow": Image.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "imagecodecs": imagecodecs.__version__,
            "tifffile": tifffile.__version__,
            "libjpeg-turbo (Pillow)": features.version("libjpeg_turbo"),
            "libwebp (Pillow)": features.version("webp"),
        },
        "cases": records,
        "errors": errors,
        "photos": photos,
    }
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(records)} files, {len(errors)} error files, {len(photos)} photos; {total} bytes in {out}")
    for r in records:
        dis = r["pillow_vs_opencv_differing_bytes"]
        if dis:
            print(f"  {r['name']}: Pillow and OpenCV differ in {dis} bytes ({r['reference']} is the reference)")
    for e in errors:
        print(f"  {e['name']}: Pillow: {e['pillow']} | OpenCV: {e['opencv']}")
    assert total < 4_500_000, f"decode fixtures too large: {total} bytes"


if __name__ == "__main__":
    main()
