#!/usr/bin/env bash
# The cost table of benchmarks/RESULTS.md: EH-FT (BitFit) on all-MiniLM-L6-v2, on CPU, each task at its paper
# config (configs/TASK.yaml) but EPOCHS epochs in all, then `sat-ehft cost` projects each run to the paper's epochs,
# evaluating every epoch as the paper did, then every 2nd epoch (`eval_every: 2`).
# BoolQ and QNLI are not in DATA_DIR here; pass TASKS to add them where their official files are.
set -euo pipefail
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/cost-cpu}
EPOCHS=${EPOCHS:-2}
TASKS=${TASKS:-"cb copa rte wic mrpc cola sts-b"}
for task in $TASKS; do
  sat-ehft train --task "$task" --method ehft-bitfit --model all-MiniLM-L6-v2 --data-dir "$DATA_DIR" --seed 1 \
    --out "$OUT/$task" --set "epochs=$EPOCHS" --set "report_to=[]"
done
folders=$(for task in $TASKS; do echo "$OUT/$task"; done)
# shellcheck disable=SC2086  # one folder per task
sat-ehft cost $folders
echo "Projected with an evaluation every 2nd epoch (eval_every: 2) instead of every epoch:"
# shellcheck disable=SC2086
sat-ehft cost --eval-every 2 $folders
