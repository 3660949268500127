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
#   HOSTFILE []             DeepSpeed hostfile ("host slots=N" per line): several nodes, started from this one
#                           over ssh with pdsh (passwordless ssh, the same paths on every node)
#   NODE_RANK []            with HOSTFILE: start only this node's ranks, without ssh (run the same command on
#                           every node, each with its own NODE_RANK, 0 for the hostfile's first host)
#   MASTER_ADDR []          the address of the hostfile's first node as the others reach it (needed with
#                           NODE_RANK; over ssh DeepSpeed asks that node's `hostname -I` when unset)
#   MASTER_PORT [29500]
#   EXPORT_VARS []          more variable names to pass to the other nodes (see TRAVEL below)
#   SAT_EHFT_COLLECTIVE_TIMEOUT [1800]  seconds a rank waits for the others in a collective: a rank that died
#                           stops the rest of the launch after at most this
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

# What the other nodes' ranks need from this shell's environment, where set; DeepSpeed's runner exports the
# variables named in DS_ENV_FILE on every node it starts over ssh (a node started with NODE_RANK has its own).
TRAVEL=(PATH VIRTUAL_ENV PYTHONPATH HF_HOME HF_HUB_OFFLINE TRANSFORMERS_OFFLINE SAT_EHFT_CACHE SAT_HOME
        SAT_EHFT_COLLECTIVE_TIMEOUT DS_ACCELERATOR OMP_NUM_THREADS WANDB_MODE WANDB_DIR WANDB_API_KEY ${EXPORT_VARS:-})
travelling_env() {
  local file name
  file=$(mktemp "${TMPDIR:-/tmp}/sat-ehft-env.XXXXXX")
  for name in "${TRAVEL[@]}"; do
    if [ -n "${!name+x}" ]; then printf '%s=%q\n' "$name" "${!name}"; fi
  done > "$file"
  echo "$file"
}
if [ -n "${HOSTFILE:-}" ]; then
  launch=(deepspeed --hostfile "$HOSTFILE" --master_port "$port")  # the launcher's options, then the module's
  if [ -n "${MASTER_ADDR:-}" ]; then launch+=(--master_addr "$MASTER_ADDR"); fi
  if [ -n "${NODE_RANK:-}" ]; then
    : "${MASTER_ADDR:?NODE_RANK needs MASTER_ADDR, the address of the first node of the hostfile}"
    launch+=(--no_ssh --node_rank "$NODE_RANK")
  else
    DS_ENV_FILE=$(travelling_env)
    export DS_ENV_FILE
    echo "== passed to every node: $(cut -d= -f1 "$DS_ENV_FILE" | tr '\n' ' ')(DS_ENV_FILE)"
    trap 'rm -f "$DS_ENV_FILE"' EXIT
  fi
  launch+=(--no_local_rank --module sat_ehft)
elif [ "$NUM_GPUS" -gt 0 ]; then
  launch=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$port" --no_local_rank --module sat_ehft)
else
  launch=(python -m sat_ehft)
fi

# The method's name reaches Python as an argument, never as code. It prints the method's number of stages, then
# those already finished in OUT (their done.json is there).
read -r stages finished < <(python -c 'import sys
from pathlib import Path
from sat_ehft.methods import get_method
try:
    method = get_method(sys.argv[1])
except KeyError as err:
    sys.exit(f"common.sh: {err.args[0]}")
done = [str(n) for n, stage in enumerate(method.stages, 1) if (Path(sys.argv[2]) / stage.name / "done.json").is_file()]
print(len(method.stages), ",".join(done))' "$method" "$out" || echo failed)
if [ "$stages" = failed ]; then exit 1; fi
for stage in $(seq 1 "$stages"); do
  # A finished stage costs no launch; the last one always runs, to check the folder and print the result.
  if [ "$stage" -lt "$stages" ] && [[ ",$finished," == *",$stage,"* ]]; then
    echo "== $task $method: stage $stage of $stages already finished, skipped"
    continue
  fi
  echo "== $task $method: stage $stage of $stages -> $out"
  "${launch[@]}" "${args[@]}" --stage "$stage"
done
