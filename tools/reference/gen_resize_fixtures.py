#!/usr/bin/env python3
"""Generate the resize parity fixtures under crates/segment-anything/tests/fixtures/resize/ (not run in CI).

Every expected value comes from the reference implementations themselves: Pillow's `Image.resize(..., BILINEAR)`
(through the official `ResizeLongestSide.apply_image` for the photos), PyTorch's `F.interpolate(mode="bilinear",
align_corners=False)`, the official `Sam.postprocess_masks` and `ResizeLongestSide.get_preprocess_shape /
apply_coords / apply_boxes`. Deterministic (seeded numpy Generator): re-running gives byte-identical files.

Usage:  python tools/reference/gen_resize_fixtures.py [--out DIR] [--seed 0]

Files
-----
cases.json          the case list (below), sizes always (h, w).
tensors.safetensors every array the cases refer to, by name.

Conventions
-----------
* u8 images are interleaved (H, W, C). A Pillow case's input is either a tensor `pillow/<name>/input`
  (seeded random bytes) or a crop of a photo in assets/images (`"photo"`, `"crop": [y0, x0]`), decoded from PNG.
  Pillow modes: 1 channel "L", 2 "La", 3 "RGB", 4 "RGBa" (every channel filtered independently; "LA"/"RGBA"
  would be premultiplied by Pillow first, so they are not used).
* Pillow outputs of at most FULL_LIMIT bytes are stored in full (`pillow/<name>/expected`); larger ones as the
  SHA-256 of the output bytes (`"sha256"`) plus `pillow/<name>/row_sha` (out_h × 8 bytes: the first 8 bytes of
  the SHA-256 of each output row) so that a failing test can say how many rows differ.
* f32 inputs (planes, H, W) are stored as u8 codes `<case>/codes`; the value is, in f32 arithmetic,
  `(code - 128) / 16.7` (both numpy and Rust round each IEEE operation identically).
* f32 outputs are stored as samples: `<case>/row_sel` (n, 2) int64 pairs (plane, row) with
  `<case>/rows` (n, out_w) float32, and `<case>/col_sel` (n, 2) pairs (plane, col) with `<case>/cols`
  (n, out_h) float32; plus, in cases.json, `sum` and `sum_sq` (float64) over the whole output. Outputs of at most
  FULL_LIMIT_F32 values are stored in full as `<case>/expected`.
* resized_size: rows [h, w, long_side, new_h, new_w] of the official get_preprocess_shape.
* interp `mode`: "bilinear" (F.interpolate on (1, P, H, W)) or "linear" (F.interpolate(mode="linear") on
  (1, P, W) with H = 1, as the official get_rel_pos does).
* `torch_kernel`: "generic" (upsample_generic_Nd_kernel_impl, FMA-contracted; our arithmetic, bit-exact) or
  "channels_last" (the vectorised kernel PyTorch picks for bilinear when out_h + out_w <= 128: it rounds the
  source index differently, so values differ by up to ~1e-5).
* coords: `coords/<name>/points` (N, 2) and `coords/<name>/boxes` (M, 4) float64 inputs in original pixels;
  `.../points_out`, `.../boxes_out` float64 = official apply_coords / apply_boxes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import types

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import save_file
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO_ROOT, "crates", "segment-anything", "tests", "fixtures", "resize")
IMAGES = os.path.join(REPO_ROOT, "assets", "images")
BUDGET_BYTES = 1_500_000
FULL_LIMIT = 32_768  # Pillow outputs of at most this many bytes are stored in full
FULL_LIMIT_F32 = 4_096  # f32 outputs of at most this many values are stored in full
MODES = {1: "L", 2: "La", 3: "RGB", 4: "RGBa"}
CODE_DIVISOR = np.float32(16.7)

# With one thread and 3 channels PyTorch's CPU bilinear kernel switches to its vectorised channels-last path
# (`upsample_bilinear2d_kernel_impl_float`), which rounds differently; two threads keep the generic kernel, the
# one a normal multi-threaded run uses (its result does not depend on the thread count).
torch.set_num_threads(2)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def row_sha(out: np.ndarray) -> np.ndarray:
    rows = out.reshape(out.shape[0], -1)
    return np.stack([np.frombuffer(hashlib.sha256(r.tobytes()).digest()[:8], dtype=np.uint8) for r in rows])


def load_photo(name: str) -> np.ndarray:
    im = Image.open(os.path.join(IMAGES, name))
    im.load()
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def pillow_resize(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Image.resize((out_w, out_h), BILINEAR) of an (H, W, C) u8 array, mode chosen from C, no premultiplication."""
    h, w, c = arr.shape
    im = Image.frombytes(MODES[c], (w, h), np.ascontiguousarray(arr).tobytes())
    out = im.resize((out_w, out_h), Image.BILINEAR)
    assert out.mode == MODES[c]
    return np.frombuffer(out.tobytes(), dtype=np.uint8).reshape(out_h, out_w, c)


def codes_to_f32(codes: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) - np.float32(128)) / CODE_DIVISOR


def random_codes(rng, shape) -> np.ndarray:
    return np.clip(np.rint(rng.normal(128, 45, size=shape)), 0, 255).astype(np.uint8)


def store_expected(tensors, entry, key, out: np.ndarray, rng, nsel: int) -> None:
    """Full or sampled storage of a (P, H, W) float32 output (see module docstring)."""
    out = np.ascontiguousarray(out, dtype=np.float32)
    p, h, w = out.shape
    entry["sum"] = float(out.astype(np.float64).sum())
    entry["sum_sq"] = float((out.astype(np.float64) ** 2).sum())
    if out.size <= FULL_LIMIT_F32:
        tensors[f"{key}/expected"] = out
        entry["stored"] = "full"
        return
    entry["stored"] = "samples"

    def pick(n_lines: int):
        # Always the first two and last two lines (edge clamping), the rest random; random planes.
        edges = {v for v in (0, 1, n_lines - 2, n_lines - 1) if 0 <= v < n_lines}
        lines = sorted(edges | set(rng.choice(n_lines, size=min(nsel, n_lines), replace=False).tolist()))
        return np.array([[int(rng.integers(p)), ln] for ln in lines], dtype=np.int64)

    rs = pick(h)
    cs = pick(w)
    tensors[f"{key}/row_sel"] = rs
    tensors[f"{key}/rows"] = np.stack([out[a, b, :] for a, b in rs])
    tensors[f"{key}/col_sel"] = cs
    tensors[f"{key}/cols"] = np.stack([out[a, :, b] for a, b in cs])


def pillow_cases(rng, tensors, cases):
    def add(name, out_hw, *, arr=None, photo=None, crop=None, size=None):
        if arr is None:
            full = load_photo(photo)
            y0, x0 = crop
            arr = full[y0:y0 + size[0], x0:x0 + size[1]]
            assert arr.shape[:2] == tuple(size)
        h, w, c = arr.shape
        out = pillow_resize(arr, *out_hw)
        entry = {"name": name, "in_size": [h, w], "channels": c, "mode": MODES[c], "out_size": list(out_hw)}
        if photo is None:
            tensors[f"pillow/{name}/input"] = np.ascontiguousarray(arr)
            entry["input"] = f"pillow/{name}/input"
        else:
            entry["photo"] = photo
            entry["crop"] = list(crop)
        if out.nbytes <= FULL_LIMIT:
            tensors[f"pillow/{name}/expected"] = out
            entry["expected"] = f"pillow/{name}/expected"
        else:
            entry["sha256"] = sha256(out.tobytes())
            tensors[f"pillow/{name}/row_sha"] = row_sha(out)
            entry["row_sha"] = f"pillow/{name}/row_sha"
        cases.append(entry)

    u8 = lambda *shape: rng.integers(0, 256, size=shape, dtype=np.uint8)  # noqa: E731
    R = ResizeLongestSide.get_preprocess_shape
    # Upscaling from tiny images (filterscale 1, out-of-range taps dropped).
    add("up_7x5_rgb", (1024, 731), arr=u8(7, 5, 3))
    assert R(7, 5, 1024) == (1024, 731)
    add("up_1x1_rgb", (1024, 1024), arr=u8(1, 1, 3))
    add("up_2x3_l", (61, 95), arr=u8(2, 3, 1))
    add("up_13x17_rgba", (40, 52), arr=u8(13, 17, 4))
    add("up_45x37_la", (100, 81), arr=u8(45, 37, 2))
    # Extreme aspect ratios at the official long side (vertical pass first for the tall one).
    add("tall_3000x20_l", R(3000, 20, 1024), arr=u8(3000, 20, 1))
    add("wide_20x3000_l", R(20, 3000, 1024), arr=u8(20, 3000, 1))
    assert R(3000, 20, 1024) == (1024, 7)
    # One pixel wide / high.
    add("col_500x1_rgb", R(500, 1, 1024), arr=u8(500, 1, 3))
    add("row_1x500_l", R(1, 500, 1024), arr=u8(1, 500, 1))
    add("col_2000x1_l", R(2000, 1, 1024), arr=u8(2000, 1, 1))
    add("row_1x7_rgb_to_1x1", (1, 1), arr=u8(1, 7, 3))
    # Odd sizes.
    add("odd_333x517_coffee", R(333, 517, 1024), photo="coffee.png", crop=(17, 41), size=(333, 517))
    add("odd_33x51_rgb", (67, 103), arr=u8(33, 51, 3))
    # Downscaling by non-integer factors (antialiased: support = in/out).
    add("down_61x89_rgb", (41, 57), arr=u8(61, 89, 3))
    add("down_64x48_rgba", (29, 23), arr=u8(64, 48, 4))
    add("down_camera_250_l", (99, 99), photo="camera.png", crop=(100, 150), size=(250, 250))
    add("down_coffee_rgb", (167, 251), photo="coffee.png", crop=(0, 0), size=(400, 600))
    add("down_chelsea_strong_rgb", (7, 11), photo="chelsea.png", crop=(0, 0), size=(300, 451))
    add("down_1000x3_rgb", (37, 2), arr=u8(1000, 3, 3))
    add("tall_1500x9_rgb", R(1500, 9, 1024), arr=u8(1500, 9, 3))
    # Pass order and skipped passes.
    add("vfirst_coffee_400x300", (100, 290), photo="coffee.png", crop=(0, 150), size=(400, 300))
    add("vfirst_mixed_200x40_rgb", (70, 120), arr=u8(200, 40, 3))
    add("hfirst_mixed_50x300_l", (120, 70), arr=u8(50, 300, 1))
    add("only_h_64x80_l", (64, 120), arr=u8(64, 80, 1))
    add("only_v_64x80_rgb", (100, 80), arr=u8(64, 80, 3))
    add("only_h_down_64x80_la", (64, 33), arr=u8(64, 80, 2))
    add("identity_33x44_l", (33, 44), arr=u8(33, 44, 1))
    add("one_to_one_1x1_rgb", (1, 1), arr=u8(1, 1, 3))


def photo_cases(tensors, photos):
    transform = ResizeLongestSide(1024)
    for name in sorted(f for f in os.listdir(IMAGES) if f.endswith(".png")):
        arr = load_photo(name)
        h, w, c = arr.shape
        # The official pipeline (torchvision resize of a PIL image), 2-D for grayscale as to_pil_image expects.
        official = transform.apply_image(arr[..., 0] if c == 1 else arr)
        official = official.reshape(official.shape[0], official.shape[1], c)
        direct = pillow_resize(arr, *ResizeLongestSide.get_preprocess_shape(h, w, 1024))
        assert np.array_equal(official, direct), name
        photos.append({
            "photo": name,
            "in_size": [h, w],
            "channels": c,
            "input_sha256": sha256(np.ascontiguousarray(arr).tobytes()),
            "out_size": list(official.shape[:2]),
            "sha256": sha256(official.tobytes()),
            "row_sha": f"photo/{name}/row_sha",
        })
        tensors[f"photo/{name}/row_sha"] = row_sha(official)


def torch_kernel(out_h: int, out_w: int) -> str:
    """Which CPU kernel F.interpolate(bilinear) runs for a contiguous NCHW float32 input with >= 2 threads."""
    return "channels_last" if out_h + out_w <= 128 else "generic"


def interp_cases(rng, tensors, cases):
    specs = [
        ("up_64_256", 2, (64, 64), (256, 256)),
        ("up_256_1024", 1, (256, 256), (1024, 1024)),
        ("down_1024x96_300x29", 1, (1024, 96), (300, 29)),
        ("up_nonsquare_45x67_256x129", 3, (45, 67), (256, 129)),
        ("mixed_100x300_250x110", 1, (100, 300), (250, 110)),
        ("same_h_40x30_40x200", 1, (40, 30), (40, 200)),
        ("same_w_90x40_300x40", 1, (90, 40), (300, 40)),
        ("from_1_1x1_100x60", 1, (1, 1), (100, 60)),
        ("same_h_40x30_40x77", 2, (40, 30), (40, 77)),
        ("same_w_30x40_9x40", 2, (30, 40), (9, 40)),
        ("down_to_1_17x23_1x1", 2, (17, 23), (1, 1)),
        ("from_1_1x1_5x4", 2, (1, 1), (5, 4)),
        ("bilinear_1x27_1x127", 4, (1, 27), (1, 127)),
        # get_rel_pos: F.interpolate(rel_pos (1, C, L), size=max_rel_dist, mode="linear") (always the generic kernel).
        ("linear_1x27_1x127", 4, (1, 27), (1, 127)),
        ("linear_1x14_1x27", 3, (1, 14), (1, 27)),
    ]
    for name, planes, (ih, iw), (oh, ow) in specs:
        key = f"interp/{name}"
        codes = random_codes(rng, (planes, ih, iw))
        x = torch.from_numpy(codes_to_f32(codes)).unsqueeze(0)
        if name.startswith("linear_"):
            out = F.interpolate(x[:, :, 0, :], ow, mode="linear", align_corners=False)[:, :, None, :][0].numpy()
            kernel = "generic"
        else:
            out = F.interpolate(x, (oh, ow), mode="bilinear", align_corners=False)[0].numpy()
            kernel = torch_kernel(oh, ow)
        entry = {"name": name, "planes": planes, "in_size": [ih, iw], "out_size": [oh, ow], "codes": f"{key}/codes",
                 "mode": "linear" if name.startswith("linear_") else "bilinear", "torch_kernel": kernel}
        tensors[f"{key}/codes"] = codes
        store_expected(tensors, entry, key, out, rng, nsel=6)
        cases.append(entry)


def postprocess_cases(rng, tensors, cases):
    # One set of low-res logits (3 masks, 256×256) shared by every original size.
    codes = random_codes(rng, (3, 256, 256))
    tensors["postprocess/codes"] = codes
    low = torch.from_numpy(codes_to_f32(codes)).unsqueeze(0)
    dummy = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    for original in [(300, 451), (512, 512), (427, 640), (1024, 1024), (1365, 2048), (2000, 37)]:
        resized = ResizeLongestSide.get_preprocess_shape(*original, 1024)
        out = Sam.postprocess_masks(dummy, low, resized, original)[0].numpy()
        assert out.shape == (3, *original)
        key = f"postprocess/{original[0]}x{original[1]}"
        entry = {"name": key, "planes": 3, "mask_size": [256, 256], "input_size": [1024, 1024],
                 "resized_size": list(resized), "original_size": list(original), "codes": "postprocess/codes",
                 "positives": int((out > 0).sum()), "torch_kernel": torch_kernel(*original)}
        store_expected(tensors, entry, key, out, rng, nsel=2)
        cases.append(entry)


def size_cases(rng, sizes):
    fixed = [(1500, 2250), (375, 500), (300, 451), (400, 600), (512, 512), (427, 640), (3000, 20), (20, 3000),
             (1, 1), (1, 5000), (683, 1024), (1024, 1024), (2048, 1365), (333, 517), (7, 5), (1365, 2048)]
    rand = [tuple(int(v) for v in rng.integers(1, 6000, size=2)) for _ in range(200)]
    for h, w in fixed + rand:
        for long_side in (1024, 256):
            sizes.append([h, w, long_side, *ResizeLongestSide.get_preprocess_shape(h, w, long_side)])


def coord_cases(rng, tensors, coords):
    transform = ResizeLongestSide(1024)
    for h, w in [(1500, 2250), (375, 500), (300, 451), (427, 640), (3000, 20), (333, 517), (1024, 1024), (7, 5)]:
        key = f"coords/{h}x{w}"
        points = rng.uniform(-5, 1.02, size=(64, 2)) * np.array([w, h]) + rng.integers(0, 3, size=(64, 2)) * 0.5
        points[:4] = [[0, 0], [w, h], [w - 1, h - 1], [0.5, 0.5]]
        boxes = np.sort(rng.uniform(0, 1, size=(16, 2, 2)) * np.array([w, h]), axis=1).reshape(16, 4)
        tensors[f"{key}/points"] = points
        tensors[f"{key}/boxes"] = boxes
        tensors[f"{key}/points_out"] = transform.apply_coords(points, (h, w))
        tensors[f"{key}/boxes_out"] = transform.apply_boxes(boxes, (h, w))
        coords.append({"original_size": [h, w], "key": key})


def dump_json(doc: dict) -> str:
    """JSON with one line per list item (compact and diff-friendly)."""
    parts = []
    for key, value in doc.items():
        if isinstance(value, list):
            items = ",\n".join("  " + json.dumps(v) for v in value)
            parts.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tensors: dict[str, np.ndarray] = {}
    doc = {"seed": args.seed, "code_divisor": float(CODE_DIVISOR), "pillow": [], "photos": [], "interp": [],
           "postprocess": [], "resized_size": [], "coords": []}
    pillow_cases(rng, tensors, doc["pillow"])
    photo_cases(tensors, doc["photos"])
    interp_cases(rng, tensors, doc["interp"])
    postprocess_cases(rng, tensors, doc["postprocess"])
    size_cases(rng, doc["resized_size"])
    coord_cases(rng, tensors, doc["coords"])

    os.makedirs(args.out, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(args.out, "tensors.safetensors"))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        f.write(dump_json(doc))
    for name in ("tensors.safetensors", "cases.json"):
        os.chmod(os.path.join(args.out, name), 0o644)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {len(tensors)} tensors to {args.out}: {total} bytes")
    if total > BUDGET_BYTES:
        raise SystemExit(f"fixtures are {total} bytes, over the {BUDGET_BYTES} budget")


if __name__ == "__main__":
    main()
