"""Offline pretraining of the federation's universal model on simulated tenants (the provider's step).

The provider trains one ActorCritic over the universal layout (shaping.agents.universal) on its own
simulated tenants, in turn, before any tenant joins; the federation then starts from these weights
(``init.weights`` of experiments.federated) instead of a random initialization, so the tenants' rounds
refine a policy that already shapes rather than learn shaping from nothing. The best weights are chosen
on held-out seeds of the pretraining tenants only: the federation's tenants are never seen here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shaping.agents.global_model import get_weights
from shaping.agents.local_train import LocalTrainer, evaluate
from shaping.agents.ppo import ActorCritic, linear_lr, set_lr
from shaping.agents.universal import PaddedEnv
from shaping.config import PPOConfig

log = logging.getLogger(__name__)


@dataclass
class PretrainEval:
    """The policy on the pretraining tenants' held-out seeds, at one point of training."""

    iteration: int
    env_steps: int
    wall_s: float
    rollout_reward: float
    """Mean raw reward of the rollouts since the previous evaluation."""
    reward: float
    """Mean evaluation reward over the tenants."""
    sla_violation_rate: float
    """Mean SLA violation rate over the tenants."""
    tenants: dict[str, dict[str, float]] = field(default_factory=dict)
    """tenant -> {reward, sla_violation_rate}."""


@dataclass
class PretrainResult:
    """What pretrain_universal produced."""

    best_weights: list[np.ndarray]
    """The weights of the best evaluation (by mean reward)."""
    last_weights: list[np.ndarray]
    best: PretrainEval
    history: list[PretrainEval]
    iterations: int
    env_steps: int
    wall_s: float
    stopped_early: bool
    """True when max_wall_s ended training before the configured iterations."""


def pretrain_universal(
    model: ActorCritic,
    train_envs: Sequence[PaddedEnv],
    eval_envs: Sequence[tuple[str, PaddedEnv]],
    cfg: PPOConfig,
    *,
    iterations: int,
    eval_every: int,
    eval_steps: int,
    eval_seed: int,
    seed: int = 0,
    max_wall_s: float | None = None,
    on_eval: Callable[[PretrainEval], Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> PretrainResult:
    """PPO on the pretraining tenants in turn, evaluated at the start and every `eval_every` iterations;
    keeps the best.

    Args:
        model: the universal model, trained in place (it ends with the last weights).
        train_envs: one batched environment per pretraining tenant.
        eval_envs: (name, environment) of the tenants the best weights are chosen on (held-out seeds).
        cfg: PPO hyperparameters; the learning rate decays linearly to 0 when cfg.anneal_lr.
        iterations: PPO iterations in all (one rollout of one tenant each).
        eval_every: iterations between evaluations (the last iteration is always evaluated).
        eval_steps, eval_seed: length and seed of each evaluation.
        seed: seeds the resets and the minibatch order.
        max_wall_s: stop after the first evaluation past this many seconds (None: no limit).
        on_eval: called with each evaluation (progress, logging).
        clock: monotonic seconds (tests pass a fake).
    """
    if iterations < 1 or eval_every < 1:
        raise ValueError(f"iterations and eval_every must be >= 1, got {iterations} and {eval_every}")
    if not eval_envs:
        raise ValueError("pretrain_universal needs at least one evaluation tenant")
    start = clock()
    trainer = LocalTrainer(model, train_envs, cfg, seed=seed)
    history: list[PretrainEval] = []
    best: PretrainEval | None = None
    best_weights: list[np.ndarray] = get_weights(model)
    env_steps, stopped = 0, False
    rewards: list[float] = []

    def evaluation() -> PretrainEval:
        per_tenant = {}
        for name, env in eval_envs:
            ev = evaluate(model, env, eval_steps, eval_seed)
            per_tenant[name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
        return PretrainEval(
            iteration=trainer.iterations, env_steps=env_steps, wall_s=clock() - start,
            rollout_reward=float(np.mean(rewards)) if rewards else float("nan"),
            reward=float(np.mean([v["reward"] for v in per_tenant.values()])),
            sla_violation_rate=float(np.mean([v["sla_violation_rate"] for v in per_tenant.values()])),
            tenants=per_tenant,
        )  # fmt: skip

    while True:
        # The start is a candidate too: PPO's first iterations may do worse than a cloned baseline.
        record = evaluation()
        history.append(record)
        if best is None or record.reward > best.reward:
            best, best_weights = record, get_weights(model)
        if on_eval is not None:
            on_eval(record)
        if trainer.iterations >= iterations:
            break
        if max_wall_s is not None and record.wall_s >= max_wall_s:
            stopped = True
            # The iteration count is what makes the run reproducible: a wall-clock stop must be seen.
            log.warning("WALL-CLOCK STOP: universal pretraining ran %d of its %d planned iterations: max_wall_s=%g s "
                        "elapsed (%.0f s); the result is not the budget's", trainer.iterations, iterations,
                        max_wall_s, record.wall_s)  # fmt: skip
            break
        if cfg.anneal_lr:
            # One learning rate per chunk: the schedule's value at the chunk's first iteration.
            set_lr(trainer.optimizer, linear_lr(cfg.learning_rate, trainer.iterations + 1, iterations))
        steps, rewards = trainer.run(min(eval_every, iterations - trainer.iterations))
        env_steps += steps
    assert best is not None  # the loop evaluates at least once
    return PretrainResult(best_weights=best_weights, last_weights=get_weights(model), best=best, history=history,
                          iterations=trainer.iterations, env_steps=env_steps, wall_s=clock() - start,
                          stopped_early=stopped)  # fmt: skip
