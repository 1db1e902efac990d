"""Evaluation aggregates on hand-checkable cases, the policy table, and congestion in every scenario."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from shaping.baselines import Baseline, fifo_plan
from shaping.config import ClassConfig, EntityConfig, PathConfig, QoSConfig, RewardConfig, ScenarioConfig, TenantConfig
from shaping.evaluation import evaluate_policies, evaluate_policy, jain_index
from shaping.policies import POLICY_KINDS, Policy, PolicyInput, StaticPolicy, make_policy
from shaping.sim.scenarios import available_scenarios, load_scenario
from shaping.sim.simulator import Simulator
from shaping.spec import PlanBatch, ShapingPlan, TenantSpec, compute_reward


def _tiny(qos: list[QoSConfig], capacity: float = 100.0) -> ScenarioConfig:
    """One tenant with one small web class per QoS entry on one path."""
    classes = [
        ClassConfig(name=f"c{i}", app="web", entity="vm0", mbps=5.0, flows=10, qos=q) for i, q in enumerate(qos)
    ]
    tenant = TenantConfig(name="t0", cap_mbps=50.0, entities=[EntityConfig(name="vm0")], classes=classes)
    return ScenarioConfig(name="tiny", paths=[PathConfig(capacity_mbps=capacity)], tenants=[tenant])


def test_jain_index_hand_values():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = jain_index(x, dim=-1)
    # (1+2+3)^2 / (4 * (1+4+9)) = 36 / 56
    want = torch.tensor([1.0, 0.25, 36.0 / 56.0, 1.0])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(jain_index(x.T, dim=0), want)


def test_sla_violation_rate_counts_only_classes_with_an_sla():
    # Base delay 10 ms: a 1 ms p99 SLA is always broken, a 10 s one never, the third class has none.
    scenario = _tiny([QoSConfig(max_p99_ms=1.0), QoSConfig(max_p99_ms=10_000.0), QoSConfig()])
    r = evaluate_policy(scenario, make_policy("fifo"), seeds=2, steps=6)
    assert r.sla_violation_rate == pytest.approx(0.5)
    assert r.sla_violation_rate_std == pytest.approx(0.0)
    assert r.apps["web"].sla_violation_rate == pytest.approx(0.5)
    assert r.tenants["t0"].sla_violation_rate == pytest.approx(0.5)
    assert r.series.sla_violation_rate == pytest.approx([0.5] * 6)


def test_aggregates_match_a_hand_rolled_loop():
    scenario = load_scenario("small_congested")
    weights = RewardConfig(sla_penalty=2.0)
    steps, seeds = 8, 3
    r = evaluate_policy(scenario, make_policy("static_priority"), seeds=seeds, steps=steps, reward=weights, seed=7)

    sim = Simulator(scenario, batch_size=seeds, seed=7)
    policy = make_policy("static_priority")
    st = sim.tensors
    rewards, delivered, eff = [], [], []
    last = None
    with torch.inference_mode():
        for t in range(steps):
            out = sim.step(policy(PolicyInput(t, st, sim.state, last)), torch.zeros(st.n_tenants, dtype=torch.bool))
            terms = compute_reward(out.metrics, st.qos, st.cap_mbps, weights)
            rewards.append(terms.reward)
            eff.append(terms.efficiency)
            delivered.append(out.metrics.delivered_mbps.sum((-2, -1)))
            last = out
    total_capacity = sum(p.capacity_mbps for p in scenario.paths)
    assert r.mean_reward == pytest.approx(float(torch.stack(rewards).mean()), rel=1e-5)
    assert r.utilization == pytest.approx(float(torch.stack(delivered).mean()) / total_capacity, rel=1e-4)
    assert r.series.reward == pytest.approx([float(x.mean()) for x in rewards], rel=1e-5)
    per_tenant = torch.stack(eff).mean(0)  # (B, K)
    assert r.jain_throughput == pytest.approx(float(jain_index(per_tenant).mean()), rel=1e-5)
    for k, spec in enumerate(st.specs):
        assert r.tenants[spec.name].reward == pytest.approx(float(torch.stack(rewards)[:, :, k].mean()), rel=1e-5)


def test_result_shapes_and_ranges():
    scenario = load_scenario("default")
    results = evaluate_policies(scenario, [make_policy("fifo"), make_policy("fq_codel")], seeds=2, steps=5, episodes=2)
    assert list(results) == ["fifo", "fq_codel"]
    for r in results.values():
        assert (r.seeds, r.episodes, r.steps) == (2, 2, 5)
        assert 0.0 <= r.sla_violation_rate <= 1.0
        assert 0.0 <= r.utilization <= 1.0 + 1e-6
        assert 0.0 < r.jain_throughput <= 1.0 + 1e-6
        assert 0.0 <= r.loss <= 1.0
        assert set(r.tenants) == {t.name for t in scenario.tenants}
        assert set(r.apps) == {c.app for t in scenario.tenants for c in t.classes}
        assert set(r.path_utilization) == {p.name for p in scenario.paths}
        for a in r.apps.values():
            assert 0.0 < a.p50_ms <= a.p99_ms and math.isfinite(a.p99_ms)
            assert 0.0 <= a.app_metric <= 1.0 and 0.0 <= a.loss <= 1.0
        assert len(r.series.reward) == len(r.series.utilization) == len(r.series.sla_violation_rate) == 5
        assert all(len(v) == 5 for v in r.series.latency_p99_ms.values())


def test_same_seed_same_load_for_every_policy():
    scenario = load_scenario("single_path")
    a = evaluate_policy(scenario, make_policy("fifo"), seeds=2, steps=4, seed=3)
    b = evaluate_policy(scenario, make_policy("fifo"), seeds=2, steps=4, seed=3)
    assert a.series.reward == b.series.reward


def test_policy_table():
    fifo = make_policy("fifo")
    assert isinstance(fifo, StaticPolicy) and isinstance(fifo, Policy)
    assert fifo.name == "fifo" and not fifo.aqm
    assert make_policy("baseline:fq_codel").aqm
    with pytest.raises(KeyError, match="known"):
        make_policy("no_such_baseline")
    with pytest.raises(KeyError, match="kinds"):
        make_policy("no_such_kind:agent.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_policy("ppo:no/such/agent.pt")  # a known kind: the checkpoint loader runs


def test_custom_policy_kind(monkeypatch):
    seen: list[tuple[int, bool]] = []

    class Recorder:
        """A stateful policy: records what it was shown and delegates to a baseline."""

        name = "recorder"
        aqm = False

        def __init__(self, arg: str) -> None:
            self.inner = make_policy(arg)

        def __call__(self, inp: PolicyInput) -> PlanBatch:
            seen.append((inp.step, inp.last is None))
            return self.inner(inp)

    monkeypatch.setitem(POLICY_KINDS, "recorder", Recorder)
    policy = make_policy("recorder:static_priority")
    r = evaluate_policy(load_scenario("small_congested"), policy, seeds=1, steps=3, episodes=2)
    assert r.policy == "recorder"
    assert seen == [(0, True), (1, False), (2, False)] * 2


def _one_path_fifo(spec: TenantSpec) -> ShapingPlan:
    """Neither shaped nor routed: fifo's plan with every class on the first path."""
    plan = fifo_plan(spec)
    return replace(plan, classes=tuple(replace(c, path=0) for c in plan.classes))


@pytest.mark.parametrize("name", available_scenarios())
def test_every_scenario_congests(name):
    """Without shaping or routing most SLAs break, and static rules change that: the scenario is worth shaping.

    fifo routes its classes over the paths (shaping.path_assignment), which on several paths already
    relieves much of the congestion, so the unmanaged reference keeps every class on the first path. The
    question is about the link, not about one tenant, so every tenant runs the row's policy even where the
    scenario controls only some (`controlled`): one tenant's rules change little of a link four share."""
    scenario = replace(load_scenario(name), controlled=[])
    unmanaged = StaticPolicy(Baseline("one_path_fifo", _one_path_fifo))
    results = evaluate_policies(scenario, [unmanaged, make_policy("static_priority")], seeds=2, steps=30)
    fifo, prio = results["one_path_fifo"], results["static_priority"]
    assert fifo.sla_violation_rate > 0.3
    assert max(fifo.path_utilization.values()) > 0.9  # some path runs full
    assert prio.mean_reward - fifo.mean_reward > 0.2
