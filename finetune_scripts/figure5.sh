#!/usr/bin/env bash
# Figure 5: the backbone's L2 distance from the pretrained weights along training on RTE, FT against EH-FT(BitFit),
# every 10 steps over the first 1,000 (the paper's span) and after every epoch.
set -euo pipefail
SEEDS=${SEEDS:-1 2 3}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks rte --methods ft ehft-bitfit --set track_weight_distance=true --set weight_distance_every=10 --out "$RUNS/figure5"
collect "$RUNS/figure5" sat-ehft analyze 5 "$RUNS/figure5" --out "$RUNS/figure5"
