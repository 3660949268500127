#!/usr/bin/env bash
# One device call: our step against HF on RoBERTa-large/-base shapes, bf16, batch 32, RTE lengths;
# RoBERTa-large also with our side kept padded (--padded), to separate what unpadding buys.
#   bash benchmarks/gpu_bench.sh   (DATA_DIR [../shared/data]; BENCH_OUT [benchmarks]: where gpu-*.json go)
set -euo pipefail
data_dir=${DATA_DIR:-../shared/data}
out_dir=${BENCH_OUT:-benchmarks}
mkdir -p "$out_dir"
nvidia-smi -L
bench() {  # NAME, then extra sat-ehft bench options
  local name=$1
  shift
  sat-ehft bench --precision bf16 --batch-size 32 --steps 20 --warmup 3 --data-dir "$data_dir" \
    --out "$out_dir/gpu-$name-rte-bf16.json" "$@"
}
bench roberta-large --shape large
bench roberta-large-padded --shape large --padded
bench roberta-base --shape base
