#!/usr/bin/env bash
# The converged MiniLM study committed in results/minilm-study (see its README): {CB, COPA, RTE, MRPC} x
# {ft, lp-ft, ehft-bitfit, ehft-lora} x seeds 1-5 on all-MiniLM-L6-v2 with configs/minilm-study/, reported
# against plain finetuning (`sat-ehft report --baseline ft`), with Figure 1 over every run.
# Resumable: rerunning skips finished runs and resumes a killed one (sat-ehft sweep). About 10 hours on 2 CPU cores.
# TASKS, METHODS and SEEDS narrow or widen it (one sweep per task, in this order); DATA_DIR [../shared/data];
# GRID [runs/minilm-study] holds the run folders; RESULTS [results/minilm-study] gets the report, Figure 1 and
# every run's result, run.json, logs and dev predictions (not the weights).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
grid=${GRID:-runs/minilm-study}
results=${RESULTS:-results/minilm-study}
data=${DATA_DIR:-$here/../../shared/data}
for task in ${TASKS:-cb copa rte mrpc}; do
  # shellcheck disable=SC2086  # lists of names
  sat-ehft sweep --tasks "$task" --methods ${METHODS:-ft lp-ft ehft-bitfit ehft-lora} --seeds ${SEEDS:-1 2 3 4 5} \
    --model all-MiniLM-L6-v2 --data-dir "$data" --config-dir "$here/../configs/minilm-study" --out "$grid"
done
sat-ehft report "$grid" --baseline ft
sat-ehft analyze 1 "$grid" --out "$grid/figure1"
bash "$here/collect_results.sh" "$grid" "$results"
cp -r "$grid/figure1" "$results/"
