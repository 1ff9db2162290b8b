#!/usr/bin/env python3
"""Generate the automatic-mask-generator parity fixtures under crates/segment-anything/tests/fixtures/amg/
(not run in CI).

Every expected value comes from Meta's official `segment_anything` package (`SamAutomaticMaskGenerator` and
`segment_anything.utils.amg`), torchvision (`batched_nms`, `torch.sort`), OpenCV (`connectedComponentsWithStats`
through the official `remove_small_regions`) and pycocotools (COCO RLE strings) — never from our own code.

Files:
  cases.json  the official generator run with the tiny random-weight model (../model/tiny/model.pth, reused) on
              the photos chelsea.png and coffee.png, for several parameter sets (loosened thresholds, crop layers,
              small-region removal, defaults); every record with its COCO RLE string.
  utils.json  unit-level expectations: build_point_grid, build_all_layer_point_grids, generate_crop_boxes,
              calculate_stability_score, batched_mask_to_box, batched_nms (with ties, and above 1000 boxes),
              torch.sort(descending=True) tie order, remove_small_regions, mask_to_rle_pytorch + COCO strings.

Floats that must match bit for bit are stored as their IEEE bits (`*_bits`, u64 for float64, u32 for float32)
next to the value.

Needs: torch, torchvision, segment_anything, numpy, Pillow, pycocotools, opencv-python-headless.
Usage:  python tools/reference/gen_amg_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops.boxes import batched_nms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sam_reference as R  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils import amg  # noqa: E402

DEFAULT_OUT = os.path.join(R.REPO_ROOT, "crates", "segment-anything", "tests", "fixtures", "amg")
TINY = os.path.join(R.REPO_ROOT, "crates", "segment-anything", "tests", "fixtures", "model", "tiny")
BUDGET_BYTES = 1_900_000

# Thresholds off and NMS that never suppresses (IoU > 1.0 is impossible): every mask of the grid is kept, so the
# records test the filters' arithmetic, the stability scores, the masks and the order (descending predicted IoU,
# torch's unstable sort on ties). The tiny random model's masks are noisy blobs whose boxes all span the whole
# image (or crop), so any NMS threshold below 1 keeps a single mask per crop; those cases are covered too.
LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)

# name, image, parameters (output_mode is always coco_rle here; the other modes are encodings of the same RLEs).
CASES = [
    ("loose", "chelsea", dict(points_per_side=8, **LOOSE)),
    ("loose", "coffee", dict(points_per_side=8, **LOOSE)),
    ("filters_batches", "chelsea", dict(points_per_side=7, points_per_batch=10, pred_iou_thresh=0.2,
                                        stability_score_thresh=0.1, box_nms_thresh=1.0)),
    ("filters_offset", "coffee", dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.15,
                                      stability_score_offset=0.5, box_nms_thresh=1.0)),
    ("nms", "chelsea", dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            box_nms_thresh=0.95)),
    ("crops", "chelsea", dict(points_per_side=6, crop_n_layers=1, crop_nms_thresh=1.0, **LOOSE)),
    ("crops_nms", "coffee", dict(points_per_side=6, crop_n_layers=1, crop_nms_thresh=0.9, **LOOSE)),
    ("crops2", "coffee", dict(points_per_side=8, crop_n_layers=2, crop_n_points_downscale_factor=2,
                              crop_overlap_ratio=0.25, pred_iou_thresh=0.3, stability_score_thresh=0.1,
                              box_nms_thresh=1.0, crop_nms_thresh=1.0)),
    ("small_regions", "chelsea", dict(points_per_side=6, min_mask_region_area=100, **LOOSE)),
    ("small_regions", "coffee", dict(points_per_side=5, min_mask_region_area=400, crop_n_layers=1,
                                     crop_nms_thresh=1.0, **LOOSE)),
    ("defaults", "chelsea", dict(points_per_side=8)),
    # With crop layers and no mask in any crop, the official generator crashes (IndexError in box_area of an
    # empty float tensor); ours returns no record.
    ("defaults_crops", "chelsea", dict(points_per_side=4, crop_n_layers=1)),
    # From a 4:2:0 JPEG file (decoded by Pillow, as the official scripts' loaders decode it).
    ("loose", "coffee_jpeg", dict(points_per_side=8, **LOOSE)),
    ("crops", "coffee_jpeg", dict(points_per_side=6, crop_n_layers=1, crop_nms_thresh=1.0, **LOOSE)),
    ("filters_offset", "coffee_jpeg", dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.15,
                                           stability_score_offset=0.5, box_nms_thresh=1.0)),
    ("small_regions", "coffee_jpeg", dict(points_per_side=6, min_mask_region_area=100, **LOOSE)),
]

# Full COCO strings are stored for the first FULL_MASKS records of each case (a 451×300 mask of the tiny model
# takes ~10 KB); every record has the SHA-256 of its string (16 hex digits) and SAMPLES mask pixels.
FULL_MASKS = 3
SAMPLES = 1024

PHOTOS = {"chelsea": "assets/images/chelsea.png", "coffee": "assets/images/coffee.png",
          "coffee_jpeg": "assets/images/coffee.jpg"}


def f64_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def jfloat(x: float):
    """A JSON-safe float (NaN → None)."""
    return None if math.isnan(x) else x


def load_tiny():
    with open(os.path.join(TINY, "config.json")) as f:
        cfg = json.load(f)
    model = R.build_official_sam(cfg)
    sd = torch.load(os.path.join(TINY, "model.pth"), map_location="cpu")
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model


def sample_bits(rle, n=SAMPLES) -> str:
    """Mask pixels at row-major indices (2k + 1) * h * w // (2n), packed MSB first, as hex."""
    m = amg.rle_to_mask(rle).reshape(-1)
    hw = m.size
    idx = [(2 * k + 1) * hw // (2 * n) for k in range(n)]
    return np.packbits(m[idx]).tobytes().hex()


def run_cases(model):
    out = []
    for name, image, params in CASES:
        img = R.load_rgb(PHOTOS[image])
        gen = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **params)
        t = time.perf_counter()
        try:
            recs = gen.generate(img)
            error = None
        except Exception as e:  # noqa: BLE001 - the official bug is part of the fixture
            recs, error = [], f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t
        records = []
        for i, r in enumerate(recs):
            rle = r["segmentation"]
            counts = amg.coco_encode_rle(rle)["counts"]
            assert rle["size"] == list(img.shape[:2])
            records.append({
                "area": r["area"],
                "bbox": [int(v) for v in r["bbox"]],
                "predicted_iou": r["predicted_iou"],
                "predicted_iou_bits": f32_bits(r["predicted_iou"]),
                "stability_score": jfloat(r["stability_score"]),
                "stability_score_bits": f32_bits(r["stability_score"]),
                "point_coords": r["point_coords"][0],
                "point_coords_bits": [f64_bits(v) for v in r["point_coords"][0]],
                "crop_box": [int(v) for v in r["crop_box"]],
                "counts_sha256": hashlib.sha256(counts.encode()).hexdigest()[:16],
                "samples": sample_bits(rle),
                "counts": counts if i < FULL_MASKS else None,
            })
        float_bbox = bool(recs) and isinstance(recs[0]["bbox"][0], float)
        float_crop_box = bool(recs) and isinstance(recs[0]["crop_box"][0], float)
        print(f"{name}/{image}: {len(recs)} records in {dt:.2f}s (float bbox {float_bbox}, "
              f"float crop_box {float_crop_box}){' ERROR ' + error if error else ''}")
        out.append({
            "name": f"{name}/{image}",
            "image": PHOTOS[image],
            "size": list(img.shape[:2]),
            "params": params,
            "official_error": error,
            "float_bbox": float_bbox,
            "float_crop_box": float_crop_box,
            "seconds": round(dt, 2),
            "records": records,
        })
    return out


# ----------------------------------------------------------------------------------------------------- utils


def mask_rows(m: np.ndarray) -> list:
    return ["".join("1" if v else "0" for v in row) for row in m]


def blobby_mask(rng, h, w, density=0.4, cell=4):
    small = rng.random((max(1, h // cell), max(1, w // cell))) < density
    m = np.kron(small, np.ones((cell, cell), dtype=bool))[:h, :w]
    if m.shape != (h, w):
        m = np.pad(m, ((0, h - m.shape[0]), (0, w - m.shape[1])))
    noise = rng.random((h, w)) < 0.05
    return m ^ noise


def libstdcxx_heap_hits(values):
    """Count how often the introsort depth limit is hit for `values` (descending torch comparator); used to check
    that the adversarial sequence exercises the heapsort fallback."""
    n = len(values)
    v = list(range(n))

    def comp(a, b):
        x, y = values[a], values[b]
        return (x != x and y == y) or x > y

    hits = [0]

    def mm(res, a, b, c):
        if comp(v[a], v[b]):
            if comp(v[b], v[c]):
                v[res], v[b] = v[b], v[res]
            elif comp(v[a], v[c]):
                v[res], v[c] = v[c], v[res]
            else:
                v[res], v[a] = v[a], v[res]
        elif comp(v[a], v[c]):
            v[res], v[a] = v[a], v[res]
        elif comp(v[b], v[c]):
            v[res], v[c] = v[c], v[res]
        else:
            v[res], v[b] = v[b], v[res]

    def part(first, last, pivot):
        while True:
            while comp(v[first], v[pivot]):
                first += 1
            last -= 1
            while comp(v[pivot], v[last]):
                last -= 1
            if not first < last:
                return first
            v[first], v[last] = v[last], v[first]
            first += 1

    def loop(first, last, depth):
        while last - first > 16:
            if depth == 0:
                hits[0] += 1
                return
            depth -= 1
            mid = first + (last - first) // 2
            mm(first, first + 1, mid, last - 1)
            cut = part(first + 1, last, first)
            loop(cut, last, depth)
            last = cut

    loop(0, n, 2 * (n.bit_length() - 1))
    return hits[0]


def antiqsort(n):
    """McIlroy's adversary against torch.sort(descending=True): returns values that drive the introsort into its
    depth limit (gas items stay tied)."""
    gas = n
    val = [gas] * n
    state = {"nsolid": 0, "candidate": 0}

    def freeze(x):
        val[x] = state["nsolid"]
        state["nsolid"] += 1

    # Torch's comparator puts larger values first: run the adversary on negated values.
    def cmp_gt(x, y):
        if val[x] == gas and val[y] == gas:
            freeze(x if x == state["candidate"] else y)
        if val[x] == gas:
            state["candidate"] = x
        elif val[y] == gas:
            state["candidate"] = y
        return -val[x] > -val[y]

    # Drive the same algorithm as libstdc++ through the adversarial comparator.
    v = list(range(n))

    def comp(a, b):
        return cmp_gt(a, b)

    def mm(res, a, b, c):
        if comp(v[a], v[b]):
            if comp(v[b], v[c]):
                v[res], v[b] = v[b], v[res]
            elif comp(v[a], v[c]):
                v[res], v[c] = v[c], v[res]
            else:
                v[res], v[a] = v[a], v[res]
        elif comp(v[a], v[c]):
            v[res], v[a] = v[a], v[res]
        elif comp(v[b], v[c]):
            v[res], v[c] = v[c], v[res]
        else:
            v[res], v[b] = v[b], v[res]

    def part(first, last, pivot):
        while True:
            while comp(v[first], v[pivot]):
                first += 1
            last -= 1
            while comp(v[pivot], v[last]):
                last -= 1
            if not first < last:
                return first
            v[first], v[last] = v[last], v[first]
            first += 1

    def loop(first, last, depth):
        while last - first > 16:
            if depth == 0:
                return
            depth -= 1
            mid = first + (last - first) // 2
            mm(first, first + 1, mid, last - 1)
            cut = part(first + 1, last, first)
            loop(cut, last, depth)
            last = cut

    loop(0, n, 2 * (n.bit_length() - 1))
    return [float(-x) for x in val]


def utils_fixture():
    rng = np.random.default_rng(1234)
    out = {}

    # build_point_grid / build_all_layer_point_grids
    # The grid is the outer product of one linspace: store that 1-D axis (as bits) for every n, and the full grid for
    # small n to pin the point order.
    grids = []
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 10, 16, 31, 32, 33, 64, 100]:
        g = amg.build_point_grid(n)
        axis = g[:n, 0]
        assert np.array_equal(g[:, 0], np.tile(axis, n)) and np.array_equal(g[:, 1], np.repeat(axis, n))
        entry = {"n": n, "axis_bits": [f64_bits(v) for v in axis]}
        if n <= 5:
            entry["grid"] = g.tolist()
        grids.append(entry)
    out["point_grids"] = grids
    out["layer_grids"] = [
        {"n": n, "layers": l, "scale": s, "sizes": [len(g) for g in amg.build_all_layer_point_grids(n, l, s)]}
        for n, l, s in [(32, 0, 1), (32, 2, 2), (16, 3, 2), (10, 2, 3), (7, 1, 4), (64, 4, 2)]
    ]

    # generate_crop_boxes
    crops = []
    for size in [(300, 451), (400, 600), (1080, 1920), (480, 640), (100, 1000), (7, 5), (2, 2), (1500, 1500),
                 (1001, 1003)]:
        for layers in [0, 1, 2, 3]:
            for ratio in [512 / 1500, 0.0, 0.5, 1.0, 0.1234567]:
                boxes, idx = amg.generate_crop_boxes(size, layers, ratio)
                crops.append({"size": list(size), "layers": layers, "ratio": ratio,
                              "ratio_bits": f64_bits(ratio), "boxes": boxes, "layer_idxs": idx})
    out["crop_boxes"] = crops

    # calculate_stability_score
    stab = []
    for i in range(24):
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 24))
        logits = (rng.standard_normal((h, w)) * rng.choice([0.5, 1.0, 3.0])).astype(np.float32)
        # Put some values exactly on the thresholds.
        flat = logits.reshape(-1)
        for v in [1.0, -1.0, 0.0, 0.5, -0.5, 2.5, -2.5]:
            flat[rng.integers(0, flat.size)] = v
        if i == 0:
            logits[:] = -5.0  # empty union → NaN
        if i == 1:
            logits[:] = 5.0
        offset = float(rng.choice([1.0, 0.5, 0.0, 2.5]))
        s = amg.calculate_stability_score(torch.from_numpy(logits)[None], 0.0, offset)[0].item()
        stab.append({"h": h, "w": w, "logits_bits": [f32_bits(v) for v in logits.reshape(-1)],
                     "offset": offset, "score": jfloat(s), "score_bits": f32_bits(s)})
    out["stability"] = stab
    # int16 row-sum overflow: one row of `w` values, `a` of them 2.0 (> +1), `b` of them 0.5, the rest -2.0.
    wide = []
    for w, a, b in [(33000, 32768, 232), (40000, 100, 39900), (65536 + 10, 65536 + 5, 0)]:
        row = np.full((1, 1, w), -2.0, dtype=np.float32)
        row[..., :a] = 2.0
        row[..., a:a + b] = 0.5
        s = amg.calculate_stability_score(torch.from_numpy(row), 0.0, 1.0)[0].item()
        wide.append({"w": w, "a": a, "b": b, "score": jfloat(s), "score_bits": f32_bits(s)})
    out["stability_wide"] = wide

    # batched_mask_to_box
    boxes = []
    for i in range(30):
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        m = rng.random((h, w)) < rng.choice([0.0, 0.05, 0.3, 1.0])
        if i == 1:
            m[:] = False
            m[h // 2, w // 2] = True
        b = amg.batched_mask_to_box(torch.from_numpy(m)[None])[0].tolist()
        boxes.append({"h": h, "w": w, "rows": mask_rows(m), "box": [int(v) for v in b]})
    out["mask_boxes"] = boxes

    # torch.sort(descending=True) tie order
    sorts = []
    for n, k in [(17, 3), (40, 2), (100, 3), (257, 5), (1000, 4), (3000, 10), (3000, 1000000)]:
        vals = rng.integers(0, k, n).astype(np.float32)
        _, order = torch.from_numpy(vals).sort(descending=True)
        sorts.append({"values": vals.tolist(), "order": order.tolist()})
    for n in [100, 600, 2000]:
        vals = antiqsort(n)
        hits = libstdcxx_heap_hits(vals)
        _, order = torch.tensor(vals, dtype=torch.float32).sort(descending=True)
        print(f"antiqsort({n}): depth limit hit {hits} time(s)")
        sorts.append({"values": vals, "order": order.tolist(), "heap_hits": hits})
    out["sorts"] = sorts

    # batched_nms (all in category 0, as the generator calls it); groups share their boxes.
    nms_groups = []

    def nms_group(label, boxes_np, score_sets):
        b = torch.from_numpy(boxes_np.astype(np.float32))
        cases = []
        for scores_np, thresh in score_sets:
            s = torch.from_numpy(scores_np.astype(np.float32))
            keep = batched_nms(b, s, torch.zeros(len(b)), iou_threshold=thresh).tolist()
            cases.append({"score_bits": [f32_bits(v) for v in s.tolist()], "thresh": thresh, "keep": keep})
        nms_groups.append({"label": label, "boxes": b.tolist(), "cases": cases})

    for n, label in [(12, "small"), (60, "ties"), (300, "ties300")]:
        xy = rng.integers(0, 60, (n, 2))
        wh = rng.integers(0, 40, (n, 2))
        bx = np.concatenate([xy, xy + wh], axis=1)
        bx[: n // 6] = bx[n // 6: 2 * (n // 6)]  # duplicates
        sc = rng.choice([0.25, 0.5, 0.75], n)
        nms_group(label, bx, [(sc, t) for t in [0.0, 0.3, 0.5, 0.7, 0.95]])
    # Above 1000 boxes: torchvision's vanilla path (re-sorted kept indices); scores 1/area of a few crop sizes, and
    # the 0/1 scores of the small-region NMS.
    n = 1300
    xy = rng.integers(0, 400, (n, 2))
    wh = rng.integers(1, 120, (n, 2))
    bx = np.concatenate([xy, xy + wh], axis=1)
    areas = np.array([451 * 300, 260 * 176, 260 * 176, 150 * 100], dtype=np.int64)[rng.integers(0, 4, n)]
    sc = (1 / torch.from_numpy(areas)).numpy()
    sc01 = rng.choice([0.0, 1.0], n)
    nms_group("vanilla", bx, [(sc, 0.5), (sc, 0.7), (sc01, 0.7)])
    out["nms"] = nms_groups

    # remove_small_regions (cv2 connectedComponentsWithStats, 8-connectivity)
    regions = []
    crafted = np.zeros((12, 12), dtype=bool)
    crafted[0:2, 0:2] = True  # 4-px island at the corner
    crafted[1, 9] = True  # 1-px island
    crafted[4:9, 3:8] = True  # 5×5 block with a 1-px hole
    crafted[6, 5] = False
    crafted[10, 10] = crafted[11, 11] = True  # diagonal pair: one 8-connected island
    tie = np.zeros((6, 10), dtype=bool)
    tie[0, 5] = tie[0, 6] = True  # first in pixel raster order...
    tie[1, 0] = tie[1, 1] = True  # ...but first in OpenCV's 2×2 block order: kept on the size tie
    masks = [("crafted", crafted), ("tie", tie)]
    for i in range(16):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        masks.append((f"blobby{i}", blobby_mask(rng, h, w, density=float(rng.uniform(0.2, 0.7)),
                                                cell=int(rng.integers(2, 6)))))
    for label, m in masks:
        results = []
        for area in [1, 2, 5, 10, 30, 1000]:
            for mode in ["holes", "islands"]:
                new, changed = amg.remove_small_regions(m, area, mode)
                counts = amg.mask_to_rle_pytorch(torch.from_numpy(np.ascontiguousarray(new))[None])[0]["counts"]
                results.append({"area": area, "mode": mode, "changed": bool(changed), "expected_counts": counts})
        regions.append({"label": label, "rows": mask_rows(m), "results": results})
    out["regions"] = regions

    # mask_to_rle_pytorch + pycocotools strings
    rles = []
    specs = [(1, 1, 0), (1, 7, 0), (5, 1, 0), (3, 4, 0), (17, 23, 0), (64, 48, 0), (1, 1, 3), (2, 3, 4),
             (17, 23, 1), (64, 48, 1), (300, 451, 1), (64, 48, 2), (300, 451, 2),
             (1000, 1500, 2), (300, 451, 3), (1000, 1500, 4), (40, 30, 0), (33, 65, 1)]
    for h, w, kind in specs:
        if kind == 0:
            m = rng.random((h, w)) < 0.5
        elif kind == 1:
            m = blobby_mask(rng, h, w, cell=max(1, min(h, w) // 8))
        elif kind == 2:
            m = np.zeros((h, w), dtype=bool)
            m[h // 3: 2 * h // 3 + 1, w // 4: 3 * w // 4 + 1] = True
        elif kind == 3:
            m = np.ones((h, w), dtype=bool)
        else:
            m = np.zeros((h, w), dtype=bool)
        t = torch.from_numpy(m)[None]
        rle = amg.mask_to_rle_pytorch(t)[0]
        coco = amg.coco_encode_rle(rle)
        direct = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert direct["counts"].decode() == coco["counts"], "frPyObjects and encode disagree"
        area = amg.area_from_rle(rle)
        assert area == int(mask_utils.area(direct))
        bbox = mask_utils.toBbox(direct).tolist()
        rles.append({"size": [h, w], "counts": rle["counts"], "coco": coco["counts"], "area": area,
                     "coco_bbox": bbox})
    # Random count lists (large values, zeros) straight through frPyObjects.
    for i in range(40):
        m = int(rng.integers(1, 12))
        counts = [int(v) for v in rng.choice([0, 1, 31, 32, 33, 1000, 65536, 2 ** 20 + 7, 2 ** 27 - 1], m)]
        total = sum(counts)
        if total == 0:
            counts.append(1)
            total = 1
        coco = mask_utils.frPyObjects({"size": [1, total], "counts": counts}, 1, total)
        rles.append({"size": [1, total], "counts": counts, "coco": coco["counts"].decode(), "area": None,
                     "coco_bbox": None})
    out["rles"] = rles
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--utils-only", action="store_true", help="rewrite utils.json only (keep cases.json)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)

    if not args.utils_only:
        model = load_tiny()
        cases = run_cases(model)
        doc = {"model": "../model/tiny", "cases": cases}
        with open(os.path.join(args.out, "cases.json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
    utils = utils_fixture()
    with open(os.path.join(args.out, "utils.json"), "w") as f:
        json.dump(utils, f, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out}: {total:,} bytes")
    if total > BUDGET_BYTES:
        raise SystemExit(f"fixtures are {total:,} bytes, over the {BUDGET_BYTES:,} budget")


if __name__ == "__main__":
    main()
