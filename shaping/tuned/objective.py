"""tuned_static's objective: candidate plans of the controlled tenants run side by side on the training seeds.

One batch of N candidates runs as ONE Simulator of N x seeds environments: environment i runs candidate
i // seeds on training seed i % seeds, and the simulator's replicas draw the same randomness for every
candidate (Simulator(replicas=N)), so each candidate sees exactly the load, the start state and the
scheduled events that evaluate_policy(..., seeds=seeds, seed=seed) shows a policy. Neighbours run their
scenario policies (shaping.policies.neighbour_plans), the controlled tenants' CoDel switch is the batch's.
The scores are the evaluation's definitions (shaping.evaluation.sla_pairs, env_violation_rate;
shaping.spec.compute_reward): per candidate, the controlled tenants' SLA violation rate (mean over the
seeds of each environment's rate) and their mean reward per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from shaping.config import RewardConfig, ScenarioConfig
from shaping.evaluation import env_violation_rate, sla_pairs
from shaping.policies import neighbour_plans
from shaping.sim.layout import ScenarioTensors, compile_scenario
from shaping.sim.simulator import Simulator
from shaping.spec import ACTION_FIELDS, PlanBatch, ShapingPlan, compute_reward, decode_batch, stack_plans


class Scores(NamedTuple):
    """Per candidate, on the training seeds."""

    sla_violation_rate: np.ndarray  # (N,) the controlled tenants' rate, mean over seeds
    mean_reward: np.ndarray  # (N,) the controlled tenants' mean reward per step


@dataclass
class CandidateEvaluator:
    """Runs batches of constant plans of the controlled tenants on the training seeds.

    Args:
        scenario: the scenario.
        controlled: indices of the controlled tenants, in scenario order.
        seeds: training environments per candidate.
        steps: control steps of the episode.
        seed: base seed of the training environments (the simulator's generator).
        reward: reward weights of the tie-break.
        device: torch device of the simulator.
    """

    scenario: ScenarioConfig
    controlled: tuple[int, ...]
    seeds: int
    steps: int
    seed: int
    reward: RewardConfig = field(default_factory=RewardConfig)
    device: torch.device | str = "cpu"
    evaluations: int = 0
    """Candidates evaluated so far."""
    env_steps: int = 0
    """Environment steps simulated so far (candidates x seeds x steps)."""
    _sims: dict[int, Simulator] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tensors: ScenarioTensors = compile_scenario(self.scenario, self.device)

    def _sim(self, n: int) -> Simulator:
        """The simulator of n candidates (built once per batch size, reset before every batch)."""
        if n not in self._sims:
            self._sims[n] = Simulator(
                self.scenario, batch_size=n * self.seeds, device=self.device, seed=self.seed, replicas=n
            )
        return self._sims[n]

    def from_actions(self, actions: Sequence[Sequence[np.ndarray]]) -> PlanBatch:
        """(N, Kc, C) plans of N candidates given as flat actions per controlled tenant (decode_batch)."""
        st = self.tensors
        c = st.n_classes
        width = c * len(ACTION_FIELDS) + 1
        padded = np.zeros((len(actions), len(self.controlled), width), dtype=np.int64)
        for i, row in enumerate(actions):
            for j, a in enumerate(row):
                padded[i, j, : len(a) - 1] = a[:-1]
                padded[i, j, -1] = a[-1]
        idx = torch.tensor(list(self.controlled), device=st.device)
        plans = decode_batch(torch.as_tensor(padded, device=st.device), c, st.cap_mbps[idx], st.levels)
        # Padding classes as stack_plans lays them out (its defaults, the tenant's root), so a plan decoded here
        # and the same plan stacked from ShapingPlans (what the tuned_static policy runs) are the same tensors.
        pad = stack_plans([[_empty_plan(st.specs[k].name) for k in self.controlled]], c, st.device)
        valid = st.class_valid[idx].unsqueeze(0)
        return plans._replace(
            **{f: torch.where(valid, getattr(plans, f), getattr(pad, f)) for f in PlanBatch._fields if f != "root_mbps"}
        )

    def from_plans(self, plans: Sequence[Sequence[ShapingPlan]]) -> PlanBatch:
        """(N, Kc, C) plans of N candidates given as ShapingPlans per controlled tenant."""
        st = self.tensors
        return stack_plans([list(row) for row in plans], st.n_classes, st.device)

    def evaluate(self, plans: PlanBatch, aqm: bool) -> Scores:
        """Scores of N candidates (plans (N, Kc, C)) run with the controlled tenants' CoDel switch aqm."""
        n = int(plans.rate_mbps.shape[0])
        sim = self._sim(n)
        sim.reset(seed=self.seed)
        st, s = sim.tensors, self.seeds
        idx = torch.tensor(list(self.controlled), device=sim.device)
        mask = torch.zeros(st.n_tenants, dtype=torch.bool, device=sim.device)
        mask[idx] = True
        base, codel = neighbour_plans(st, self.scenario, n * s)
        # Environment i runs candidate i // s.
        batch = place(base, PlanBatch(*(x.to(sim.device).repeat_interleave(s, dim=0) for x in plans)), idx)
        aqm_k = torch.where(mask, torch.tensor(aqm, device=sim.device), codel)
        counted = st.qos.has_sla & st.qos.valid & mask.view(-1, 1)
        viol_sum = torch.zeros(n * s, st.n_tenants, st.n_classes, device=sim.device)
        active_sum = torch.zeros_like(viol_sum)
        reward_sum = torch.zeros(n * s, device=sim.device)
        with torch.inference_mode():
            for _ in range(self.steps):
                m = sim.step(batch, aqm_k).metrics
                viol, active = sla_pairs(m, st.qos)
                viol_sum += viol
                active_sum += active
                reward_sum += compute_reward(m, st.qos, st.cap_mbps, self.reward).reward[:, idx].mean(-1)
            rate = env_violation_rate(viol_sum, active_sum, counted)
        self.evaluations += n
        self.env_steps += n * s * self.steps
        per_env = rate.cpu().double().view(n, s)
        reward = (reward_sum.cpu().double() / self.steps).view(n, s)
        return Scores(per_env.mean(1).numpy(), reward.mean(1).numpy())


def evaluate_named(
    ev: CandidateEvaluator, candidates: Mapping[str, tuple[Sequence[ShapingPlan], bool]]
) -> dict[str, tuple[float, float]]:
    """(SLA violation rate, mean reward) of named candidates, each its plans per controlled tenant and its CoDel
    setting; one batch per setting (the simulator's CoDel switch is per batch), in the candidates' order."""
    scores: dict[str, tuple[float, float]] = {}
    for aqm in (False, True):
        names = [n for n, (_, a) in candidates.items() if a == aqm]
        if names:
            rate, reward = ev.evaluate(ev.from_plans([candidates[n][0] for n in names]), aqm)
            scores.update({n: (float(r), float(w)) for n, r, w in zip(names, rate, reward, strict=True)})
    return {n: scores[n] for n in candidates}


def place(plans: PlanBatch, controlled: PlanBatch, idx: torch.Tensor) -> PlanBatch:
    """plans (B, K, C) with the tenants idx replaced by controlled (B, len(idx), C), as a new PlanBatch."""
    out = []
    for x, y in zip(plans, controlled, strict=True):
        x = x.clone()
        x[:, idx] = y
        out.append(x)
    return PlanBatch(*out)


def _empty_plan(tenant: str) -> ShapingPlan:
    return ShapingPlan(tenant=tenant, classes=(), root_mbps=1.0)
