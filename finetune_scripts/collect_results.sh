#!/usr/bin/env bash
# Copy what a grid's results need to keep (report, grid, every run's result.json, run.json, logs, dev
# predictions and Figure 1 numbers; no weights) from GRID into RESULTS:  bash finetune_scripts/collect_results.sh GRID RESULTS
set -euo pipefail
grid=${1:?usage: collect_results.sh GRID RESULTS}
results=${2:?usage: collect_results.sh GRID RESULTS}
mkdir -p "$results"
cp "$grid/report.md" "$grid/report.csv" "$grid/runs.csv" "$grid/grid.json" "$results/"
# Finished runs only (a run folder with result.json): a half-run folder is resumed from GRID, never from here.
(cd "$grid" && find . -name result.json) | while read -r finished; do
  run=$(dirname "$finished")
  (cd "$grid/$run" && find . -name result.json -o -name dev_predictions.json -o -name feature_change.json \
     -o -name metrics.jsonl -o -name train_loss.jsonl -o -name run.json) |
    while read -r file; do mkdir -p "$results/runs/$run/$(dirname "$file")"; cp "$grid/$run/$file" "$results/runs/$run/$file"; done
done
