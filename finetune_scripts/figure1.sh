#!/usr/bin/env bash
# Figure 1: feature change on RTE's training set after each method (and, for the two-stage ones, between
# Stage 1 and Stage 2, as section 2 of the paper measures it). Writes $RUNS/figure1/figure1_feature_change.*
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks rte --methods ft lp prefix lora bitfit lp-ft ehft-prefix ehft-bitfit --out "$RUNS/figure1"
collect "$RUNS/figure1" sat-ehft analyze 1 "$RUNS/figure1" --out "$RUNS/figure1"
