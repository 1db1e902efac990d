"""Evaluate policies in the batched simulator: SLA violations, utilization, reward, latency, fairness.

The evaluated policy drives the *controlled* tenants (the scenario's `controlled` list, or those given);
every other tenant, a neighbour, runs its scenario `policy` in every row, so rows are like for like.
The environments of one Simulator are the seeds (its batch dimension; they differ in load phase,
bursts, flash crowds and start state); episodes run one after another, each after a reset with seed
``seed + episode``.
Every policy sees the same random load (the simulator's random draws do not depend on the
plans), so differences between policies are not sampling noise of the load.

Aggregates (all means are over environments x episodes and steps):
- sla_violation_rate: fraction of (class, step) pairs, over the controlled tenants' classes that have
  an SLA, that violate any clause of it (shaping.spec.sla_violations); steps in which a tenant is absent
  (it has not arrived or has left) do not count; neighbour_sla_violation_rate: the same over the
  neighbours' classes (a policy that wins by hurting them shows there);
- utilization: delivered volume over the capacity of all provider paths together;
- mean_reward: mean per-tenant reward per step (shaping.spec.compute_reward, RewardConfig weights);
- per application: p50 and p99 over intervals of the interval's mean one-way delay, the mean of
  the interval p99 estimates, loss (offered-weighted), application metric, SLA violation rate;
- per tenant: reward, throughput, efficiency, SLA violation rate, application metric;
- jain_throughput: Jain's fairness index across tenants of each tenant's efficiency
  (delivered / min(cap, demand)), per environment, then averaged;
- time series (mean over environments per step) for plots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shaping.config import APPS, RewardConfig, ScenarioConfig
from shaping.policies import Policy, PolicyInput, bind_policy, neighbour_plans, resolve_controlled
from shaping.sim.simulator import Simulator
from shaping.spec import ClassMetrics, PlanBatch, QoSTensors, compute_reward, controlled_indices, sla_violations


@dataclass
class AppStats:
    """Aggregates of the classes of one application."""

    classes: int
    """Number of classes of the application in the scenario (over all tenants)."""
    p50_ms: float
    """Median over intervals (and classes, environments) of the interval's mean one-way delay."""
    p99_ms: float
    """99th percentile over intervals of the interval's mean one-way delay (the bad intervals)."""
    interval_p99_ms: float
    """Mean over intervals of the interval's p99 delay estimate (what the SLA clauses check)."""
    loss: float
    """Lost / offered volume."""
    app_metric: float
    """Mean application metric in [0, 1]."""
    throughput_mbps: float
    """Mean delivered rate of all the application's classes of one environment, Mbit/s."""
    sla_violation_rate: float
    """Fraction of (class, step) pairs violating the SLA, over the classes with one (0 when none has)."""


@dataclass
class TenantStats:
    """Aggregates of one tenant."""

    reward: float
    """Mean reward per step."""
    throughput_mbps: float
    """Mean delivered rate, Mbit/s."""
    efficiency: float
    """Mean delivered / min(cap, demand), the reward's efficiency term."""
    sla_violation_rate: float
    """Fraction of (class, step) pairs violating the SLA, over its classes with one."""
    app_metric: float
    """Mean application metric over its classes."""


@dataclass
class Series:
    """Per-step time series, means over environments (and episodes)."""

    sla_violation_rate: list[float] = field(default_factory=list)
    """Fraction of SLA classes violating their SLA."""
    utilization: list[float] = field(default_factory=list)
    """Delivered / capacity over all paths."""
    reward: list[float] = field(default_factory=list)
    """Mean per-tenant reward."""
    latency_p99_ms: dict[str, list[float]] = field(default_factory=dict)
    """Per application: mean interval p99 delay estimate of its classes."""


@dataclass
class PolicyResult:
    """Everything measured for one policy on one scenario."""

    policy: str
    scenario: str
    seeds: int
    episodes: int
    steps: int
    controlled: list[str]
    """The tenants the policy drove; every other tenant ran its scenario policy."""
    sla_violation_rate: float
    """Fraction of the controlled tenants' (class, step) pairs with an SLA and some demand that violate it."""
    sla_violation_rate_std: float
    """Standard deviation of the per-environment rate."""
    neighbour_sla_violation_rate: float
    """The same over the other tenants' classes (0 when every tenant is controlled)."""
    utilization: float
    """Delivered / capacity over all paths."""
    utilization_std: float
    """Standard deviation of the per-environment utilization."""
    mean_reward: float
    """Mean per-tenant reward per step."""
    mean_reward_std: float
    """Standard deviation of the per-environment mean reward."""
    loss: float
    """Lost / offered volume over all classes."""
    jain_throughput: float
    """Jain's index across tenants of per-tenant efficiency, mean over environments."""
    path_utilization: dict[str, float]
    """Delivered / capacity of each path."""
    apps: dict[str, AppStats]
    """Per application present in the scenario."""
    tenants: dict[str, TenantStats]
    """Per tenant."""
    series: Series
    """Per-step time series."""
    wall_s: float = 0.0
    """Wall-clock time of the evaluation, seconds."""

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) dict."""
        return asdict(self)


def jain_index(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jain's fairness index (sum x)^2 / (n * sum x^2) of non-negative values along dim.

    1 when every value is equal (including all zero), 1/n when one value takes everything.
    """
    n = x.shape[dim]
    s = x.sum(dim)
    sq = (x * x).sum(dim)
    return torch.where(sq > 0, s * s / (n * sq.clamp_min(1e-30)), torch.ones_like(s))


@dataclass
class _Run:
    """Per-environment sums over steps and per-step samples of the episodes run so far."""

    sums: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """Name -> per episode, (B, ...) sums over steps."""
    samples: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """Name -> per episode, (T, B, ...) stacked per-step values."""

    def cat_sums(self, name: str) -> torch.Tensor:
        return torch.cat(self.sums[name], dim=0).cpu()

    def cat_samples(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[name], dim=1).cpu()


@dataclass(frozen=True)
class _Control:
    """Who the evaluated policy drives, and what everyone else does."""

    indices: tuple[int, ...]
    mask: torch.Tensor  # (K,) bool, controlled
    neighbours: PlanBatch  # (B, K, C) the scenario policies' plans
    aqm: torch.Tensor  # (K,) bool: the policy's CoDel switch for the controlled, the neighbours' own

    def plans(self, policy: Policy, inp: PolicyInput) -> PlanBatch:
        """The policy's plans for the controlled tenants, the neighbours' plans for the rest."""
        out = policy(inp)
        m = self.mask.view(1, -1, 1)
        return PlanBatch(*(torch.where(m, p, n) for p, n in zip(out, self.neighbours, strict=True)))


def sla_pairs(m: ClassMetrics, qos: QoSTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, C) floats of one step: the class violates its SLA, and the class has an SLA and demand (the
    (class, step) pairs a violation rate counts)."""
    active = (qos.has_sla & qos.valid & (m.demand_mbps > 0)).float()
    return sla_violations(m, qos).float(), active


def env_violation_rate(viol: torch.Tensor, active: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) each environment's violation rate over the (class, step) pairs of the classes in mask.

    Args:
        viol: (B, K, C) violations summed over steps (sla_pairs).
        active: (B, K, C) active pairs summed over steps.
        mask: (K, C) bool, the classes counted (those of the controlled tenants with an SLA).
    """
    return (viol * mask).sum((-2, -1)) / (active * mask).sum((-2, -1)).clamp_min(1.0)


def _episode(
    sim: Simulator, policy: Policy, ctl: _Control, steps: int, weights: RewardConfig, run: _Run, bar: tqdm
) -> None:
    """Run one episode from the simulator's current state and add its sums and samples to run."""
    st = sim.tensors
    sla = st.qos.has_sla & st.qos.valid & ctl.mask.view(-1, 1)
    path_mbps = st.path_mbps
    sums: dict[str, torch.Tensor] = {}
    per_step: dict[str, list[torch.Tensor]] = {n: [] for n in ("sla", "util", "reward", "delay_mean", "delay_p99")}

    def add(name: str, x: torch.Tensor) -> None:
        sums[name] = sums[name] + x if name in sums else x.clone()

    last = None
    for t in range(steps):
        out = sim.step(ctl.plans(policy, PolicyInput(t, st, sim.state, last, ctl.indices)), ctl.aqm)
        m = out.metrics
        viol, active = sla_pairs(m, st.qos)
        terms = compute_reward(m, st.qos, st.cap_mbps, weights)
        util = (out.path_utilization * path_mbps).sum(-1) / path_mbps.sum()
        add("viol", viol)
        add("active", active)
        add("reward", terms.reward)
        add("efficiency", terms.efficiency)
        add("offered", m.offered_mbps)
        add("delivered", m.delivered_mbps)
        add("lost", m.offered_mbps * m.loss)
        add("app_metric", m.app_metric)
        add("path_util", out.path_utilization)
        per_step["sla"].append(env_violation_rate(viol, active, sla))
        per_step["util"].append(util)
        per_step["reward"].append(terms.reward.mean(-1))
        per_step["delay_mean"].append(m.delay_mean_ms)
        per_step["delay_p99"].append(m.delay_p99_ms)
        last = out
        bar.update(1)
    for name, x in sums.items():
        run.sums.setdefault(name, []).append(x)
    for name, xs in per_step.items():
        run.samples.setdefault(name, []).append(torch.stack(xs))


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    std = float(x.std(correction=0)) if x.numel() > 1 else 0.0
    return float(x.mean()), std


def _app_stats(run: _Run, sim: Simulator, steps: int) -> dict[str, AppStats]:
    st = sim.tensors
    valid = st.qos.valid.cpu()
    sla = (st.qos.has_sla & st.qos.valid).cpu()
    app = st.apps.app.cpu()
    viol, offered, lost = run.cat_sums("viol"), run.cat_sums("offered"), run.cat_sums("lost")
    delivered, metric, active = run.cat_sums("delivered"), run.cat_sums("app_metric"), run.cat_sums("active")
    delay_mean, delay_p99 = run.cat_samples("delay_mean"), run.cat_samples("delay_p99")
    n_env = viol.shape[0]
    out: dict[str, AppStats] = {}
    for code, name in enumerate(APPS):
        mask = (app == code) & valid
        n = int(mask.sum())
        if n == 0:
            continue
        sm = mask & sla
        samples = delay_mean[:, :, mask].numpy().ravel()
        p50, p99 = np.percentile(samples, [50.0, 99.0])
        out[name] = AppStats(
            classes=n,
            p50_ms=float(p50),
            p99_ms=float(p99),
            interval_p99_ms=float(delay_p99[:, :, mask].mean()),
            loss=float(lost[:, mask].sum() / offered[:, mask].sum().clamp_min(1e-9)),
            app_metric=float(metric[:, mask].mean() / steps),
            throughput_mbps=float(delivered[:, mask].sum() / (n_env * steps)),
            sla_violation_rate=_rate(viol[:, sm], active[:, sm]),
        )
    return out


def _rate(violations: torch.Tensor, active: torch.Tensor) -> float:
    """Violations over active (class, step) pairs; 0 where no pair was active."""
    n = float(active.sum())
    return float(violations.sum()) / n if n > 0 else 0.0


def _tenant_stats(run: _Run, sim: Simulator, steps: int) -> dict[str, TenantStats]:
    st = sim.tensors
    valid = st.qos.valid.cpu()
    sla = (st.qos.has_sla & st.qos.valid).cpu()
    viol, reward, eff = run.cat_sums("viol"), run.cat_sums("reward"), run.cat_sums("efficiency")
    delivered, metric, active = run.cat_sums("delivered"), run.cat_sums("app_metric"), run.cat_sums("active")
    out: dict[str, TenantStats] = {}
    for k, spec in enumerate(st.specs):
        out[spec.name] = TenantStats(
            reward=float(reward[:, k].mean() / steps),
            throughput_mbps=float(delivered[:, k].sum(-1).mean() / steps),
            efficiency=float(eff[:, k].mean() / steps),
            sla_violation_rate=_rate(viol[:, k][:, sla[k]], active[:, k][:, sla[k]]),
            app_metric=float(metric[:, k][:, valid[k]].mean() / steps),
        )
    return out


def _series(run: _Run, sim: Simulator) -> Series:
    st = sim.tensors
    valid = st.qos.valid.cpu()
    app = st.apps.app.cpu()

    def mean_over_envs(x: torch.Tensor) -> list[float]:
        # (T, envs x episodes): episodes are concatenated along the env axis, so one mean covers both.
        return [float(v) for v in x.mean(1)]

    p99 = run.cat_samples("delay_p99")
    lat = {
        name: [float(v) for v in p99[:, :, (app == code) & valid].mean((1, 2))]
        for code, name in enumerate(APPS)
        if bool(((app == code) & valid).any())
    }
    return Series(
        sla_violation_rate=mean_over_envs(run.cat_samples("sla")),
        utilization=mean_over_envs(run.cat_samples("util")),
        reward=mean_over_envs(run.cat_samples("reward")),
        latency_p99_ms=lat,
    )


def evaluate_policy(
    scenario: ScenarioConfig,
    policy: Policy,
    *,
    seeds: int = 4,
    steps: int | None = None,
    episodes: int = 1,
    reward: RewardConfig | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    controlled: Sequence[str] | None = None,
) -> PolicyResult:
    """Run a policy for the controlled tenants of a scenario (the others on their scenario policies) and
    aggregate what the simulator measured.

    Args:
        scenario: the scenario.
        policy: the policy every tenant runs.
        seeds: environments simulated together (the Simulator's batch size).
        steps: control steps per episode; None: the scenario's episode_steps.
        episodes: episodes run one after another (reset with seed + episode before each).
        reward: reward weights; None: RewardConfig defaults.
        device: torch device of the simulator.
        seed: base seed.
        progress: show a tqdm progress bar (on stderr).
        controlled: names of the tenants the policy drives; None: the scenario's `controlled` (every
            tenant when it names none).
    Returns:
        The aggregates, per application, per tenant and per step.
    """
    n_steps = scenario.episode_steps if steps is None else steps
    if seeds < 1 or n_steps < 1 or episodes < 1:
        raise ValueError(f"need seeds, steps and episodes >= 1, got {seeds}, {n_steps}, {episodes}")
    weights = reward if reward is not None else RewardConfig()
    indices = resolve_controlled_indices(scenario, controlled)
    # Before the clock starts: binding may tune a plan for the scenario (tuned_static) or load it.
    policy = bind_policy(policy, scenario, [scenario.tenants[i].name for i in indices])
    start = time.perf_counter()
    sim = Simulator(scenario, batch_size=seeds, device=device, seed=seed)
    ctl = _control(scenario, sim, policy, indices)
    run = _Run()
    desc = f"{scenario.name}/{policy.name}"
    bar = tqdm(total=episodes * n_steps, desc=desc, disable=not progress, unit="step", mininterval=0.5)
    with torch.inference_mode(), bar:
        for ep in range(episodes):
            sim.reset(seed=seed + ep)
            _episode(sim, policy, ctl, n_steps, weights, run, bar)
        st = sim.tensors
        sla = (st.qos.has_sla & st.qos.valid).cpu()
        mine = sla & ctl.mask.cpu().view(-1, 1)
        viol, active = run.cat_sums("viol"), run.cat_sums("active")
        sla_env = env_violation_rate(viol, active, mine)
        util_env = run.cat_samples("util").mean(0)
        reward_env = run.cat_sums("reward").mean(-1) / n_steps
        jain = jain_index(run.cat_sums("efficiency") / n_steps, dim=-1)
        offered, lost = run.cat_sums("offered"), run.cat_sums("lost")
        path_util = run.cat_sums("path_util").mean(0) / n_steps
        sla_m, sla_s = _mean_std(sla_env)
        util_m, util_s = _mean_std(util_env)
        rew_m, rew_s = _mean_std(reward_env)
        result = PolicyResult(
            policy=policy.name,
            scenario=scenario.name,
            seeds=seeds,
            episodes=episodes,
            steps=n_steps,
            controlled=[st.specs[k].name for k in ctl.indices],
            sla_violation_rate=sla_m,
            sla_violation_rate_std=sla_s,
            neighbour_sla_violation_rate=_rate(viol[:, sla & ~mine], active[:, sla & ~mine]),
            utilization=util_m,
            utilization_std=util_s,
            mean_reward=rew_m,
            mean_reward_std=rew_s,
            loss=float(lost.sum() / offered.sum().clamp_min(1e-9)),
            jain_throughput=float(jain.mean()),
            path_utilization={p.name: float(u) for p, u in zip(scenario.paths, path_util, strict=True)},
            apps=_app_stats(run, sim, n_steps),
            tenants=_tenant_stats(run, sim, n_steps),
            series=_series(run, sim),
        )
    result.wall_s = time.perf_counter() - start
    return result


def resolve_controlled_indices(scenario: ScenarioConfig, controlled: Sequence[str] | None) -> tuple[int, ...]:
    """Indices of the controlled tenants, in scenario order: those named, else the scenario's `controlled` (every
    tenant when it names none).

    Raises:
        ValueError: a name that is not a tenant of the scenario, or an empty list.
    """
    names = [t.name for t in scenario.tenants]
    if controlled is None:
        return tuple(controlled_indices(scenario))
    unknown = [n for n in controlled if n not in names]
    if unknown or not controlled:
        raise ValueError(f"controlled must name tenants of {scenario.name!r} ({names}), got {list(controlled)}")
    return tuple(i for i, n in enumerate(names) if n in controlled)


def _control(scenario: ScenarioConfig, sim: Simulator, policy: Policy, indices: tuple[int, ...]) -> _Control:
    """The neighbours' plans and CoDel switches around the controlled tenants."""
    st = sim.tensors
    mask = torch.zeros(st.n_tenants, dtype=torch.bool, device=sim.device)
    mask[list(indices)] = True
    plans, codel = neighbour_plans(st, scenario, sim.batch_size)
    aqm = torch.where(mask, torch.tensor(bool(policy.aqm), device=sim.device), codel)
    return _Control(indices, mask, plans, aqm)


def evaluate_policies(
    scenario: ScenarioConfig,
    policies: Sequence[Policy],
    **kwargs: Any,
) -> dict[str, PolicyResult]:
    """evaluate_policy for each policy (same seeds, so the same load, and the same controlled tenants: those
    every policy can control, see shaping.policies.resolve_controlled), keyed by policy name.

    Args:
        scenario: the scenario.
        policies: the policies; their names must be unique.
        kwargs: passed to evaluate_policy (seeds, steps, episodes, reward, device, seed, progress, controlled).
    """
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    if kwargs.get("controlled") is None:
        kwargs["controlled"] = resolve_controlled(scenario, policies)
    return {p.name: evaluate_policy(scenario, p, **kwargs) for p in policies}
