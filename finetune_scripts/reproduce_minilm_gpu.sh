#!/usr/bin/env bash
# The GPU reproduction for results/minilm-gpu: {RTE, CB, COPA, WiC, MRPC, CoLA, STS-B} x {ft, lp-ft,
# ehft-bitfit, ehft-lora, ehft-prefix} x 4 seeds on all-MiniLM-L6-v2, WORKERS [8] runs side by side on one GPU.
#   bash finetune_scripts/reproduce_minilm_gpu.sh
# DATA_DIR [../shared/data]; GRID [runs/minilm-gpu]; RESULTS [results/minilm-gpu] gets the report and logs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data_dir=${DATA_DIR:-$here/../../shared/data}
grid=${GRID:-runs/minilm-gpu}
results=${RESULTS:-results/minilm-gpu}
start=$(date +%s)
sat-ehft sweep --tasks rte cb copa wic mrpc cola sts-b --methods ft lp-ft ehft-bitfit ehft-lora ehft-prefix \
  --seeds 1 2 3 4 --model all-MiniLM-L6-v2 --data-dir "$data_dir" --config-dir "$here/../configs/minilm-gpu" \
  --out "$grid" --workers "${WORKERS:-8}"
sat-ehft report "$grid" --table 1
bash "$here/collect_results.sh" "$grid" "$results"
echo "grid finished in $(( $(date +%s) - start )) s; $(nvidia-smi -L | head -n 1)" | tee "$results/TIME.txt"
