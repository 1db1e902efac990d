"""Behaviour cloning of a static baseline into the universal model (or of any constant teacher action into a
shared model, ``clone_actions``): a safe start for reinforcement learning.

Before PPO, the universal model imitates a static baseline (e.g. static_priority) on the pretraining
tenants: the baseline runs each tenant's environment, the actor learns its action by cross-entropy and
the critic learns the baseline's value (TD(lambda) returns of the scaled rewards, as PPO's critic does).
PPO then starts from a policy that shapes as well as the rules tenants already use, with a critic that
already knows what those rules earn, instead of from a uniform policy that violates most SLAs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from shaping.agents.local_train import ConstantPolicy
from shaping.agents.ppo import ActorCritic, PPOAgent, TorchVecEnv, collect_rollout, compute_gae, make_optimizer
from shaping.agents.train import ReturnScaler
from shaping.agents.universal import PaddedEnv
from shaping.config import PPOConfig


#: A teacher that acts on what it sees: called once per step of its environment with the (B, obs_dim) normalized
#: observations, it returns its (B, D) actions (a feedback controller may read the environment's last step).
TeacherFn = Callable[[torch.Tensor], torch.Tensor]


def constant_teacher(action: torch.Tensor) -> TeacherFn:
    """The teacher that takes one fixed (D,) action at every step (a static baseline's)."""
    return lambda nobs: action.to(nobs.device).expand(nobs.shape[0], -1)


class _Teacher:
    """The teacher's actions on the model's normalizer and critic (what collect_rollout calls)."""

    def __init__(self, model: PPOAgent, act: TeacherFn) -> None:
        self.model, self.act = model, act
        self.obs_norm, self.obs_dim, self.nvec = model.obs_norm, model.obs_dim, model.nvec

    def get_value(self, nobs: torch.Tensor) -> torch.Tensor:
        return self.model.get_value(nobs)

    def get_action_and_value(self, nobs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = torch.zeros(nobs.shape[0], device=nobs.device)
        return self.act(nobs), zeros, zeros, self.model.get_value(nobs)


@dataclass
class CloneStats:
    """How well the actor reproduces the baseline at the end of cloning."""

    iterations: int
    accuracy: float
    """Fraction of (step, action field) pairs where the actor's most likely choice is the teacher's
    (fields with a single allowed choice included), on each environment's last batch, averaged over the
    environments."""
    policy_loss: float
    """Cross-entropy of the (smoothed) baseline targets, last iteration."""
    value_loss: float


class ClonableAgent(PPOAgent, Protocol):
    """What cloning needs of a network bound to a tenant: PPOAgent's interface, its masked logits and the
    envelope's allowed choices. ActorCritic has it, and so does the bound set policy."""

    _allowed: torch.Tensor

    def masked_logits(self, nobs: torch.Tensor) -> torch.Tensor: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...


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
    actions = [ConstantPolicy(env, baseline).action for env in envs]

    def universal_on(k: int) -> ClonableAgent:
        # One model serves every tenant through the universal layout: only the envelope changes.
        model.set_envelope(envs[k].mapping.envelope)
        return cast(ClonableAgent, model)

    return clone_actions(model, universal_on, envs, actions, iterations, cfg, seed=seed, smoothing=smoothing)


def clone_actions(
    params: nn.Module,
    agent_on: Callable[[int], ClonableAgent],
    envs: Sequence[TorchVecEnv],
    actions: Sequence[torch.Tensor | TeacherFn],
    iterations: int,
    cfg: PPOConfig,
    *,
    seed: int = 0,
    smoothing: float = 0.2,
) -> CloneStats:
    """Behaviour cloning of one teacher per environment into a model shared by all of them.

    Args:
        params: the module whose parameters are trained (the model every agent shares).
        agent_on: the model bound to environment k (called before each of k's rollouts).
        envs: the environments, one rollout each in turn.
        actions: environment k's teacher: a constant action, (D_k,) in its agent's flat action layout, or a
            TeacherFn (the teacher drives the rollouts, and each step's action is that step's target).
        iterations, cfg, seed, smoothing: as clone_baseline.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if iterations < 1 or not envs:
        raise ValueError(f"cloning needs iterations >= 1 and environments, got {iterations} and {len(envs)}")
    if len(actions) != len(envs):
        raise ValueError(f"{len(actions)} teacher actions for {len(envs)} environments")
    teachers = [a if callable(a) else constant_teacher(a) for a in actions]
    torch.manual_seed(seed)
    optimizer = make_optimizer(params, cfg.learning_rate)
    obs = [env.reset_torch(seed=seed + 7919 * i) for i, env in enumerate(envs)]
    scalers = [ReturnScaler(env.num_envs, cfg.gamma) for env in envs]
    batches: dict[int, _CloneBatch] = {}
    policy_loss = value_loss = torch.zeros(())
    for it in range(iterations):
        k = it % len(envs)
        batches[k] = _teacher_batch(agent_on(k), envs[k], teachers[k], obs, k, scalers[k], cfg, smoothing)
        # Each gradient step takes a minibatch of one environment drawn at random among those with a batch:
        # many steps on one tenant in a row would undo what the previous tenants taught.
        filled = list(batches)
        for _ in range(cfg.update_epochs * cfg.num_minibatches):
            j = filled[int(torch.randint(len(filled), ()))]
            model, b = agent_on(j), batches[j]
            idx = torch.randperm(len(b.obs))[: max(1, len(b.obs) // cfg.num_minibatches)]
            model.train()
            logp = torch.log_softmax(model.masked_logits(b.obs[idx]), -1)  # (mb, D, max choices)
            safe = torch.where(b.allowed, logp, torch.zeros_like(logp))  # no 0 * -inf
            policy_loss = -((b.dist[idx] * safe).sum(-1) * b.teach[idx]).sum(-1).mean()
            value_loss = 0.5 * (model.get_value(b.obs[idx]) - b.returns[idx]).square().mean()
            loss = policy_loss + cfg.vf_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.max_grad_norm)
            optimizer.step()
    # Fit on every environment's last batch, each environment weighing the same.
    accuracy = []
    with torch.no_grad():
        for j, b in batches.items():
            model = agent_on(j)
            model.eval()
            accuracy.append(float((model.masked_logits(b.obs).argmax(-1) == b.target).float().mean()))
    return CloneStats(iterations=iterations, accuracy=sum(accuracy) / len(accuracy),
                      policy_loss=policy_loss.item(), value_loss=value_loss.item())  # fmt: skip


@dataclass
class _CloneBatch:
    """One environment's teacher rollout as cloning targets."""

    obs: torch.Tensor
    """(N, obs_dim) normalized observations."""
    returns: torch.Tensor
    """(N,) TD(lambda) returns of the scaled rewards, the critic's targets."""
    target: torch.Tensor
    """(N, D) the teacher's actions."""
    dist: torch.Tensor
    """(N, D, max choices) smoothed target distributions."""
    teach: torch.Tensor
    """(N, D) 1.0 where the teacher's choice lies in the envelope (the other fields teach nothing), else 0.0."""
    allowed: torch.Tensor
    """(D, max choices) the envelope's choices."""


def _teacher_batch(
    model: ClonableAgent,
    env: TorchVecEnv,
    act: TeacherFn,
    obs: list[torch.Tensor],
    k: int,
    scaler: ReturnScaler,
    cfg: PPOConfig,
    smoothing: float,
) -> _CloneBatch:
    """Run the teacher for cfg.num_steps steps of env (obs[k] moves on) and build its cloning targets."""
    teacher = cast(ActorCritic, _Teacher(model, act))
    rollout, obs[k] = collect_rollout(env, teacher, obs[k], cfg.num_steps)
    rollout = scaler(rollout)
    _, returns = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminations,
                             rollout.truncations, cfg.gamma, cfg.gae_lambda)  # fmt: skip
    keep = rollout.valid.reshape(-1)
    target = rollout.actions.reshape(-1, rollout.actions.shape[-1])[keep]  # (N, D)
    fields = torch.arange(target.shape[1], device=target.device).expand_as(target)
    allowed = model._allowed  # (D, max choices) for this tenant's envelope
    spread = allowed.float() * (smoothing / allowed.sum(-1, keepdim=True).clamp(min=1))
    dist = spread.expand(len(target), -1, -1).clone()
    dist.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(dist[..., :1], 1.0 - smoothing))
    return _CloneBatch(obs=rollout.obs.reshape(-1, model.obs_dim)[keep], returns=returns.reshape(-1)[keep],
                       target=target, dist=dist, teach=allowed[fields, target].float(), allowed=allowed)  # fmt: skip
