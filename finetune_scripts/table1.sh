#!/usr/bin/env bash
# Table 1: nine tasks x every method x 4 seeds on RoBERTa-large; Top-K over the k the paper searched. Mixout and
# Child-Tuning_D as the original code ran them (RECIPE=original: Mixout p = 0.7, Child-Tuning_D keep 0.1 unmasked),
# or, with RECIPE=paper, over the settings the paper's text searched. Writes $RUNS/table1/report.md. Settings: env.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
out=$RUNS/table1
sweep --tasks $ALL_TASKS --methods ft lp prefix lora bitfit lp-ft ehft-lora ehft-prefix ehft-bitfit --out "$out"
sweep --tasks $ALL_TASKS --methods topk --vary top_k=3,6,12 --out "$out"
if [ "$RECIPE" = original ]; then
  sweep --tasks $ALL_TASKS --methods mixout child-tuning-d --out "$out"
else
  sweep --tasks $ALL_TASKS --methods mixout --vary mixout_p=0.7,0.8,0.9 --vary lr=1e-5,2e-4 --out "$out"
  sweep --tasks $ALL_TASKS --methods child-tuning-d --vary child_tuning_keep=0.1,0.2,0.3 --out "$out"
fi
collect "$out" sat-ehft report "$out" --table 1
