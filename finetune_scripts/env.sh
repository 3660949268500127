# Shared settings of the table and figure scripts (sourced). Override any of them from the environment.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL=${MODEL:-roberta-large}
DATA_DIR=${DATA_DIR:-data}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-1 2 3 4}
CONFIG_DIR=${CONFIG_DIR:-$here/../configs}
RECIPE=${RECIPE:-original}  # README: Recipes; `paper` trains as the paper's text says
ALL_TASKS="rte boolq copa cb wic mrpc qnli cola sts-b"
# LAUNCHERS=slurm: each script writes its whole grid as a Slurm job array (sat-ehft sweep --launchers:
# RUNS/<table>/commands.txt and slurm.sbatch, with LAUNCHER_OPTIONS such as
# "--slurm-partition gpu --slurm-time 12:00:00 --slurm-setup 'source ~/venvs/ehft/bin/activate'") and trains
# nothing; `sbatch` it, then run the script again without LAUNCHERS to collect the report.
LAUNCHERS=${LAUNCHERS:-}
case "$LAUNCHERS" in
  "") launchers=() ;;
  slurm) eval "launchers=(--launchers ${LAUNCHER_OPTIONS:-})" ;;
  *) echo "env.sh: LAUNCHERS=$LAUNCHERS: expected slurm, or unset to train here" >&2; exit 2 ;;
esac
sweep() {
  sat-ehft sweep --model "$MODEL" --data-dir "$DATA_DIR" --config-dir "$CONFIG_DIR" --seeds $SEEDS --set recipe="$RECIPE" \
    "${launchers[@]}" "$@"
}
# The report or figure of a grid, once trained: with LAUNCHERS, where to submit it instead.
collect() {
  if [ -n "$LAUNCHERS" ]; then
    echo "== wrote $1/slurm.sbatch: sbatch it; when its runs have finished, rerun this script without LAUNCHERS"
  else
    "${@:2}"
  fi
}
