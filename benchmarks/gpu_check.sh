#!/usr/bin/env bash
# The GPU checks we cannot run on CPU (bf16 Trainer with the kit, kit overhead, batched generation,
# exact perplexity bf16 vs float32): under 8 minutes on one H200. Results: $OUT/gpu_check.json when
# OUT is set, else benchmarks/results_gpu_check.json. `--cpu-dry-run` checks the script on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
