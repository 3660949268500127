#!/usr/bin/env bash
# Table 3: EH-FT-reserve (the Stage-1 PET parameters kept into Stage 2). Writes $RUNS/table3/report.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks $ALL_TASKS --methods ft ehft-bitfit ehft-bitfit-reserve ehft-lora ehft-lora-reserve --out "$RUNS/table3"
collect "$RUNS/table3" sat-ehft report "$RUNS/table3" --table 3
