"""The control loop on the simulator and a fake backend: observe -> policy -> guard -> apply, watchdog, swap."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from shaping.agents import ActorCritic, build_envelope
from shaping.baselines import static_priority_plan
from shaping.control import (
    MODE_FALLBACK,
    ControlLoop,
    ControlMetrics,
    Decision,
    ExperienceStore,
    Guard,
    LoopConfig,
    Mode,
    ModelPolicy,
    Observed,
    Outcome,
    ScriptedPolicy,
    SimBackend,
    StaticPolicy,
    WatchdogConfig,
)
from shaping.spec import ActionLayout, ObservationLayout, QoSTensors, compute_reward, qos_tensors
from tests.control.conftest import FakeBackend

FAST = LoopConfig(realtime=False, deadline_s=2.0)


def _model(spec):
    torch.manual_seed(0)
    return ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, (16, 16))


def _constant(spec, choice: int) -> ScriptedPolicy:
    """A scripted policy picking level min(choice, n-1) of every action dimension."""
    nvec = ActionLayout(spec).nvec
    return ScriptedPolicy(spec, lambda _o: np.minimum(choice, nvec - 1), name=f"const{choice}")


def test_loop_observes_decides_guards_applies_and_records(scenario, tmp_path):
    backend = SimBackend(scenario, "acme", seed=3)
    spec = backend.spec
    rules = static_priority_plan(spec)
    policy = ModelPolicy(_model(spec), spec, epsilon=0.2, deterministic=False,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    store = ExperienceStore(tmp_path / "exp", spec, segment_size=4)
    loop = ControlLoop(backend, policy, rules, store=store, config=FAST)
    n = 12
    assert loop.run(n) == n
    loop.close()
    # every step applied exactly one plan, the one in the step's record, and the guard passes it unchanged
    assert backend.applied == [r.plan for r in loop.history]
    guard = Guard(spec, rules=rules)
    assert all(not guard.clamp(p).clamped for p in backend.applied)
    # n - 1 transitions: the last action has no measured reward yet
    batch = store.read()
    assert batch.size == n - 1
    assert batch.seq.tolist() == list(range(n - 1))
    assert batch.obs.shape == (n - 1, ObservationLayout(spec).size)
    # reward of transition t is the spec's reward of the interval observed at step t + 1
    rewards = [r.reward for r in loop.history][1:]
    assert batch.reward.tolist() == pytest.approx(rewards, rel=1e-5)
    # next_obs of t is obs of t + 1; adaptive actions decode to the plans applied
    assert torch.equal(batch.next_obs[:-1], batch.obs[1:])
    layout = ActionLayout(spec)
    for t in range(n - 1):
        if int(batch.mode[t]) != MODE_FALLBACK:
            assert layout.decode(batch.action[t].numpy()) == backend.applied[t]
            assert math.isfinite(float(batch.logprob[t]))


def test_reward_matches_spec_reward(scenario):
    backend = SimBackend(scenario, "acme", seed=0)
    spec = backend.spec
    loop = ControlLoop(backend, StaticPolicy(spec, static_priority_plan(spec)), static_priority_plan(spec), config=FAST)
    seen: list[Observed] = []
    real_observe = backend.observe

    def spy() -> Observed:
        seen.append(real_observe())
        return seen[-1]

    backend.observe = spy  # type: ignore[method-assign]
    rec = loop.step()
    q = qos_tensors([spec], len(spec.classes))
    expected = compute_reward(seen[0].metrics, QoSTensors(*(x[0] for x in q)), torch.tensor(spec.cap_mbps),
                              FAST.reward)  # fmt: skip
    assert rec.reward == pytest.approx(float(expected.reward))


def test_epsilon_exploration_never_leaves_the_envelope(scenario, tmp_path):
    backend = SimBackend(scenario, "acme", seed=5)
    spec = backend.spec
    env = build_envelope(spec)
    # an envelope-less model would happily pick forbidden choices; the policy must set the envelope
    policy = ModelPolicy(_model(spec), spec, epsilon=0.7, deterministic=False,
                         generator=torch.Generator().manual_seed(2))  # fmt: skip
    store = ExperienceStore(tmp_path, spec, segment_size=100)
    loop = ControlLoop(backend, policy, static_priority_plan(spec), store=store,
                       config=LoopConfig(realtime=False, deadline_s=2.0,
                                         watchdog=WatchdogConfig(sla_threshold=1.0)))  # fmt: skip
    loop.run(25)
    loop.close()
    batch = store.read()
    explored = batch.mode == 1
    assert int(explored.sum()) >= 5, "epsilon 0.7 over 24 steps should explore several times"
    assert bool(env.contains(batch.action).all())
    assert loop.metrics.value("fedshape_agent_explored_total", tenant="acme") == float(explored.sum() + (
        loop.history[-1].decision.explored if loop.history[-1].decision else 0))  # fmt: skip


def test_fallback_within_one_interval_on_exception_and_back(spec, caplog):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    healthy = _constant(spec, 2)
    calls = {"n": 0}

    def flaky(o: Observed) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return healthy.fn(o)  # type: ignore[return-value]

    policy = ScriptedPolicy(spec, flaky, name="flaky")
    cfg = LoopConfig(realtime=False, deadline_s=2.0, watchdog=WatchdogConfig(recover_intervals=3))
    loop = ControlLoop(backend, policy, rules, config=cfg)
    with caplog.at_level(logging.WARNING, logger="fedshape.control"):
        recs = [loop.step() for _ in range(10)]
    modes = [r.mode for r in recs]
    assert modes[:3] == [Mode.ADAPTIVE] * 3
    assert recs[3].outcome is Outcome.ERROR and modes[3] is Mode.FALLBACK  # the same interval
    assert backend.applied[3] == Guard(spec, rules=rules).clamp(rules).plan
    assert "boom" in recs[3].reason
    assert modes[4:6] == [Mode.FALLBACK] * 2 and modes[6] is Mode.ADAPTIVE  # 3 healthy intervals later
    assert backend.applied[6] == Guard(spec, rules=rules).clamp(healthy.decide(None).plan).plan  # type: ignore[arg-type]
    assert any("FALLBACK" in m for m in caplog.messages) and any("ADAPTIVE" in m for m in caplog.messages)
    assert loop.metrics.value("fedshape_agent_fallbacks_total", tenant=spec.name, reason="policy error") == 1
    assert loop.metrics.value("fedshape_agent_recoveries_total", tenant=spec.name) == 1
    assert loop.metrics.value("fedshape_agent_fallback", tenant=spec.name) == 0


def test_fallback_within_one_interval_on_stall(spec):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    release = threading.Event()
    calls = {"n": 0}

    def slow(o: Observed) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            release.wait(10.0)  # stuck until the test lets it go
        return np.zeros(len(ActionLayout(spec).nvec), dtype=np.int64)

    cfg = LoopConfig(interval_s=0.1, realtime=False, watchdog=WatchdogConfig(recover_intervals=2))
    loop = ControlLoop(backend, ScriptedPolicy(spec, slow), rules, config=cfg)
    loop.step()
    t0 = time.monotonic()
    rec = loop.step()
    took = time.monotonic() - t0
    assert rec.outcome is Outcome.STALL and rec.mode is Mode.FALLBACK
    assert took < 0.1 + 0.05, f"fallback must come within one interval, took {took:.3f} s"
    assert backend.applied[-1] == Guard(spec, rules=rules).clamp(rules).plan
    # still stuck: the next steps report a stall at once, without piling up calls
    rec = loop.step()
    assert rec.outcome is Outcome.STALL and calls["n"] == 2
    release.set()
    time.sleep(0.05)
    outcomes = [loop.step().outcome for _ in range(3)]
    assert outcomes == [Outcome.OK] * 3
    assert loop.mode is Mode.ADAPTIVE
    assert loop.metrics.value("fedshape_agent_policy_calls_total", tenant=spec.name, outcome="stall") == 2


def test_fallback_on_sla_degradation_and_back(spec):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    wd = WatchdogConfig(sla_window=4, sla_min_samples=3, sla_threshold=0.5, recover_intervals=3)
    loop = ControlLoop(backend, _constant(spec, 1), rules, config=LoopConfig(realtime=False, deadline_s=2.0,
                       watchdog=wd))  # fmt: skip
    for _ in range(3):
        assert loop.step().mode is Mode.ADAPTIVE
    backend.violating = True
    modes = [loop.step().mode for _ in range(4)]
    # intervals 3.. violate; the window (4) reaches its 3-sample minimum above threshold at the third
    assert modes[:2] == [Mode.ADAPTIVE, Mode.ADAPTIVE] and modes[2] is Mode.FALLBACK
    assert "SLA violation rate" in loop.watchdog.reason
    assert backend.applied[-1] == Guard(spec, rules=rules).clamp(rules).plan
    backend.violating = False
    modes = [loop.step().mode for _ in range(4)]
    assert Mode.ADAPTIVE in modes
    assert loop.metrics.value("fedshape_agent_fallbacks_total", tenant=spec.name, reason="SLA violation rate 1.00 > "
                              "0.50") is None  # the reason label is the part before ':'  # fmt: skip
    total = sum(s.value for m in loop.metrics.fallbacks.collect() for s in m.samples if s.name.endswith("_total"))
    assert total == 1


def test_apply_failure_falls_back_to_rules(spec):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    policy = _constant(spec, 3)
    backend.fail_apply = Guard(spec, rules=rules).clamp(policy.decide(None).plan).plan  # type: ignore[arg-type]
    loop = ControlLoop(backend, policy, rules, config=FAST)
    rec = loop.step()
    assert rec.mode is Mode.FALLBACK and "apply error" in rec.reason
    assert backend.applied == [Guard(spec, rules=rules).clamp(rules).plan]
    assert loop.metrics.value("fedshape_agent_apply_errors_total", tenant=spec.name) == 1


def test_hot_swap_takes_effect_at_the_next_step_without_dropping_one(scenario):
    backend = SimBackend(scenario, "acme", seed=1)
    spec = backend.spec
    a, b = _constant(spec, 1), _constant(spec, 4)
    loop = ControlLoop(backend, a, static_priority_plan(spec),
                       config=LoopConfig(realtime=False, deadline_s=2.0, watchdog=WatchdogConfig(sla_threshold=1.0)))
    swapped = threading.Event()

    def on_step(rec) -> None:
        if rec.step == 4:  # swap from another thread, as the federated client does
            t = threading.Thread(target=loop.swap_policy, args=(b,))
            t.start()
            t.join()
            swapped.set()

    loop.run(9, on_step=on_step)
    assert swapped.is_set()
    steps = [r.step for r in loop.history]
    assert steps == list(range(9)) and len(backend.applied) == 9  # no step skipped
    assert [r.policy for r in loop.history] == ["const1"] * 5 + ["const4"] * 4
    plan_b = Guard(spec, rules=static_priority_plan(spec)).clamp(b.decide(None).plan).plan  # type: ignore[arg-type]
    assert backend.applied[5:] == [plan_b] * 4 and backend.applied[4] != plan_b
    assert loop.metrics.value("fedshape_agent_policy_swaps_total", tenant=spec.name) == 1


def test_metrics_are_exported_in_the_injected_registry(spec):
    registry = CollectorRegistry()
    metrics = ControlMetrics(spec.name, [c.name for c in spec.classes], registry)
    loop = ControlLoop(FakeBackend(spec), _constant(spec, 2), static_priority_plan(spec), metrics=metrics, config=FAST)
    loop.run(3)
    text = generate_latest(registry).decode()
    for name in ("fedshape_agent_fallback", "fedshape_agent_steps_total", "fedshape_agent_reward",
                 "fedshape_class_delay_p99_seconds", "fedshape_agent_step_seconds_bucket"):  # fmt: skip
        assert name in text
    assert metrics.value("fedshape_agent_steps_total", tenant=spec.name, mode="adaptive") == 3
    # 10 Mbit/s and 20 ms in the spec's units, bytes per second and seconds in Prometheus's
    assert metrics.value("fedshape_class_delivered_bytes_per_second", tenant=spec.name,
                         **{"class": "game"}) == pytest.approx(1.25e6)  # fmt: skip


def test_run_paces_steps_to_the_interval_with_an_injected_clock(spec):
    now = {"t": 0.0}
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now["t"] += s

    backend = FakeBackend(spec)
    real_observe = backend.observe

    def observe() -> Observed:
        now["t"] += 0.03  # each step costs 30 ms
        return real_observe()

    backend.observe = observe  # type: ignore[method-assign]
    loop = ControlLoop(backend, _constant(spec, 2), static_priority_plan(spec),
                       config=LoopConfig(interval_s=0.1, deadline_s=1.0), clock=lambda: now["t"], sleep=sleep)
    loop.run(4)
    assert sleeps == pytest.approx([0.07, 0.07, 0.07])


def test_rules_that_cannot_be_applied_are_retried_then_raised(spec):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    backend.fail_apply = Guard(spec, rules=rules).clamp(rules).plan
    loop = ControlLoop(backend, StaticPolicy(spec, rules), rules,
                       config=LoopConfig(realtime=False, deadline_s=2.0, max_apply_failures=3))  # fmt: skip
    loop.step()
    loop.step()  # logged and retried at the next interval
    backend.fail_apply = None
    loop.step()  # the kernel took it again: the count restarts
    assert len(backend.applied) == 1
    backend.fail_apply = Guard(spec, rules=rules).clamp(rules).plan
    loop.step()
    loop.step()
    with pytest.raises(OSError, match="kernel said no"):
        loop.step()


class _PlanPolicy:
    """A policy returning whatever plan the test hands it (a policy gone numerically wrong)."""

    def __init__(self, spec, plan) -> None:
        self.plan, self.layout = plan, ActionLayout(spec)

    @property
    def name(self) -> str:
        return "planned"

    def decide(self, observed):
        return Decision(self.plan, np.zeros(len(self.layout.nvec), dtype=np.int64))


@pytest.mark.parametrize("field", ["rate_mbps", "ceil_mbps"])
def test_a_non_finite_plan_falls_back_to_the_rules_instead_of_crashing(spec, caplog, field):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)
    nan = replace(rules, classes=(replace(rules.classes[0], **{field: math.nan}), *rules.classes[1:]))
    loop = ControlLoop(backend, _PlanPolicy(spec, nan), rules,
                       config=LoopConfig(realtime=False, deadline_s=2.0, watchdog=WatchdogConfig(recover_intervals=2)))
    with caplog.at_level(logging.WARNING, logger="fedshape.control"):
        recs = [loop.step() for _ in range(5)]
    safe = Guard(spec, rules=rules).clamp(rules).plan
    assert backend.applied == [safe] * 5
    assert all(r.mode is Mode.FALLBACK and r.outcome is Outcome.ERROR for r in recs)
    assert "not finite" in recs[0].reason and field in recs[0].reason
    # still broken in shadow: the watchdog never counts it healthy, so it never goes back to adaptive
    assert loop.metrics.value("fedshape_agent_recoveries_total", tenant=spec.name) in (None, 0)
    assert any("FALLBACK" in m and "not finite" in m for m in caplog.messages)


def test_a_guard_that_raises_falls_back_to_the_rules(spec, caplog):
    backend = FakeBackend(spec)
    rules = static_priority_plan(spec)

    class Picky(Guard):
        def clamp(self, plan):
            if plan != rules:
                raise ValueError("guard broke")
            return super().clamp(plan)

    loop = ControlLoop(backend, _constant(spec, 2), rules, guard=Picky(spec, rules=rules), config=FAST)
    with caplog.at_level(logging.WARNING, logger="fedshape.control"):
        rec = loop.step()
    assert rec.mode is Mode.FALLBACK and "guard" in rec.reason and "guard broke" in rec.reason
    assert backend.applied == [Guard(spec, rules=rules).clamp(rules).plan]
    assert any("FALLBACK" in m for m in caplog.messages)
