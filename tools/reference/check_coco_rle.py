#!/usr/bin/env python3
"""Check a `sam auto --output-mode coco_rle` JSON file with pycocotools (not run in CI; the sam-cli tests run it
when pycocotools is installed).

For every record: the keys and their order are the official ones; `segmentation` is a COCO RLE of the image size
that `pycocotools.mask.decode` accepts; `area` equals the decoded pixel count and `pycocotools.mask.area`; `bbox`
equals the official inclusive box of the decoded mask (`[x0, y0, x1 - x0, y1 - y0]`, all zeros for an empty mask)
and agrees with `pycocotools.mask.toBbox`; `point_coords` is one point inside the image; `crop_box` lies inside
the image; the scores are numbers.

Usage:  python tools/reference/check_coco_rle.py OUTPUT.json IMAGE
Exit status 0 when every record passes, 1 otherwise (each problem is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

KEYS = ["segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"]


def inclusive_box(m: np.ndarray) -> list:
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="the <stem>.json written by `sam auto --output-mode coco_rle`")
    ap.add_argument("image", help="the image it was computed from")
    args = ap.parse_args()

    with Image.open(args.image) as im:
        w, h = im.size
    with open(args.output) as f:
        records = json.load(f)
    problems = []
    if not isinstance(records, list):
        print(f"{args.output}: not a list of records")
        return 1
    total_area = 0
    for i, r in enumerate(records):
        def bad(msg: str) -> None:
            problems.append(f"record {i}: {msg}")

        if list(r.keys()) != KEYS:
            bad(f"keys {list(r.keys())} != {KEYS}")
            continue
        seg = r["segmentation"]
        if list(seg.keys()) != ["size", "counts"] or not isinstance(seg["counts"], str):
            bad(f"segmentation is not a COCO RLE: {list(seg.keys())}")
            continue
        if seg["size"] != [h, w]:
            bad(f"size {seg['size']} != image [{h}, {w}]")
            continue
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        try:
            m = mask_utils.decode(rle)
        except Exception as e:  # noqa: BLE001
            bad(f"pycocotools cannot decode the RLE: {e}")
            continue
        if m.shape != (h, w):
            bad(f"decoded shape {m.shape} != {(h, w)}")
            continue
        area = int(m.sum())
        total_area += area
        if r["area"] != area or int(mask_utils.area(rle)) != area:
            bad(f"area {r['area']} != decoded {area} / pycocotools {int(mask_utils.area(rle))}")
        box = inclusive_box(m)
        if [int(v) for v in r["bbox"]] != box:
            bad(f"bbox {r['bbox']} != inclusive box of the mask {box}")
        coco_box = [int(v) for v in mask_utils.toBbox(rle)]
        expect = [box[0], box[1], box[2] + 1, box[3] + 1] if area else [0, 0, 0, 0]
        if coco_box != expect:
            bad(f"pycocotools toBbox {coco_box} != {expect}")
        pts = r["point_coords"]
        if not (isinstance(pts, list) and len(pts) == 1 and len(pts[0]) == 2):
            bad(f"point_coords {pts} is not [[x, y]]")
        elif not (0 <= pts[0][0] <= w and 0 <= pts[0][1] <= h):
            bad(f"point {pts[0]} outside the {w}×{h} image")
        cx, cy, cw, ch = (int(v) for v in r["crop_box"])
        if not (cx >= 0 and cy >= 0 and cw > 0 and ch > 0 and cx + cw <= w and cy + ch <= h):
            bad(f"crop_box {r['crop_box']} outside the image")
        for k in ("predicted_iou", "stability_score"):
            if not isinstance(r[k], (int, float)) or (isinstance(r[k], float) and math.isinf(r[k])):
                bad(f"{k} {r[k]!r} is not a number")
    for p in problems:
        print(p)
    print(f"{args.output}: {len(records)} record(s), {len(problems)} problem(s), total mask area {total_area}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
