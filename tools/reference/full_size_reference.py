#!/usr/bin/env python3
"""Full-size parity reference (not run in CI): an official vit_b / vit_l / vit_h with random weights.

Builds the official model for the preset with `sam_reference.randomize_` weights, and writes to --out:
  model.pth             torch.save(state_dict) (plain official checkpoint layout; 375 MB / 1.25 GB / 2.56 GB)
  config.json           our SamConfig preset, with url / sha256 / file_size set to null (the weights are not Meta's)
  expected.safetensors  the tensors of the cases (float32), same format as the model fixtures
  cases.json            same format as crates/segment-anything/tests/fixtures/model/*/cases.json

Cases on each photo (default: assets/images/chelsea.png and the 4:2:0 JPEG assets/images/coffee.jpg, both decoded
by Pillow as the official pipeline decodes them), through the official SamPredictor:
  <img>/one_point  (a) one positive point, multimask
  <img>/box        (c) a box, single mask
  <img>/box_point  (d) a box plus a point, multimask
  <img>/batch3     (h) 3 prompt sets (2 points + 1 box each, model frame) through predict_torch, multimask
Upscaled logits (masks_logits) are stored for every case.

Memory: float32 under torch.no_grad; vit_h peaks at about 7 GB (2.6 GB of weights plus the 4096×4096×16
attention maps of the global blocks); vit_b at 3.7 GB. CPU time on 2 cores: ~2 minutes (vit_b) to tens of minutes (vit_h).

Usage: python tools/reference/full_size_reference.py --variant vit_b --out /tmp/sam_vit_b [--image PATH]... [--seed N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sam_reference as R  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402


# A PNG photo and a 4:2:0 JPEG photo (decoded by Pillow, as the official pipeline decodes it).
DEFAULT_IMAGES = ["assets/images/chelsea.png", "assets/images/coffee.jpg"]


def add_photo(predictor, model, tensors, cases, images, image):
    """Encode one photo with the official SamPredictor and record the four cases on it; returns its name."""
    rel = os.path.relpath(os.path.abspath(image), R.REPO_ROOT) if os.path.isabs(image) else image
    img = R.load_rgb(rel)
    H, W = img.shape[:2]
    name = os.path.splitext(os.path.basename(rel))[0]
    R.MASK_BITS_IMAGES.add(name)  # binary masks of every photo, for the pixel counts
    images.append(R.image_record(predictor, model, tensors, name, rel, img))
    p0 = [0.53 * W, 0.43 * H]
    box = [0.22 * W, 0.13 * H, 0.84 * W, 0.87 * H]
    cases.append(R.record_predict(predictor, tensors, name, "one_point", point_coords=[p0], point_labels=[1],
                                  multimask=True))
    cases.append(R.record_predict(predictor, tensors, name, "box", box=box, multimask=False))
    cases.append(R.record_predict(predictor, tensors, name, "box_point", point_coords=[p0], point_labels=[1],
                                  box=box, multimask=True))
    h, w = predictor.input_size
    cases.append(R.record_predict_torch(
        predictor, tensors, name, "batch3",
        points=[[[0.5 * w, 0.5 * h], [0.2 * w, 0.25 * h]],
                [[0.75 * w, 0.4 * h], [0.1 * w, 0.85 * h]],
                [[5.0, 5.0], [w - 6.0, h - 6.0]]],
        labels=[[1, 0], [1, 1], [1, -1]],
        boxes=[[0.15 * w, 0.2 * h, 0.85 * w, 0.9 * h],
               [0.4 * w, 0.1 * h, 0.98 * w, 0.95 * h],
               [0.0, 0.0, w - 1.0, h - 1.0]],
        multimask=True, store_masks_logits=True))
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--image", action="append",
                    help="photo, repo-root relative (recorded as such in cases.json) or absolute; repeatable "
                         f"(default: {' and '.join(DEFAULT_IMAGES)})")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t0 = time.time()

    cfg = R.config_dict(args.variant, url=None, sha256=None, file_size=None)
    model = R.randomize_(R.build_official_sam(cfg), args.seed)
    os.makedirs(args.out, exist_ok=True)
    R.save_config_json(cfg, os.path.join(args.out, "config.json"))
    torch.save(model.state_dict(), os.path.join(args.out, "model.pth"))
    print(f"[{time.time() - t0:6.1f}s] built, randomised and saved {args.variant} "
          f"({sum(t.numel() for t in model.state_dict().values()):,d} parameters)", flush=True)

    predictor = SamPredictor(model)
    tensors, cases, images = R.Tensors(), [], []
    for image in args.image or DEFAULT_IMAGES:
        name = add_photo(predictor, model, tensors, cases, images, image)
        print(f"[{time.time() - t0:6.1f}s] image encoded and cases recorded: {name} -> {predictor.input_size}",
              flush=True)

    tensors.save(os.path.join(args.out, "expected.safetensors"))
    R.write_cases_json(os.path.join(args.out, "cases.json"), images, R.strip_private(cases))
    for im in images:
        emb = tensors.data[im["embedding"]]
        print(f"{im['name']}: embedding {tuple(emb.shape)} std {emb.std():.3f}")
    for c in cases:
        print(R.describe_case(c))
    for f in sorted(os.listdir(args.out)):
        print(f"{f:<24} {os.path.getsize(os.path.join(args.out, f)):>14,d} B")
    print(f"[{time.time() - t0:6.1f}s] done")


if __name__ == "__main__":
    main()
