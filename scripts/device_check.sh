#!/usr/bin/env bash
# The GPU check, run as one command on a lent CUDA machine (see BENCHMARKS.md):
# the estimator tests and benchmark on CUDA, then the collection search (index placement, list walk).
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT="${OUT:-.bench}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -q -p no:cacheprovider tests/test_estimators.py 2>&1 | tail -n 5
python3 scripts/bench_estimators.py --device cuda --repeats 10 --out "$OUT/bench_estimators_cuda.json" \
    2>"$OUT/bench_estimators_cuda.log" | tee "$OUT/bench_estimators_cuda.md"
# Collections: the index placement and list-walk certificates, then a 200k collection on CUDA.
python3 -m pytest -q -p no:cacheprovider tests/test_index_placement.py tests/test_list_search.py \
    2>&1 | tail -n 5
python3 scripts/bench_collections.py million --rows 200000 --nlist 512 --device cuda --repeats 3 \
    2>"$OUT/bench_collections_cuda.log" | tee "$OUT/bench_collections_cuda.md"
