"""Multi-agent PPO training (independent learners or one shared network) and the trained learners as a Policy.

``train_multi`` runs PPO for every controlled tenant of a scenario at once (shaping.agents.multi): each
iteration collects one joint rollout, then each learner takes its ppo_update on its tenants' transitions.
Every tenant maximizes its own reward; with ``shared=True`` the tenants' transitions train one network.
``MultiAgentPolicy`` drives the controlled tenants with the learners' greedy actions in
shaping.evaluation, so the learners are compared with the static baselines on held-out seeds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shaping.agents.checkpoint import save_checkpoint
from shaping.agents.multi import LearnerGroup, MultiTenantVectorEnv, collect_joint, make_groups
from shaping.agents.policy import TrainedPolicyBase, baseline_plans, write_actions
from shaping.agents.ppo import linear_lr, make_optimizer, ppo_update, set_lr
from shaping.agents.train import ReturnScaler, TrainLogger, wall_clock_spent
from shaping.config import PPOConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.policies import PolicyInput
from shaping.sim.layout import ScenarioTensors
from shaping.sim.tenant_view import TenantView
from shaping.spec import PlanBatch


@dataclass
class MultiEval:
    """Greedy evaluation of every controlled tenant (means over environments and steps)."""

    rewards: dict[str, float]
    """Per tenant its mean reward per step."""
    sla_violation_rates: dict[str, float]
    """Per tenant the fraction of (SLA class, step) pairs violating the SLA."""

    @property
    def total_reward(self) -> float:
        """Sum of the tenants' mean rewards (the total utility)."""
        return float(sum(self.rewards.values()))


@dataclass
class MultiTrainResult:
    """What train_multi produced."""

    groups: list[LearnerGroup]
    """The learners after the last iteration, with their tenants."""
    tenants: list[str]
    """Names of the controlled tenants."""
    shared: bool
    """One network for every tenant (parameter sharing) rather than one per tenant."""
    iterations: int
    env_steps: int
    """Environment steps collected (over the batch; each step moves every tenant)."""
    wall_s: float
    best_eval: MultiEval | None
    """The best evaluation (by total reward), None if none ran."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per iteration, the CSV rows."""
    checkpoints: dict[str, Path] = field(default_factory=dict)
    """Independent learners: per tenant the checkpoint of its learner at the best evaluation."""
    planned_iterations: int = 0
    """Iterations the step budget (total_timesteps) asked for."""
    wall_clock_stopped: bool = False
    """train.max_wall_s ended training before the planned iterations: the result is not the budget's."""


@torch.no_grad()
def evaluate_groups(env: MultiTenantVectorEnv, groups: Sequence[LearnerGroup], steps: int, seed: int) -> MultiEval:
    """Run every learner greedily for `steps` steps from a seeded reset of env (which must not truncate)."""
    obs = env.reset_torch(seed=seed)
    rew = torch.zeros(len(env.views), dtype=torch.float64, device=env.device)
    viol = torch.zeros_like(rew)
    n_sla = torch.tensor([max(int((v.qos.has_sla & v.qos.valid).sum()), 1) for v in env.views], device=env.device)
    for _ in range(steps):
        acts: dict[int, torch.Tensor] = {}
        for g in groups:
            acts.update(g.act(obs))
        res = env.step_torch([acts[i] for i in range(len(env.views))])
        rew += res.rewards.double().mean(0)
        viol += torch.stack([t.violations.double().mean() for t in res.terms]) / n_sla
        obs = res.obs
    names = env.names
    return MultiEval(
        rewards={n: float(r) / steps for n, r in zip(names, rew, strict=True)},
        sla_violation_rates={n: float(v) / steps for n, v in zip(names, viol, strict=True)},
    )


def _csv_fields(names: Sequence[str]) -> tuple[str, ...]:
    per = [f"{p}_{n}" for n in names for p in ("rollout_reward", "eval_reward", "eval_sla_violation_rate")]
    return ("iteration", "env_steps", "wall_s", "learning_rate", "value_loss", "policy_loss", "entropy",
            "approx_kl", "rollout_total_reward", "eval_total_reward", *per)  # fmt: skip


def _mean_stats(stats: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = ("learning_rate", "value_loss", "policy_loss", "entropy", "approx_kl")
    return {k: float(np.mean([s[k] for s in stats])) for k in keys}


def train_multi(
    scenario: ScenarioConfig,
    cfg: PPOConfig,
    train: TrainConfig | None = None,
    *,
    shared: bool = False,
    tenants: Sequence[int | str] | None = None,
    reward: RewardConfig | None = None,
    out_dir: Path | None = None,
) -> MultiTrainResult:
    """Train PPO learners for several tenants of one scenario at once on the shared paths.

    Args:
        scenario: the scenario.
        cfg: PPO hyperparameters of every learner; total_timesteps / (num_envs * num_steps) iterations.
        train: batch, seeds, periodic evaluation, logging (TrainConfig; norm_reward scales each learner's rewards).
        shared: one SharedActorCritic for every tenant instead of one ActorCritic per tenant.
        tenants: controlled tenants (indices or names); None: all. The others follow their scenario policy.
        reward: reward weights; None: RewardConfig defaults.
        out_dir: where train.csv, tensorboard/ and the checkpoints go; None: nothing is written.
    """
    train = train or TrainConfig()
    weights = reward or RewardConfig()
    torch.manual_seed(train.seed)
    env = MultiTenantVectorEnv(train.num_envs, scenario, tenants, weights, train.device, train.episode_steps)
    eval_env = MultiTenantVectorEnv(train.eval_envs, scenario, tenants, weights, train.device,
                                    max(train.eval_steps, env.max_episode_steps))  # fmt: skip
    groups = make_groups(env, shared, cfg.hidden_sizes, env.device)
    optimizers = [make_optimizer(g.agent, cfg.learning_rate) for g in groups]
    scalers = [ReturnScaler(g.n * env.num_envs, cfg.gamma, env.device) for g in groups] if train.norm_reward else None
    batch = train.num_envs * cfg.num_steps
    num_iterations = max(1, cfg.total_timesteps // batch)
    next_obs = env.reset_torch(seed=train.seed)
    if train.stagger_episodes:
        env.elapsed_steps[:] = np.random.default_rng(train.seed).integers(0, env.max_episode_steps, env.num_envs)
    names = env.names
    logger = TrainLogger(out_dir, train.tensorboard, _csv_fields(names))
    best: MultiEval | None = None
    checkpoints: dict[str, Path] = {}
    start = time.perf_counter()
    mode = "shared" if shared else "independent"
    bar = tqdm(total=num_iterations, disable=not train.progress, unit="it", desc=f"{mode}/{scenario.name}")
    iteration = 0
    try:
        for iteration in range(1, num_iterations + 1):
            for g, opt in zip(groups, optimizers, strict=True):
                g.agent.train()
                if cfg.anneal_lr:
                    set_lr(opt, linear_lr(cfg.learning_rate, iteration, num_iterations))
            rollouts, next_obs = collect_joint(env, groups, next_obs, cfg.num_steps)
            row: dict[str, Any] = {"iteration": iteration, "env_steps": iteration * batch}
            stats = []
            for gi, (g, ro, opt) in enumerate(zip(groups, rollouts, optimizers, strict=True)):
                per = ro.rewards.view(cfg.num_steps, g.n, -1)
                keep = ro.valid.view(cfg.num_steps, g.n, -1)
                for i, pos in enumerate(g.members):
                    row[f"rollout_reward_{names[pos]}"] = float(per[:, i][keep[:, i]].mean())
                if scalers is not None:
                    ro = scalers[gi](ro)
                stats.append(ppo_update(g.agent, opt, ro, cfg))
            row.update(_mean_stats(stats))
            row["rollout_total_reward"] = sum(row[f"rollout_reward_{n}"] for n in names)
            row["wall_s"] = time.perf_counter() - start
            over_budget = wall_clock_spent(train, row["wall_s"], iteration, num_iterations, "multi-agent training")
            if (train.eval_every and iteration % train.eval_every == 0) or iteration == num_iterations or over_budget:
                for g in groups:
                    g.agent.eval()
                ev = evaluate_groups(eval_env, groups, train.eval_steps, train.eval_seed)
                row["eval_total_reward"] = ev.total_reward
                for n in names:
                    row[f"eval_reward_{n}"] = ev.rewards[n]
                    row[f"eval_sla_violation_rate_{n}"] = ev.sla_violation_rates[n]
                if best is None or ev.total_reward > best.total_reward:
                    best = ev
                    if out_dir is not None:
                        checkpoints = save_groups(out_dir / "best", groups, cfg, {"iteration": iteration})
                bar.set_postfix(total=f"{row['rollout_total_reward']:.3f}", eval=f"{ev.total_reward:.3f}")
            logger.log(row)
            bar.update(1)
            if over_budget:
                break
    finally:
        bar.close()
        logger.close()
    for g in groups:
        g.agent.eval()
    return MultiTrainResult(groups=groups, tenants=names, shared=shared, iterations=iteration,
                            env_steps=iteration * batch, wall_s=time.perf_counter() - start, best_eval=best,
                            history=logger.rows, checkpoints=checkpoints, planned_iterations=num_iterations,
                            wall_clock_stopped=iteration < num_iterations)  # fmt: skip


def save_groups(
    out_dir: Path, groups: Sequence[LearnerGroup], cfg: PPOConfig, extra: dict[str, Any]
) -> dict[str, Path]:
    """Checkpoints of the learners: tenant_NAME.pt per independent learner (loadable as ``ppo:PATH``),
    shared.pt (state dict and tenant names, torch.save) for a shared network."""
    out: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for g in groups:
        if g.shared:
            names = [v.observation.spec.name for v in g.views]
            payload = {"state_dict": g.agent.state_dict(), "tenants": names, "extra": extra}
            torch.save(payload, out_dir / "shared.pt")
            out.update(dict.fromkeys(names, out_dir / "shared.pt"))
        else:
            spec = g.views[0].observation.spec
            out[spec.name] = save_checkpoint(out_dir / f"tenant_{spec.name}.pt", g.agent, spec, cfg, extra=extra)
    return out


class MultiAgentPolicy(TrainedPolicyBase):
    """Drives the learners' tenants with their greedy actions; every other tenant with its scenario policy.

    Made for the scenario the learners were trained on (the tenants are found by name in the simulator's
    specs). At step 0 there is no measurement yet, so every tenant runs its scenario policy's plan.

    Args:
        groups: the trained learners.
        scenario: the training scenario (for the other tenants' policies and the warm-up plans).
        name: name in reports.
    """

    def __init__(self, groups: Sequence[LearnerGroup], scenario: ScenarioConfig, name: str) -> None:
        self.groups = list(groups)
        self.scenario = scenario
        self._name = name
        self._tenants = tuple(v.observation.spec.name for g in self.groups for v in g.views)
        self._key: ScenarioTensors | None = None
        self._base: PlanBatch | None = None
        self._views: list[TenantView] = []

    def _bind(self, st: ScenarioTensors) -> None:
        names = [s.name for s in st.specs]
        policies = {t.name: t.policy for t in self.scenario.tenants}
        self._base = baseline_plans(st, policies, "static_priority")
        controlled = [v.observation.spec.name for g in self.groups for v in g.views]
        order = sorted({p for g in self.groups for p in g.members})
        by_pos = {p: n for g in self.groups for p, n in zip(g.members, [v.observation.spec.name for v in g.views],
                                                            strict=True)}  # fmt: skip
        missing = [n for n in controlled if n not in names]
        if missing:
            raise ValueError(f"the scenario has no tenants {missing} (has {names})")
        self._views = [TenantView.of(st, names.index(by_pos[p])) for p in order]
        self._key = st

    @torch.no_grad()
    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Plans of every environment and tenant: the learners' decoded actions for their tenants."""
        if self._key is not inp.tensors:
            self._bind(inp.tensors)
        assert self._base is not None
        b = int(inp.state.t.shape[0])
        fields = [x.expand(b, *x.shape[1:]).clone() for x in self._base]
        if inp.last is None:
            return PlanBatch(*fields)
        st = inp.tensors
        obs = [v.observe(inp.last) for v in self._views]
        for g in self.groups:
            for pos, actions in g.act(obs):
                write_actions(fields, self._views[pos], actions, st)
        return PlanBatch(*fields)
