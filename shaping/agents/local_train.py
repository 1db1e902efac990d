"""Local training and evaluation of a tenant's share of the global policy, over shaping.agents' PPO steps.

The Flower client, the local-only and the centralized reference arms all call these functions, so the
three arms of the comparison differ only in how the model's weights travel (shaping.agents.global_model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch

from shaping.agents.ppo import ActorCritic, collect_rollout, make_optimizer, ppo_update
from shaping.agents.train import FIXED_REWARD_SCALE, EvalResult, ReturnScaler, evaluate_agent
from shaping.agents.universal import PaddedEnv
from shaping.baselines import get_baseline
from shaping.config import PPOConfig
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec.action import ActionLayout


class SampleDP(Protocol):
    """Sample-level DP of the updates (fed_client.dpsgd.DPSGD, Opacus): wraps the optimizer for one call."""

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int,
               num_minibatches: int) -> torch.optim.Optimizer:  # fmt: skip
        """Make the model's updates DP-SGD; returns the optimizer to step."""
        ...

    def detach(self, model: torch.nn.Module) -> None:
        """Undo attach."""
        ...


def prox_adam(params: list[torch.nn.Parameter], lr: float, mu: float) -> torch.optim.Adam:
    """Adam on the FedProx objective: a step pre-hook adds ``mu * (w - w_start)`` to each gradient."""
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5)
    anchor = [p.detach().clone() for p in params]

    @torch.no_grad()
    def proximal(*_: object) -> None:
        for p, w0 in zip(params, anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p - w0, alpha=mu)

    opt.register_step_pre_hook(proximal)
    return opt


@dataclass
class LocalResult:
    """What one call of local_train did."""

    num_examples: int
    """Environment steps collected (the weight of this update in FedAvg)."""
    rollout_reward: float
    """Mean raw reward of the rollouts."""
    optimizer_steps: int
    """Gradient steps taken."""


class LocalTrainer:
    """PPO iterations on environments in turn, keeping the optimizer, the environments' observations and
    their return scalers from one ``run`` to the next (a long pretraining runs in chunks between
    evaluations; a federated round is one ``run``).

    Args:
        model: the policy, trained in place.
        envs: the environments; iteration i collects cfg.num_steps steps of envs[i % len(envs)].
        cfg: PPO hyperparameters (learning rate constant unless the caller sets it between runs).
        seed: seeds the environments' resets and the minibatch order.
        optimizer: the optimizer to step (e.g. FedProx's or a DP-SGD wrapper); None: Adam at cfg.learning_rate.
        independent_examples: train as DP-SGD needs: no statistic of the data outside the examples' own
            loss terms, i.e. the observation normalizer frozen, rewards divided by FIXED_REWARD_SCALE
            instead of the running return scale, and ppo_update's independent_examples.
    """

    def __init__(self, model: ActorCritic, envs: Sequence[PaddedEnv], cfg: PPOConfig, *, seed: int = 0,
                 optimizer: torch.optim.Optimizer | None = None,
                 independent_examples: bool = False) -> None:  # fmt: skip
        if not envs:
            raise ValueError("LocalTrainer needs at least one environment")
        torch.manual_seed(seed)
        self.model, self.envs, self.cfg = model, list(envs), cfg
        self.independent_examples = independent_examples
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, cfg.learning_rate)
        self.obs = [env.reset_torch(seed=seed + 7919 * i) for i, env in enumerate(envs)]
        self.scalers = [ReturnScaler(env.num_envs, cfg.gamma) for env in envs]
        self.iterations = 0
        """Iterations run so far (over all calls of run)."""
        self.optimizer_steps = 0
        """Optimizer steps taken so far (over all calls of run): what a DP-SGD accountant is charged for."""

    def run(self, iterations: int) -> tuple[int, list[float]]:
        """Run PPO iterations; returns (valid environment steps collected, mean raw reward per iteration)."""
        steps, rewards = 0, []
        self.model.train()
        try:
            for _ in range(iterations):
                k = self.iterations % len(self.envs)
                env = self.envs[k]
                self.model.set_envelope(env.mapping.envelope)  # the tenant's allowed choices in the shared layout
                rollout, self.obs[k] = collect_rollout(env, self.model, self.obs[k], self.cfg.num_steps,
                                                       update_obs_norm=not self.independent_examples)  # fmt: skip
                rewards.append(float(rollout.rewards[rollout.valid].mean()))
                steps += int(rollout.valid.sum())
                scaled = (rollout._replace(rewards=rollout.rewards / FIXED_REWARD_SCALE) if self.independent_examples
                          else self.scalers[k](rollout))  # fmt: skip
                stats = ppo_update(self.model, self.optimizer, scaled, self.cfg,
                                   independent_examples=self.independent_examples)  # fmt: skip
                self.optimizer_steps += int(stats["optimizer_steps"])
                self.iterations += 1
        finally:
            self.model.eval()
        return steps, rewards


def local_train(
    model: ActorCritic,
    envs: Sequence[PaddedEnv],
    iterations: int,
    cfg: PPOConfig,
    *,
    seed: int = 0,
    proximal_mu: float = 0.0,
    dp: SampleDP | None = None,
) -> LocalResult:
    """PPO iterations on the tenant's environments (round robin over several, for the centralized arm),
    with a fresh optimizer: one federated round.

    Args:
        model: the policy, trained in place.
        envs: the environments; each iteration collects cfg.num_steps steps of one of them.
        iterations: PPO iterations (rollout, then update).
        cfg: PPO hyperparameters (learning rate constant here: rounds, not iterations, set the schedule).
        seed: seeds the rollouts' resets and the minibatch order.
        proximal_mu: FedProx weight; > 0 keeps the model near the weights it started from.
        dp: sample-level DP (e.g. fed_client.dpsgd.DPSGD), which makes the updates DP-SGD; the training
            then keeps its examples independent (LocalTrainer's independent_examples).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = (prox_adam(params, cfg.learning_rate, proximal_mu) if proximal_mu > 0
                                        else make_optimizer(model, cfg.learning_rate))  # fmt: skip
    if dp is not None:
        optimizer = dp.attach(model, optimizer, envs[0].num_envs * cfg.num_steps, cfg.num_minibatches)
    try:
        trainer = LocalTrainer(model, envs, cfg, seed=seed, optimizer=optimizer, independent_examples=dp is not None)
        steps, rewards = trainer.run(iterations)
    finally:
        if dp is not None:
            dp.detach(model)
    return LocalResult(num_examples=steps, rollout_reward=float(np.mean(rewards)) if rewards else 0.0,
                       optimizer_steps=trainer.optimizer_steps)  # fmt: skip


def evaluate(model: ActorCritic, env: PaddedEnv, steps: int, seed: int) -> EvalResult:
    """Greedy evaluation of the policy on the tenant's held-out seeds (shaping.agents.train.evaluate_agent)."""
    model.set_envelope(env.mapping.envelope)
    # evaluate_agent only uses view, reset_torch and step_torch, which PaddedEnv provides.
    return evaluate_agent(cast(ShapingVectorEnv, env), model, steps, seed)


class ConstantPolicy:
    """A static baseline of the controlled tenant, expressed as the nearest constant universal action, and
    whether its leaf queues run CoDel (which no action expresses: the environment's aqm switch)."""

    def __init__(self, env: PaddedEnv, baseline: str) -> None:
        spec = env.env.view.observation.spec
        base = get_baseline(baseline)
        own = torch.as_tensor(ActionLayout(spec).encode(base.plan(spec)))
        action = torch.zeros(len(env.mapping.layout.nvec), dtype=torch.long)
        action[env.mapping.act_src] = own
        self.action = action
        self.aqm = base.aqm

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The same action in every environment."""
        return self.action.to(obs.device).expand(obs.shape[0], -1)


def evaluate_baseline(env: PaddedEnv, baseline: str, steps: int, seed: int) -> EvalResult:
    """The tenant running a static baseline instead of the agent, on the same seeds as evaluate; with the
    baseline's CoDel (fq_codel) on the tenant's leaves for the evaluation, as it was before afterwards."""
    policy = ConstantPolicy(env, baseline)
    before = env.env.aqm
    env.env.aqm = policy.aqm
    try:
        return evaluate_agent(cast(ShapingVectorEnv, env), cast(ActorCritic, policy), steps, seed)
    finally:
        env.env.aqm = before
