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

import numpy as np
import torch
from tqdm.auto import tqdm

from shaping.agents.checkpoint import save_checkpoint
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
from shaping.agents.train import EvalResult, StopFn, TrainLogger, TrainResult, evaluate_agent, make_envs
from shaping.config import DQNConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.sim.vector_env import ShapingVectorEnv

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
    eval_env = ShapingVectorEnv(train.eval_envs, scenarios[0], tenant=tenant, reward=weights, device=train.device,
                                max_episode_steps=max(train.eval_steps, envs[0].max_episode_steps))  # fmt: skip
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
    rng = np.random.default_rng(train.seed)
    next_obs = []
    for i, env in enumerate(envs):
        next_obs.append(env.reset_torch(seed=train.seed + 7919 * i))
        if train.stagger_episodes:
            env.elapsed_steps[:] = rng.integers(0, env.max_episode_steps, size=env.num_envs)
    policies = {t.name: t.policy for t in scenarios[0].tenants}
    extra_base = {"scenarios": [sc.name for sc in scenarios], "scenario_policies": policies, "seed": train.seed}

    logger = TrainLogger(out_dir, train.tensorboard, DQN_CSV_FIELDS)
    best: EvalResult | None = None
    best_path = out_dir / "best.pt" if out_dir is not None else None
    start = time.perf_counter()
    bar = tqdm(total=num_iterations, disable=not train.progress, unit="it", desc=f"dqn/{spec.name}")
    iteration, global_step, eval_s, stopped = 0, 0, 0.0, False
    since_target = 0
    try:
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
            row["wall_s"] = time.perf_counter() - start
            over_budget = train.max_wall_s is not None and row["wall_s"] >= train.max_wall_s
            last = iteration == num_iterations or over_budget
            if (train.eval_every and iteration % train.eval_every == 0) or last:
                agent.eval()
                t_eval = time.perf_counter()
                ev = evaluate_agent(eval_env, agent, train.eval_steps, train.eval_seed)
                eval_s += time.perf_counter() - t_eval
                stopped = stop is not None and stop(ev)
                row.update({f"eval_{key}": value for key, value in vars(ev).items()})
                if best is None or ev.reward > best.reward:
                    best = ev
                    if best_path is not None:
                        extra = {**extra_base, "iteration": iteration, "env_steps": global_step,
                                 "eval_reward": ev.reward}  # fmt: skip
                        save_checkpoint(best_path, agent, spec, cfg, extra=extra)
                bar.set_postfix(eps=f"{epsilon:.2f}", eval=f"{ev.reward:.3f}", sla=f"{ev.sla_violation_rate:.3f}")
            logger.log(row)
            bar.update(1)
            if over_budget or stopped:
                break
    finally:
        bar.close()
        logger.close()
    agent.eval()
    last_path = None
    if out_dir is not None:
        extra = {**extra_base, "iteration": iteration, "env_steps": global_step}
        last_path = save_checkpoint(out_dir / "last.pt", agent, spec, cfg, extra=extra)
    return TrainResult(
        agent=agent,
        iterations=iteration,
        env_steps=global_step,
        wall_s=time.perf_counter() - start,
        best_eval=best,
        best_path=best_path if best is not None else None,
        last_path=last_path,
        history=logger.rows,
        eval_s=eval_s,
        stopped=stopped,
    )
