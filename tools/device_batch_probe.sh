#!/usr/bin/env bash
# Issue 12's batched ticks on a lent GPU, one call: the GPU test of core.accel.tick_graph (each stream of a
# captured shared tick equals its engine alone), then tools.multi_stream_probe (N streams on one sd-turbo: each
# alone on its own graph, the shared tick eager, replayed from one CUDA graph, and with the UNet compiled for the
# tick's batch), then, if STREAMS is set, bench-remote through a real server with those client counts.
# Carry .whl (diffusers, pytest) and, for bench-remote, .whl_serve.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  $( [ -n "${STREAMS:-}" ] && ls .whl_serve/*.whl ) && export PYTHONPATH=/tmp/site || exit 1
unset PYTHONDONTWRITEBYTECODE  # the lent machine sets it: every process would recompile torch from source
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_tick_graph.py 2>&1 | tail -n 3
timeout "${PROBE_S:-420}" python3 -m tools.multi_stream_probe --streams "${PROBE_STREAMS:-4,8}" --frames 60 \
  > "$OUT/probe.txt" 2> "$OUT/probe.err"
echo "probe rc $?"; cat "$OUT/probe.txt"; grep -h "rror\|failed" "$OUT/probe.err" | head -5
if [ -n "${STREAMS:-}" ]; then
  timeout "${BENCH_S:-400}" python3 main.py bench-remote --model preset:sd-turbo --acceleration compile \
    --seconds 8 --streams "$STREAMS" --json "$OUT/bench_remote.json" > "$OUT/bench_remote.txt" 2> "$OUT/bench_remote.err"
  echo "bench-remote rc $?"; cat "$OUT/bench_remote.txt"
  grep -E "streams:|Error|error" "$OUT/bench_remote.err" | cut -c1-400 | tail -n 12
fi
