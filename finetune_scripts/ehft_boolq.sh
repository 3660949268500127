#!/usr/bin/env bash
# EH-FT (default BitFit in Stage 1; METHOD=ehft-lora etc.) on BOOLQ. Settings: see common.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/common.sh" boolq "${METHOD:-ehft-bitfit}"
