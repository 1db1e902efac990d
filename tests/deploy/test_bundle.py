"""What `flwr run` ships to every SuperNode (the FAB) is enough to run the ClientApp at full speed."""

from __future__ import annotations

import io
import os
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
