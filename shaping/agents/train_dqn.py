"""The DQN training loop of one tenant over ShapingVectorEnv: replay, epsilon-greedy, targets, evaluation, logs.

``train_dqn`` is train_ppo's counterpart for the branching DQN of shaping.agents.dqn: the same scenarios,
evaluation, progress bar, train.csv, TensorBoard events and best.pt/last.pt checkpoints (model kind
``dqn``, loadable with load_checkpoint or ``make_policy("dqn:PATH")``)::

    result = train_dqn([load_scenario("default")], DQNConfig(total_timesteps=200_000), TrainConfig(),
                       tenant="gameco", out_dir=Path("outputs/pretrain"))

One iteration collects ``steps_per_iteration`` vector steps (num_envs transitions each) epsilon-greedily,
then takes one gradient step per ``train_frequency`` transitions collected (CleanRL's ratio) once
``learning_starts`` transitions are in the buffer, and updates the target network every
``target_network_frequency`` transitions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shaping.agents.dqn import (
    BranchingQNetwork,
    collect_transitions,
    dqn_update,
    linear_schedule,
    make_target,
    update_target,
)
from shaping.agents.envelope import build_envelope
from shaping.agents.replay import ReplayBuffer
from shaping.agents.train import StopFn, TrainResult, TrainRun, make_envs, make_eval_env, reset_envs
from shaping.config import DQNConfig, RewardConfig, ScenarioConfig, TrainConfig

#: Columns of the DQN CSV log, one row per iteration (evaluation columns are empty between evaluations).
DQN_CSV_FIELDS: tuple[str, ...] = (
    "iteration", "env_steps", "wall_s", "scenario", "rollout_reward", "epsilon", "learning_rate",
    "td_loss", "q_values", "td_target", "grad_norm", "updates",
    "eval_reward", "eval_sla_violation_rate", "eval_throughput", "eval_latency",
)  # fmt: skip


def steps_per_iteration(cfg: DQNConfig, num_envs: int) -> int:
    """Vector steps per iteration: enough transitions for one target update period (at least one step)."""
    return max(1, math.ceil(cfg.target_network_frequency / num_envs))


def _learn(
    agent: BranchingQNetwork,
    target: BranchingQNetwork,
    optimizer: torch.optim.Optimizer,
    buffer: ReplayBuffer,
    cfg: DQNConfig,
    n_updates: int,
) -> dict[str, float]:
    """n_updates gradient steps on replay minibatches; the stats of the last one and the count."""
    stats: dict[str, float] = {}
    for _ in range(n_updates):
        stats = dqn_update(agent, target, optimizer, buffer.sample(cfg.batch_size), cfg)
    return {**stats, "updates": float(n_updates)}


def train_dqn(
    scenarios: Sequence[ScenarioConfig],
    cfg: DQNConfig,
    train: TrainConfig | None = None,
    *,
    tenant: int | str = 0,
    reward: RewardConfig | None = None,
    out_dir: Path | None = None,
    stop: StopFn | None = None,
) -> TrainResult:
    """Train a branching DQN agent for one tenant on one or several scenarios, the others on their baselines.

    Args:
        scenarios: scenarios trained in turn (one iteration each); the tenant's spec must be the same in all.
        cfg: DQN hyperparameters; total_timesteps / (num_envs * steps_per_iteration) iterations are run.
        train: the loop's settings (batch, seeds, evaluation, logging); None: TrainConfig defaults.
            norm_reward is not used: Q-learning takes the rewards as they are.
        tenant: index or name of the controlled tenant.
        reward: reward weights; None: RewardConfig defaults.
        out_dir: where train.csv, tensorboard/, best.pt and last.pt go; None: nothing is written.
        stop: called after each evaluation; True ends training there.
    Returns:
        The trained agent, the best evaluation, the checkpoint paths and the per-iteration log.
    """
    if not scenarios:
        raise ValueError("train_dqn needs at least one scenario")
    train = train or TrainConfig()
    weights = reward or RewardConfig()
    torch.manual_seed(train.seed)
    envs = make_envs(scenarios, tenant, weights, train)
    eval_env = make_eval_env(scenarios, tenant, weights, train, envs[0].max_episode_steps)
    view = envs[0].view
    spec = view.observation.spec
    dev = envs[0].device
    agent = BranchingQNetwork(view.observation.size, view.action.nvec, cfg.hidden_sizes, envelope=build_envelope(spec))
    agent.to(dev)
    target = make_target(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate)
    buffer = ReplayBuffer(cfg.buffer_size, agent.obs_dim, len(agent.nvec), dev)
    n_steps = steps_per_iteration(cfg, train.num_envs)
    batch = train.num_envs * n_steps
    num_iterations = max(1, cfg.total_timesteps // batch)
    next_obs = reset_envs(envs, train)

    iteration, global_step, since_target = 0, 0, 0
    run = TrainRun(kind="dqn", agent=agent, spec=spec, cfg=cfg, scenarios=scenarios, train=train, eval_env=eval_env,
                   num_iterations=num_iterations, out_dir=out_dir, stop=stop, fields=DQN_CSV_FIELDS)  # fmt: skip
    with run:
        for iteration in range(1, num_iterations + 1):
            k = (iteration - 1) % len(envs)
            epsilon = linear_schedule(cfg.start_e, cfg.end_e, cfg.exploration_fraction * cfg.total_timesteps,
                                      global_step)  # fmt: skip
            agent.train()
            tr, next_obs[k] = collect_transitions(envs[k], agent, next_obs[k], n_steps, epsilon, buffer=buffer)
            global_step += batch
            since_target += batch
            row: dict[str, Any] = {
                "iteration": iteration, "env_steps": global_step, "wall_s": 0.0, "scenario": scenarios[k].name,
                "rollout_reward": float(tr.rewards[tr.valid].mean()), "epsilon": epsilon,
            }  # fmt: skip
            if len(buffer) >= max(cfg.learning_starts, cfg.batch_size):
                row.update(_learn(agent, target, optimizer, buffer, cfg, max(1, batch // cfg.train_frequency)))
                if since_target >= cfg.target_network_frequency:
                    update_target(agent, target, cfg.tau)
                    since_target = 0
            row["wall_s"] = time.perf_counter() - run.start
            if run.end_iteration(iteration, row, {"eps": f"{epsilon:.2f}"}):
                break
    return run.result(iteration, global_step)
