#!/usr/bin/env bash
# The converged MiniLM study committed in results/minilm-study (see its README): {CB, COPA, RTE, MRPC} x
# {ft, lp-ft, ehft-bitfit, ehft-lora} x seeds 1-5 on all-MiniLM-L6-v2 with configs/minilm-study/, reported
# against plain finetuning (`sat-ehft report --baseline ft`), with Figure 1 over every finished run and Figure 7
# (training loss and accuracy) per task over seed 1 of each method.
#   bash finetune_scripts/reproduce_minilm_study.sh           run (or resume) the grid, then collect
#   bash finetune_scripts/reproduce_minilm_study.sh collect   only collect what has finished (e.g. before a stop)
# Resumable across machines: the grid starts from the finished runs committed in RESULTS (their result.json;
# sweep skips them), a killed run resumes from its checkpoint where GRID survived. Collecting computes each newly
# finished run's Figure 1 numbers while its weights are there (RUN/feature_change.json), so the committed results
# need none. About 16 hours on 2 CPU cores one run at a time, about 12 two at once (WORKERS).
# TASKS, METHODS and SEEDS narrow or widen it (tasks in this order); WORKERS [2] runs at once (on
# CPU they share the cores: 1.3-1.4x the throughput of one run at a time on 2 cores); DATA_DIR [../shared/data];
# GRID [runs/minilm-study] holds the run folders; RESULTS [results/minilm-study] gets the report, Figure 1 and
# every finished run's result, run.json, logs, dev predictions and Figure 1 numbers (not the weights).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
grid=${GRID:-runs/minilm-study}
results=${RESULTS:-results/minilm-study}
data=${DATA_DIR:-$here/../../shared/data}
collect() {
  [ -n "$(find "$grid" -name result.json -print -quit 2>/dev/null)" ] || return 0
  sat-ehft analyze 1 "$grid" --out "$grid/figure1"
  sat-ehft report "$grid" --baseline ft
  bash "$here/collect_results.sh" "$grid" "$results"
  mkdir -p "$results/figure1" && cp "$grid"/figure1/* "$results/figure1/"
  # Figure 7 per task: seed 1 of every finished method, the final stage's training loss and accuracy
  local folder task runs
  for folder in "$grid"/*/; do
    runs=$(find "$folder" -mindepth 3 -maxdepth 3 -path '*/seed1/result.json' -printf '%h\n' | sort)
    [ -n "$runs" ] || continue  # not a task's folder, or no seed 1 finished yet
    task=$(basename "$folder")
    # shellcheck disable=SC2086  # one folder per line
    sat-ehft analyze 7 $runs --out "$grid/figure7/$task"
    mkdir -p "$results/figure7/$task" && cp "$grid/figure7/$task"/* "$results/figure7/$task/"
  done
}
if [ "${1:-run}" = collect ]; then collect; exit; fi
if [ -d "$results/runs" ]; then  # finished runs committed by an earlier session, perhaps on another machine
  (cd "$results/runs" && find . -name result.json) | while read -r finished; do
    run=$(dirname "$finished")
    [ -e "$grid/$run/result.json" ] || { mkdir -p "$grid/$run" && cp -r "$results/runs/$run/." "$grid/$run/"; }
  done
fi
# One sweep, task after task, so that the workers stay busy until the grid's last run
# shellcheck disable=SC2086  # lists of names
sat-ehft sweep --tasks ${TASKS:-cb copa rte mrpc} --methods ${METHODS:-ft lp-ft ehft-bitfit ehft-lora} \
  --seeds ${SEEDS:-1 2 3 4 5} --model all-MiniLM-L6-v2 --data-dir "$data" \
  --config-dir "$here/../configs/minilm-study" --out "$grid" --workers "${WORKERS:-2}"
collect
