"""Behaviour cloning of a static baseline into the universal model: a safe start for reinforcement learning.

Before PPO, the universal model imitates a static baseline (e.g. static_priority) on the pretraining
tenants: the baseline runs each tenant's environment, the actor learns its action by cross-entropy and
the critic learns the baseline's value (TD(lambda) returns of the scaled rewards, as PPO's critic does).
PPO then starts from a policy that shapes as well as the rules tenants already use, with a critic that
already knows what those rules earn, instead of from a uniform policy that violates most SLAs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from shaping.agents.local_train import ConstantPolicy
from shaping.agents.ppo import ActorCritic, collect_rollout, compute_gae, make_optimizer
from shaping.agents.train import ReturnScaler
from shaping.agents.universal import PaddedEnv
from shaping.config import PPOConfig


class _Teacher:
    """The baseline's fixed action on the model's normalizer and critic (what collect_rollout calls)."""

    def __init__(self, model: ActorCritic, action: torch.Tensor) -> None:
        self.model, self.action = model, action
        self.obs_norm, self.obs_dim, self.nvec = model.obs_norm, model.obs_dim, model.nvec

    def get_value(self, nobs: torch.Tensor) -> torch.Tensor:
        return self.model.get_value(nobs)

    def get_action_and_value(self, nobs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = torch.zeros(nobs.shape[0], device=nobs.device)
        return self.action.expand(nobs.shape[0], -1), zeros, zeros, self.model.get_value(nobs)


@dataclass
class CloneStats:
    """How well the actor reproduces the baseline at the end of cloning."""

    iterations: int
    accuracy: float
    """Fraction of (step, action field) pairs where the actor's most likely choice is the baseline's
    (fields with a single allowed choice included), on the last iteration's batch."""
    policy_loss: float
    """Cross-entropy of the (smoothed) baseline targets, last iteration."""
    value_loss: float


def clone_baseline(
    model: ActorCritic,
    envs: Sequence[PaddedEnv],
    baseline: str,
    iterations: int,
    cfg: PPOConfig,
    *,
    seed: int = 0,
    smoothing: float = 0.2,
) -> CloneStats:
    """Train the model (actor by cross-entropy, critic on returns) to act as `baseline` on each environment.

    Args:
        model: the universal model, trained in place (its normalizer learns the baseline's observations).
        envs: the pretraining tenants' environments, one iteration each in turn.
        baseline: a static baseline name (shaping.baselines), run as the nearest constant action.
        iterations: rollouts (cfg.num_steps steps of one environment each), each followed by
            cfg.update_epochs passes of cfg.num_minibatches minibatches.
        cfg: learning rate, batch shape, gamma, gae_lambda, vf_coef and max_grad_norm.
        seed: seeds the resets and the minibatch order.
        smoothing: share of each field's target spread evenly over its allowed choices (label
            smoothing). The greedy action stays the baseline's, but the policy keeps exploring: cloned
            to certainty, PPO's samples are all the baseline's action and its updates barely move it.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if iterations < 1 or not envs:
        raise ValueError(f"clone_baseline needs iterations >= 1 and environments, got {iterations} and {len(envs)}")
    torch.manual_seed(seed)
    optimizer = make_optimizer(model, cfg.learning_rate)
    actions = [ConstantPolicy(env, baseline).action for env in envs]
    obs = [env.reset_torch(seed=seed + 7919 * i) for i, env in enumerate(envs)]
    scalers = [ReturnScaler(env.num_envs, cfg.gamma) for env in envs]
    for it in range(iterations):
        k = it % len(envs)
        model.set_envelope(envs[k].mapping.envelope)
        teacher = cast(ActorCritic, _Teacher(model, actions[k]))
        rollout, obs[k] = collect_rollout(envs[k], teacher, obs[k], cfg.num_steps)
        rollout = scalers[k](rollout)
        _, returns = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminations,
                                 rollout.truncations, cfg.gamma, cfg.gae_lambda)  # fmt: skip
        keep = rollout.valid.reshape(-1)
        b_obs = rollout.obs.reshape(-1, model.obs_dim)[keep]
        b_returns = returns.reshape(-1)[keep]
        target = actions[k].to(b_obs.device)
        fields = torch.arange(len(target))
        allowed_all = model._allowed  # (D, max choices) for this tenant's envelope
        # Fields whose baseline choice lies outside the tenant's envelope teach nothing.
        teach = allowed_all[fields, target]
        dist = allowed_all.float() * (smoothing / allowed_all.sum(-1, keepdim=True).clamp(min=1))
        dist[fields, target] += 1.0 - smoothing
        n = b_obs.shape[0]
        mb = max(1, n // cfg.num_minibatches)
        model.train()
        for _ in range(cfg.update_epochs):
            for idx in torch.randperm(n).split(mb):
                logp = torch.log_softmax(model.masked_logits(b_obs[idx]), -1)  # (mb, D, max choices)
                safe = torch.where(allowed_all, logp, torch.zeros_like(logp))  # no 0 * -inf
                policy_loss = -(dist * safe).sum(-1)[:, teach].sum(-1).mean()
                value_loss = 0.5 * (model.get_value(b_obs[idx]) - b_returns[idx]).square().mean()
                loss = policy_loss + cfg.vf_coef * value_loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
    model.eval()
    # The last iteration's batch, on the last tenant's envelope (still set).
    with torch.no_grad():
        greedy = model.masked_logits(b_obs).argmax(-1)
    return CloneStats(iterations=iterations, accuracy=float((greedy == target).float().mean()),
                      policy_loss=policy_loss.item(), value_loss=value_loss.item())  # fmt: skip
