#!/usr/bin/env python3
"""Time the automatic mask generator: the official `SamAutomaticMaskGenerator.generate` next to `sam auto`, same
photo, same model weights, same thread count, in one run (not run in CI).

Models:
  tiny   the tiny random-weight fixture (crates/segment-anything/tests/fixtures/model/tiny, 256×256 input)
  vit_b  a full-size vit_b with random weights (`sam_reference.randomize_`), written once to --scratch as model.pth
         plus a config JSON (our vit_b preset with url/sha256 null), ~375 MB

Settings (both sides get the same parameters):
  defaults  the official defaults (32×32 grid, pred_iou_thresh 0.88, stability 0.95). With random weights almost
            no mask passes the IoU filter, which favours our implementation (it upsamples only the masks that pass
            the IoU filter; the official code upsamples all 3072 masks first);
  loose     pred_iou_thresh 0, stability_score_thresh 0, box_nms_thresh 1.0: every mask goes through upsampling,
            stability, boxes and RLE on both sides (our worst case).

Timed: the official `generate(image)` call (image already decoded) against the generation time `sam auto` reports
for the image (decode excluded, model load and file writing excluded), and `sam auto`'s whole wall time. Each side
runs `--repeat` times; the best run is reported. Threads: torch.set_num_threads(N) and RAYON_NUM_THREADS=N.

Usage:
  cargo build --release -p sam-cli
  python tools/reference/bench_amg.py [--model tiny|vit_b] [--image assets/images/coffee.png] [--threads N]
                                      [--settings defaults,loose] [--repeat 1] [--sam target/release/sam]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sam_reference as R  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

TINY = os.path.join(R.REPO_ROOT, "crates", "segment-anything", "tests", "fixtures", "model", "tiny")

SETTINGS = {
    "defaults": {},
    "loose": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
}


def model_files(name: str, scratch: str):
    if name == "tiny":
        return os.path.join(TINY, "model.pth"), os.path.join(TINY, "config.json")
    if name != "vit_b":
        raise SystemExit(f"unknown model {name}")
    ckpt = os.path.join(scratch, "vit_b_random.pth")
    cfg_path = os.path.join(scratch, "vit_b_random.json")
    if not (os.path.exists(ckpt) and os.path.exists(cfg_path)):
        print(f"writing a random-weight vit_b to {ckpt} ...", flush=True)
        cfg = R.config_dict("vit_b", name="vit_b_random", url=None, sha256=None, file_size=None)
        model = R.randomize_(R.build_official_sam(cfg), 0)
        torch.save(model.state_dict(), ckpt)
        R.save_config_json(cfg, cfg_path)
        del model
    return ckpt, cfg_path


def load_official(ckpt: str, cfg_path: str):
    with open(cfg_path) as f:
        cfg = json.load(f)
    model = R.build_official_sam(cfg)
    model.load_state_dict(torch.load(ckpt, map_location="cpu"), strict=True)
    model.eval()
    return model


def cli_args(params: dict) -> list:
    out = []
    for k, v in params.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "vit_b"])
    ap.add_argument("--image", default="assets/images/coffee.png")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--settings", default="defaults,loose")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sam", default=os.path.join(R.REPO_ROOT, "target", "release", "sam"))
    ap.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "sam-bench-amg"))
    args = ap.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    if not os.path.exists(args.sam):
        raise SystemExit(f"{args.sam} not found: cargo build --release -p sam-cli")

    ckpt, cfg_path = model_files(args.model, args.scratch)
    model = load_official(ckpt, cfg_path)
    image_path = os.path.join(R.REPO_ROOT, args.image) if not os.path.isabs(args.image) else args.image
    img = R.load_rgb(image_path)
    print(f"model {args.model}, image {args.image} {img.shape[1]}×{img.shape[0]}, {args.threads} thread(s), "
          f"torch {torch.__version__}")

    rows = []
    for setting in args.settings.split(","):
        params = SETTINGS[setting]
        # Official.
        best_py, n_py = None, None
        for _ in range(args.repeat):
            gen = SamAutomaticMaskGenerator(model, **params)
            t = time.perf_counter()
            recs = gen.generate(img)
            dt = time.perf_counter() - t
            best_py = dt if best_py is None else min(best_py, dt)
            n_py = len(recs)
        # Ours.
        best_rs, best_wall, n_rs = None, None, None
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=args.scratch) as out:
                cmd = [args.sam, "auto", "--image", image_path, "--output-dir", out, "--checkpoint", ckpt,
                       "--config", cfg_path, "--quiet"] + cli_args(params)
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t
                if p.returncode != 0:
                    raise SystemExit(f"sam auto failed: {p.stderr}")
                doc = json.loads(p.stdout)
                secs = doc["images"][0]["seconds"]
                n_rs = doc["images"][0]["masks"]
            best_rs = secs if best_rs is None else min(best_rs, secs)
            best_wall = wall if best_wall is None else min(best_wall, wall)
        rows.append((setting, n_py, best_py, n_rs, best_rs, best_wall))
        print(f"{setting:>9}: official generate {best_py:8.2f} s ({n_py} masks) | sam auto generate {best_rs:8.2f} s "
              f"({n_rs} masks), whole command {best_wall:6.2f} s | speed-up {best_py / best_rs:5.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
