"""The simulator's mechanisms against hand-derived expectations: work and volume conservation, HTB
rates/ceils/root, probabilistic drops, priorities (HTB and DSCP queues), path choice, EF policing,
and the load model's means.

Each test states its tolerance; the measurements come from experiments.sim_checks, and
``python -m experiments.validate_sim`` prints them for docs/simulator.md. Queueing-theory checks
live in test_queueing_theory.py, TCP and CoDel in test_tcp_validation.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from experiments import sim_checks as C
from shaping.traffic.apps import WEB, WEB_MULT_CAP, WEB_PARETO_ALPHA
from shaping.traffic.load import advance_load, capped_pareto_xm, initial_load_state


# ------------------------------------------------------------------ conservation
def test_stage_invariants_on_random_inputs():
    """200 random batches of 3 tenants x 5 classes on 2 paths:
    - volume: served + backlog + overflow (+ policed) = backlog + arrivals, at both stages;
    - HTB work conservation: total served = min(root, sum_c min(demand_c, ceil_c));
    - no class above its ceil;
    - provider work conservation: each path serves min(capacity, admitted demand on it).
    Tolerance 1e-6 relative (float32 sums)."""
    r = C.check_stage_invariants()
    for key in ("htb_volume_balance_rel_err", "htb_work_conservation_rel_err", "provider_volume_balance_rel_err",
                "provider_work_conservation_rel_err"):
        assert r[key] < 1e-6, key
    assert r["htb_ceil_excess_rel"] == 0.0


def test_work_conservation_end_to_end():
    """Offered 150 into a 100 Mbit/s tenant root: 100 served; 60 into it: 60. Offered 80 into a 50 Mbit/s
    path: 50 (path fully used); 80 into 200: 80 (40% used). Tolerance 1e-4 relative."""
    r = C.check_work_conservation()
    assert r["offered_mbps"] == pytest.approx([150.0, 60.0, 80.0, 80.0], rel=1e-4)
    assert r["delivered_mbps"] == pytest.approx([100.0, 60.0, 50.0, 80.0], rel=1e-4)
    # path 0 is the 100 Gbit/s path carrying 160 Mbit/s
    assert r["path_utilization"] == pytest.approx([160.0 / C.FAT_MBPS, 1.0, 0.4], rel=1e-4)


# ------------------------------------------------------------------ rate limits
@pytest.fixture(scope="module")
def limits() -> dict[str, Any]:
    return C.check_rate_limits()


def test_htb_rates_ceils_and_borrowing(limits):
    """Root 100. Guarantees first: hi 10, mid 20, lo 40 (70 in all, every class is backlogged). The spare
    30 goes by priority: hi borrows up to its ceil 30 (+20), mid takes the last 10, lo (lowest priority)
    gets exactly its guarantee. Expected [30, 30, 40]. Tolerance 1e-4 relative."""
    assert limits["three_delivered_mbps"] == pytest.approx([30.0, 30.0, 40.0], rel=1e-4)


def test_htb_ceil_caps_a_lone_class(limits):
    """One class offering 80 with rate 5 and ceil 25 under an idle 100 Mbit/s root gets 25. Tolerance 1e-4."""
    assert limits["ceil_only_delivered_mbps"] == pytest.approx(25.0, rel=1e-4)


def test_tenant_never_exceeds_its_root(limits):
    """Two classes offering 80 each with ceil 100: the 100 Mbit/s root (cap) splits 50/50; a plan root of
    60 gives 30/30. Tolerance 1e-4 relative."""
    assert limits["root_delivered_mbps"] == pytest.approx([50.0, 50.0], rel=1e-4)
    assert limits["root60_delivered_mbps"] == pytest.approx([30.0, 30.0], rel=1e-4)


def test_same_priority_borrowers_keep_their_guarantees(limits):
    """Rates 10 and 40 at one priority, both offering 100 under a 100 Mbit/s root: the root is used in full
    and each keeps at least its rate. (How the spare 50 is split differs from Linux HTB, which shares it by
    quantum, i.e. by rate: [20, 80]; the model shares it by excess demand: [40, 60]. See the doc.)
    Tolerance 1e-4 relative."""
    a, b = limits["unequal_delivered_mbps"]
    assert a + b == pytest.approx(100.0, rel=1e-4)
    assert a >= 10.0 - 1e-3 and b >= 40.0 - 1e-3


# ------------------------------------------------------------------ drops
def test_drops_at_the_configured_probability():
    """Drops before queueing on an uncongested path: loss equals the configured 5% and 25%, delivered is
    20 x 0.95 and 20 x 0.75. Tolerance 1e-6 absolute on loss, 1e-4 relative on rates."""
    r = C.check_drops()
    assert r["loss"] == pytest.approx(r["configured"], abs=1e-6)
    assert r["delivered_mbps"] == pytest.approx([19.0, 15.0], rel=1e-4)


# ------------------------------------------------------------------ priorities
@pytest.fixture(scope="module")
def prio() -> dict[str, Any]:
    return C.check_priorities()


def test_htb_priority_gets_its_demand_first(prio):
    """Two classes offering 80 under a 100 Mbit/s root with rate 5 each: priority 0 gets all of its 80,
    priority 1 the remaining 20; at equal priority they split 50/50. Tolerance 1e-4 relative."""
    assert prio["htb_prio_delivered_mbps"] == pytest.approx([80.0, 20.0], rel=1e-4)
    assert prio["htb_same_delivered_mbps"] == pytest.approx([50.0, 50.0], rel=1e-4)


def test_dscp_queues_under_congestion(prio):
    """EF 20, AF41 40, AF21 40, BE 40 into 100 Mbit/s, WFQ weights 4:2:1 after strict EF. EF gets 20; of
    the 80 left AF41 is owed 80 x 4/7 = 45.7 > 40 so it gets its 40; AF21 and BE split the last 40 by
    2:1 = 26.7 and 13.3. Both overflow their 100 ms (10 Mbit) buffers and wait buffer / service rate:
    10000 / 26.67 = 375 ms and 10000 / 13.33 = 750 ms; EF and AF41 do not queue in the fluid.
    Tolerance 1e-3 relative on rates and queueing delays; EF < AF41 < AF21 < BE strictly."""
    assert prio["dscp_delivered_mbps"] == pytest.approx([20.0, 40.0, 80.0 / 3, 40.0 / 3], rel=1e-3)
    d = prio["dscp_queueing_delay_ms"]
    assert d[2:] == pytest.approx([375.0, 750.0], rel=1e-3)
    assert d[0] < d[1] < 1.0 < d[2] < d[3]
    p99 = prio["dscp_p99_ms"]
    assert p99[0] < p99[1] < p99[2] < p99[3]


# ------------------------------------------------------------------ paths
def test_path_choice_moves_bytes_and_base_delay():
    """a (40) and b (30) on path 0 (200 Mbit/s, 10 ms): path 0 at 70/200, path 1 idle. Moving a to path 1
    (100 Mbit/s, 25 ms): path 0 at 30/200, path 1 at 40/100, and a's base delay becomes 25 ms (its mean
    delay follows; b's stays at 10). Tolerance 1e-4 relative (mean delays 0.1%)."""
    r = C.check_path_choice()
    assert r["path_utilization"][0] == pytest.approx([0.35, 0.0], abs=1e-5)
    assert r["path_utilization"][1] == pytest.approx([0.15, 0.4], rel=1e-4)
    assert r["base_delay_ms"] == [[10.0, 10.0], [25.0, 10.0]]
    assert r["mean_delay_ms"][1] == pytest.approx([25.0, 10.0], rel=1e-3)


# ------------------------------------------------------------------ EF admission
def test_ef_admission_cap_polices_excess_ef():
    """EF cap 30% of 100 Mbit/s. One tenant's EF 50: 30 admitted, loss 20/50 = 0.4, and its BE 50 still
    gets 50 (30 + 50 < 100). Two tenants' EF 20 each share the 30 in proportion: 15 each, loss 0.25.
    Tolerance 1e-4 relative."""
    r = C.check_ef_policing()
    assert r["greedy_delivered_mbps"] == pytest.approx([30.0, 50.0], rel=1e-4)
    assert r["greedy_loss"] == pytest.approx([0.4, 0.0], abs=1e-5)
    assert r["shared_ef_delivered_mbps"] == pytest.approx([15.0, 15.0], rel=1e-4)
    assert r["shared_ef_loss"] == pytest.approx([0.25, 0.25], abs=1e-5)


# ------------------------------------------------------------------ load model
def test_web_pareto_multiplier_has_mean_one():
    """The capped Pareto multiplier keeps a web class's mean load at its configured rate: mean 1 within
    1% over 200k draws and never above the cap of 8. The old x_m = 1/3 gave a capped mean of 0.864
    (1 - x_m^1.5 8^-0.5 / 0.5 = 1 - 0.136)."""
    r = C.check_web_load()
    assert r["mean_multiplier"] == pytest.approx(1.0, abs=0.01)
    assert r["max_multiplier"] <= WEB_MULT_CAP
    assert r["uncapped_xm_capped_mean"] == pytest.approx(1.0 - (1 / 3) ** 1.5 * 8**-0.5 / 0.5, rel=1e-9)
    xm = capped_pareto_xm(WEB_PARETO_ALPHA, WEB_MULT_CAP)
    assert xm == r["xm"]
    assert (1.5 * xm - xm**1.5 * 8**-0.5) / 0.5 == pytest.approx(1.0, abs=1e-9)


def test_web_pareto_off_gives_a_constant_load():
    """With LoadConfig.web_pareto off (and no other variation) the multiplier is exactly 1."""
    gen = torch.Generator().manual_seed(0)
    state = initial_load_state(10, 1, 1, C.STEADY, gen, torch.device("cpu"))
    for t in range(3):
        state, mult = advance_load(state, torch.full((10,), t), torch.tensor([[WEB]]), C.STEADY, gen)
        assert torch.equal(mult, torch.ones(10, 1, 1))
