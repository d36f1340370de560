#!/usr/bin/env bash
# Issue 10's start-up figures on a lent GPU, in one call: a cold start (empty cache folder) and a warm one
# (a second process on the same cache), each with a steps change; the warm start without the quick path; the
# GPU tests of the staged start; the landed version (./base, from `git archive`) at steady state for the
# before/after. Carry .whl (diffusers, pytest) and base. Logs and JSON under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
rm -rf /tmp/ldcache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
startup="--model preset:sd-turbo --acceleration compile --frames 300 --settings 1:none --startup --switch-steps 2"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; \
  echo "rc $?"; tail -n 6 "$OUT/$name.txt"; }
run cold 180 python3 main.py bench $startup --json "$OUT/cold.json"
run warm 90 python3 main.py bench $startup --json "$OUT/warm.json"
run gputests 110 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_staged_start.py tests/test_accel.py
run warm_noquick 70 python3 main.py bench $startup --switch-steps 0 --no-quick-start --json "$OUT/warm_noquick.json"
(cd base && run base_steady 60 python3 main.py bench --model preset:sd-turbo --acceleration compile --frames 300 \
  --warmup 10 --settings 1:none --diffusers none)
grep -h "warm-up run\|full speed\|failed\|Error" "$OUT"/cold.err | head -20
