#!/usr/bin/env python3
"""Decoding speed of a 12-megapixel JPEG: ours (`sam bench --models "" --decode-runs N`, i.e. `load_image`)
against Pillow (`np.asarray(Image.open(f).convert("RGB"))`) and OpenCV (`cv2.imread` + BGR→RGB), in one run,
on the same files, one thread each (all three decoders are single-threaded).

    cargo build --release -p sam-cli
    python tools/bench/bench_decode.py [--runs 7] [--sam target/release/sam]

The test files are made on the fly from assets/images/coffee.png, upscaled to 4000×3000 (Lanczos) and saved by
Pillow at quality 90: baseline 4:2:0 (the usual camera file), progressive 4:2:0, and baseline 4:4:4. Prints a
Markdown table with medians and ours ÷ peer.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sam", default=str(ROOT / "target/release/sam"))
    a = ap.parse_args()
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="sam-bench-decode-"))
    big = Image.open(ROOT / "assets/images/coffee.png").convert("RGB").resize((4000, 3000), Image.LANCZOS)
    files = {
        "baseline 4:2:0": dict(quality=90, subsampling=2),
        "progressive 4:2:0": dict(quality=90, subsampling=2, progressive=True),
        "baseline 4:4:4": dict(quality=90, subsampling=0),
    }
    print(f"CPU: {cpu_model()}; Pillow {Image.__version__}, OpenCV {cv2.__version__}; {a.runs} runs, medians\n")
    print("| 4000×3000 JPEG, q90 | size | ours | Pillow | OpenCV | ours/Pillow | ours/OpenCV |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, kw in files.items():
        path = tmp / (label.replace(" ", "_").replace(":", "") + ".jpg")
        big.save(path, "JPEG", **kw)
        pil = median_ms(lambda: np.asarray(Image.open(path).convert("RGB")), a.runs)
        ocv = median_ms(lambda: cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), a.runs)
        out = subprocess.run(
            [a.sam, "bench", "--models", "", "--image", str(path), "--decode-runs", str(a.runs), "--json"],
            capture_output=True, text=True, check=True, env={**os.environ, "RAYON_NUM_THREADS": "1"},
        ).stdout
        docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        ours = next(d["decode"]["median_ms"] for d in docs if "decode" in d)
        mb = path.stat().st_size / 1e6
        print(f"| {label} | {mb:.1f} MB | {ours:.0f} ms | {pil:.0f} ms | {ocv:.0f} ms | {ours / pil:.2f}× | "
              f"{ours / ocv:.2f}× |")


if __name__ == "__main__":
    main()
