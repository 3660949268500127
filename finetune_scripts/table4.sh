#!/usr/bin/env bash
# Table 4: EH-FT(LoRA) by LoRA rank on RTE, BoolQ and QNLI. Writes $RUNS/table4/report.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks rte boolq qnli --methods ehft-lora --vary lora_r=8,16,32,256,512,1024 --out "$RUNS/table4"
collect "$RUNS/table4" sat-ehft report "$RUNS/table4" --table 4
