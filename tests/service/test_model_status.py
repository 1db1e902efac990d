"""Model hand-over in the agent status: ModelUpdater -> ReportStatus -> Client and Provider APIs, Prometheus."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from shaping.cli import main
from shaping.control import LoopConfig, ScriptedPolicy
from shaping.control.gate import GateVerdict, SafetyGate
from shaping.control.handover import ModelInbox, publish_model
from shaping.control.policy import ControlPolicy
from shaping.control.update import ModelUpdater, UpdateConfig
from shaping.control.watchdog import WatchdogConfig
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent import TenantAgent, build_loop
from shaping.service.exposition import service_registry
from tests.control.conftest import FakeBackend
from tests.rules.conftest import provider_scenario
from tests.service.conftest import config
from tests.service.test_agent import _wait
from tests.service.test_client_api import code_of

CARD = {"layout": {}, "hidden_sizes": [8]}  # the fake gate never reads it
#: Versions the agent's loader turns into a policy the gate refuses.
HARMFUL = {2}


class _NamedGate(SafetyGate):
    """Accepts a candidate unless its name says ``harmful`` (then ``worse_than_rules``, rates 0.3 against 0.1)."""

    def __init__(self) -> None:
        pass

    def rules_rate(self) -> float:
        return 0.1

    def policy_rate(self, policy: ControlPolicy) -> float | None:
        return None

    def check(self, candidate: ControlPolicy, in_force: ControlPolicy) -> GateVerdict:
        if "harmful" in candidate.name:
            return GateVerdict(False, "worse_than_rules", 0.3, None, 0.1, 0.01)
        return GateVerdict(True, "ok", 0.05, None, 0.1, 0.01)


def _agent(running, inbox, backends: list[FakeBackend]) -> TenantAgent:
    """acme's agent on a FakeBackend, with a ModelUpdater on `inbox`: versions in `HARMFUL` load as harmful."""

    def make_loop(compiled):
        backends.append(FakeBackend(compiled.spec))
        policy = ScriptedPolicy(compiled.spec, lambda observed: compiled.plan, name="start")
        # No SLA fallback: the rollback, not the watchdog, must act on a degraded model.
        return build_loop(compiled, backends[-1], policy, config=LoopConfig(
            interval_s=0.1, deadline_s=0.5, watchdog=WatchdogConfig(sla_threshold=1.0)))

    def make_updater(loop, compiled):
        def load(update):
            name = f"global-v{update.version}" + ("-harmful" if update.version in HARMFUL else "")
            return ScriptedPolicy(loop.spec, lambda observed: compiled.plan, name=name)

        return ModelUpdater(loop, ModelInbox(inbox), _NamedGate(), UpdateConfig(rollback_intervals=10), load=load)

    return TenantAgent(running.tenant(), "acme", provider_scenario(), make_loop, report_every_s=0.1,
                       make_updater=make_updater).start()


def _publish(inbox, version: int) -> None:
    publish_model(inbox, [np.zeros(2, dtype=np.float32)], CARD, version)


def test_model_versions_verdicts_and_rollbacks_reach_both_apis(with_acme, tmp_path):
    inbox, backends = tmp_path / "models", []
    t, p = with_acme.tenant(), with_acme.provider()
    t0 = time.time()
    agent = _agent(with_acme, inbox, backends)
    try:
        # Nothing handed over yet: the model part is there, empty.
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).HasField("model"))
        m = t.GetAgentStatus(pb.TenantRef()).model
        assert m.version == 0 and m.installed_at == 0 and m.accepted == m.rejected == m.rollbacks == 0
        assert not m.HasField("last_verdict") and not m.HasField("last_rollback")

        # Version 1 is accepted and swapped in; its SLAs then degrade and it is rolled back.
        _publish(inbox, 1)
        assert _wait(lambda: agent.updater is not None and agent.updater.version == 1)
        backends[-1].violating = True
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).model.rollbacks == 1)
        backends[-1].violating = False
        m = t.GetAgentStatus(pb.TenantRef()).model
        assert m.version == 0 and m.installed_at == 0  # the starting policy again
        assert (m.last_rollback.version, m.last_rollback.restored_version) == (1, 0)
        assert t0 <= m.last_rollback.rolled_back_at <= time.time()
        assert m.last_verdict.candidate_version == 1 and m.last_verdict.accepted and m.last_verdict.reason == "ok"

        # Version 2 is refused by the gate; version 3 is taken.
        _publish(inbox, 2)
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).model.last_verdict.candidate_version == 2)
        v = t.GetAgentStatus(pb.TenantRef()).model.last_verdict
        assert not v.accepted and v.reason == "worse_than_rules"
        assert v.candidate_sla_violation == 0.3 and v.rules_sla_violation == 0.1
        assert not v.HasField("in_force_sla_violation")  # the scripted policy in force has no twin
        assert _wait(lambda: agent.updater is not None and not agent.updater.busy)
        _publish(inbox, 3)
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).model.version == 3)
    finally:
        agent.stop()

    m = t.GetAgentStatus(pb.TenantRef()).model
    assert t0 <= m.installed_at <= time.time() and m.last_verdict.candidate_version == 3
    assert (m.accepted, m.rejected, m.rollbacks) == (2, 1, 1)
    assert [(r.reason, r.count) for r in m.rejections] == [("worse_than_rules", 1)]
    # The Provider API shows the same, per tenant.
    summary, = p.ListTenants(ppb.ListTenantsRequest()).tenants
    assert summary.name == "acme" and summary.agent.model == m
    assert p.GetTenantMetrics(pb.TenantRef(tenant="acme")).agent.model == m
    # And the service's Prometheus exposition, under the agent's own metric names.
    text = generate_latest(service_registry(with_acme.store, config(), CollectorRegistry())).decode()
    assert 'fedshape_agent_model_version{tenant="acme"} 3.0' in text
    assert 'fedshape_agent_gate_verdicts_total{reason="ok",tenant="acme",verdict="accepted"} 2.0' in text
    assert 'fedshape_agent_gate_verdicts_total{reason="worse_than_rules",tenant="acme",verdict="rejected"} 1.0' in text
    assert 'fedshape_agent_rollbacks_total{tenant="acme"} 1.0' in text


def test_without_a_model_hand_over_the_answers_have_no_model(with_acme):
    t, p = with_acme.tenant(), with_acme.provider()
    assert not t.GetAgentStatus(pb.TenantRef()).HasField("model")  # never reported
    t.ReportStatus(pb.AgentStatus(applied_revision=2, mode="static"))  # an agent without an inbox (or an older one)
    got = t.GetAgentStatus(pb.TenantRef())
    assert got.reported_at > 0 and not got.HasField("model")
    assert not p.ListTenants(ppb.ListTenantsRequest()).tenants[0].agent.HasField("model")
    text = generate_latest(service_registry(with_acme.store, config(), CollectorRegistry())).decode()
    assert 'fedshape_agent_model_version{' not in text and 'fedshape_agent_rollbacks_total{' not in text


def test_a_model_report_out_of_bounds_is_refused(with_acme):
    t = with_acme.tenant()
    verdict = pb.GateVerdict(candidate_version=4, reason="worse_than_policy", candidate_sla_violation=0.2)
    good = pb.ModelStatus(version=3, installed_at=1.7e9, last_verdict=verdict, rejected=1,
                          rejections=[pb.RejectionCount(reason="worse_than_policy", count=1)])
    t.ReportStatus(pb.AgentStatus(model=good))
    assert t.GetAgentStatus(pb.TenantRef()).model == good
    bad = [
        pb.ModelStatus(rollbacks=-1),
        pb.ModelStatus(installed_at=float("nan")),
        pb.ModelStatus(last_verdict=pb.GateVerdict(candidate_sla_violation=2.0)),
        pb.ModelStatus(last_verdict=pb.GateVerdict(reason="x" * 100)),
        pb.ModelStatus(last_verdict=pb.GateVerdict(detail="x" * 501)),
        pb.ModelStatus(rejections=[pb.RejectionCount(reason=f"r{i}", count=1) for i in range(17)]),
        pb.ModelStatus(rejections=[pb.RejectionCount(reason="eval_error", count=1)] * 2),
        pb.ModelStatus(rejections=[pb.RejectionCount(reason="eval_error", count=-1)]),
        pb.ModelStatus(last_rollback=pb.ModelRollback(rolled_back_at=float("inf"))),
    ]
    for model in bad:
        code, _ = code_of(t.ReportStatus, pb.AgentStatus(model=model))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, model
    assert t.GetAgentStatus(pb.TenantRef()).model == good  # nothing of the refused reports was stored


def test_the_commands_show_the_model(with_acme):
    verdict = pb.GateVerdict(candidate_version=4, reason="worse_than_policy", decided_at=1.7e9)
    rollback = pb.ModelRollback(version=2, restored_version=1, rolled_back_at=1.7e9)
    with_acme.tenant().ReportStatus(pb.AgentStatus(mode="mixed", model=pb.ModelStatus(
        version=3, installed_at=1.7e9, last_verdict=verdict, accepted=3, rejected=1, rollbacks=1,
        last_rollback=rollback)))

    def run(*argv: str) -> str:
        out = io.StringIO()
        assert main(["--target", with_acme.target, *argv], out=out) == 0
        return out.getvalue()

    text = run("--as", "tenant/acme", "tenant", "status")
    assert "model version 3 since " in text and "last verdict v4 rejected (worse_than_policy)" in text
    assert "rollbacks 1" in text and "last rollback: version 2 -> 1 at " in text
    header, _, row = run("--as", "provider/ops", "provider", "tenants").splitlines()
    assert header.split()[-3:] == ["MODEL", "LAST_VERDICT", "ROLLBACKS"]
    assert row.split()[-5:] == ["3", "v4", "rejected", "(worse_than_policy)", "1"]
