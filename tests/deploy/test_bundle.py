"""What `flwr run` ships to every SuperNode (the FAB) is enough to run the ClientApp at full speed."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec and typer, imported by flwr.cli.build
def test_the_app_bundle_builds_the_cpu_kernel_and_finds_the_scenarios(tmp_path):
    """A deployed ClientApp imports shaping from the bundle: the kernel's source and conf/ must be in it.

    Without the kernel's source every ClientApp ran the torch sub-step (a SecAgg+ round of 3 nodes took
    98-100 s against about 2 s in simulation).
    """
    from flwr.cli.build import build_fab_from_disk  # Flower's own file selection, as `flwr run` makes it

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))) as fab:
        fab.extractall(tmp_path / "app")
    app = tmp_path / "app"
    assert (app / "shaping" / "sim" / "kernel_source.py").is_file()
    script = (
        "from shaping.sim import cpu_kernel, scenarios\n"
        "cpu_kernel.ensure_built()\n"  # raises KernelUnavailable (and the test fails) without its source
        "print(scenarios.conf_dir())\n"
        "print(scenarios.load_scenario('default').name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEDSHAPE_CONF")}
    env["PYTHONPATH"] = str(app)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    if "no C++ compiler" in out.stderr:  # pragma: no cover - depends on the machine
        pytest.skip("no C++ compiler here")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str(app / "conf"), "default"]


@pytest.mark.slow
def test_the_wheel_carries_conf_as_package_data(tmp_path):
    """`pip install` of the wheel finds the scenarios and default configs without the source tree.

    setup.py maps the repository's conf/ (the one copy in git) to the package data shaping/conf; built
    here from a copy of the sources (an in-tree build would write build/ into the checkout).
    """
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("shaping", "fed_client", "fed_server", "experiments", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    argv += ["-w", str(tmp_path / "whl")]
    out = subprocess.run([*argv, str(src)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "whl").glob("fedshape-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    files = [p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*") if p.is_file()]
    conf = {f"shaping/conf/{name}" for name in files}
    assert conf and conf <= names
    assert "shaping/py.typed" in names and "shaping/sim/kernel_source.py" in names


def test_an_installed_shaping_reads_its_package_data_and_a_checkout_its_conf(tmp_path, monkeypatch):
    from shaping.sim import scenarios

    checkout = tmp_path / "repo"
    (checkout / "conf" / "scenario").mkdir(parents=True)
    monkeypatch.setattr(scenarios, "__file__", str(checkout / "shaping" / "sim" / "scenarios.py"))
    assert scenarios.default_conf_dir() == checkout / "conf"
    (checkout / "shaping" / "conf" / "scenario").mkdir(parents=True)  # as a wheel installs it
    assert scenarios.default_conf_dir() == checkout / "shaping" / "conf"
    monkeypatch.delenv("FEDSHAPE_CONF", raising=False)
    assert scenarios.conf_dir() == checkout / "shaping" / "conf"
    monkeypatch.setenv("FEDSHAPE_CONF", str(checkout / "conf"))  # the override still wins
    assert scenarios.conf_dir() == checkout / "conf"
