#!/usr/bin/env bash
# Issue 10's speed levers on a lent GPU, each on and off in one call: the same bench (sd-turbo architecture,
# random weights, 512x512, compile, host frames in and out) in one process per lever, sharing one cache folder.
# The baseline runs first and again last, so drift on the machine shows. Carry .whl. JSON and logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench="python3 main.py bench --model preset:sd-turbo --acceleration compile --frames 300 --warmup 20 --diffusers none"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; local started=$SECONDS
  timeout "$limit" env "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; echo "rc $? in $((SECONDS - started)) s"
  grep -h "^| ours" "$OUT/$name.txt"; grep -h "rror\|failed\|does not fit" "$OUT/$name.err" | head -4; }
run base ${BASE_S:-200} $bench --settings ${BASE_SETTINGS:-1:none}
run sdpa_cudnn ${LEVER_S:-150} LIVEDIFFUSION_SDPA=cudnn $bench --settings 1:none
run autotune_gemm ${AUTOTUNE_S:-240} LIVEDIFFUSION_AUTOTUNE_GEMM=1 $bench --settings 1:none
run base_again ${LEVER_S:-150} $bench --settings 1:none
