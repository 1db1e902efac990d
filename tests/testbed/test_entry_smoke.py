"""Root-only smoke run of `python -m experiments.testbed` with a tiny budget (one check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shaping.testbed.topology import root_skip_reason

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def test_entry_point_writes_report_and_plot(tmp_path: Path) -> None:
    reason = root_skip_reason(("ip", "tc", "nft", "ethtool", "tcpdump"))
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "experiments.testbed", "prefix=fsts", "subnet_base=65", "checks=[drop]",
            "drop_packets=300", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["checks"]["drop"]["sent"] >= 270
    assert "## drop:" in (out / "report.md").read_text()
    assert (out / "testbed.png").stat().st_size > 0
    assert '"drop"' in proc.stdout
