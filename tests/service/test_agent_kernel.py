"""Root only: the tenant agent reconciles HTB in a network namespace within 100 ms of a rules change."""

from __future__ import annotations

import os
import shutil

import pytest

from experiments.bench_api import bench_reconcile

pytestmark = pytest.mark.root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip (netns exec)")
def test_reconcile_on_the_kernel_within_100ms():
    out = bench_reconcile(12, kernel=True, subnet=81)
    assert out["kernel_matches_rules"], out
    assert out["p50_ms"] < 100.0 and out["within_100ms"] >= 0.9, out
