#!/usr/bin/env bash
# The GPU check, for a GPU machine that is at hand for a few minutes: the tests marked gpu, then the
# throughput figures (Explainer training fp32 batch 16 against bf16 + channels-last (+ compile) at the largest
# batch that fits, explain(), RISE N=4000, insertion/deletion batched against the loop). It finishes in under
# 6 minutes and writes benchmarks/results/gpu.json and gpu.md (after each section, so a run stopped early
# keeps what it measured).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   bash benchmarks/gpu_check.sh --no-compile    # without the compiled row (saves the compile time)
#   bash benchmarks/gpu_check.sh --dry-run       # the same code paths on the CPU, tiny sizes, about a minute;
#                                                # writes benchmarks/results/gpu_dry_run/
# Any option of benchmarks/gpu_check.py is passed on (python benchmarks/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    echo "gpu_check.sh: no $PYTHON; run 'make setup' first, or set PYTHON to the interpreter to use" >&2
    exit 2
fi
LIMIT="${GPU_CHECK_LIMIT_S:-350}"  # seconds, the whole check
status=0
timeout --signal=INT --kill-after=10 "$LIMIT" "$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
if [[ $status -eq 124 ]]; then
    echo "gpu_check.sh: stopped after ${LIMIT} s; the sections measured so far are in the files" >&2
fi
exit $status
