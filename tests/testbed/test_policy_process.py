"""The policy-in-a-process used by the fallback checks: it answers, and a killed one raises (no root needed)."""

from __future__ import annotations

import pytest
import torch

from shaping.control.backend import Observed
from shaping.spec import ClassMetrics, HostMetrics, PathMetrics, empty_plan
from shaping.testbed import scenario as S
from shaping.testbed.policy_proc import ROOT_FRACTION, PolicyProcess
from shaping.testbed.topology import TopologyConfig


def _observed(n: int) -> Observed:
    z, p = torch.zeros(n), torch.zeros(2)
    host = HostMetrics(torch.zeros(1), torch.zeros(1))
    return Observed(ClassMetrics(*([z] * 8)), host, PathMetrics(p, p, p), empty_plan(n), torch.zeros(4), 0.0, 0.1)


def test_policy_process_answers_then_raises_once_killed() -> None:
    spec = S.testbed_spec(TopologyConfig(), S.Workload())
    proc = PolicyProcess(spec)
    try:
        d = proc.decide(_observed(len(spec.classes)))
        assert d.plan.root_mbps == pytest.approx(ROOT_FRACTION * spec.bottleneck_share_mbps)
        assert d.plan == S.shaped_plan(spec, ROOT_FRACTION)
        proc.kill()
        with pytest.raises(RuntimeError, match=r"gone|did not answer"):
            proc.decide(_observed(len(spec.classes)))
    finally:
        proc.close()
