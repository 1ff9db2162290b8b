#!/usr/bin/env bash
# Full-size parity (not run in CI): for vit_b, vit_l and vit_h, build the official model with random weights,
# record the official outputs on a photo, then run our implementation on the same checkpoint and print the
# error figures. Needs the reference requirements (pip install -r tools/reference/requirements.txt), ~8 GB of
# memory for vit_h, and tens of minutes on 2 cores.
#
# Usage: [PYTHON=python3] tools/reference/full_size_parity.sh [OUT_DIR] [VARIANTS...]   (default: /tmp/sam-full-size vit_b vit_l vit_h)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/sam-full-size}
shift || true
variants=${*:-vit_b vit_l vit_h}
cargo build --release -p segment-anything --example parity_report
for v in $variants; do
  if [ ! -f "$out/$v/cases.json" ]; then
    "${PYTHON:-python3}" tools/reference/full_size_reference.py --variant "$v" --out "$out/$v"
  fi
  ./target/release/examples/parity_report "$out/$v"
done
