"""CI runs the README's test command: the two must not drift apart."""

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    command = ci_lines[-1]
    assert "pytest" in command
    assert f"```bash\n{command}\n```" in readme


def test_shell_scripts_parse():
    import subprocess

    scripts = sorted((REPO / "finetune_scripts").glob("*.sh")) + sorted((REPO / "benchmarks").glob("*.sh"))
    assert len(scripts) > 20
    for script in scripts:
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0, f"{script}: {run.stderr}"


def test_every_task_has_its_scripts_and_configs():
    from sat_ehft.tasks import TASKS

    for name in TASKS:
        assert (REPO / "finetune_scripts" / f"ehft_{name.replace('-', '')}.sh").is_file()
        for folder in ("configs", "configs/bert-large"):
            assert (REPO / folder / f"{name}.yaml").is_file()
