#!/usr/bin/env bash
# EH-FT (default BitFit in Stage 1; METHOD=ehft-lora etc.) on QNLI. Settings: see common.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/common.sh" qnli "${METHOD:-ehft-bitfit}"
