#!/usr/bin/env bash
# Issue 12's figures on a lent GPU, in one call: python main.py bench-remote (a `main.py serve` process on
# loopback and the clients in another): the latency the server adds at 1280x720 and 30 fps, and the 30 fps
# streams one GPU sustains at 512x512, 1 step, with the sessions batched and without.
# Carry .whl (diffusers) and .whl_serve (aiortc, aiohttp, av and their dependencies, wheels for Python 3.12:
# pip download -r <(pip freeze | grep the serve extra's packages) --no-deps --python-version 3.12
# --platform manylinux_2_28_x86_64 ... --only-binary=:all: -d .whl_serve). Logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  .whl_serve/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nproc; uptime
timeout "${BENCH_S:-570}" python3 main.py bench-remote --model preset:sd-turbo --acceleration compile \
  --seconds "${SECONDS_EACH:-8}" --streams "${STREAMS:-4}" --json "$OUT/bench_remote.json" \
  > "$OUT/bench_remote.txt" 2> "$OUT/bench_remote.err"
echo "rc $?"
cat "$OUT/bench_remote.txt"
grep -E "local engine|remote,|streams:|Error|error" "$OUT/bench_remote.err" | cut -c1-600 | tail -n 30
