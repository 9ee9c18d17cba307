#!/usr/bin/env bash
# Stage timings at 224 and 448 and the HNSW-vs-exact search study, with the figures written next to this script.
# Usage: benchmarks/run_cpu_benchmarks.sh [THREADS]   (run `make demo` first: the search check uses its recipe)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
OKCELL=".venv/bin/okcell"
mkdir -p benchmarks/results
"$OKCELL" bench stages --sizes 224,448 --threads "$THREADS" --json-out benchmarks/results/stages.json \
    | tee benchmarks/results/stages.txt
"$OKCELL" bench search --model demo-models/dinov2_vits14_448.onnx --recipe demo-recipe --images demo-data/holdout \
    --ef-sweep 128,256,512 --threads "$THREADS" --cache demo-models/bank_features_448.npy | tee benchmarks/results/search.txt
