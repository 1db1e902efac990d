"""PPO for the MultiDiscrete shaping action: actor-critic, rollout collection, GAE and the clipped update.

It reads like CleanRL's ``ppo.py`` (same names: ``b_obs``, ``mb_inds``, ``clip_coef``, ...), but each
step is a function that pretraining, the Flower client and the controller import. One iteration::

    agent = ActorCritic(obs_dim, nvec, cfg.hidden_sizes, envelope=build_envelope(spec))
    optimizer = make_optimizer(agent, cfg.learning_rate)
    next_obs = env.reset_torch(seed=0)
    for iteration in range(1, num_iterations + 1):
        if cfg.anneal_lr:
            set_lr(optimizer, linear_lr(cfg.learning_rate, iteration, num_iterations))
        rollout, next_obs = collect_rollout(env, agent, next_obs, cfg.num_steps)
        stats = ppo_update(agent, optimizer, rollout, cfg)

Environments use NEXT_STEP autoreset (ShapingVectorEnv): the step after a truncation only resets, so
its action has no effect and it is left out of the update (``Rollout.valid``), while the observation it
was taken on, the episode's final observation, supplies the bootstrap value of the truncated step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import NamedTuple, Protocol

import torch
from torch import nn

from shaping.agents.envelope import Envelope, mask_logits
from shaping.agents.heads import MaskedMultiDiscrete


class TorchStepLike(Protocol):
    """What ``step_torch`` returns (shaping.sim.vector_env.TorchStep has these fields), each (B, ...)."""

    @property
    def obs(self) -> torch.Tensor: ...
    @property
    def reward(self) -> torch.Tensor: ...
    @property
    def terminated(self) -> torch.Tensor: ...
    @property
    def truncated(self) -> torch.Tensor: ...
    @property
    def reset(self) -> torch.Tensor:
        """(B,) bool: the environment was autoreset at this step, so the action had no effect."""
        ...


class TorchVecEnv(Protocol):
    """A batched environment with a tensor API and NEXT_STEP autoreset (ShapingVectorEnv)."""

    @property
    def num_envs(self) -> int: ...
    def reset_torch(self, *, seed: int | None = None) -> torch.Tensor: ...
    def step_torch(self, actions: torch.Tensor) -> TorchStepLike: ...


class ObsNormLike(Protocol):
    """The normalizer collect_rollout drives (RunningNorm): normalize, and update the statistics."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def update(self, x: torch.Tensor) -> None: ...


class PPOAgent(Protocol):
    """What collect_rollout and ppo_update need of a network: ActorCritic has it, and so does the set policy
    bound to a tenant (shaping.agents.set_policy.BoundSetPolicy)."""

    @property
    def obs_dim(self) -> int: ...
    @property
    def nvec(self) -> tuple[int, ...]: ...
    @property
    def obs_norm(self) -> ObsNormLike: ...
    def get_action_and_value(
        self, nobs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def get_value(self, nobs: torch.Tensor) -> torch.Tensor: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


class PPOHyperparams(Protocol):
    """The update's hyperparameters; shaping.config.PPOConfig has them (CleanRL names)."""

    @property
    def gamma(self) -> float: ...
    @property
    def gae_lambda(self) -> float: ...
    @property
    def update_epochs(self) -> int: ...
    @property
    def num_minibatches(self) -> int: ...
    @property
    def norm_adv(self) -> bool: ...
    @property
    def clip_coef(self) -> float: ...
    @property
    def clip_vloss(self) -> bool: ...
    @property
    def ent_coef(self) -> float: ...
    @property
    def vf_coef(self) -> float: ...
    @property
    def max_grad_norm(self) -> float: ...
    @property
    def target_kl(self) -> float | None: ...


def _layer(n_in: int, n_out: int, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """CleanRL's layer_init: orthogonal weights, constant bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def _mlp(sizes: Sequence[int], n_out: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_hidden in pairwise(sizes):
        layers += [_layer(n_in, n_hidden), nn.Tanh()]
    layers.append(_layer(sizes[-1], n_out, std=out_std))
    return nn.Sequential(*layers)


def _gumbel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """A sample of each categorical over the last dim (Gumbel-max; -inf logits are never drawn)."""
    # u > 0 keeps every allowed logit finite, so an all -inf row (and index 0 by default) cannot win.
    u = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


class ActorCritic(MaskedMultiDiscrete):
    """Actor-critic for a MultiDiscrete action, with the observation normalizer inside the model.

    The actor is an MLP torso whose last layer holds one categorical head per action dimension (the
    heads share the torso; their logits are laid out padded, (D, max choices), so one log-softmax
    serves all heads). The critic is a separate MLP, as in CleanRL's ppo.py: the value's scale then
    never competes with the policy gradient for the torso's features. Forbidden choices of the safety
    envelope get -inf logits. Networks take normalized observations; ``act`` takes raw ones.

    Args:
        obs_dim: length of the observation vector.
        nvec: MultiDiscrete sizes of the action.
        hidden_sizes: widths of the hidden layers of both MLPs.
        envelope: allowed choices (None: all); not saved in state_dict, set it per tenant.
        clip_obs: normalized observations are clipped to [-clip_obs, clip_obs].
    """

    kind = "ppo"

    def __init__(
        self,
        obs_dim: int,
        nvec: Iterable[int],
        hidden_sizes: Iterable[int] = (128, 128),
        envelope: Envelope | None = None,
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__(obs_dim, nvec, hidden_sizes, envelope, clip_obs)
        self.critic = _mlp([self.obs_dim, *self.hidden_sizes], 1, out_std=1.0)
        self.actor = _mlp([self.obs_dim, *self.hidden_sizes], sum(self.nvec), out_std=0.01)

    def get_value(self, nobs: torch.Tensor) -> torch.Tensor:
        """(...,) state values of normalized observations."""
        return self.critic(nobs).squeeze(-1)

    def masked_logits(self, nobs: torch.Tensor) -> torch.Tensor:
        """(..., D, max choices) logits of normalized observations, -inf outside the envelope and padding."""
        return mask_logits(self.actor(nobs)[..., self._index], self._allowed)

    def get_action_and_value(
        self, nobs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score a given) action of normalized observations.

        Returns:
            action (..., D), its log-probability (...,), the policy's entropy (...,), the value (...,).
        """
        logits = self.masked_logits(nobs)
        logp_all = torch.log_softmax(logits, -1)
        if action is None:
            action = _gumbel_argmax(logits)
        logprob = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)
        # Forbidden choices have probability 0; zeroing their -inf log-probs keeps 0 * -inf (nan) out.
        safe = torch.where(self._allowed, logp_all, torch.zeros_like(logp_all))
        entropy = -(safe.exp() * safe).sum((-2, -1))
        return action, logprob, entropy, self.get_value(nobs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(..., D) actions of raw observations (..., obs_dim): the most likely choice of each head,
        or a sample when not deterministic. Does not update the normalizer."""
        logits = self.masked_logits(self.obs_norm(obs))
        return logits.argmax(-1) if deterministic else _gumbel_argmax(logits)


class Rollout(NamedTuple):
    """num_steps x num_envs transitions, as collected (T, B, ...)."""

    obs: torch.Tensor  # (T, B, obs_dim) normalized, as the policy saw them
    actions: torch.Tensor  # (T, B, D) long
    logprobs: torch.Tensor  # (T, B)
    rewards: torch.Tensor  # (T, B)
    values: torch.Tensor  # (T, B) V(obs[t])
    next_values: torch.Tensor  # (T, B) V of the observation after step t (the final one at a truncation)
    terminations: torch.Tensor  # (T, B) bool, the episode terminated at step t
    truncations: torch.Tensor  # (T, B) bool, the episode was truncated at step t
    valid: torch.Tensor  # (T, B) bool, the action took effect (False at autoreset steps)


@torch.no_grad()
def collect_rollout(
    env: TorchVecEnv,
    agent: PPOAgent,
    next_obs: torch.Tensor,
    num_steps: int,
    *,
    update_obs_norm: bool = True,
) -> tuple[Rollout, torch.Tensor]:
    """Step every environment num_steps times with the agent's sampled actions, batched.

    Args:
        env: the batched environment (NEXT_STEP autoreset).
        agent: the policy; its normalizer is updated with every new observation if update_obs_norm.
        next_obs: (B, obs_dim) raw observations to act on first (from reset_torch or the last rollout).
        num_steps: steps per environment (CleanRL's num_steps).
    Returns:
        The rollout, and the raw observations to start the next rollout from.
    """
    b = next_obs.shape[0]
    dev = next_obs.device
    obs = torch.empty((num_steps, b, agent.obs_dim), dtype=torch.float32, device=dev)
    actions = torch.empty((num_steps, b, len(agent.nvec)), dtype=torch.long, device=dev)
    logprobs, rewards = (torch.empty((num_steps, b), device=dev) for _ in range(2))
    values = torch.empty((num_steps + 1, b), device=dev)
    terminations, truncations, resets = (torch.empty((num_steps, b), dtype=torch.bool, device=dev) for _ in range(3))
    nobs = agent.obs_norm(next_obs.float())
    for step in range(num_steps):
        obs[step] = nobs
        action, logprobs[step], _, values[step] = agent.get_action_and_value(nobs)
        actions[step] = action
        res = env.step_torch(action)
        rewards[step] = res.reward
        terminations[step] = res.terminated
        truncations[step] = res.truncated
        resets[step] = res.reset
        next_obs = res.obs.float()
        if update_obs_norm:
            agent.obs_norm.update(next_obs)
        nobs = agent.obs_norm(next_obs)
    values[num_steps] = agent.get_value(nobs)
    # values[t + 1] is the value of the observation step t produced: a final one where step t truncated.
    rollout = Rollout(obs, actions, logprobs, rewards, values[:-1], values[1:], terminations, truncations, ~resets)
    return rollout, next_obs


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns of (T, B) transitions.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t`` and
    ``A_t = delta_t + gamma * gae_lambda * (1 - (terminated_t | truncated_t)) * A_{t+1}``:
    a terminated step bootstraps nothing, a truncated step bootstraps the value of its final
    observation (next_values), and no advantage flows across an episode boundary.

    Args:
        rewards, values: r_t and V(s_t).
        next_values: V(s_{t+1}) of the observation that step t produced (for NEXT_STEP autoreset,
            values shifted by one step with the bootstrap value appended).
        terminations, truncations: bool, the episode ended at step t.
    Returns:
        advantages and returns (advantages + values), each (T, B).
    """
    not_terminal = 1.0 - terminations.to(rewards.dtype)
    not_done = 1.0 - (terminations | truncations).to(rewards.dtype)
    deltas = rewards + gamma * next_values * not_terminal - values
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        lastgaelam = deltas[t] + gamma * gae_lambda * not_done[t] * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


def linear_lr(learning_rate: float, iteration: int, num_iterations: int) -> float:
    """CleanRL's annealing: learning_rate at iteration 1, decaying linearly towards 0 after the last."""
    return learning_rate * (1.0 - (iteration - 1.0) / num_iterations)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(agent: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam with CleanRL's eps=1e-5."""
    return torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)


def minibatch_indices(batch_size: int, num_minibatches: int, poisson: bool, device: torch.device) -> list[torch.Tensor]:
    """One epoch's minibatches of indices into a batch: a shuffled partition into num_minibatches, or,
    with poisson, num_minibatches independent Poisson samples (each index in each with probability
    1 / num_minibatches), the sampling DP-SGD's accountant assumes."""
    if poisson:
        q = 1.0 / num_minibatches
        return [(torch.rand(batch_size, device=device) < q).nonzero().squeeze(1) for _ in range(num_minibatches)]
    return list(torch.randperm(batch_size, device=device).tensor_split(num_minibatches))


def ppo_update(
    agent: PPOAgent,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    cfg: PPOHyperparams,
    *,
    independent_examples: bool = False,
) -> dict[str, float]:
    """Clipped PPO update on one rollout: GAE, then update_epochs passes over num_minibatches minibatches.

    Steps whose action had no effect (autoreset) are left out. Returns losses and diagnostics (floats),
    with the optimizer steps taken.

    Args:
        independent_examples: what DP-SGD needs (fed_client.dpsgd): no example's loss term may depend on
            another example of the minibatch, or clipping each example's gradient would not bound its
            influence. So advantages are not normalized per minibatch (one outlier would rescale every
            other example's advantage), minibatches are Poisson samples (the accountant's sampling), and
            cfg.target_kl, a stop decided on the data, is refused. An empty Poisson sample still steps
            (DP-SGD's step is then noise alone).
    """
    if independent_examples and cfg.target_kl is not None:
        raise ValueError("target_kl stops the update on a statistic of the data; DP-SGD needs it None")
    r = rollout
    advantages, returns = compute_gae(
        r.rewards, r.values, r.next_values, r.terminations, r.truncations, cfg.gamma, cfg.gae_lambda
    )
    # flatten the batch
    keep = rollout.valid.reshape(-1)
    b_obs = rollout.obs.reshape(-1, agent.obs_dim)[keep]
    b_actions = rollout.actions.reshape(-1, len(agent.nvec))[keep]
    b_logprobs = rollout.logprobs.reshape(-1)[keep]
    b_advantages = advantages.reshape(-1)[keep]
    b_returns = returns.reshape(-1)[keep]
    b_values = rollout.values.reshape(-1)[keep]
    batch_size = b_obs.shape[0]
    if batch_size == 0:
        raise ValueError("rollout has no step whose action took effect")

    # optimizing the policy and value network
    clipfracs: list[torch.Tensor] = []
    zero = torch.zeros((), device=b_obs.device)
    pg_loss = v_loss = entropy_loss = old_approx_kl = approx_kl = zero
    steps = 0
    for _epoch in range(cfg.update_epochs):
        for mb_inds in minibatch_indices(batch_size, cfg.num_minibatches, independent_examples, b_obs.device):
            if mb_inds.numel() == 0 and not independent_examples:
                continue
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
            if mb_inds.numel() == 0:
                # An empty Poisson sample still steps, on a zero loss: DP-SGD's step is then noise alone.
                # Skipping it would tell that the sample was empty, which depends on the number of examples.
                optimizer.zero_grad()
                (newvalue.sum() + newlogprob.sum()).backward()
                optimizer.step()
                steps += 1
                continue
            logratio = newlogprob - b_logprobs[mb_inds]
            ratio = logratio.exp()
            with torch.no_grad():
                # calculate approx_kl http://joschu.net/blog/kl-approx.html
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())

            mb_advantages = b_advantages[mb_inds]
            if cfg.norm_adv and not independent_examples and mb_inds.numel() > 1:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            # Policy loss
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            # Value loss
            if cfg.clip_vloss:
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -cfg.clip_coef, cfg.clip_coef)
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
            else:
                v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

            entropy_loss = entropy.mean()
            loss = pg_loss - cfg.ent_coef * entropy_loss + v_loss * cfg.vf_coef

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            steps += 1

        if cfg.target_kl is not None and float(approx_kl) > cfg.target_kl:
            break

    var_y = b_returns.var() if batch_size > 1 else zero
    explained_var = 1 - (b_returns - b_values).var() / var_y if float(var_y) > 0 else torch.tensor(float("nan"))
    return {
        "learning_rate": float(optimizer.param_groups[0]["lr"]),
        "value_loss": float(v_loss.detach()),
        "policy_loss": float(pg_loss.detach()),
        "entropy": float(entropy_loss.detach()),
        "old_approx_kl": float(old_approx_kl),
        "approx_kl": float(approx_kl),
        "clipfrac": float(torch.stack(clipfracs).mean()) if clipfracs else 0.0,
        "explained_variance": float(explained_var),
        "batch_size": float(batch_size),
        "optimizer_steps": float(steps),
    }
