#!/usr/bin/env bash
# Figure 4: t-SNE of the head's hidden layer on CB: a random head (ft), the LP head, the BitFit head.
set -euo pipefail
SEEDS=${SEEDS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks cb --methods ft lp-ft ehft-bitfit --out "$RUNS/figure4"
collect "$RUNS/figure4" sat-ehft analyze 4 "$RUNS/figure4" --out "$RUNS/figure4"
