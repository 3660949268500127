#!/usr/bin/env bash
# The MiniLM reproductions committed in results/minilm-cpu and results/minilm-gpu:
#   bash finetune_scripts/reproduce_minilm.sh cpu   {CB, COPA} x 5 methods x 2 seeds, about 20 min on 2 cores
#   bash finetune_scripts/reproduce_minilm.sh gpu   {RTE, CB, COPA, WiC, MRPC, CoLA, STS-B} x 5 methods x 4 seeds,
#                                                   WORKERS [8] runs side by side on one GPU
# Methods: ft, lp-ft, ehft-bitfit, ehft-lora, ehft-prefix on all-MiniLM-L6-v2, with configs/minilm-<kind>/.
# DATA_DIR [../shared/data]; GRID [runs/minilm-<kind>] holds the run folders; RESULTS [results/minilm-<kind>]
# gets the report and every run's result and logs (not the weights), and TIME.txt.
set -euo pipefail
kind=${1:?usage: reproduce_minilm.sh cpu|gpu}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case $kind in
  cpu) tasks="cb copa"; seeds="1 2"; workers=1 ;;
  gpu) tasks="rte cb copa wic mrpc cola sts-b"; seeds="1 2 3 4"; workers=${WORKERS:-8} ;;
  *) echo "reproduce_minilm.sh: expected cpu or gpu, got '$kind'" >&2; exit 2 ;;
esac
grid=${GRID:-runs/minilm-$kind}
results=${RESULTS:-results/minilm-$kind}
start=$(date +%s)
sat-ehft sweep --tasks $tasks --methods ft lp-ft ehft-bitfit ehft-lora ehft-prefix --seeds $seeds \
  --model all-MiniLM-L6-v2 --data-dir "${DATA_DIR:-$here/../../shared/data}" \
  --config-dir "$here/../configs/minilm-$kind" --out "$grid" --workers "$workers"
sat-ehft report "$grid" --table 1
bash "$here/collect_results.sh" "$grid" "$results"
device=$( [ "$kind" = gpu ] && nvidia-smi -L | head -n 1 || echo "$(nproc) CPU cores")
echo "grid finished in $(( $(date +%s) - start )) s on $device" | tee "$results/TIME.txt"
