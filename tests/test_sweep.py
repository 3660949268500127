"""Grids through `sat-ehft sweep`, killed and resumed; reports checked against the run files."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_launch import launch_env

from sat_ehft.report import write_report
from sat_ehft.sweep import GridSettings, SlurmOptions, make_grid, run_grid, write_launchers

SMALL = "epochs: 2\nbatch_size: 8\nmicro_batch_size: 8\neval_batch_size: 32\nmax_length: 64\nlr: 1.0e-3\n"


@pytest.fixture
def grid_inputs(tmp_path, shared_data):
    """A few real RTE and CB rows in the official layout, and small configs for both."""
    data = tmp_path / "data"
    for task, count in (("RTE", 32), ("CB", 24)):
        (data / "superglue" / task).mkdir(parents=True)
        for split in ("train", "val"):
            rows = (shared_data / "superglue" / task / f"{split}.jsonl").read_text().splitlines()[:count]
            (data / "superglue" / task / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    configs = tmp_path / "configs"
    configs.mkdir()
    for task in ("rte", "cb"):
        (configs / f"{task}.yaml").write_text(SMALL)
    return data, configs


def assert_rounded(reported, exact, digits):
    """The report rounds to `digits`; a value on a rounding tie may go either way, so allow half a unit."""
    assert reported == round(reported, digits)
    assert abs(reported - exact) <= 0.5 * 10 ** -digits + 1e-9, (reported, exact)


def sweep_command(out, tiny_bert, data, configs):
    return [sys.executable, "-m", "sat_ehft", "sweep", "--tasks", "rte", "--methods", "ft", "ehft-bitfit",
            "--seeds", "1", "2", "--model", str(tiny_bert), "--data-dir", str(data), "--config-dir", str(configs),
            "--out", str(out), "--workers", "1"]


def test_sweep_killed_midway_resumes_and_reports(tmp_path, tiny_bert, grid_inputs, monkeypatch):
    """Killed after its first finished run, a sweep of 4 runs resumes the other 3 and keeps that one. The
    resume runs 2 at once on CPU, each on half the cores."""
    data, configs = grid_inputs
    out = tmp_path / "grid"
    victim = subprocess.Popen(sweep_command(out, tiny_bert, data, configs), cwd=REPO, env=launch_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.rglob("result.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(victim.pid, signal.SIGKILL)  # the sweep and the run it is in the middle of
    victim.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    assert 1 <= len(finished) < 4
    runs = make_grid(["rte"], ["ft", "ehft-bitfit"], [1, 2])
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    lines = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run_grid(out, runs, settings, workers=2, log=lines.append) == []
    assert lines[0] == f"{len(finished)} of 4 runs already finished; {4 - len(finished)} to go"
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in finished.items())  # not rerun
    assert len(list(out.rglob("result.json"))) == 4
    half = max(1, len(os.sched_getaffinity(0)) // 2)
    for done in out.rglob("done.json"):  # launch_env's one thread before the kill
        resumed = done.parent.parent / "result.json" not in finished
        assert json.loads(done.read_text())["cost"]["cpu_threads"] == (half if resumed else 1), done

    rows = write_report(out, table="1")
    for row in rows:
        results = [json.loads((out / row["task"] / row["method"] / f"seed{s}" / "result.json").read_text())
                   for s in (1, 2)]
        best = [100 * r["best"] for r in results]
        last = [100 * r["last"] for r in results]
        assert row["seeds"] == 2 and row["collapsed"] == sum(r["collapsed"] for r in results)
        assert_rounded(row["best_mean"], np.mean(best), 2)
        assert_rounded(row["best_std"], np.std(best, ddof=1), 2)
        assert_rounded(row["last_mean"], np.mean(last), 2)
        assert_rounded(row["last_std"], np.std(last, ddof=1), 2)
        seconds = [sum(stage["seconds"] for stage in r["stages"].values()) for r in results]
        assert_rounded(row["seconds"], np.mean(seconds), 1)
    by_key = {(r["task"], r["method"]): r for r in rows}
    ehft, ft = by_key["rte", "ehft-bitfit"], by_key["rte", "ft"]
    assert ft["time_vs_ft"] == 1.0 and ehft["time_vs_ft"] > 0
    paper = {(r["task"], r["method"]): r["paper"] for r in rows}
    assert paper == {("rte", "ehft-bitfit"): 88.10, ("rte", "ft"): 87.52}
    markdown = (out / "report.md").read_text()
    assert "## Missing runs\n\nnone" in markdown and "- rte ehft-bitfit: 1, 2" in markdown
    assert (out / "report.csv").read_text().splitlines()[0].startswith("task,method,variant,metric,also,seeds,collapsed,train_accuracy,best_mean,best_std")


def test_runs_at_once_on_cpu_share_the_cores_and_a_users_thread_setting_wins(tmp_path, tiny_bert, grid_inputs,
                                                                             monkeypatch):
    import sat_ehft.sweep as sweep

    data, configs = grid_inputs
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    runs, seen = make_grid(["rte"], ["ft"], [1, 2, 3]), []
    monkeypatch.setattr(sweep.subprocess, "call", lambda args, env, **kw: seen.append(env) or 1)
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = {1: None, 2: "4", 3: "2"}
    for workers, threads in expected.items():
        seen.clear()
        run_grid(tmp_path / f"cpu{workers}", runs, settings, workers=workers, devices=[], log=lambda line: None)
        assert [env.get("OMP_NUM_THREADS") for env in seen] == [threads] * 3, workers
    seen.clear()
    run_grid(tmp_path / "gpus", runs, settings, workers=2, devices=[0, 1], log=lambda line: None)
    assert sorted((env.get("OMP_NUM_THREADS"), env["CUDA_VISIBLE_DEVICES"]) for env in seen) == [
        (None, "0"), (None, "0"), (None, "1")]  # a GPU run keeps torch's own threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    seen.clear()
    run_grid(tmp_path / "user", runs, settings, workers=2, devices=[], log=lambda line: None)
    assert [env["OMP_NUM_THREADS"] for env in seen] == ["3"] * 3


def test_report_names_missing_runs(tmp_path, tiny_bert, grid_inputs):
    data, configs = grid_inputs
    runs = make_grid(["rte"], ["ft"], [1, 2])
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    run_grid(tmp_path, runs[:1], settings, workers=1, log=lambda line: None)
    write_launchers(tmp_path, runs, settings)  # the grid now holds both seeds; only seed 1 ran
    write_report(tmp_path, table="1")
    assert "## Missing runs\n\n- rte ft seed 2" in (tmp_path / "report.md").read_text()


def test_launchers_for_clusters(tmp_path, tiny_bert, grid_inputs, monkeypatch):
    """Every path absolute (the scheduler starts a task anywhere), the Slurm options asked for, a port per line,
    and a second sweep into the folder adds its runs to the same array instead of replacing the first's."""
    data, configs = grid_inputs
    monkeypatch.chdir(tmp_path)
    runs = make_grid(["rte", "cb"], ["ehft-lora"], [1], {"lora_r": ["8", "16"]})
    assert [r.label for r in runs] == ["ehft-lora lora_r=8", "ehft-lora lora_r=16"] * 2
    (tmp_path / "hosts").write_text("node1 slots=8\n")
    settings = GridSettings(model=str(tiny_bert), data_dir=os.path.relpath(data), config_dir=os.path.relpath(configs),
                            sets=("epochs=3",))
    slurm = SlurmOptions(gpus_per_run=2, partition="a100", time="02:00:00", cpus_per_task=4, mem="32G",
                         setup="source /opt/venvs/ehft/bin/activate")
    write_launchers("grid", runs, settings, slurm=slurm, hostfile="hosts")
    commands = (tmp_path / "grid" / "commands.txt").read_text().splitlines()
    assert [c.split(" train ")[0] for c in commands] == [
        f"deepspeed --master_port {29500 + i} --no_local_rank --module sat_ehft" for i in range(4)]
    assert "--set epochs=3 --set lora_r=16" in commands[1]
    words = shlex.split(commands[1])
    for option, path in (("--data-dir", data), ("--config", configs / "rte.yaml"), ("--model", tiny_bert),
                         ("--out", tmp_path / "grid" / "rte" / "ehft-lora__lora_r=16" / "seed1")):
        assert words[words.index(option) + 1] == str(path) and Path(path).is_absolute()
    sbatch = (tmp_path / "grid" / "slurm.sbatch").read_text().splitlines()
    assert [line for line in sbatch if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=sat-ehft", "#SBATCH --array=0-3", "#SBATCH --partition=a100", "#SBATCH --time=02:00:00",
        "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32G", "#SBATCH --gres=gpu:2",
        f"#SBATCH --output={tmp_path}/grid/slurm-%A_%a.out"]
    assert sbatch[-3:-1] == ["source /opt/venvs/ehft/bin/activate", f"cd {tmp_path}/grid"]
    launches = (tmp_path / "grid" / "hostfile_launch.sh").read_text()
    assert launches.count(f"deepspeed --hostfile {tmp_path}/hosts --master_port ") == 4

    write_launchers("grid", make_grid(["rte"], ["ft"], [1]), settings, slurm=SlurmOptions(gpus_per_run=0))
    again = (tmp_path / "grid" / "commands.txt").read_text().splitlines()
    assert again[:4] == commands and "--method ft" in again[4] and "--master_port 29504" in again[4]
    sbatch = (tmp_path / "grid" / "slurm.sbatch").read_text()
    assert "#SBATCH --array=0-4" in sbatch and "--gres" not in sbatch and "--partition" not in sbatch


def test_an_array_task_runs_on_the_gpus_slurm_gave_it(tmp_path, tiny_bert, grid_inputs):
    """DeepSpeed's runner drops CUDA_VISIBLE_DEVICES when given --num_gpus, so every task would take GPU 0
    unless Slurm confines devices with cgroups. A commands.txt line passes none: the runner, run here as the
    array task runs it with Slurm's CUDA_VISIBLE_DEVICES=3, takes GPU 3 (and stops, this machine having none)."""
    data, configs = grid_inputs
    write_launchers(tmp_path, make_grid(["rte"], ["ft"], [1]), GridSettings(str(tiny_bert), str(data), str(configs)))
    line = (tmp_path / "commands.txt").read_text().splitlines()[0]
    task = subprocess.run(["bash", "-c", line], env=launch_env(CUDA_VISIBLE_DEVICES="3"), capture_output=True,
                          text=True, timeout=300)
    output = task.stdout + task.stderr
    assert "Detected VISIBLE_DEVICES=3: setting --include=localhost:3" in output
    assert "No slot '3' specified on host 'localhost'" in output and task.returncode != 0


def test_a_table_script_writes_its_whole_grid_for_slurm(tmp_path, tiny_bert, grid_inputs):
    """LAUNCHERS=slurm: table1.sh's three sweeps make one array of every run of Table 1 (9 tasks x the 9 plain
    methods, Top-K's 3 k, Mixout and Child-Tuning_D under the original recipe; one seed), train nothing and
    report nothing."""
    data, _ = grid_inputs
    env = launch_env(MODEL=str(tiny_bert), DATA_DIR=str(data), RUNS=str(tmp_path), SEEDS="1", LAUNCHERS="slurm",
                     LAUNCHER_OPTIONS="--slurm-partition gpu --slurm-setup 'source /opt/ehft/bin/activate'")
    done = subprocess.run(["bash", "finetune_scripts/table1.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = (tmp_path / "table1" / "commands.txt").read_text().splitlines()
    assert len(commands) == 9 * (9 + 3 + 2) and len({shlex.split(c)[2] for c in commands}) == len(commands)
    sbatch = (tmp_path / "table1" / "slurm.sbatch").read_text().splitlines()
    assert "#SBATCH --array=0-125" in sbatch and "#SBATCH --partition=gpu" in sbatch
    assert "source /opt/ehft/bin/activate" in sbatch
    assert f"== wrote {tmp_path}/table1/slurm.sbatch: sbatch it" in done.stdout
    assert not (tmp_path / "table1" / "report.md").exists() and not list(tmp_path.glob("table1/*/*/*/run.json"))
    wrong = subprocess.run(["bash", "finetune_scripts/table1.sh"], cwd=REPO, env={**env, "LAUNCHERS": "pbs"},
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "LAUNCHERS=pbs: expected slurm, or unset to train here" in wrong.stderr


@pytest.mark.parametrize("options, message", [
    (["--set", "lora_targets=[query,\nvalue]"], "a value with a line break cannot go on one line of commands.txt"),
    (["--set", "learning_rate=1e-5"], "--set learning_rate: unknown config key 'learning_rate'"),
    (["--vary", "epochs=1,4"], "epochs=1 leaves nothing for Stage 2 at stage1_share=0.1"),
    (["--set", "best_metric=f1"], "best_metric='f1': task rte reports accuracy (or 'original')"),
])
def test_sweep_checks_every_run_before_writing_anything(tmp_path, tiny_bert, grid_inputs, capsys, options, message):
    from sat_ehft.cli import main

    data, configs = grid_inputs
    argv = ["sweep", "--tasks", "rte", "--methods", "ehft-bitfit", "--seeds", "1", "--model", str(tiny_bert),
            "--data-dir", str(data), "--config-dir", str(configs), "--out", str(tmp_path / "grid"), "--launchers",
            *options]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()


def test_a_grid_refuses_runs_of_other_settings_before_running_anything(tmp_path, tiny_bert, grid_inputs):
    from sat_ehft.runspec import described

    data, configs = grid_inputs
    runs = make_grid(["rte"], ["ft"], [1, 2])
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    for run in runs:  # both runs finished under this config (their run.json as `sat-ehft train` writes it)
        run.folder(tmp_path).mkdir(parents=True)
        (run.folder(tmp_path) / "run.json").write_text(json.dumps(described(settings.spec(run))))
        (run.folder(tmp_path) / "result.json").write_text("{}")
    lines = []
    assert run_grid(tmp_path, runs, settings, log=lines.append) == [] and lines == ["2 of 2 runs already finished; 0 to go"]
    grid = (tmp_path / "grid.json").read_text()
    changed = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs), sets=("lr=2e-3",))
    with pytest.raises(ValueError, match=r"2 run folder\(s\) in .* were run with other settings than this sweep's: "
                                         r".*rte/ft/seed1 \(differs in config.lr\)"):
        run_grid(tmp_path, runs, changed, log=lines.append)
    (configs / "rte.yaml").write_text(SMALL + "clip_grad: 0.5\n")  # a changed config file, as a recipe change would
    with pytest.raises(ValueError, match=r"seed2 \(differs in config.clip_grad\)"):
        run_grid(tmp_path, runs, settings, log=lines.append)
    assert (tmp_path / "grid.json").read_text() == grid and len(lines) == 1  # nothing rewritten, nothing run


def test_a_folder_recorded_relative_is_the_same_folder_given_absolute(tmp_path, monkeypatch):
    """sweep now records --data-dir and a model folder absolute; a run recorded relative (by `train`, or by sweep
    before) still matches from the same working directory, and another folder still differs."""
    from sat_ehft.config import Config
    from sat_ehft.runspec import RunSpec, described, differing_keys

    monkeypatch.chdir(tmp_path)
    recorded = described(RunSpec(task="rte", method="ft", model="models/tiny", data_dir="data", seed=1, config=Config()))
    same = RunSpec(task="rte", method="ft", model=str(tmp_path / "models" / "tiny"), data_dir=str(tmp_path / "data"),
                   seed=1, config=Config())
    assert differing_keys(same, recorded) == []
    other = RunSpec(task="rte", method="ft", model="roberta-large", data_dir=str(tmp_path / "data2"), seed=1,
                    config=Config())
    assert differing_keys(other, recorded) == ["model", "data_dir"]
