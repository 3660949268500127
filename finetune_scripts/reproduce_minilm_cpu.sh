#!/usr/bin/env bash
# The CPU-sized reproduction committed in results/minilm-cpu: {CB, COPA} x {ft, lp-ft, ehft-bitfit,
# ehft-lora, ehft-prefix} x 2 seeds on all-MiniLM-L6-v2, about 20 minutes on 2 cores.
#   bash finetune_scripts/reproduce_minilm_cpu.sh
# DATA_DIR [../shared/data]; GRID [runs/minilm-cpu] holds the run folders; RESULTS [results/minilm-cpu] gets
# the report and each run's result.json and metrics (not the weights).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data_dir=${DATA_DIR:-$here/../../shared/data}
grid=${GRID:-runs/minilm-cpu}
results=${RESULTS:-results/minilm-cpu}
start=$(date +%s)
sat-ehft sweep --tasks cb copa --methods ft lp-ft ehft-bitfit ehft-lora ehft-prefix --seeds 1 2 \
  --model all-MiniLM-L6-v2 --data-dir "$data_dir" --config-dir "$here/../configs/minilm-cpu" --out "$grid" --workers 1
sat-ehft report "$grid" --table 1
bash "$here/collect_results.sh" "$grid" "$results"
echo "grid finished in $(( $(date +%s) - start )) s on $(nproc) cores" | tee "$results/TIME.txt"
