#!/usr/bin/env bash
# The settings search behind configs/minilm-study/ (results/minilm-study/README.md): plain finetuning (ft), seed 1,
# on all-MiniLM-L6-v2, at the settings below, one sweep per task. The study takes per task a setting whose final
# training accuracy reaches 95%, or extends the epochs of one that fell short (README). GRID [runs/minilm-study-search]
# holds the runs; RESULTS [results/minilm-study/search] gets their report and logs. DATA_DIR [../shared/data].
# TASKS [cb copa rte mrpc wic cola sts-b]: the tasks to search (the others are reported as they are in GRID).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
grid=${GRID:-runs/minilm-study-search}
data=${DATA_DIR:-$here/../../shared/data}
tasks=" ${TASKS:-cb copa rte mrpc wic cola sts-b} "
search() {  # TASK EPOCHS [--vary KEY=V1,V2 | --set KEY=VALUE] ...
  local task=$1 epochs=$2
  shift 2
  [[ $tasks == *" $task "* ]] || return 0
  sat-ehft sweep --tasks "$task" --methods ft --seeds 1 --model all-MiniLM-L6-v2 --data-dir "$data" \
    --config-dir "$here/../configs/minilm-study" --out "$grid" --set "epochs=$epochs" "$@"
}
search cb 20 --vary lr=1e-4,5e-5
search copa 20 --vary lr=1e-4,5e-5
search rte 6 --vary lr=1e-4 --set batch_size=32 --set micro_batch_size=32
search mrpc 4 --vary lr=1e-4 --set batch_size=32 --set micro_batch_size=32
search wic 6 --vary lr=1e-4
search cola 4 --vary lr=1e-4
search sts-b 5 --vary lr=1e-4
sat-ehft report "$grid"
bash "$here/collect_results.sh" "$grid" "${RESULTS:-results/minilm-study/search}"
