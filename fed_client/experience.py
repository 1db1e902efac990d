"""Local training on the experience the control loop recorded (deployment: online learning from real traffic).

Reads the tenant's shaping.control.experience.ExperienceStore, maps its transitions into the
federation's universal layout and runs shaping.agents.ppo_update on them as one rollout (B = 1, the
stream in time order; GAE stops at ``done`` and bootstraps every other step from ``next_obs``).
The recorded behaviour log-probabilities make the PPO ratio an importance weight; steps without one
(fallback or static steps, logprob NaN) are scored by the current policy instead (ratio 1 at the start
of the update), which treats them as on-policy: a bias accepted to keep their rewards. Ratios are
truncated to [1/4, 4] at the start of the update (MAX_LOG_RATIO), as in truncated importance sampling.
"""

from __future__ import annotations

import torch

from shaping.agents import ActorCritic, Rollout, make_optimizer, ppo_update
from shaping.agents.local_train import LocalResult, SampleDP
from shaping.agents.train import FIXED_REWARD_SCALE
from shaping.agents.universal import TenantMapping
from shaping.config import PPOConfig
from shaping.control.experience import ExperienceBatch, ExperienceStore
from shaping.spec import TenantSpec

#: Bound of |log(current / behaviour probability)| of a recorded action when the update starts.
MAX_LOG_RATIO = float(torch.log(torch.tensor(4.0)))


def open_store(path: str, spec: TenantSpec) -> ExperienceStore:
    """The tenant's store, read-only; refuses a store written for another spec."""
    store = ExperienceStore(path)
    if store.meta.get("fingerprint") != spec.fingerprint():
        raise ValueError(f"experience store {path!r} was recorded for tenant {store.meta.get('tenant')!r} "
                         f"with another spec than {spec.name!r}'s")  # fmt: skip
    return store


def universal_actions(mapping: TenantMapping, own: torch.Tensor) -> torch.Tensor:
    """(N, universal D) actions from (N, tenant D) ones; empty slots take choice 0, their only allowed one."""
    out = torch.zeros(own.shape[0], len(mapping.layout.nvec), dtype=torch.long)
    out[:, mapping.act_src] = own.long()
    return out


@torch.no_grad()
def experience_rollout(model: ActorCritic, batch: ExperienceBatch, mapping: TenantMapping, *,
                       update_obs_norm: bool = True) -> Rollout:  # fmt: skip
    """The batch as a (N, 1) rollout of the model, rewards divided by FIXED_REWARD_SCALE (the units of
    simulated training; one update cannot keep a running return scale); the normalizer is updated with
    the batch's observations if update_obs_norm."""
    obs = mapping.observation(batch.obs.float())
    next_obs = mapping.observation(batch.next_obs.float())
    if update_obs_norm:
        model.obs_norm.update(obs)
    nobs, nnext = model.obs_norm(obs), model.obs_norm(next_obs)
    actions = universal_actions(mapping, batch.action)
    model.set_envelope(mapping.envelope)
    _, current_logp, _, values = model.get_action_and_value(nobs, actions)
    behaviour = torch.where(torch.isfinite(batch.logprob), batch.logprob.float(), current_logp)
    # Truncated importance weights: the recorded policy may be several global models old, and an
    # unbounded ratio (exp of a log-prob gap of tens over 25 action heads) would blow up the update.
    logp = torch.maximum(torch.minimum(behaviour, current_logp + MAX_LOG_RATIO), current_logp - MAX_LOG_RATIO)
    # An action outside the tenant's envelope (a guard or fallback plan) has probability 0 under the
    # policy: no ratio exists, so it is left out of the update (its reward still flows through GAE).
    inside = torch.isfinite(current_logp)
    logp = torch.where(inside, logp, torch.zeros_like(logp))
    n = batch.size
    col = lambda x: x.reshape(n, 1, *x.shape[1:])  # noqa: E731 (T, B=1, ...)
    return Rollout(
        obs=col(nobs), actions=col(actions), logprobs=col(logp), rewards=col(batch.reward.float() / FIXED_REWARD_SCALE),
        values=col(values), next_values=col(model.get_value(nnext)), terminations=col(batch.done.bool()),
        truncations=col(torch.zeros(n, dtype=torch.bool)), valid=col(inside),
    )  # fmt: skip


def train_on_experience(model: ActorCritic, store: ExperienceStore, mapping: TenantMapping, cfg: PPOConfig,
                        window: int = 4096, dp: SampleDP | None = None) -> LocalResult:  # fmt: skip
    """One PPO update on the store's latest `window` transitions; a no-op when the store is empty.

    With dp (e.g. fed_client.dpsgd.DPSGD) the update is DP-SGD with independent examples (the normalizer
    frozen, ppo_update's independent_examples) and dp's accountant is charged for it.
    """
    batch = store.read(since=max(0, store.next_seq - window))
    if batch.size == 0:
        return LocalResult(num_examples=0, rollout_reward=0.0, optimizer_steps=0)
    rollout = experience_rollout(model, batch, mapping, update_obs_norm=dp is None)
    if not bool(rollout.valid.any()):
        return LocalResult(num_examples=0, rollout_reward=float(batch.reward.mean()), optimizer_steps=0)
    model.train()
    optimizer: torch.optim.Optimizer = make_optimizer(model, cfg.learning_rate)
    if dp is not None:
        optimizer = dp.attach(model, optimizer, batch.size, cfg.num_minibatches)
    try:
        stats = ppo_update(model, optimizer, rollout, cfg, independent_examples=dp is not None)
    finally:
        if dp is not None:
            dp.detach(model)
        model.eval()
    return LocalResult(num_examples=batch.size, rollout_reward=float(batch.reward.mean()),
                       optimizer_steps=int(stats["optimizer_steps"]))  # fmt: skip
