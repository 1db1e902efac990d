"""Application metrics pushed through the Client API reach the tenant agent's monitor (its own tenant's only)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import grpc
import pytest

from shaping.control import KernelBackend, KernelSetup, LoopConfig, Observed, make_enforcer
from shaping.monitor import Monitor, MonitorConfig, NullClassStats
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent import TenantAgent, app_values, build_loop
from shaping.service.convert import class_to_pb, rules_to_pb
from shaping.spec import ObservationLayout
from tests.rules.conftest import acme_rules, provider_scenario


class Observing:
    """Wraps a backend and keeps every observation (the agent finds the monitor through `inner`)."""

    def __init__(self, inner: KernelBackend) -> None:
        self.inner = inner
        self.seen: list[Observed] = []

    @property
    def spec(self) -> Any:
        return self.inner.spec

    def observe(self) -> Observed:
        observed = self.inner.observe()
        self.seen.append(observed)
        return observed

    def apply(self, plan: Any) -> None:
        self.inner.apply(plan)

    def close(self) -> None:
        self.inner.close()


def factory(backends: list[Observing]):
    """Loops over a real Monitor (no counters: dry run) built without an AppMetrics, so no local socket."""

    def make(compiled):
        spec = compiled.spec
        enforcer, classids = make_enforcer(spec, KernelSetup(interfaces=("fsr-a0", "fsr-a1")), dry_run=True)
        monitor = Monitor(spec, NullClassStats(), classids, config=MonitorConfig(app_max_age_s=60.0))
        backend = Observing(KernelBackend(spec, monitor, enforcer))
        backends.append(backend)
        return build_loop(compiled, backend, None, config=LoopConfig(interval_s=0.1, deadline_s=0.5))

    return make


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def slots(backend: Observing, classes: tuple[str, ...]) -> dict[str, float] | None:
    """The class_app elements of the backend's latest observation, or None before the first one."""
    if not backend.seen:
        return None
    layout = ObservationLayout(backend.spec)
    obs = backend.seen[-1].obs
    return {c: round(float(obs[layout.names.index(f"class_app[{c}]")]), 6) for c in classes}


@pytest.fixture
def with_beta(with_acme):
    """A second tenant, beta, with the same class names as acme (and addresses of its own: tenants may not share)."""
    with_acme.provider().CreateTenant(provider_pb2.CreateTenantRequest(name="beta", cap_mbps=100.0))
    rules = acme_rules("beta")
    rules = replace(rules, entities=(replace(rules.entities[0], cidrs=("10.9.0.10/32",)),
                                     replace(rules.entities[1], cidrs=("10.9.1.0/24",))))
    with_acme.tenant("beta").PutRules(cpb.PutRulesRequest(rules=rules_to_pb(rules)))
    return with_acme


def test_pushed_fps_and_completion_rate_reach_the_next_observation(with_beta):
    backends: list[Observing] = []
    agent = TenantAgent(with_beta.tenant(), "acme", provider_scenario(), factory(backends)).start()
    classes = ("game", "backup", "site")
    try:
        assert wait_for(lambda: backends and len(backends[0].seen) >= 2)
        assert slots(backends[0], classes) == {"game": 1.0, "backup": 1.0, "site": 1.0}  # nothing pushed: default
        # Another tenant's pushes to same-named classes must not reach acme's agent.
        with_beta.tenant("beta").PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=6.0))
        with_beta.tenant("beta").PushAppMetrics(cpb.AppMetricsRequest(class_name="site", completion_rate=0.1))
        acme = with_beta.tenant()
        acme.PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=45.0))
        acme.PushAppMetrics(cpb.AppMetricsRequest(class_name="site", completion_rate=0.8))
        pushed, n = time.monotonic(), len(backends[0].seen)
        want = {"game": 0.75, "backup": 1.0, "site": 0.8}  # FPS/60; completion rate as is; backup: nothing pushed
        assert wait_for(lambda: slots(backends[0], classes) == want, 10.0), slots(backends[0], classes)
        latency = time.monotonic() - pushed
        later = backends[0].seen[n:]
        assert all(app_slot_of(backends[0], o, "game") in (1.0, 0.75) for o in later)  # never beta's 0.1
        assert all(app_slot_of(backends[0], o, "site") in (1.0, 0.8) for o in later)
        assert latency < 5.0, latency  # one watch poll and one control interval, with room for a loaded machine
        # The metrics the agent reports back carry them too.
        status = {c.name: c.app_metric for c in agent.status().classes}
        assert status["game"] == pytest.approx(0.75) and status["site"] == pytest.approx(0.8)
    finally:
        agent.stop()


def app_slot_of(backend: Observing, observed: Observed, klass: str) -> float:
    layout = ObservationLayout(backend.spec)
    return round(float(observed.obs[layout.names.index(f"class_app[{klass}]")]), 6)


def test_pushes_before_the_agent_and_across_a_new_loop_are_replayed(with_acme):
    acme = with_acme.tenant()
    acme.PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=30.0))
    backends: list[Observing] = []
    agent = TenantAgent(with_acme.tenant(), "acme", provider_scenario(), factory(backends)).start()
    try:
        assert wait_for(lambda: slots(backends[0], ("game",)) == {"game": 0.5} if backends else False)
        # A new class changes the spec: the agent builds a new loop (a new monitor), which gets the pushes too.
        extra = class_to_pb(replace(acme_rules().classes[2], name="api"))
        extra.match.ports[:] = [8443]
        acme.CreateClass(cpb.ClassRequest(**{"class": extra}))
        assert wait_for(lambda: len(backends) == 2 and slots(backends[1], ("game", "api")) == {"game": 0.5,
                                                                                            "api": 1.0})
        acme.PushAppMetrics(cpb.AppMetricsRequest(class_name="api", completion_rate=0.25))
        assert wait_for(lambda: slots(backends[1], ("game", "api")) == {"game": 0.5, "api": 0.25})
    finally:
        agent.stop()


def test_watch_app_metrics_is_tenant_scoped(with_beta):
    with_beta.tenant("beta").PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=6.0))
    with pytest.raises(grpc.RpcError) as err:
        next(iter(with_beta.tenant().WatchAppMetrics(pb.TenantRef(tenant="beta"), timeout=5)))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    stream = with_beta.tenant().WatchAppMetrics(pb.TenantRef(), timeout=5)
    with_beta.tenant().PushAppMetrics(cpb.AppMetricsRequest(class_name="site", completion_rate=0.5))
    first = next(iter(stream))
    assert (first.class_name, first.name, first.value) == ("site", "completion_rate", 0.5)  # not beta's fps
    assert 0.0 <= first.age_s < 5.0
    stream.cancel()


def test_app_values_maps_client_api_metrics_to_the_monitors_slot():
    assert app_values("fps", 45.0) == {"app_metric": 0.75}
    assert app_values("fps", 240.0) == {"app_metric": 1.0}  # FPS above 60 is as good as 60
    assert app_values("completion_rate", 0.9) == {"app_metric": 0.9}
    assert app_values("video_qoe", 0.5) is None
