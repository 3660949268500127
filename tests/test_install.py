"""What a non-editable install (a wheel, as on a cluster) ships and resolves."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import sat_ehft
from sat_ehft.cli import default_config
from sat_ehft.config import load_config
path = default_config("rte")
print(sat_ehft.__file__)
print(path)
print(load_config(path).epochs)
"""


def build_wheel(tmp_path):
    """Build sat-ehft's wheel from a copy of the sources (the build writes beside them)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("sat_ehft", "configs"):
        shutil.copytree(REPO / part, source / part, ignore=ignore)
    for part in ("setup.py", "README.md"):
        shutil.copy2(REPO / part, source / part)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                          "-w", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (wheel,) = (tmp_path / "wheels").glob("sat_ehft-*.whl")
    return wheel


def test_the_wheel_ships_every_config_and_train_finds_them_outside_a_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("sat_ehft/configs/") for n in names if n.startswith("sat_ehft/configs/")}
    expected = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == expected and "bert-large/rte.yaml" in shipped

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages (a pure-Python wheel)
    run = subprocess.run([sys.executable, "-c", PROBE, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    module, config, epochs = run.stdout.split()
    assert module == str(site / "sat_ehft" / "__init__.py")  # the installed copy, not this checkout
    assert config == str(site / "sat_ehft" / "configs" / "rte.yaml")
    assert (site / "sat_ehft" / "configs" / "rte.yaml").read_bytes() == (REPO / "configs" / "rte.yaml").read_bytes()
    assert int(epochs) == 60  # the paper's RTE epochs, not the dataclass default of 10
