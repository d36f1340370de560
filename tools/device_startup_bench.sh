#!/usr/bin/env bash
# Issue 10's start-up figures on a lent GPU, in one call. The sd-turbo architecture (random weights) is first
# written as a diffusers folder, so every start reads its weights from disk through the real loading code, as
# a user's does. Then: a cold start (empty cache folder: quick path, the compiled engine built and stored in
# the background and swapped in) and a warm start (a second process: the stored engine loads), each with a
# steps change; then the GPU tests. Carry .whl (diffusers, pytest). Logs and JSON under $OUT (8 files at most come back).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
rm -rf /tmp/ldcache /tmp/models
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; from core.accel import precompiled; print('torch', torch.__version__, 'precompile', precompiled.available())"
python3 -m tools.save_preset sd-turbo /tmp/models/sd-turbo 2>&1 | tail -n 1
startup="--model /tmp/models/sd-turbo --tiny-vae-model /tmp/models/sd-turbo-taesd --acceleration compile --frames 300
  --settings 1:none --startup --input-size 1280x720 --switch-steps ${SWITCH:-2}"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; \
  echo "rc $?"; grep -h -A4 "^| |" "$OUT/$name.log"; grep -h "warm-up run 0\|full speed:\|failed\|rror\|loaded the compiled\|artifacts\|could not\|cannot" "$OUT/$name.log" | head -12; }
# Where the seconds before the weights load go: the slowest imports of a bench start.
python3 -X importtime -c "import core.bench, core.startup_bench, core.models, diffusers; from diffusers import StableDiffusionPipeline, AutoencoderTiny" 2> "$OUT/importtime.log" > /dev/null
sort -t'|' -k2 -n "$OUT/importtime.log" | tail -n 6
run cold ${COLD_S:-270} python3 main.py bench $startup --json "$OUT/cold.json"
run warm ${WARM_S:-75} python3 main.py bench $startup --json "$OUT/warm.json"
run gputests ${TESTS_S:-120} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_staged_start.py -k "not stored_compiled_engine_loads"
du -sh /tmp/ldcache/compiled/* 2>/dev/null
