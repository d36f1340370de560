#!/usr/bin/env bash
# Stored (precompiled) engines against in-process torch.compile, steady state, one call: bench builds and stores
# the 1-step engine, a second process loads it, a third compiles with stored engines off. Carry .whl.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 LIVEDIFFUSION_CACHE=/tmp/ldcache
rm -rf /tmp/ldcache
bench="python3 main.py bench --model preset:sd-turbo --acceleration compile --frames 300 --warmup 20 --diffusers none --settings 1:none"
for name in ${NAMES:-build load load_again unstored}; do
  case $name in unstored) export LIVEDIFFUSION_STORED=off;; esac
  echo "=== $name"; started=$SECONDS
  timeout 200 $bench > "$OUT/$name.log" 2>&1; echo "rc $? in $((SECONDS - started)) s"
  grep -h "^| ours\|loaded the compiled\|written to\|does not fit\|failed\|rror" "$OUT/$name.log" | cut -c1-250 | head -6
done
