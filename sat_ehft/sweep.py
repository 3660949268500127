"""Grids of runs: every (task, method, variant, seed), each in its own run folder and its own process.

`run_grid` keeps `workers` runs going at once (one per GPU by default, pinned with
CUDA_VISIBLE_DEVICES; on CPU, runs at once share the cores out), skips runs whose result.json exists,
and goes on past a run that fails or is killed: calling it again resumes that run where its last
checkpoint left it. For clusters, `write_launchers` writes the same grid as a Slurm job array and as
DeepSpeed hostfile launches rather than inventing a scheduler.
"""

import itertools
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sat_ehft.atomic import read_json, write_json, write_text
from sat_ehft.runspec import absolute_path


LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class GridRun:
    task: str
    method: str
    seed: int
    variant: tuple = ()  # ((config key, value), ...) varied on top of the task config

    @property
    def label(self):
        """How reports name it: the method, then any varied keys ("ehft-lora lora_r=8")."""
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.variant)])

    def folder(self, out):
        return Path(out) / self.task / self.label.replace(" ", "__") / f"seed{self.seed}"


@dataclass(frozen=True)
class GridSettings:
    model: str  # backbone for every run
    data_dir: str  # official files for every task
    config_dir: str  # holds <task>.yaml for every task
    sets: tuple = ()  # key=value overrides for every run

    def config_file(self, run):
        config = Path(self.config_dir) / f"{run.task}.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: missing; --config-dir needs a <task>.yaml for every task")
        return config

    def overrides(self, run):
        return [*self.sets, *(f"{k}={v}" for k, v in run.variant)]

    def check(self, runs):
        """Every run's config loads and can train (unknown keys, bad values, a stage left without epochs, a
        best_metric the task lacks), so that a mistake fails the sweep before anything is written rather than
        every run on its own, on the cluster."""
        from sat_ehft.methods import get_method
        from sat_ehft.tasks import get_task, selection_metric

        for run in runs:
            config = self.spec(run).config
            get_method(run.method).check(config)
            selection_metric(get_task(run.task), config)

    def spec(self, run):
        """The RunSpec `sat-ehft train` records for `run` (its run.json)."""
        from sat_ehft.config import load_config, parse_overrides
        from sat_ehft.runspec import RunSpec

        return RunSpec(task=run.task, method=run.method, model=self.model, data_dir=self.data_dir, seed=run.seed,
                       config=load_config(self.config_file(run), parse_overrides(self.overrides(run))))

    def train_args(self, run, out):
        return ["train", "--task", run.task, "--method", run.method, "--model", self.model,
                "--data-dir", self.data_dir, "--seed", str(run.seed), "--out", str(run.folder(out)),
                "--config", str(self.config_file(run)), *(a for pair in self.overrides(run) for a in ("--set", pair))]


def parse_vary(pairs):
    """['lora_r=8,16'] -> {'lora_r': ['8', '16']}."""
    vary = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not values:
            raise ValueError(f"--vary {pair!r}: expected key=value1,value2,...")
        vary[key] = values.split(",")
    return vary


def make_grid(tasks, methods, seeds, vary=None):
    from sat_ehft.methods import get_method
    from sat_ehft.tasks import get_task

    tasks = [get_task(t).name for t in tasks]
    methods = [get_method(m).name for m in methods]
    keys = sorted(vary or {})
    variants = [tuple(zip(keys, values)) for values in itertools.product(*(vary[k] for k in keys))]
    return [GridRun(t, m, s, v) for t, m, v, s in itertools.product(tasks, methods, variants, seeds)]


def is_finished(run, out):
    return (run.folder(out) / "result.json").is_file()


def check_not_stale(out, runs, settings):
    """Refuse a grid whose run folders (finished or started) were run with another config, model or data than
    this sweep would use: a grid holds one setting per run, and a finished run would otherwise be counted
    as done under settings it never ran with."""
    from sat_ehft.runspec import differing_keys

    stale = []
    for run in runs:
        recorded = run.folder(out) / "run.json"
        if recorded.is_file():
            differing = differing_keys(settings.spec(run), read_json(recorded))
            stale += [f"{run.folder(out)} (differs in {', '.join(differing)})"] if differing else []
    if stale:
        listed = "; ".join(stale[:5]) + (f"; and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise ValueError(f"{len(stale)} run folder(s) in {out} were run with other settings than this sweep's: "
                         f"{listed}. Use a new --out, or delete those folders to run them again")


def write_grid(out, runs, settings):
    """grid.json: every run swept into `out` so far (several sweeps may share a folder), so that reports
    can name the runs still missing."""
    known = read_grid(out) or []
    merged = known + [r for r in runs if r not in known]
    write_json(Path(out) / "grid.json", {"settings": settings.__dict__, "runs": [r.__dict__ for r in merged]})


def read_grid(out):
    path = Path(out) / "grid.json"
    if not path.is_file():
        return None
    data = read_json(path)
    return [GridRun(r["task"], r["method"], r["seed"], tuple(map(tuple, r["variant"]))) for r in data["runs"]]


def _run_one(run, out, settings, device, threads, log):
    folder = run.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    # Each run is its own process group: no rendezvous settings of this process may leak into it.
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # the user's own setting wins
    with open(folder / "sweep.log", "a", encoding="utf-8") as output:
        code = subprocess.call([sys.executable, "-m", "sat_ehft", *settings.train_args(run, out)],
                               stdout=output, stderr=subprocess.STDOUT, env=env)
    outcome = "finished" if code == 0 else f"FAILED (exit {code}, see {folder / 'sweep.log'})"
    log(f"{outcome}: {run.task} {run.label} seed {run.seed}")
    return code == 0


def run_grid(out, runs, settings, workers=None, devices=None, log=print):
    """Run every unfinished run, `workers` at a time; returns the runs that did not finish. Refuses (before
    anything runs) a grid holding runs of other settings (check_not_stale)."""
    check_not_stale(out, runs, settings)
    write_grid(out, runs, settings)
    pending = [r for r in runs if not is_finished(r, out)]
    log(f"{len(runs) - len(pending)} of {len(runs)} runs already finished; {len(pending)} to go")
    devices = devices if devices is not None else visible_gpus()
    workers = workers or max(1, len(devices))
    slots = [devices[i % len(devices)] if devices else None for i in range(workers)]
    threads = cpu_threads_each(workers) if workers > 1 and not devices else None
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_run_one, run, out, settings, slots[i % workers], threads, log)
                   for i, run in enumerate(pending)]
        results = [f.result() for f in futures]
    return [run for run, ok in zip(pending, results) if not ok]


def cpu_threads_each(workers):
    """Threads for each of `workers` runs sharing this machine's cores on CPU: torch would give every run all of
    them, and runs oversubscribing the cores train slower together than one alone. Two one-thread MiniLM runs
    on 2 cores trained 1.3-1.4x as fast together as one two-thread run (results/minilm-study)."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def visible_gpus():
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


@dataclass(frozen=True)
class SlurmOptions:
    """What slurm.sbatch asks Slurm for, per array task (one run each)."""

    gpus_per_run: int = 1
    """GPUs per run (--gres=gpu:N; 0 asks for none). DeepSpeed uses the ones Slurm makes visible."""
    partition: str = ""
    """Partition to queue in; empty leaves it to the cluster's default."""
    time: str = "24:00:00"
    """Wall-clock limit per run; a run stopped at the limit resumes from its checkpoint when resubmitted."""
    cpus_per_task: int = 8
    """CPU cores per run (tokenisation, data loading)."""
    mem: str = "64G"
    """Host memory per run."""
    setup: str = ""
    """A shell line each task runs first, e.g. 'source ~/venvs/ehft/bin/activate'."""

    def directives(self, count, out):
        asked = {"job-name": "sat-ehft", "array": f"0-{count - 1}", "partition": self.partition, "time": self.time,
                 "cpus-per-task": self.cpus_per_task, "mem": self.mem,
                 "gres": f"gpu:{self.gpus_per_run}" if self.gpus_per_run else "", "output": f"{out}/slurm-%A_%a.out"}
        return [f"#SBATCH --{key}={value}" for key, value in asked.items() if value != ""]


# Each line of commands.txt gets its own rendezvous port, so that array tasks sharing a node never collide.
FIRST_PORT, PORTS = 29500, 10000


def absolute(settings):
    """The settings with every relative path made absolute (a model name that is no folder stays a name), as
    every run records them: launch files run wherever the scheduler starts them, and a grid written for a
    cluster, then collected here, holds the same run.json either way."""
    return GridSettings(model=absolute_path(settings.model), data_dir=os.path.abspath(settings.data_dir),
                        config_dir=os.path.abspath(settings.config_dir), sets=settings.sets)


def launch_lines(out, runs, settings):
    """commands.txt's lines, one per run of the grid so far: those already there (another sweep into the same
    folder) and `runs`, a line each, in order; each with its own --master_port."""
    path, module = out / "commands.txt", ["--no_local_rank", "--module", "sat_ehft"]
    by_folder = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        words = shlex.split(line)
        by_folder[words[words.index("--out") + 1]] = words[words.index("--module") + 2:]
    for run in runs:
        by_folder[str(run.folder(out))] = settings.train_args(run, out)
    return [shlex.join(["deepspeed", "--master_port", str(FIRST_PORT + index % PORTS), *module, *train])
            for index, train in enumerate(by_folder.values())]


def write_launchers(out, runs, settings, slurm=SlurmOptions(), hostfile=None):
    """commands.txt (one `deepspeed ... sat_ehft train` line per run of the grid, every path absolute),
    slurm.sbatch (a job array over those lines) and, given a DeepSpeed hostfile, hostfile_launch.sh (each run
    as one launch over all hosts). A line passes no --num_gpus: DeepSpeed then takes the GPUs in
    CUDA_VISIBLE_DEVICES, which Slurm sets per array task (else every GPU of the node)."""
    out, settings = Path(out).absolute(), absolute(settings)
    broken = [arg for run in runs for arg in settings.train_args(run, out) if "\n" in arg or "\r" in arg]
    if broken:  # commands.txt holds one run a line, and slurm.sbatch evals a line
        raise ValueError(f"{broken[0]!r}: a value with a line break cannot go on one line of commands.txt")
    write_grid(out, runs, settings)
    lines = launch_lines(out, runs, settings)
    write_text(out / "commands.txt", "\n".join(lines) + "\n")
    write_text(out / "slurm.sbatch", "\n".join([
        "#!/usr/bin/env bash", *slurm.directives(len(lines), out),
        "# One array task per line of commands.txt; finished runs return at once, killed ones resume.",
        "# Submit: sbatch slurm.sbatch",
        "set -eo pipefail", *([slurm.setup] if slurm.setup else []), f"cd {shlex.quote(str(out))}",
        f'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(out / "commands.txt"))})"',
    ]) + "\n")
    if hostfile:
        hosts = str(Path(hostfile).absolute())
        launches = [line.replace("deepspeed ", f"deepspeed --hostfile {shlex.quote(hosts)} ", 1) for line in lines]
        write_text(out / "hostfile_launch.sh", "#!/usr/bin/env bash\n# Each run uses every host of the hostfile.\n"
                   "set -e\n" + "\n".join(launches) + "\n")
