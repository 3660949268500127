# Shared settings of the table and figure scripts (sourced). Override any of them from the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL=${MODEL:-roberta-large}
DATA_DIR=${DATA_DIR:-data}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-1 2 3 4}
CONFIG_DIR=${CONFIG_DIR:-$here/../configs}
RECIPE=${RECIPE:-original}  # README: Recipes; `paper` trains as the paper's text says
ALL_TASKS="rte boolq copa cb wic mrpc qnli cola sts-b"
sweep() {
  sat-ehft sweep --model "$MODEL" --data-dir "$DATA_DIR" --config-dir "$CONFIG_DIR" --seeds $SEEDS --set recipe="$RECIPE" "$@"
}
