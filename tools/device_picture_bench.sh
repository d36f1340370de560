#!/usr/bin/env bash
# Issue 9's figures on a lent GPU, in one call: the landed version (./base, from `git archive`) against this
# tree, 1280x720 host frames in and out, then this tree alone at 1024x576 and with the steadiness probe.
# Carry .whl (diffusers) and base. Writes logs and JSON under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
common="--model preset:sd-turbo --acceleration compile --frames 300 --warmup 10 --diffusers none --settings 1:none"
run() { local name=$1; shift; echo "=== $name: $*"; "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2> "$OUT/$name.err"; \
  echo "rc $?"; tail -n 12 "$OUT/$name.txt"; }
(cd base && run before python3 main.py bench $common --width 768 --height 432 --input-size 1280x720 --output-size 1280x720)
run after768 python3 main.py bench $common --width 768 --height 432 --input-size 1280x720 \
  --output-size 1280x720,768x432 --overlap --steadiness
run after1024 python3 main.py bench $common --width 1024 --height 576 --input-size 1280x720 \
  --output-size 1280x720,1920x1080 --overlap
