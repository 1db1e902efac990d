"""adaptive_heuristic: each rule on made-up measurements, the batch against one environment at a time, and the
simulator policy (controlled tenants only, resets, determinism)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

from shaping import heuristic
from shaping.config import (
    ClassConfig,
    EntityConfig,
    PathConfig,
    PathEventConfig,
    QoSConfig,
    ScenarioConfig,
    TenantConfig,
)
from shaping.evaluation import evaluate_policy
from shaping.heuristic import HeuristicSettings, HeuristicState, TenantRules
from shaping.heuristic_policy import AdaptiveHeuristicPolicy
from shaping.policies import PolicyInput, known_policies, make_policy
from shaping.sim.simulator import Simulator
from shaping.spec import ClassMetrics, PathMetrics, TenantSpec, tenant_spec

GAME, BACKUP, SITE, TV = range(4)
#: Short counts so that every rule fires within a few hand-written intervals.
SETTINGS = HeuristicSettings(leave_after=2, return_after=5, max_return_after=40, escalate_after=3, relax_after=4,
                             ef_hold=6)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scenario() -> ScenarioConfig:
    """acme (game, backup, site, tv) and a rival on eth0 (120 Mbit/s, 10 ms) and eth1 (60 Mbit/s, 25 ms).

    acme's share is half of each path (60 and 30 Mbit/s); its static rules put game, site and tv on eth0
    and backup on eth1.
    """
    acme = TenantConfig(
        name="acme", cap_mbps=100.0, entities=[EntityConfig(name="vm", kind="vm", cidrs=["10.200.30.10/32"])],
        classes=[
            ClassConfig(name="game", app="gaming", entity="vm", mbps=10.0, flows=20, protocol="udp", ports=[27015],
                        qos=QoSConfig(max_p99_ms=40.0, max_loss=0.01)),
            ClassConfig(name="backup", app="bulk", entity="vm", mbps=100.0, flows=4, ports=[873],
                        qos=QoSConfig(min_mbps=10.0)),
            ClassConfig(name="site", app="web", entity="vm", mbps=20.0, flows=10, ports=[443],
                        qos=QoSConfig(max_p99_ms=200.0)),
            ClassConfig(name="tv", app="video", entity="vm", mbps=20.0, flows=4, ports=[8443],
                        qos=QoSConfig(app_floor=0.5)),
        ],
    )  # fmt: skip
    rival = TenantConfig(
        name="rival",
        cap_mbps=100.0,
        entities=[EntityConfig(name="vm", kind="vm", cidrs=["10.200.32.10/32"])],
        classes=[ClassConfig(name="bulk", app="bulk", entity="vm", mbps=100.0, flows=4, ports=[22])],
    )
    return ScenarioConfig(
        name="heuristic",
        paths=[PathConfig(name="eth0", capacity_mbps=120.0, base_delay_ms=10.0),
               PathConfig(name="eth1", capacity_mbps=60.0, base_delay_ms=25.0)],
        tenants=[acme, rival], substeps=2, episode_steps=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def spec() -> TenantSpec:
    return tenant_spec(scenario(), 0)


@pytest.fixture(scope="module")
def rules(spec: TenantSpec) -> TenantRules:
    return TenantRules.of(spec, SETTINGS)


def metrics(state: HeuristicState, batch: int = 1, **per_class: dict[int, float]) -> ClassMetrics:
    """Healthy measurements of every class (demand delivered, p99 1 ms above base, no loss), with overrides
    by field: ``p99={GAME: 80.0}``."""
    n = state.path.shape[1]
    base = torch.tensor([10.0, 25.0])[state.path]
    demand = torch.tensor([10.0, 12.0, 20.0, 20.0]).expand(batch, n).clone()
    fields = {
        "offered_mbps": demand.clone(), "delivered_mbps": demand.clone(), "demand_mbps": demand.clone(),
        "loss": torch.zeros(batch, n), "delay_mean_ms": base + 0.5, "delay_p99_ms": base + 1.0,
        "base_delay_ms": base, "app_metric": torch.ones(batch, n),
    }  # fmt: skip
    names = {"p99": "delay_p99_ms", "loss": "loss", "delivered": "delivered_mbps", "app": "app_metric"}
    for key, values in per_class.items():
        for c, v in values.items():
            fields[names[key]][:, c] = v
    return ClassMetrics(**fields)


def probes(state: HeuristicState, delay: tuple[float, float] = (10.0, 25.0), loss: tuple[float, float] = (0.0, 0.0),
           delivered: tuple[float, float] | None = None) -> PathMetrics:  # fmt: skip
    """Path probes of one environment, expanded to the state's batch; delivered defaults to the classes'
    demand on each path."""
    b = state.path.shape[0]
    if delivered is None:
        load = torch.tensor([10.0, 12.0, 20.0, 20.0])
        used = torch.zeros(b, 2).scatter_add(1, state.path, load.expand(b, -1))
    else:
        used = torch.tensor(delivered).expand(b, 2)
    return PathMetrics(torch.tensor(delay).expand(b, 2), torch.tensor(loss).expand(b, 2), used)


Overrides = dict[str, dict[int, float]]


def run(rules: TenantRules, state: HeuristicState, steps: int, settings: HeuristicSettings = SETTINGS,
        m: Overrides | None = None, **path_kw: tuple[float, float]) -> list[HeuristicState]:  # fmt: skip
    """``steps`` intervals of the same measurements; the state after each."""
    out = []
    for _ in range(steps):
        state = heuristic.step(rules, settings, state, metrics(state, state.path.shape[0], **(m or {})),
                               probes(state, **path_kw))  # fmt: skip
        out.append(state)
    return out


def start(rules: TenantRules, batch: int = 1) -> HeuristicState:
    return heuristic.initial_state(rules, SETTINGS, batch)


def test_starts_from_the_static_rules(rules: TenantRules, spec: TenantSpec) -> None:
    plan = heuristic.plan(rules, start(rules))
    assert plan.path[0].tolist() == [0, 1, 0, 0]  # game, site, tv on eth0; bulk kept off it
    assert plan.priority[0].tolist() == [0, 3, 2, 1] and plan.dscp[0].tolist() == [46, 0, 18, 34]
    assert plan.root_mbps[0, 0] == spec.cap_mbps and plan.ceil_mbps[0].tolist() == [100.0] * 4
    assert plan.rate_mbps[0, BACKUP] == pytest.approx(12.0)  # SLA minimum 10 with rate_headroom 1.2


def test_a_down_path_is_left_within_one_interval_and_taken_back_after_the_hysteresis(rules: TenantRules) -> None:
    state = start(rules)
    (state,) = run(rules, state, 1, loss=(1.0, 0.0), delay=(10_000.0, 25.0))
    # game and site off eth0 at once (site beyond acme's share of eth1: off a down path an inelastic class
    # takes any path that is up); tv stays, eth1's share has no room left for its QoE floor's share of its load.
    assert state.path[0].tolist() == [1, 1, 1, 0]
    healthy = run(rules, state, SETTINGS.return_after)
    assert [s.path[0, GAME].item() for s in healthy] == [1, 1, 1, 1, 0]  # back after return_after intervals
    assert healthy[-1].path[0].tolist() == [0, 1, 0, 0]


def test_a_flapping_path_is_not_followed(rules: TenantRules) -> None:
    state = start(rules)
    moves = 0
    for t in range(40):  # eth0 down 1 interval in 4: shorter healthy spells than return_after
        down = t % 4 == 0
        nxt = run(rules, state, 1, loss=(1.0 if down else 0.0, 0.0))[0]
        moves += int((nxt.path[0, GAME] != state.path[0, GAME]).item())
        state = nxt
    assert moves == 1 and state.path[0, GAME] == 1  # left once, never went back


def test_a_failed_return_doubles_the_wait(rules: TenantRules) -> None:
    state = run(rules, start(rules), 1, loss=(1.0, 0.0))[-1]
    state = run(rules, state, SETTINGS.return_after)[-1]
    assert state.path[0, GAME] == 0
    state = run(rules, state, 1, loss=(1.0, 0.0))[-1]  # down again right after going back
    assert state.path[0, GAME] == 1 and state.wait[0, GAME] == 2 * SETTINGS.return_after
    back = run(rules, state, 2 * SETTINGS.return_after)
    assert [s.path[0, GAME].item() for s in back].index(0) == 2 * SETTINGS.return_after - 1


def test_a_degraded_path_is_left_after_leave_after_intervals_of_missed_sla(rules: TenantRules) -> None:
    slow = {"delay": (45.0, 25.0)}  # eth0's probes above 0.8 x game's 40 ms bound; eth1 suits it
    late = {"p99": {GAME: 55.0}}
    states = run(rules, start(rules), 2, m=late, **slow)
    assert [s.path[0, GAME].item() for s in states] == [0, 1]
    assert states[-1].path[0, SITE] == 0  # site's 200 ms bound is met: it stays
    # Probes alone do not move a class that meets its SLA.
    assert run(rules, start(rules), 4, **slow)[-1].path[0, GAME] == 0


def test_a_class_stays_when_no_other_path_suits_it(rules: TenantRules) -> None:
    late = {"p99": {GAME: 80.0}}
    state = run(rules, start(rules), 6, m=late, delay=(60.0, 60.0))[-1]
    assert state.path[0, GAME] == 0


def test_a_class_short_of_its_minimum_moves_where_the_share_carries_it(rules: TenantRules) -> None:
    # backup gets 4 of its 10 Mbit/s on eth1, where acme already uses 28 of its 30 Mbit/s share.
    states = run(rules, start(rules), 2, m={"delivered": {BACKUP: 4.0}}, delivered=(40.0, 28.0))
    assert [s.path[0, BACKUP].item() for s in states] == [1, 0]


def test_a_class_missing_its_sla_rises_after_k_intervals_and_relaxes_after_compliance(rules: TenantRules) -> None:
    late = {"p99": {SITE: 300.0}}
    states = run(rules, start(rules), SETTINGS.escalate_after, m=late, delay=(10.0, 300.0))
    assert [(s.priority[0, SITE].item(), s.dscp[0, SITE].item()) for s in states] == [(2, 18), (2, 18), (1, 34)]
    states = run(rules, states[-1], 2 * SETTINGS.escalate_after, m=late, delay=(10.0, 300.0))
    assert states[-1].priority[0, SITE] == 1 and states[-1].dscp[0, SITE] == 34  # web tops at 1 and AF41
    relaxed = run(rules, states[-1], SETTINGS.relax_after)
    assert (relaxed[-1].priority[0, SITE].item(), relaxed[-1].dscp[0, SITE].item()) == (2, 18)
    assert (relaxed[-2].priority[0, SITE].item(), relaxed[-2].dscp[0, SITE].item()) == (1, 34)


def test_elastic_classes_keep_their_priority_and_never_go_ef(rules: TenantRules) -> None:
    short = {"delivered": {BACKUP: 1.0}}
    state = run(rules, start(rules), 4 * SETTINGS.escalate_after, m=short, delivered=(50.0, 1.0))[-1]
    assert state.priority[0, BACKUP] == 3 and state.dscp[0, BACKUP] == 34  # marks rise, short of EF


def test_a_policed_ef_class_leaves_ef_for_the_hold(rules: TenantRules) -> None:
    lossy = {"loss": {GAME: 0.05}}
    state = run(rules, start(rules), 1, m=lossy, loss=(0.02, 0.0))[-1]  # eth0 up, game loses 5% in EF
    assert state.dscp[0, GAME] == 34 and state.ef_block[0, GAME] == SETTINGS.ef_hold
    # Missing its SLA again, it rises toward EF only once the hold is over.
    late = {"p99": {GAME: 45.0}}
    marks = [s.dscp[0, GAME].item() for s in run(rules, state, SETTINGS.ef_hold + 3, m=late)]
    assert 46 not in marks[: SETTINGS.ef_hold - 1] and marks[-1] == 46


def test_ef_is_taken_only_within_the_tenant_ef_budget(rules: TenantRules) -> None:
    # game (10 Mbit/s, already EF) fills 10 of the 12 Mbit/s EF budget of acme's 60 Mbit/s share of eth0.
    state = start(rules)
    state = state._replace(dscp=state.dscp.clone().index_fill_(1, torch.tensor([GAME]), 34))
    late = {"p99": {GAME: 45.0}}  # eth0's probes suit game (10 ms): it stays and rises
    state = run(rules, state, SETTINGS.escalate_after, m=late)[-1]
    assert state.dscp[0, GAME] == 46  # 10 <= 0.2 x 60
    wide = HeuristicSettings(**{**SETTINGS.__dict__, "ef_share": 0.1})
    state = start(rules)
    state = state._replace(dscp=state.dscp.clone().index_fill_(1, torch.tensor([GAME]), 34))
    state = run(rules, state, SETTINGS.escalate_after, settings=wide, m=late)[-1]
    assert state.dscp[0, GAME] == 34  # 10 > 0.1 x 60


def test_aimd_cuts_elastic_ceilings_when_latency_classes_queue_and_grows_them_back(rules: TenantRules) -> None:
    state = start(rules)
    state = state._replace(path=torch.zeros_like(state.path))  # backup beside game on eth0 (eth1 is down)
    queueing = {"p99": {GAME: 30.0}, "delivered": {BACKUP: 50.0}}  # 20 ms of game's 30 ms budget > 0.5
    cuts = run(rules, state, 12, m=queueing, delivered=(100.0, 0.0), loss=(0.0, 1.0))
    ceils = [s.ceil[0, BACKUP].item() for s in cuts]
    assert ceils[0] == pytest.approx(0.7 * 50.0) and ceils[1] == pytest.approx(0.7 * 35.0)
    assert min(ceils) == pytest.approx(12.0)  # never below 1.2 x its 10 Mbit/s minimum
    assert [s.ceil[0, c].item() for s in cuts for c in (GAME, SITE, TV)] == [100.0] * 36  # only bulk is cut
    plan = heuristic.plan(rules, cuts[-1])
    assert plan.rate_mbps[0, BACKUP] == pytest.approx(12.0) and plan.ceil_mbps[0, BACKUP] == pytest.approx(12.0)
    grown = run(rules, cuts[-1], 40, delivered=(100.0, 0.0), loss=(0.0, 1.0))
    steps = [b.ceil[0, BACKUP].item() - a.ceil[0, BACKUP].item() for a, b in itertools.pairwise(grown)]
    assert steps[0] == pytest.approx(0.05 * 60.0)  # additive: 5% of acme's share of eth0 per interval
    assert grown[-1].ceil[0, BACKUP] == pytest.approx(100.0)  # up to the cap, no further


def test_sla_minimum_rates_hold_in_every_plan(rules: TenantRules) -> None:
    gen = torch.Generator().manual_seed(1)
    state = start(rules, 8)
    for _ in range(60):
        m = random_metrics(state, gen)
        state = heuristic.step(rules, SETTINGS, state, m, random_probes(state, gen))
        plan = heuristic.plan(rules, state)
        assert bool((plan.rate_mbps[:, BACKUP] >= 10.0).all()) and bool((plan.ceil_mbps >= plan.rate_mbps).all())
        assert bool((plan.ceil_mbps <= 100.0).all()) and bool((plan.priority >= 0).all())


def random_metrics(state: HeuristicState, gen: torch.Generator) -> ClassMetrics:
    b, n = state.path.shape
    u = torch.rand(6, b, n, generator=gen)
    base = torch.tensor([10.0, 25.0])[state.path]
    demand = 40.0 * u[0]
    return ClassMetrics(demand, demand * u[1], demand, 0.05 * u[2] ** 4, base + 30 * u[3], base + 80.0 * u[3] ** 2,
                        base, u[4])  # fmt: skip


def random_probes(state: HeuristicState, gen: torch.Generator) -> PathMetrics:
    b = state.path.shape[0]
    u = torch.rand(3, b, 2, generator=gen)
    down = u[1] < 0.1
    return PathMetrics(torch.tensor([10.0, 25.0]) + 60.0 * u[0] ** 3, torch.where(down, 1.0, 0.03 * u[1]), 60.0 * u[2])


def test_a_batch_steps_as_its_environments_one_at_a_time(rules: TenantRules) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = start(rules, 5)
    singles = [start(rules) for _ in range(5)]
    for _ in range(80):
        m, p = random_metrics(batch, gen), random_probes(batch, gen)
        batch = heuristic.step(rules, SETTINGS, batch, m, p)
        for i, s in enumerate(singles):
            one = ClassMetrics(*(x[i : i + 1] for x in m)), PathMetrics(*(x[i : i + 1] for x in p))
            singles[i] = heuristic.step(rules, SETTINGS, s, *one)
        for i, s in enumerate(singles):
            for a, b in zip(batch, s, strict=True):
                assert torch.equal(a[i : i + 1], b)
    assert len({tuple(s.path[0].tolist()) for s in singles}) > 1  # the environments did differ


def failing() -> ScenarioConfig:
    """The test scenario with eth0 down from step 10 to step 30."""
    sc = scenario()
    sc.path_events = [PathEventConfig(path="eth0", start_step=10, end_step=30, capacity_factor=0.0)]
    return sc


def drive(sc: ScenarioConfig, policy: AdaptiveHeuristicPolicy, controlled: tuple[int, ...], steps: int = 60,
          batch: int = 2) -> list[torch.Tensor]:  # fmt: skip
    """Paths of every tenant's classes (B, K, C) the policy returned at each step."""
    sim = Simulator(sc, batch_size=batch, seed=0)
    sim.reset(seed=0)
    last, out = None, []
    for t in range(steps):
        plan = policy(PolicyInput(t, sim.tensors, sim.state, last, controlled))
        out.append(plan.path.clone())
        last = sim.step(plan)
    return out


def test_the_policy_drives_only_the_controlled_tenants() -> None:
    paths = drive(failing(), AdaptiveHeuristicPolicy(SETTINGS), controlled=(1,))
    acme = [p[0, 0, :4].tolist() for p in paths]
    assert acme == [[0, 1, 0, 0]] * len(paths)  # acme is not driven: its static rules all along
    rival = [p[0, 1, 0].item() for p in paths]
    assert rival[:11] == [0] * 11 and rival[11] == 1  # the rival leaves eth0 one interval after it fails
    assert rival[-1] == 0  # and is back after the recovery and the hysteresis


def test_the_policy_resets_with_the_episode_and_is_deterministic() -> None:
    policy = AdaptiveHeuristicPolicy(SETTINGS)
    first = drive(failing(), policy, controlled=(0,))
    again = drive(failing(), policy, controlled=(0,))  # the same object: step 0 resets its state
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(p[0, 0, GAME] == 1 for p in first)
    sc = failing()
    a = evaluate_policy(sc, make_policy("adaptive_heuristic"), seeds=2, steps=40, seed=0)
    b = evaluate_policy(sc, make_policy("adaptive_heuristic"), seeds=2, steps=40, seed=0)
    assert a.sla_violation_rate == b.sla_violation_rate and a.mean_reward == b.mean_reward
    assert a.controlled == ["acme", "rival"] and a.policy == "adaptive_heuristic"


def test_it_is_a_bare_policy_name() -> None:
    assert "adaptive_heuristic" in known_policies()
    assert isinstance(make_policy("adaptive_heuristic"), AdaptiveHeuristicPolicy)
    with pytest.raises(KeyError, match="takes no argument"):
        make_policy("adaptive_heuristic:x")
    with pytest.raises(ValueError):
        HeuristicSettings(decrease=1.5)
