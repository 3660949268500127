#!/usr/bin/env bash
# Figure 6: EH-FT(BitFit) with Stage 1 taking 10%..90% of the epochs, total fixed (a) and Stage 2 fixed (b).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks cola rte boolq qnli --methods ehft-bitfit --vary stage1_share=0.1,0.3,0.5,0.7,0.9 \
  --vary stage1_mode=share-of-total,stage2-fixed --out "$RUNS/figure6"
collect "$RUNS/figure6" sat-ehft analyze 6 "$RUNS/figure6" --out "$RUNS/figure6"
