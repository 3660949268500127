"""Grids through `sat-ehft sweep`, killed and resumed; reports checked against the run files."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from test_launch import launch_env

from sat_ehft.report import write_report
from sat_ehft.sweep import GridSettings, make_grid, run_grid, write_launchers

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
    return [sys.executable, "-m", "sat_ehft", "sweep", "--tasks", "rte", "cb", "--methods", "ft", "ehft-bitfit",
            "--seeds", "1", "2", "--model", str(tiny_bert), "--data-dir", str(data), "--config-dir", str(configs),
            "--out", str(out), "--workers", "1"]


def test_sweep_killed_midway_resumes_and_reports(tmp_path, tiny_bert, grid_inputs):
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
    assert 1 <= len(finished) < 8
    runs = make_grid(["rte", "cb"], ["ft", "ehft-bitfit"], [1, 2])
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    lines = []
    assert run_grid(out, runs, settings, workers=2, log=lines.append) == []
    assert lines[0] == f"{len(finished)} of 8 runs already finished; {8 - len(finished)} to go"
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in finished.items())  # not rerun
    assert len(list(out.rglob("result.json"))) == 8

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
    for task in ("rte", "cb"):
        ehft, ft = by_key[task, "ehft-bitfit"], by_key[task, "ft"]
        assert ft["time_vs_ft"] == 1.0 and ehft["time_vs_ft"] > 0
    paper = {(r["task"], r["method"]): r["paper"] for r in rows}
    assert paper == {("cb", "ehft-bitfit"): 99.12, ("cb", "ft"): 94.64, ("rte", "ehft-bitfit"): 88.10,
                     ("rte", "ft"): 87.52}
    markdown = (out / "report.md").read_text()
    assert "## Missing runs\n\nnone" in markdown and "- rte ehft-bitfit: 1, 2" in markdown
    assert (out / "report.csv").read_text().splitlines()[0].startswith("task,method,variant,metric,also,seeds,collapsed,train_accuracy,best_mean,best_std")


def test_report_names_missing_runs(tmp_path, tiny_bert, grid_inputs):
    data, configs = grid_inputs
    runs = make_grid(["rte"], ["ft"], [1, 2])
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs))
    run_grid(tmp_path, runs[:1], settings, workers=1, log=lambda line: None)
    write_launchers(tmp_path, runs, settings)  # the grid now holds both seeds; only seed 1 ran
    write_report(tmp_path, table="1")
    assert "## Missing runs\n\n- rte ft seed 2" in (tmp_path / "report.md").read_text()


def test_launchers_for_clusters(tmp_path, tiny_bert, grid_inputs):
    data, configs = grid_inputs
    runs = make_grid(["rte", "cb"], ["ehft-lora"], [1], {"lora_r": ["8", "16"]})
    assert [r.label for r in runs] == ["ehft-lora lora_r=8", "ehft-lora lora_r=16"] * 2
    settings = GridSettings(model=str(tiny_bert), data_dir=str(data), config_dir=str(configs), sets=("epochs=3",))
    write_launchers(tmp_path, runs, settings, gpus_per_run=2, hostfile="hosts")
    commands = (tmp_path / "commands.txt").read_text().splitlines()
    assert len(commands) == 4 and all(c.startswith("deepspeed --num_gpus 2 --no_local_rank --module sat_ehft train")
                                      for c in commands)
    assert "--set epochs=3 --set lora_r=16" in commands[1] and "rte/ehft-lora__lora_r=16/seed1" in commands[1]
    sbatch = (tmp_path / "slurm.sbatch").read_text()
    assert "#SBATCH --array=0-3" in sbatch and "#SBATCH --gres=gpu:2" in sbatch
    assert (tmp_path / "hostfile_launch.sh").read_text().count("deepspeed --hostfile hosts") == 4


@pytest.mark.parametrize("options, message", [
    (["--set", "lora_targets=[query,\nvalue]"], "a value with a line break cannot go on one line of commands.txt"),
    (["--set", "learning_rate=1e-5"], "--set learning_rate: unknown config key 'learning_rate'"),
    (["--vary", "epochs=1,4"], "epochs=1 leaves nothing for Stage 2 at stage1_share=0.1"),
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
