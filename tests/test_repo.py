"""CI runs the README's test command: the two must not drift apart."""

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    command = ci_lines[-1]
    assert "pytest" in command
    assert f"```bash\n{command}\n```" in readme
