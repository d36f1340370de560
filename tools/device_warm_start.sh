#!/usr/bin/env bash
# Issue 10 on a lent GPU, one call: the warm start with and without its changes, alternated.
# The lent machine's torch is not writable and so recompiled its Python sources at every start (9.8 s of 41 in
# a profiled warm start): PYTHONPYCACHEPREFIX gives it the bytecode cache a user's pip install has. One row
# without it shows what it cost. sd-turbo (random weights) is written as a diffusers folder, a cold start stores
# the compiled engine, then warm starts alternate the old defaults (LIVEDIFFUSION_CUDNN_BENCHMARK=1) and the new.
# Then the GPU tests of the staged start (a build beside eager calls: the fx fix). Carry .whl (diffusers, pytest).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
echo "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-unset}; torch folder writable: $(python3 -c \
  'import os, torch; print(os.access(os.path.dirname(torch.__file__), os.W_OK))' 2>/dev/null)"
unset PYTHONDONTWRITEBYTECODE
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache PYTHONPYCACHEPREFIX=/tmp/pycache
rm -rf /tmp/ldcache /tmp/models /tmp/pycache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m tools.save_preset sd-turbo /tmp/models/sd-turbo 2>&1 | tail -n 1
startup="--model /tmp/models/sd-turbo --tiny-vae-model /tmp/models/sd-turbo-taesd --acceleration compile
  --settings 1:none --startup --input-size 1280x720 --switch-steps 0"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; \
  echo "rc $?"; grep -h "^| launch" "$OUT/$name.log"; }
echo "| | model ready s | load s | first frame s | full speed s | quick median ms | quick max ms | swap max ms | full median ms | full fps | quick frames |"
run cold ${COLD_S:-200} python3 main.py bench $startup --frames 50
for round in 1 2; do
  LIVEDIFFUSION_CUDNN_BENCHMARK=1 run "warm_before_$round" 75 python3 main.py bench $startup --frames 300
  run "warm_after_$round" 75 python3 main.py bench $startup --frames 300
done
PYTHONPYCACHEPREFIX= run warm_no_bytecode 75 python3 main.py bench $startup --frames 300
for name in warm_before_1 warm_after_1; do echo "--- $name"; grep -h " s INFO" "$OUT/$name.log" | grep -v "warm-up run"; done
run gputests ${TESTS_S:-160} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_staged_start.py
tail -n 3 "$OUT/gputests.log"
