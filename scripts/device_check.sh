#!/usr/bin/env bash
# The GPU check, run as one command on a lent CUDA machine (see BENCHMARKS.md):
# the estimator tests on CUDA, then the estimator benchmark on CUDA.
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT="${OUT:-.bench}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -q -p no:cacheprovider tests/test_estimators.py 2>&1 | tail -n 5
python3 scripts/bench_estimators.py --device cuda --repeats 10 --out "$OUT/bench_estimators_cuda.json" \
    2>"$OUT/bench_estimators_cuda.log" | tee "$OUT/bench_estimators_cuda.md"
