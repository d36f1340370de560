#!/usr/bin/env bash
# Issue 12's batched ticks on a lent GPU, one call: the GPU tests of core.accel.tick_graph (real CUDA graphs of
# each session's front and back and of the UNet per row count, the compiled UNet swapped in, live changes and a
# smaller group between ticks), or the tests named in TESTS, then
#  - PROBE_STREAMS (e.g. 4,8): tools.multi_stream_probe, N streams on one sd-turbo: each alone on its own graph,
#    the shared tick eager, and from graphs of parts with the eager UNet, the UNet compiled per row count, compiled
#    once with a dynamic row count, built in its own process and stored (PROBE_BUILDS picks: rows,dynamic,stored),
#    and with the group changing every tick; or
#  - STREAMS (e.g. 4,8): bench-remote through a real `main.py serve`, batched and one thread per session (SERVERS:
#    both, batched or sessions), every
#    client streaming WARMUP seconds before each measurement (the batched server compiles meanwhile).
# Carry .whl (diffusers, pytest) and, for bench-remote, .whl_serve.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  $( [ -n "${STREAMS:-}" ] && ls .whl_serve/*.whl ) && export PYTHONPATH=/tmp/site || exit 1
unset PYTHONDONTWRITEBYTECODE  # the lent machine sets it: every process would recompile torch from source
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache PYTHONPYCACHEPREFIX=/tmp/pycache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# TESTS: other pytest arguments (e.g. "tests/test_fx_threads.py tests/test_staged_start.py tests/test_tick_graph.py").
timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider ${TESTS:--m gpu tests/test_tick_graph.py} \
  > "$OUT/gputests.log" 2>&1
echo "gpu tests rc $?"; tail -n 15 "$OUT/gputests.log" | cut -c1-300
if [ -n "${PROBE_STREAMS:-}" ]; then
  timeout "${PROBE_S:-420}" python3 -m tools.multi_stream_probe --streams "$PROBE_STREAMS" --frames 60 \
    --builds "${PROBE_BUILDS:-rows,dynamic,stored}" \
    > "$OUT/probe.txt" 2> "$OUT/probe.err"
  echo "probe rc $?"; cat "$OUT/probe.txt"; grep -h "rror\|failed" "$OUT/probe.err" | head -5
fi
if [ -n "${STREAMS:-}" ]; then
  timeout "${BENCH_S:-420}" python3 main.py bench-remote --model preset:sd-turbo --acceleration compile --server-log \
    --seconds 8 --warmup "${WARMUP:-75}" --streams "$STREAMS" --servers "${SERVERS:-both}" \
    --json "$OUT/bench_remote.json" \
    > "$OUT/bench_remote.txt" 2> "$OUT/bench_remote.err"
  echo "bench-remote rc $?"; cat "$OUT/bench_remote.txt"
  grep -E "streams:|shared ticks|tick build|captured|Error|error" "$OUT/bench_remote.err" | cut -c1-300 | tail -n 24
fi
