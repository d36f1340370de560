#!/usr/bin/env bash
# Issue 13's figures on a lent multi-GPU machine, in one call: the GPU tests of core.parallel, then sd-turbo
# 512x512 at 1 step (frame-parallel) and 2 / 4 steps (asyncdiff) on 1, 2 and 4 GPUs, host uint8 to host uint8.
# MODE=graph (default): every engine on the CUDA graph of its eager kernels (LIVEDIFFUSION_INDUCTOR=0: seconds
# to build, so one call covers every row); MODE=compile: Inductor, fewer rows (SETTINGS, GPUS; OVERLAP=1 adds
# AsyncDiff rows with overlapped host copies; SPLIT_AT=I[,J] sets the cuts for the GPU count they fit; BENCH=0 runs
# only the tests).
# Carry .whl (diffusers, pytest). Logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache NCCL_NVLS_ENABLE=0
MODE=${MODE:-graph}
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader
nvidia-smi topo -m | head -8
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; \
  echo "rc $?"; tail -n 16 "$OUT/$name.txt"; grep -E "asyncdiff over|ms$|Error|error" "$OUT/$name.err" | tail -n 20; }
if [ "${TESTS:-1}" = 1 ]; then
  run gputests "${TESTS_S:-300}" python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_parallel.py tests/test_frame_parallel.py
fi
if [ "${BENCH:-1}" = 0 ]; then
  :
elif [ "$MODE" = graph ]; then
  LIVEDIFFUSION_INDUCTOR=0 run bench_graph "${BENCH_S:-420}" python3 main.py bench --model preset:sd-turbo \
    --acceleration compile --frames 300 --warmup 20 --diffusers none --settings "${SETTINGS:-1:none,2:none,4:self}" \
    --gpus "${GPUS:-1,2,4}" --json "$OUT/bench_graph.json"
else
  run bench_compile "${BENCH_S:-540}" python3 main.py bench --model preset:sd-turbo --acceleration compile \
    --frames 300 --warmup 20 --diffusers none --settings "${SETTINGS:-4:self}" --gpus "${GPUS:-1,2}" \
    ${OVERLAP:+--overlap} ${SPLIT_AT:+--split-at $SPLIT_AT} --json "$OUT/bench_compile.json"
fi
