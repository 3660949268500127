#!/usr/bin/env bash
# Figure 7: training-loss convergence on CoLA and RTE, FT against EH-FT(BitFit) with 10% and 30% Stage 1.
set -euo pipefail
SEEDS=${SEEDS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks cola rte --methods ft --out "$RUNS/figure7"
sweep --tasks cola rte --methods ehft-bitfit --vary stage1_share=0.1,0.3 --out "$RUNS/figure7"
figures() {
  for task in cola rte; do sat-ehft analyze 7 "$RUNS/figure7/$task" --out "$RUNS/figure7/$task"; done
}
collect "$RUNS/figure7" figures
