#!/usr/bin/env bash
# Issue 11's figures on a lent GPU, in one call: the GPU tests of feature reuse (graph and compiled, both depths),
# then sd-turbo 512x512 compile at 2 steps and 4 steps self-RCFG with reuse off and on at each depth (DEPTHS,
# default block,layer; one engine per setting), with the skipped FLOP fraction and the output's deviation.
# Carry .whl (diffusers, pytest). Logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=${LIVEDIFFUSION_CACHE:-/tmp/ldcache}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; \
  echo "rc $?"; tail -n 14 "$OUT/$name.txt"; }
run gputests "${TESTS_S:-240}" python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_feature_reuse.py
run reuse "${BENCH_S:-500}" python3 main.py bench --model preset:sd-turbo --acceleration compile --frames 300 \
  --warmup 10 --diffusers none --settings "${SETTINGS:-2:none,4:self}" --feature-reuse \
  --feature-reuse-depth "${DEPTHS:-block,layer}" --json "$OUT/reuse.json"
