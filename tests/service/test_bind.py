"""A rules service refuses to start on a port that another one already serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shaping.service import RulesServer
from shaping.store import RulesStore
from tests.service.conftest import config

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_server_on_a_taken_port_is_refused(running, tmp_path) -> None:
    # gRPC's default SO_REUSEPORT let the second server bind too, and the kernel split clients between the two.
    store = RulesStore(tmp_path / "second.db")
    try:
        with pytest.raises(OSError, match="port is in use"):
            RulesServer(store, config(), address=running.target, insecure_loopback=True)
    finally:
        store.close()


def test_fedshape_serve_on_a_taken_port_exits_with_one_line(running, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "shaping.cli", "serve", "--insecure-loopback", "--listen", running.target,
         "--db", str(tmp_path / "second.db")],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 1
    assert "serving on" not in proc.stdout
    assert proc.stderr.splitlines() == [
        f"fedshape: error: cannot listen on {running.target}: the port is in use, or the address is not on this host"]
