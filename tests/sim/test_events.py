"""Scheduled events: path failures and degradations, flash crowds, tenants arriving and leaving, diurnal curves."""

from __future__ import annotations

import math

import pytest
import torch

from shaping.config import LoadConfig, LoadEventConfig, PathEventConfig
from shaping.policies import PolicyInput, make_policy
from shaping.sim.events import EventError, compile_events, event_kinds, validate_events
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator
from shaping.traffic.load import diurnal_factor


def _run(scenario, steps, *, cpu_kernel, seeds=2, seed=0):
    sim = Simulator(scenario, batch_size=seeds, seed=seed, cpu_kernel=cpu_kernel)
    policy = make_policy("static_priority")
    outs, last = [], None
    for t in range(steps):
        last = sim.step(policy(PolicyInput(t, sim.tensors, sim.state, last)))
        outs.append(last)
    return outs


def test_tables_hold_each_event_in_its_steps_only():
    sc = load_scenario("default")
    sc.path_events = [
        PathEventConfig(path="eth1", start_step=3, end_step=6, capacity_factor=0.5, extra_delay_ms=20.0, loss=0.1),
        PathEventConfig(path="eth0", start_step=5, capacity_factor=0.0),
    ]
    sc.load_events = [LoadEventConfig(start_step=2, end_step=4, factor=3.0, tenants=["bank"], apps=["web"])]
    sc.tenants[3].arrive_step = 4
    sc.tenants[2].leave_step = 7
    ev = compile_events(sc, n_classes=4)
    assert ev.steps == sc.episode_steps + 1
    assert ev.capacity[2:7, 1].tolist() == [1.0, 0.5, 0.5, 0.5, 1.0]
    assert ev.delay_ms[2:7, 1].tolist() == [0.0, 20.0, 20.0, 20.0, 0.0]
    assert ev.loss[3, 1] == pytest.approx(0.1)
    # A failure lasts to the end and loses everything; the path keeps a sliver of capacity for the maths.
    assert ev.loss[4, 0] == 0.0 and bool((ev.loss[5:, 0] == 1.0).all())
    assert bool((ev.capacity[5:, 0] < 0.05).all())
    bank_web = [i for i, c in enumerate(sc.tenants[1].classes) if c.app == "web"]
    assert ev.load[1:5, 1, bank_web[0]].tolist() == [1.0, 3.0, 3.0, 1.0]
    assert ev.load[2, 0].tolist() == [1.0] * 4  # other tenants untouched
    assert not ev.present[3, 3] and ev.present[4, 3] and ev.present[6, 2] and not ev.present[7, 2]
    assert float(ev.load[3, 3].sum()) == 0.0 and float(ev.load[8, 2].sum()) == 0.0
    # Past the table the last row holds: the failure stays, the departed tenant stays away.
    rows = ev.rows(torch.tensor([0, 10_000]))
    assert rows.loss[1, 0] == 1.0 and not rows.present[1, 2]
    assert set(event_kinds(sc)) >= {"failure", "degradation", "flash_crowd", "arrival", "departure"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (PathEventConfig(path="eth9"), "unknown path"),
        (PathEventConfig(path="eth0", start_step=5, end_step=5), "end_step must be > start_step"),
        (PathEventConfig(path="eth0", capacity_factor=1.5), "capacity_factor"),
        (PathEventConfig(path="eth0", loss=-0.1), "loss"),
        (LoadEventConfig(tenants=["nobody"]), "unknown tenants"),
        (LoadEventConfig(apps=["telnet"]), "unknown applications"),
        (LoadEventConfig(tenants=["bank"], classes=["game"]), "not classes of the chosen tenants"),
        (LoadEventConfig(factor=-1.0), "factor"),
    ],
)
def test_impossible_events_are_refused_naming_the_event(event, message):
    sc = load_scenario("default")
    if isinstance(event, PathEventConfig):
        sc.path_events = [event]
    else:
        sc.load_events = [event]
    with pytest.raises(EventError, match=message):
        validate_events(sc)


@pytest.mark.parametrize("cpu_kernel", [False, True])
def test_a_scheduled_failure_takes_the_path_down_at_its_step_and_back(cpu_kernel):
    sc = load_scenario("default")
    sc.path_events = [PathEventConfig(path="eth0", start_step=4, end_step=8, capacity_factor=0.0)]
    outs = _run(sc, 12, cpu_kernel=cpu_kernel)
    loss = torch.stack([o.path_loss[:, 0] for o in outs])  # (T, B)
    util = torch.stack([o.path_utilization[:, 0] for o in outs])
    assert bool((loss[:4] < 0.5).all()) and bool((loss[4:8] == 1.0).all()) and bool((loss[8:] < 1.0).all())
    assert bool((util[4:8] <= 0.0101).all()) and bool((util[:4] > 0.5).all()) and bool((util[9:] > 0.5).all())
    # The classes on the failed path lose everything they send over it, the other path is untouched.
    on_eth0 = outs[5].plan.path == 0
    assert bool((outs[5].metrics.delivered_mbps[on_eth0] == 0.0).all())
    assert bool((torch.stack([o.path_loss[:, 1] for o in outs]) == 0.0).all())


def test_kernel_and_torch_agree_under_events():
    sc = load_scenario("default")
    sc.path_events = [
        PathEventConfig(path="eth0", start_step=2, end_step=5, capacity_factor=0.3, extra_delay_ms=15.0, loss=0.05),
        PathEventConfig(path="eth1", start_step=4, capacity_factor=0.0),
    ]
    sc.load_events = [LoadEventConfig(start_step=1, end_step=6, factor=4.0, apps=["video", "web"])]
    a, b = _run(sc, 8, cpu_kernel=False), _run(sc, 8, cpu_kernel=True)
    for x, y in zip(a, b, strict=True):
        for name in ("delivered_mbps", "loss", "delay_p99_ms"):
            torch.testing.assert_close(getattr(x.metrics, name), getattr(y.metrics, name), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.path_loss, y.path_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.path_delay_ms, y.path_delay_ms, rtol=1e-4, atol=1e-3)


def test_added_delay_and_loss_reach_the_classes_on_the_path():
    sc = load_scenario("default")
    sc.path_events = [PathEventConfig(path="eth0", start_step=2, end_step=4, extra_delay_ms=50.0, loss=0.2)]
    outs = _run(sc, 5, cpu_kernel=True)
    on_eth0 = outs[2].plan.path == 0
    base = outs[2].metrics.base_delay_ms[on_eth0]
    assert torch.allclose(base, torch.full_like(base, 60.0))
    m = outs[2].metrics
    # The path loses a fifth of what it delivers: at least a quarter of what gets through is lost beside it.
    lost = (m.loss * m.offered_mbps)[on_eth0].sum()
    assert float(lost) >= 0.25 * float(m.delivered_mbps[on_eth0].sum()) * 0.999
    assert torch.allclose(outs[2].path_delay_ms[:, 1], torch.full((2,), 25.0), atol=5.0)
    assert bool((outs[4].metrics.base_delay_ms[outs[4].plan.path == 0] == 10.0).all())
    assert bool((outs[2].path_loss[:, 0] >= 0.2 - 1e-6).all())


def test_a_flash_crowd_raises_only_the_chosen_classes_demand_in_its_window():
    sc = load_scenario("default")
    sc.load = LoadConfig(diurnal_amplitude=0.0, burst_prob=0.0, flash_crowd_prob=0.0, web_pareto=False)
    sc.load_events = [LoadEventConfig(start_step=3, end_step=5, factor=3.0, tenants=["gameco"], classes=["video"])]
    outs = _run(sc, 6, cpu_kernel=True)
    demand = torch.stack([o.metrics.demand_mbps[0] for o in outs])  # (T, K, C), first environment
    video = [c.name for c in sc.tenants[0].classes].index("video")
    assert demand[3:5, 0, video].tolist() == pytest.approx([75.0, 75.0])
    assert demand[[0, 1, 2, 5], 0, video].tolist() == pytest.approx([25.0] * 4)
    torch.testing.assert_close(demand[3, 1:], demand[2, 1:])


def test_an_absent_tenant_sends_nothing_and_is_reported_absent():
    sc = load_scenario("default")
    sc.tenants[1].arrive_step = 3
    sc.tenants[2].leave_step = 2
    outs = _run(sc, 5, cpu_kernel=True)
    for t, o in enumerate(outs):
        assert bool(o.present[:, 1].all()) == (t >= 3)
        assert bool(o.present[:, 2].all()) == (t < 2)
        assert (float(o.metrics.offered_mbps[:, 1].sum()) > 0) == (t >= 3)
    # A tenant that is not there has nothing to violate.
    from shaping.spec import sla_violations

    assert not bool(sla_violations(outs[0].metrics, Simulator(sc).tensors.qos)[:, 1].any())


def test_diurnal_curve_interpolates_and_wraps():
    cfg = LoadConfig(diurnal_curve=[1.0, 2.0, 0.0, 1.0], diurnal_period_steps=40)
    t = torch.tensor([0.0, 5.0, 10.0, 25.0, 35.0, 40.0, 45.0])
    assert diurnal_factor(t, cfg).tolist() == pytest.approx([1.0, 1.5, 2.0, 0.5, 1.0, 1.0, 1.5])
    sine = LoadConfig(diurnal_amplitude=0.5, diurnal_period_steps=40)
    assert float(diurnal_factor(torch.tensor([10.0]), sine)) == pytest.approx(1.5)
    assert float(diurnal_factor(torch.tensor([30.0]), sine)) == pytest.approx(0.5, abs=1e-6)
    assert math.isclose(float(diurnal_factor(torch.tensor([0.0]), sine)), 1.0)


def test_without_a_random_phase_every_environment_starts_the_day_together():
    sc = load_scenario("default")
    sc.load = LoadConfig(diurnal_curve=[0.5, 1.5], diurnal_random_phase=False, burst_prob=0.0, flash_crowd_prob=0.0,
                         web_pareto=False, diurnal_period_steps=100)  # fmt: skip
    outs = _run(sc, 1, cpu_kernel=True, seeds=4)
    demand = outs[0].metrics.demand_mbps
    assert torch.allclose(demand, demand[:1].expand_as(demand))


def test_ef_policing_is_not_the_paths_loss():
    """Neighbours marking everything EF past the admission cap are policed; a best-effort probe is not, so
    the path's loss stays 0 while the policed classes see their own loss."""
    sc = load_scenario("default")
    sc.paths = sc.paths[:1]
    sim = Simulator(sc, batch_size=2, seed=0, cpu_kernel=True)
    policy = make_policy("greedy_premium")  # every class EF: far above the 30% EF cap of the path
    last = None
    for t in range(5):
        last = sim.step(policy(PolicyInput(t, sim.tensors, sim.state, last)))
    assert float(last.metrics.loss.max()) > 0.3
    assert float(last.path_loss.max()) < 1e-6
