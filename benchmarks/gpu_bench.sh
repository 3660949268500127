#!/usr/bin/env bash
# One device call: our step against HF on RoBERTa-large/-base shapes, bf16, batch 32, RTE lengths.
#   bash benchmarks/gpu_bench.sh   (DATA_DIR [../shared/data]; writes benchmarks/gpu-*.json)
set -euo pipefail
data_dir=${DATA_DIR:-../shared/data}
nvidia-smi -L
for shape in large base; do
  sat-ehft bench --shape "$shape" --precision bf16 --batch-size 32 --steps 20 --warmup 3 --data-dir "$data_dir" \
    --out "benchmarks/gpu-roberta-$shape-rte-bf16.json"
done
