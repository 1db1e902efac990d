"""The PPO training loop of one tenant over ShapingVectorEnv: rollouts, updates, evaluation, logs, checkpoints.

``train_ppo`` strings together the steps of shaping.agents.ppo (collect_rollout, compute_gae inside
ppo_update) the way CleanRL's ``ppo.py`` does in its ``__main__``, as a function that pretraining, the
Flower client and tests call::

    result = train_ppo([load_scenario("default")], PPOConfig(total_timesteps=200_000), TrainConfig(),
                       tenant="gameco", out_dir=Path("outputs/pretrain"))
    result.best_path  # outputs/pretrain/best.pt, loadable with load_checkpoint or make_policy("ppo:...")

Several scenarios are trained in turn (one iteration each, round robin); they must give the tenant
the same spec (observation and action layout), which is checked up front.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shaping.agents.checkpoint import save_checkpoint
from shaping.agents.envelope import build_envelope
from shaping.agents.heads import MaskedMultiDiscrete
from shaping.agents.ppo import ActorCritic, Rollout, collect_rollout, linear_lr, make_optimizer, ppo_update, set_lr
from shaping.config import DQNConfig, PPOConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec import TenantSpec

log = logging.getLogger(__name__)

#: Columns of the CSV log, one row per iteration (evaluation columns are empty between evaluations).
CSV_FIELDS: tuple[str, ...] = (
    "iteration", "env_steps", "wall_s", "scenario", "rollout_reward", "reward_scale",
    "learning_rate", "value_loss", "policy_loss", "entropy", "approx_kl", "clipfrac", "explained_variance",
    "eval_reward", "eval_sla_violation_rate", "eval_throughput", "eval_latency",
)  # fmt: skip
#: Called with each evaluation; returning True stops training after it (e.g. a target reward reached).
StopFn = Callable[["EvalResult"], bool]


#: Divisor of the rewards where training must not keep running statistics of the tenant's data: DP-SGD
#: (a statistic of the data would couple the examples whose influence clipping bounds, see ppo_update's
#: independent_examples) and the single update on recorded experience. It is about the scale a fresh
#: ReturnScaler reaches within one federated round of 4 x 32 steps (20 to 27 on the federation's four
#: tenants under the pretrained policy; it keeps growing over longer runs: 41 to 49 after 384 steps on
#: three of them), so a critic sees returns in about the units a federated round trains it in.
FIXED_REWARD_SCALE = 20.0


class ReturnScaler:
    """Scales rewards by the running standard deviation of the discounted return (SB3's VecNormalize).

    The return is accumulated per environment and restarted at episode ends; only the scale is applied
    (no mean shift), so the sign of rewards and the optimal policy are unchanged.
    """

    def __init__(self, num_envs: int, gamma: float, device: torch.device | str = "cpu", epsilon: float = 1e-8):
        self.gamma = gamma
        self.epsilon = epsilon
        self.ret = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.count = 1e-4
        self.mean = 0.0
        self.var = 1.0

    @property
    def scale(self) -> float:
        """The current divisor of the rewards (at least 0.01, so near-constant returns are not blown up)."""
        return max(math.sqrt(self.var + self.epsilon), 1e-2)

    def __call__(self, rollout: Rollout) -> Rollout:
        """Update the statistics with the rollout's rewards, then return the rollout with scaled rewards."""
        rets = torch.empty_like(rollout.rewards, dtype=torch.float64)
        done = rollout.terminations | rollout.truncations
        for t in range(rollout.rewards.shape[0]):
            self.ret = self.ret * self.gamma + rollout.rewards[t].double()
            rets[t] = self.ret
            self.ret = torch.where(done[t], torch.zeros_like(self.ret), self.ret)
        kept = rets[rollout.valid]
        if kept.numel() > 0:
            # Chan et al. parallel merge of (mean, var, count), as RunningNorm does for observations.
            b_mean, b_var, b_count = float(kept.mean()), float(kept.var(correction=0)), float(kept.numel())
            delta, total = b_mean - self.mean, self.count + b_count
            m2 = self.var * self.count + b_var * b_count + delta * delta * self.count * b_count / total
            self.mean, self.var, self.count = self.mean + delta * b_count / total, m2 / total, total
        return rollout._replace(rewards=rollout.rewards / self.scale)


@dataclass
class EvalResult:
    """Deterministic (greedy) evaluation of the controlled tenant, means over environments and steps."""

    reward: float
    """Mean reward per step of the tenant."""
    sla_violation_rate: float
    """Fraction of (SLA class, step) pairs violating the SLA."""
    throughput: float
    """Mean throughput term (delivered / demanded)."""
    latency: float
    """Mean latency term."""


@dataclass
class TrainResult:
    """What train_ppo produced."""

    agent: MaskedMultiDiscrete
    """The agent after the last iteration (ActorCritic for PPO, BranchingQNetwork for DQN)."""
    iterations: int
    """Iterations run."""
    env_steps: int
    """Environment steps collected (over the batch)."""
    wall_s: float
    """Wall-clock time of the loop, seconds."""
    best_eval: EvalResult | None
    """The best evaluation (by reward), None if none ran."""
    best_path: Path | None = None
    """Checkpoint of the best evaluation (out_dir/best.pt)."""
    last_path: Path | None = None
    """Checkpoint after the last iteration (out_dir/last.pt)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per iteration, the CSV rows."""
    eval_s: float = 0.0
    """Wall-clock time spent in the periodic evaluations (part of wall_s), seconds."""
    stopped: bool = False
    """Training ended early because the stop function returned True."""
    planned_iterations: int = 0
    """Iterations the step budget (total_timesteps) asked for."""
    wall_clock_stopped: bool = False
    """train.max_wall_s ended training before the planned iterations: the result is not the budget's."""


@torch.no_grad()
def evaluate_agent(
    env: ShapingVectorEnv, agent: MaskedMultiDiscrete | Callable[[torch.Tensor], torch.Tensor], steps: int, seed: int
) -> EvalResult:
    """Run the greedy policy for `steps` steps from a seeded reset of every environment of env.

    Args:
        agent: a model with ``act`` (greedy actions of raw observations) or such a function itself.
    The environments must not truncate within `steps` (their max_episode_steps must be >= steps).
    """
    act: Callable[[torch.Tensor], torch.Tensor] = getattr(agent, "act", agent)
    view = env.view
    n_sla = max(int((view.qos.has_sla & view.qos.valid).sum()), 1)
    obs = env.reset_torch(seed=seed)
    sums = torch.zeros(4, dtype=torch.float64, device=obs.device)
    for _ in range(steps):
        res = env.step_torch(act(obs.float()))
        t = res.terms
        sums += torch.stack([res.reward.mean(), t.violations.float().mean() / n_sla, t.throughput.mean(),
                             t.latency.mean()]).double()  # fmt: skip
        obs = res.obs
    r, v, thr, lat = (float(x) / steps for x in sums)
    return EvalResult(reward=r, sla_violation_rate=v, throughput=thr, latency=lat)


def make_envs(
    scenarios: Sequence[ScenarioConfig], tenant: int | str, reward: RewardConfig, train: TrainConfig
) -> list[ShapingVectorEnv]:
    envs = [
        ShapingVectorEnv(train.num_envs, sc, tenant=tenant, reward=reward, device=train.device,
                         max_episode_steps=train.episode_steps)
        for sc in scenarios
    ]  # fmt: skip
    specs = [env.view.observation.spec for env in envs]
    prints = {s.fingerprint() for s in specs}
    if len(prints) != 1:
        names = [f"{sc.name}/{s.name}" for sc, s in zip(scenarios, specs, strict=True)]
        raise ValueError(f"the scenarios give the tenant different specs ({names}); train them separately")
    return envs


class TrainLogger:
    """CSV rows (train.csv, columns `fields`) and TensorBoard scalars of each iteration."""

    def __init__(self, out_dir: Path | None, tensorboard: bool, fields: Sequence[str] = CSV_FIELDS) -> None:
        self.rows: list[dict[str, Any]] = []
        self._csv = None
        self._writer: Any = None
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._csv = (out_dir / "train.csv").open("w", newline="")
        self._dict_writer = csv.DictWriter(self._csv, fieldnames=list(fields), extrasaction="ignore")
        self._dict_writer.writeheader()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        """Keep the row, append it to the CSV and write its numbers to TensorBoard."""
        self.rows.append(row)
        if self._csv is not None:
            self._dict_writer.writerow(row)
            self._csv.flush()
        if self._writer is not None:
            step = int(row["env_steps"])
            for key, value in row.items():
                if key not in ("iteration", "env_steps", "scenario") and isinstance(value, float | int):
                    group = "eval" if key.startswith("eval_") else "train"
                    self._writer.add_scalar(f"{group}/{key.removeprefix('eval_')}", value, step)

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer."""
        if self._csv is not None:
            self._csv.close()
        if self._writer is not None:
            self._writer.close()


def make_eval_env(
    scenarios: Sequence[ScenarioConfig], tenant: int | str, reward: RewardConfig, train: TrainConfig,
    min_episode_steps: int,
) -> ShapingVectorEnv:
    """The evaluation batch on the first scenario, long enough not to truncate within train.eval_steps."""
    return ShapingVectorEnv(train.eval_envs, scenarios[0], tenant=tenant, reward=reward, device=train.device,
                            max_episode_steps=max(train.eval_steps, min_episode_steps))  # fmt: skip


def reset_envs(envs: Sequence[ShapingVectorEnv], train: TrainConfig) -> list[torch.Tensor]:
    """Seeded reset of every batch (seed + 7919 * index); episode clocks staggered if train.stagger_episodes."""
    rng = np.random.default_rng(train.seed)
    next_obs = []
    for i, env in enumerate(envs):
        next_obs.append(env.reset_torch(seed=train.seed + 7919 * i))
        if train.stagger_episodes:
            env.elapsed_steps[:] = rng.integers(0, env.max_episode_steps, size=env.num_envs)
    return next_obs


def wall_clock_spent(train: TrainConfig, wall_s: float, iteration: int, planned: int, what: str = "training") -> bool:
    """Whether ``train.max_wall_s`` has elapsed; a stop before the planned iterations is logged as a warning.

    The step budget is what makes a run reproducible: a wall-clock stop depends on the machine's load,
    so it must never pass unnoticed (a busy host once cut a run to a fifteenth of its steps).

    Args:
        train: the training settings (max_wall_s None: no limit).
        wall_s: seconds since training started.
        iteration: the iteration just finished (1-based).
        planned: the iterations the step budget asks for.
        what: what is stopped, for the message.
    """
    if train.max_wall_s is None or wall_s < train.max_wall_s:
        return False
    if iteration < planned:
        log.warning("WALL-CLOCK STOP: %s ran %d of its %d planned iterations: train.max_wall_s=%g s elapsed "
                    "(%.0f s); the result is not the step budget's", what, iteration, planned, train.max_wall_s,
                    wall_s)  # fmt: skip
    return True


class TrainRun:
    """The bookkeeping train_ppo and train_dqn share: progress bar, log, periodic evaluation, checkpoints.

    Use as a context manager around the iterations (it closes the bar and the log), call
    ``end_iteration`` once per iteration and ``result`` after the loop.

    Args:
        kind: the algorithm's name in the progress bar ("ppo", "dqn").
        cfg: the hyperparameters, stored in the checkpoints.
        fields: the CSV columns.
    """

    def __init__(
        self, *, kind: str, agent: MaskedMultiDiscrete, spec: TenantSpec, cfg: PPOConfig | DQNConfig,
        scenarios: Sequence[ScenarioConfig], train: TrainConfig, eval_env: ShapingVectorEnv, num_iterations: int,
        out_dir: Path | None, stop: StopFn | None, fields: Sequence[str] = CSV_FIELDS,
    ) -> None:  # fmt: skip
        self.agent, self.spec, self.cfg, self.train, self.eval_env = agent, spec, cfg, train, eval_env
        self.num_iterations, self.out_dir, self.stop = num_iterations, out_dir, stop
        # Every tenant's baseline in training: the others' drivers, and the controlled tenant's warm-up plan.
        policies = {t.name: t.policy for t in scenarios[0].tenants}
        self.extra_base = {"scenarios": [sc.name for sc in scenarios], "scenario_policies": policies,
                           "seed": train.seed}  # fmt: skip
        self.logger = TrainLogger(out_dir, train.tensorboard, fields)
        self.best: EvalResult | None = None
        self.best_path = out_dir / "best.pt" if out_dir is not None else None
        self.eval_s = 0.0
        self.stopped = False
        self.wall_clock_stopped = False
        self.kind = kind
        self.start = time.perf_counter()
        self.bar = tqdm(total=num_iterations, disable=not train.progress, unit="it", desc=f"{kind}/{spec.name}")

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.logger.close()

    def end_iteration(self, iteration: int, row: dict[str, Any], postfix: dict[str, str]) -> bool:
        """Evaluate when due (and save best.pt on a new best), log the row; True when training should stop.

        Args:
            row: the iteration's log row, with "env_steps" and "wall_s"; evaluation columns are added to it.
            postfix: progress bar fields shown before the evaluation's.
        """
        train = self.train
        over_budget = wall_clock_spent(train, row["wall_s"], iteration, self.num_iterations, f"{self.kind} training")
        self.wall_clock_stopped = over_budget and iteration < self.num_iterations
        last = iteration == self.num_iterations or over_budget
        if (train.eval_every and iteration % train.eval_every == 0) or last:
            self.agent.eval()
            t_eval = time.perf_counter()
            ev = evaluate_agent(self.eval_env, self.agent, train.eval_steps, train.eval_seed)
            self.eval_s += time.perf_counter() - t_eval
            self.stopped = self.stop is not None and self.stop(ev)
            row.update({f"eval_{key}": value for key, value in vars(ev).items()})
            if self.best is None or ev.reward > self.best.reward:
                self.best = ev
                if self.best_path is not None:
                    extra = {**self.extra_base, "iteration": iteration, "env_steps": row["env_steps"],
                             "eval_reward": ev.reward}  # fmt: skip
                    save_checkpoint(self.best_path, self.agent, self.spec, self.cfg, extra=extra)
            self.bar.set_postfix(**postfix, eval=f"{ev.reward:.3f}", sla=f"{ev.sla_violation_rate:.3f}")
        self.logger.log(row)
        self.bar.update(1)
        return over_budget or self.stopped

    def result(self, iteration: int, env_steps: int) -> TrainResult:
        """Save last.pt (when there is an out_dir) and gather the run's TrainResult."""
        self.agent.eval()
        last_path = None
        if self.out_dir is not None:
            extra = {**self.extra_base, "iteration": iteration, "env_steps": env_steps}
            last_path = save_checkpoint(self.out_dir / "last.pt", self.agent, self.spec, self.cfg, extra=extra)
        return TrainResult(
            agent=self.agent,
            iterations=iteration,
            env_steps=env_steps,
            wall_s=time.perf_counter() - self.start,
            best_eval=self.best,
            best_path=self.best_path if self.best is not None else None,
            last_path=last_path,
            history=self.logger.rows,
            eval_s=self.eval_s,
            stopped=self.stopped,
            planned_iterations=self.num_iterations,
            wall_clock_stopped=self.wall_clock_stopped,
        )


def train_ppo(
    scenarios: Sequence[ScenarioConfig],
    cfg: PPOConfig,
    train: TrainConfig | None = None,
    *,
    tenant: int | str = 0,
    reward: RewardConfig | None = None,
    out_dir: Path | None = None,
    stop: StopFn | None = None,
) -> TrainResult:
    """Train a PPO agent for one tenant on one or several scenarios, the other tenants on their baselines.

    Args:
        scenarios: scenarios trained in turn (one iteration each); the tenant's spec must be the same in all.
        cfg: PPO hyperparameters; total_timesteps / (num_envs * num_steps) iterations are run.
        train: the loop's settings (batch, seeds, evaluation, logging); None: TrainConfig defaults.
        tenant: index or name of the controlled tenant.
        reward: reward weights; None: RewardConfig defaults.
        out_dir: where train.csv, tensorboard/, best.pt and last.pt go; None: nothing is written.
        stop: called after each evaluation; True ends training there (its checkpoints are still written).
    Returns:
        The trained agent, the best evaluation, the checkpoint paths and the per-iteration log.
    """
    if not scenarios:
        raise ValueError("train_ppo needs at least one scenario")
    train = train or TrainConfig()
    weights = reward or RewardConfig()
    torch.manual_seed(train.seed)
    envs = make_envs(scenarios, tenant, weights, train)
    eval_env = make_eval_env(scenarios, tenant, weights, train, envs[0].max_episode_steps)
    view = envs[0].view
    spec = view.observation.spec
    agent = ActorCritic(view.observation.size, view.action.nvec, cfg.hidden_sizes, envelope=build_envelope(spec))
    agent.to(envs[0].device)
    optimizer = make_optimizer(agent, cfg.learning_rate)
    batch = train.num_envs * cfg.num_steps
    num_iterations = max(1, cfg.total_timesteps // batch)
    next_obs = reset_envs(envs, train)
    scalers = [ReturnScaler(train.num_envs, cfg.gamma, envs[0].device) for _ in envs] if train.norm_reward else None

    iteration = 0
    run = TrainRun(kind="ppo", agent=agent, spec=spec, cfg=cfg, scenarios=scenarios, train=train, eval_env=eval_env,
                   num_iterations=num_iterations, out_dir=out_dir, stop=stop)  # fmt: skip
    with run:
        for iteration in range(1, num_iterations + 1):
            k = (iteration - 1) % len(envs)
            if cfg.anneal_lr:
                set_lr(optimizer, linear_lr(cfg.learning_rate, iteration, num_iterations))
            agent.train()
            rollout, next_obs[k] = collect_rollout(envs[k], agent, next_obs[k], cfg.num_steps)
            raw_reward = float(rollout.rewards[rollout.valid].mean())
            if scalers is not None:
                rollout = scalers[k](rollout)
            stats = ppo_update(agent, optimizer, rollout, cfg)
            row: dict[str, Any] = {
                "iteration": iteration, "env_steps": iteration * batch, "wall_s": time.perf_counter() - run.start,
                "scenario": scenarios[k].name, "rollout_reward": raw_reward,
                "reward_scale": scalers[k].scale if scalers is not None else 1.0,
                **{key: stats[key] for key in CSV_FIELDS if key in stats},
            }  # fmt: skip
            if run.end_iteration(iteration, row, {"reward": f"{raw_reward:.3f}"}):
                break
    return run.result(iteration, iteration * batch)
