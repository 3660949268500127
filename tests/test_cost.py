"""`sat-ehft cost`: a run's measured cost (done.json) and its projection to the paper's epochs."""

import json

import pytest
from test_pipeline import spec_for

from sat_ehft.cli import main
from sat_ehft.config import Config
from sat_ehft.cost import run_figures, stage_figures
from sat_ehft.methods import get_method
from sat_ehft.pipeline import run


def test_a_stage_projects_training_and_evaluation_linearly_and_checkpoints_by_wall_time():
    done = {"epochs": 2, "last": {"step": 10},
            "cost": {"train_seconds": 600.0, "eval_seconds": 60.0, "checkpoint_seconds": 2.0, "checkpoint_bytes": 100,
                     "checkpoints": 1, "setup_seconds": 5.0}}
    # 10 epochs: 3000 s training + 300 s evaluating = 55 minutes: one checkpoint at 30 minutes, one at the end
    assert stage_figures(done, 10, checkpoint_minutes=30) == {
        "epochs": 10, "steps": 50, "train_seconds": 3000.0, "eval_seconds": 300.0, "checkpoints": 2,
        "checkpoint_seconds": 4.0, "checkpoint_bytes": 200.0, "setup_seconds": 5.0}
    assert stage_figures(done, 10, checkpoint_minutes=0)["checkpoints"] == 10  # every epoch
    assert stage_figures(done, 3, checkpoint_minutes=0.01)["checkpoints"] == 3  # never more than one per epoch
    # measured: 2 epochs, evaluated once (the last); projected: epochs 4, 8 and the last of 10
    assert stage_figures(done, 10, checkpoint_minutes=30, measured_every=4)["eval_seconds"] == 180.0
    # measured: both epochs evaluated (30 s each); projected to every 4th: 3 evaluations
    assert stage_figures(done, 10, checkpoint_minutes=30, eval_every=4)["eval_seconds"] == 90.0


def test_a_finished_run_is_summed_over_its_stages_and_projected_as_the_method_splits_epochs(tmp_path, tiny_bert,
                                                                                          rte_dir, capsys):
    folder = tmp_path / "run"
    run(spec_for("ehft-bitfit", tiny_bert, rte_dir, epochs=4, checkpoint_minutes=0), folder, log=lambda line: None)
    dones = [json.loads((folder / stage / "done.json").read_text()) for stage in ("stage1", "stage2")]
    measured = run_figures(folder)
    assert measured["measured_epochs"] == measured["epochs"] == 4 == measured["checkpoints"]
    assert measured["train_seconds"] == pytest.approx(sum(d["cost"]["train_seconds"] for d in dones))
    assert measured["steps"] == sum(d["last"]["step"] for d in dones)
    split = get_method("ehft-bitfit").stage_epochs(Config(epochs=40))
    projected = run_figures(folder, 40)
    assert projected["epochs"] == 40 == projected["checkpoints"]
    assert projected["train_seconds"] == pytest.approx(
        sum(d["cost"]["train_seconds"] * e / d["epochs"] for d, e in zip(dones, split)))
    assert projected["checkpoint_bytes"] == pytest.approx(
        sum(d["cost"]["checkpoint_bytes"] / d["cost"]["checkpoints"] * e for d, e in zip(dones, split)))
    assert projected["setup_seconds"] == pytest.approx(sum(d["cost"]["setup_seconds"] for d in dones))
    every_other = run_figures(folder, 40, eval_every=2)
    assert every_other["eval_seconds"] == pytest.approx(sum(d["cost"]["eval_seconds"] / d["epochs"] * -(-e // 2)
                                                            for d, e in zip(dones, split)))
    assert every_other["train_seconds"] == projected["train_seconds"]
    assert main(["cost", str(folder)]) == 0
    assert "| rte | ehft-bitfit | 4 -> 60 |" in capsys.readouterr().out  # configs/rte.yaml: 60 epochs
    assert main(["cost", str(folder), "--eval-every", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| rte |"))
    assert f"| {run_figures(folder, 60, eval_every=2)['eval_seconds']:.0f} |" in row
    with pytest.raises(SystemExit):
        main(["cost", str(folder), "--eval-every", "0"])


def test_cost_refuses_another_runs_done_json_and_names_a_stage_finished_before_costs_were_measured(tmp_path, tiny_bert,
                                                                                                 rte_dir, capsys):
    """A done.json swapped in from another run was costed as this run's; one written before cost was measured
    (an older sat-ehft) failed as `error: cost`."""
    folder = tmp_path / "run"
    run(spec_for("ehft-bitfit", tiny_bert, rte_dir, epochs=2), folder, log=lambda line: None)
    done_path = folder / "stage2" / "done.json"
    done = json.loads(done_path.read_text())
    assert done["origin"]["seed"] == 3 and done["origin"]["stage"] == "stage2"
    swapped = {**done, "origin": {**done["origin"], "seed": 4}}  # another seed's stage2, as that run wrote it
    done_path.write_text(json.dumps(swapped))
    assert main(["cost", str(folder)]) == 2
    assert f"error: {done_path}: written by another run (seed 4, not 3)" in capsys.readouterr().err
    older = {key: value for key, value in done.items() if key not in ("origin", "cost")}
    done_path.write_text(json.dumps(older))
    assert main(["cost", str(folder)]) == 2
    assert f"error: {done_path}: has no cost record" in capsys.readouterr().err
    (folder / "stage2" / "done.json").unlink()
    assert main(["cost", str(folder)]) == 2
    assert f"error: {done_path}: missing; the run has not finished stage2" in capsys.readouterr().err
