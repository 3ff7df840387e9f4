#!/usr/bin/env bash
# The one prepared check for a host with a GPU (under 10 minutes end to end): random-weight pairs on the torch
# backend on CUDA (a tiny pair and one shaped like Qwen2.5 0.5B/1.5B; both ranks on GPU 0 when there is one GPU),
# ar/sd/pearl tokens/s and round overhead as JSON in results/gpu_check/gpu_check.json; where the pinned
# TensorRT-LLM imports, also the tiny pair built and run with TensorRT-LLM.
# What runs: bench/pearl_bench/gpu_check.yaml.
# Environment: PYTHON (default .venv-gpu/bin/python, else .venv/bin/python), GPU_CHECK_TIMEOUT (seconds, 570).
# Arguments go to python -m pearl_bench.gpu_check (--pairs tiny, --max-tokens 32, --cpu for a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=.venv/bin/python
    [[ -x .venv-gpu/bin/python ]] && PYTHON=.venv-gpu/bin/python
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
exec timeout "${GPU_CHECK_TIMEOUT:-570}" "$PYTHON" -m pearl_bench.gpu_check "$@"
