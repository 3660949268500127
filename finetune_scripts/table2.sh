#!/usr/bin/env bash
# Table 2: BERT-large, finetuning against EH-FT(BitFit), LR 3e-5, STS-B by Spearman. Writes $RUNS/table2/report.md.
# The backbone is uncased BERT-large, as the authors' code points to (a commented bert-large-uncased tokenizer
# line, SAT's BERT-Large download); MODEL=bert-large-cased for the cased one.
set -euo pipefail
MODEL=${MODEL:-bert-large-uncased}
CONFIG_DIR=${CONFIG_DIR:-$(dirname "${BASH_SOURCE[0]}")/../configs/bert-large}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sweep --tasks $ALL_TASKS --methods ft ehft-bitfit --out "$RUNS/table2"
collect "$RUNS/table2" sat-ehft report "$RUNS/table2" --table 2
