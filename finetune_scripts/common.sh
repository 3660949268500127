#!/usr/bin/env bash
# Train one task with one method, each stage as its own launch (as the paper's code did):
#   bash finetune_scripts/common.sh TASK [METHOD]
# Settings come from the environment (defaults in brackets):
#   MODEL [roberta-large]   SAT folder, Hugging Face folder or model name
#   DATA_DIR [data]         folder with superglue/<TASK>/... and glue/<TASK>/...
#   HUB []                  1 = read the task from the Hugging Face hub instead of DATA_DIR
#   SEED [1]                OUT [runs/TASK-METHOD-seedSEED]
#   CONFIG [configs/TASK.yaml]   SET ["key=value key=value"] config overrides
#   NUM_GPUS [all visible]  0 = one plain process on CPU
#   HOSTFILE []             DeepSpeed hostfile: several nodes, reached over ssh
#   MASTER_PORT [29500]
# Rerunning skips finished stages and resumes an interrupted one.
set -euo pipefail
task=${1:?usage: common.sh TASK [METHOD]}
method=${2:-ehft-bitfit}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model=${MODEL:-roberta-large}
data_dir=${DATA_DIR:-data}
seed=${SEED:-1}
out=${OUT:-runs/${task}-${method}-seed${seed}}
config=${CONFIG:-$here/../configs/${task}.yaml}
port=${MASTER_PORT:-29500}
if [ -z "${NUM_GPUS+x}" ]; then
  NUM_GPUS=$(command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l || echo 0)
fi

if [ -n "${HUB:-}" ]; then data=(--hub); else data=(--data-dir "$data_dir"); fi
args=(train --task "$task" --method "$method" --model "$model" "${data[@]}" --seed "$seed"
      --out "$out" --config "$config")
for pair in ${SET:-}; do args+=(--set "$pair"); done

if [ -n "${HOSTFILE:-}" ]; then
  launch=(deepspeed --hostfile "$HOSTFILE" --master_port "$port" --no_local_rank --module sat_ehft)
elif [ "$NUM_GPUS" -gt 0 ]; then
  launch=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$port" --no_local_rank --module sat_ehft)
else
  launch=(python -m sat_ehft)
fi

# The method's name reaches Python as an argument, never as code.
stages=$(python -c 'import sys
from sat_ehft.methods import get_method
try:
    print(len(get_method(sys.argv[1]).stages))
except KeyError as err:
    sys.exit(f"common.sh: {err.args[0]}")' "$method")
for stage in $(seq 1 "$stages"); do
  echo "== $task $method: stage $stage of $stages -> $out"
  "${launch[@]}" "${args[@]}" --stage "$stage"
done
