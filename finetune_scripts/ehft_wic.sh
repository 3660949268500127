#!/usr/bin/env bash
# EH-FT (default BitFit in Stage 1; METHOD=ehft-lora etc.) on WIC. Settings: see common.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/common.sh" wic "${METHOD:-ehft-bitfit}"
