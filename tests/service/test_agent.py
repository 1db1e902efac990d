"""TenantAgent: follows its tenant's rules within a step, pins static entities, survives the service going away."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from shaping.control import LoopConfig, ScriptedPolicy
from shaping.rules import compile_rules
from shaping.service import RulesServer
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent import TenantAgent, build_loop
from shaping.service.convert import class_to_pb
from shaping.service.recording import RecordingBackend
from tests.rules.conftest import acme_rules, provider_scenario
from tests.service.conftest import config


def make_factory(backends: list[RecordingBackend]):
    def factory(compiled):
        backend = RecordingBackend(compiled.spec)
        backends.append(backend)

        def greedy(observed):  # the "agent": every class at its ceiling, EF marked
            plan = compiled.plan
            return replace(plan, classes=tuple(replace(c, rate_mbps=c.ceil_mbps, dscp=46) for c in plan.classes))

        policy = ScriptedPolicy(compiled.spec, greedy, name="greedy")
        return build_loop(compiled, backend, policy, config=LoopConfig(interval_s=0.1, deadline_s=0.5))

    return factory


def test_agent_follows_rules_and_pins_static_entities(with_acme, tmp_path):
    backends: list[RecordingBackend] = []
    agent = TenantAgent(with_acme.tenant(), "acme", provider_scenario(), make_factory(backends),
                        state_path=tmp_path / "acme.json", report_every_s=0.2).start()
    try:
        assert _wait(lambda: backends and backends[0].applied)
        last = backends[0].applied[-1][1]
        rules = compile_rules(acme_rules(), provider_scenario())
        # game, site (web-vm) are adaptive: the policy's plan (the guard may clamp rates); backup (net) is static.
        assert last.classes[1] == rules.plan.classes[1]
        assert last.classes[0].dscp == 46 and last.classes[2].dscp == 46
        # Reconcile: each change of a static action reaches the backend within one step, not one interval.
        t = with_acme.tenant()
        lat = []
        for i in range(8):
            backup = class_to_pb(acme_rules().classes[1])
            backup.action.rate_mbps = 11.0 + i
            n = len(backends[0].applied)
            t.UpdateClass(cpb.ClassRequest(**{"class": backup}))
            acked = time.monotonic()
            got = backends[0].wait_for(lambda p, r=11.0 + i: p.classes[1].rate_mbps == r, n, 5)
            assert got is not None
            lat.append(got - acked)
        assert len(backends) == 1  # same spec: the loop was kept, only its plan and pins changed
        assert statistics.median(lat) < 0.1, lat
        # Status reaches the service.
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).applied_revision >= 10)
        status = t.GetAgentStatus(pb.TenantRef())
        assert status.mode == "mixed" and [c.name for c in status.classes] == ["game", "backup", "site"]
        # Disabling Adaptive Shaping makes every class follow the rules.
        t.SetMode(cpb.SetModeRequest(mode=pb.MODE_STATIC))
        assert _wait(lambda: backends[-1].applied and backends[-1].applied[-1][1].classes[2].dscp == 18)
        assert len(backends) == 2  # no adaptive entity left: a loop that runs the static plan
    finally:
        agent.stop()


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_agent_keeps_enforcing_when_the_service_is_unreachable(with_acme, tmp_path):
    backends: list[RecordingBackend] = []
    state = tmp_path / "acme.json"
    agent = TenantAgent(with_acme.tenant(), "acme", provider_scenario(), make_factory(backends), state_path=state,
                        report_every_s=0.2, retry_s=0.05).start()
    try:
        assert _wait(lambda: backends and backends[0].applied)
        port = with_acme.server.port
        with_acme.server.stop(0)
        assert _wait(lambda: not agent.connected.is_set())
        n = len(backends[0].applied)
        assert _wait(lambda: len(backends[0].applied) >= n + 3)  # still stepping, still applying
        assert {p for _, p in backends[0].applied[n:]} <= {p for _, p in backends[0].applied[:n]} | {
            backends[0].applied[-1][1]}
        assert agent.compiled is not None and agent.compiled.revision == 2
        # The service comes back (same store and port) with a change made meanwhile: the agent picks it up.
        with_acme.store.update("acme", lambda r: replace(r, classes=(r.classes[0], replace(
            r.classes[1], action=replace(r.classes[1].action, rate_mbps=5.0)), r.classes[2])), actor="t", what="w")
        server = RulesServer(with_acme.store, config(), address=f"127.0.0.1:{port}", insecure_loopback=True).start()
        try:
            assert _wait(lambda: backends[-1].applied[-1][1].classes[1].rate_mbps == 5.0, 15)
        finally:
            agent.stop()
            server.stop(0)
    finally:
        agent.stop()
    # A new agent with the saved state and no service enforces the last known rules at once.
    from shaping.service.channel import client_stub, connect

    dead = client_stub(connect("127.0.0.1:1", identity="tenant/acme"))
    backends2: list[RecordingBackend] = []
    agent2 = TenantAgent(dead, "acme", provider_scenario(), make_factory(backends2), state_path=state).start()
    try:
        assert _wait(lambda: backends2 and backends2[0].applied)
        assert backends2[0].applied[0][1].classes[1].rate_mbps == 5.0
        assert not agent2.connected.is_set()
    finally:
        agent2.stop()
