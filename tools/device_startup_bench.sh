#!/usr/bin/env bash
# Issue 10's start-up figures on a lent GPU, in one call: a cold start (empty cache folder: quick path, then
# the compiled engine built ahead of time in the background and swapped in) and a warm start (a second
# process: the stored engine loads), 1280x720 camera-sized input; then the GPU tests of both paths.
# Carry .whl (diffusers, pytest). Logs and JSON under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
rm -rf /tmp/ldcache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
startup="--model preset:sd-turbo --acceleration compile --frames 300 --settings 1:none --startup --input-size 1280x720"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; \
  echo "rc $?"; tail -n 5 "$OUT/$name.txt"; grep -h "warm-up run 0\|full speed:\|failed\|rror\|loaded the compiled\|artifacts" "$OUT/$name.err" | head -8; }
run cold ${COLD_S:-130} python3 main.py bench $startup --switch-steps 0 --json "$OUT/cold.json"
run warm ${WARM_S:-45} python3 main.py bench $startup --switch-steps 0 --json "$OUT/warm.json"
run gputests ${TESTS_S:-50} python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_staged_start.py tests/test_accel.py
du -sh /tmp/ldcache/compiled/* 2>/dev/null
