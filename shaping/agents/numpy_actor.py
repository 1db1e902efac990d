"""NumpyActor: a trained agent's inference on raw observations in numpy, for the control loop's per-step call.

torch spends most of a one-observation forward in per-operator dispatch (about ten small operators of
several microseconds each on CPU, torch 2.13), so ``ActorCritic.act`` on one observation costs ~0.3 ms;
the same float32 maths in numpy costs a fraction of that. A NumpyActor is a snapshot of a model's
weights, normalizer statistics and envelope mask: rebuild it when any of them changes (ModelPolicy
does, from the tensors' version counters). It computes exactly what the torch model computes:

- ActorCritic (``kind == "ppo"``): ``masked_logits`` (forbidden choices -inf), the greedy action
  (``act``), a Gumbel-max sample, and log-probabilities as in ``get_action_and_value``;
- BranchingQNetwork (``kind == "dqn"``): ``masked_q`` and its greedy action; no log-probability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from shaping.agents.dqn import BranchingQNetwork
from shaping.agents.heads import MaskedMultiDiscrete
from shaping.agents.ppo import ActorCritic

Array = np.ndarray[Any, Any]


class UnsupportedModelError(TypeError):
    """The model's kind or architecture has no numpy counterpart (use its torch methods instead)."""


def _tanh(x: Array) -> Array:
    return np.tanh(x, out=x)


def _relu(x: Array) -> Array:
    return np.maximum(x, 0.0, out=x)


def _linears(seq: nn.Module, activation: type[nn.Module], trailing: bool, what: str) -> list[nn.Linear]:
    """The Linear layers of a Sequential ``Linear, act, Linear, act, ...``, with or without a last activation."""
    if not isinstance(seq, nn.Sequential):
        raise UnsupportedModelError(f"{what} is a {type(seq).__name__}, not an nn.Sequential")
    mods = list(seq.children())
    if trailing and not mods:
        return []  # no hidden layer
    linears = mods[0::2]
    acts = mods[1::2]
    n_acts = len(linears) if trailing else len(linears) - 1
    if (
        not mods
        or not all(type(m) is nn.Linear for m in linears)
        or len(acts) != n_acts
        or not all(type(m) is activation for m in acts)
    ):
        raise UnsupportedModelError(f"{what} is not a plain Linear/{activation.__name__} stack: {seq}")
    return [m for m in linears if isinstance(m, nn.Linear)]


def _dense(layer: nn.Linear) -> tuple[Array, Array]:
    """(in, out) float32 weight and (out,) bias of a Linear layer, copied."""
    weight = np.ascontiguousarray(layer.weight.detach().to("cpu", torch.float32).numpy().T)
    if layer.bias is None:
        return weight, np.zeros(weight.shape[1], dtype=np.float32)
    return weight, layer.bias.detach().to("cpu", torch.float32).numpy().copy()


def _numpy(t: torch.Tensor) -> Array:
    return t.detach().to("cpu").numpy().copy()


class NumpyActor:
    """A snapshot of an ActorCritic or BranchingQNetwork for inference on raw observations in numpy.

    Every method takes raw observations ``(..., obs_dim)`` (a single ``(obs_dim,)`` vector or a batch)
    and normalizes them with the model's RunningNorm statistics, in float32 as the model does. Build
    one with ``from_model``.

    Attributes:
        kind: "ppo" (actor-critic: logits) or "dqn" (branching Q-network: Q-values).
        obs_dim, nvec: observation length and MultiDiscrete sizes.
        allowed: (D, max choices) bool, the envelope's allowed choices (False at padding).
    """

    def __init__(
        self,
        kind: str,
        nvec: tuple[int, ...],
        norm: tuple[Array, Array, float],
        layers: list[tuple[Array, Array]],
        activation: Callable[[Array], Array],
        index: Array,
        real: Array,
        allowed: Array,
    ) -> None:
        if kind not in ("ppo", "dqn"):
            raise UnsupportedModelError(f"no numpy inference for model kind {kind!r}")
        self.kind = kind
        self.nvec = nvec
        self.obs_dim = int(norm[0].shape[0])
        self._mean, self._scale, self._clip = norm
        self._layers = layers
        self._activation = activation
        self._index = index
        self._real = real
        self.allowed = allowed
        # Adding 0 / -inf is masked_fill(~allowed, -inf) for finite scores, one operator fewer.
        self._mask = np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        self._n_real = real.sum(-1, keepdims=True).astype(np.float32)
        self._dims = np.arange(len(nvec))

    @classmethod
    def from_model(cls, model: nn.Module) -> NumpyActor:
        """Snapshot a model's weights, normalizer and envelope.

        A set policy bound to a tenant (shaping.agents.set_policy.BoundSetPolicy) gives its SetNumpyActor.

        Raises:
            UnsupportedModelError: not exactly an ActorCritic, BranchingQNetwork or BoundSetPolicy (a subclass such as
                SharedActorCritic may compute something else), or layers other than Linear + activation.
        """
        if getattr(model, "kind", None) == "set":
            from shaping.agents.set_numpy import SetNumpyActor  # deferred: it subclasses NumpyActor
            from shaping.agents.set_policy import BoundSetPolicy

            if isinstance(model, BoundSetPolicy):
                return SetNumpyActor(model)
        if type(model) is ActorCritic:
            layers = _linears(model.actor, nn.Tanh, trailing=False, what="ActorCritic.actor")
            return cls._build(model, "ppo", [_dense(m) for m in layers], _tanh)
        if type(model) is BranchingQNetwork:
            torso = _linears(model.torso, nn.ReLU, trailing=True, what="BranchingQNetwork.torso")
            dense = [_dense(m) for m in torso]
            (w_adv, b_adv), (w_v, b_v) = _dense(model.advantage), _dense(model.value)
            # One matmul for both heads: the advantages, then the state value in the last column.
            dense.append((np.ascontiguousarray(np.hstack([w_adv, w_v])), np.concatenate([b_adv, b_v])))
            return cls._build(model, "dqn", dense, _relu)
        raise UnsupportedModelError(f"no numpy inference for {type(model).__name__}; use its torch methods")

    @classmethod
    def _build(
        cls,
        model: MaskedMultiDiscrete,
        kind: str,
        layers: list[tuple[Array, Array]],
        activation: Callable[[Array], Array],
    ) -> NumpyActor:
        norm = model.obs_norm
        # As RunningNorm.forward: the scale in float64, then both statistics in the input's float32.
        scale = torch.rsqrt(norm.var + norm.epsilon).to(torch.float32)
        stats = (_numpy(norm.mean.to(torch.float32)), _numpy(scale), float(norm.clip))
        return cls(kind, model.nvec, stats, layers, activation,
                   _numpy(model._index), _numpy(model._real), _numpy(model._allowed))  # fmt: skip

    def normalize(self, obs: Array | torch.Tensor) -> Array:
        """(..., obs_dim) float32 normalized and clipped observations."""
        x = np.asarray(obs, dtype=np.float32)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation of length {x.shape[-1]}, the model takes {self.obs_dim}")
        x = (x - self._mean) * self._scale
        return np.clip(x, -self._clip, self._clip, out=x)

    def scores(self, obs: Array | torch.Tensor) -> Array:
        """(..., D, max choices) float32 masked logits (ppo) or masked Q-values (dqn); -inf where not allowed."""
        x = self.normalize(obs)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = x @ w
            x += b
            if i < last:
                x = self._activation(x)
        if self.kind == "ppo":
            return x[..., self._index] + self._mask
        # Dueling: Q_d = V + A_d - mean of A_d over the real choices; padding 0 before the mask.
        adv = np.where(self._real, x[..., :-1][..., self._index], np.float32(0.0))
        mean = adv.sum(-1, keepdims=True) / self._n_real
        q = x[..., -1:, None] + adv - mean
        return np.where(self._real, q, np.float32(0.0)) + self._mask

    def act(self, obs: Array | torch.Tensor) -> Array:
        """(..., D) int64 greedy actions: each dimension's most likely (ppo) or best (dqn) allowed choice."""
        return self.scores(obs).argmax(-1)

    def sample(self, obs: Array | torch.Tensor, rng: np.random.Generator) -> Array:
        """(..., D) int64 actions drawn from the masked policy (ppo; Gumbel-max, -inf never drawn)."""
        self._need_policy("sample")
        return self._gumbel_argmax(self.scores(obs), rng)

    def log_prob(self, obs: Array | torch.Tensor, action: Array | torch.Tensor) -> Array:
        """(...,) float64 log-probability of (..., D) actions under the masked policy (ppo)."""
        self._need_policy("log_prob")
        return self._log_prob(self.scores(obs), np.asarray(action, dtype=np.int64))

    def act_and_log_prob(
        self, obs: Array | torch.Tensor, rng: np.random.Generator | None = None
    ) -> tuple[Array, Array]:
        """(..., D) actions, greedy (rng None) or sampled, and their (...,) log-probabilities, in one forward."""
        self._need_policy("act_and_log_prob")
        logits = self.scores(obs)
        if rng is None:
            action = logits.argmax(-1)
            return action, self._log_prob(logits, action, greedy=True)
        action = self._gumbel_argmax(logits, rng)
        return action, self._log_prob(logits, action)

    def random_actions(self, n: int, rng: np.random.Generator) -> Array:
        """(n, D) int64 actions drawn uniformly from each dimension's allowed choices (exploration)."""
        u = rng.random((n, *self.allowed.shape))
        return np.where(self.allowed, u, -np.inf).argmax(-1)

    @property
    def has_log_prob(self) -> bool:
        """The model defines action probabilities (actor-critic), not only values."""
        return self.kind == "ppo"

    def _need_policy(self, what: str) -> None:
        if self.kind != "ppo":
            raise UnsupportedModelError(f"{what} needs a policy; a {self.kind} model only has greedy actions")

    @staticmethod
    def _gumbel_argmax(logits: Array, rng: np.random.Generator) -> Array:
        # u > 0 keeps every allowed logit finite, so a forbidden (-inf) choice can never win.
        u = np.maximum(rng.random(logits.shape), np.finfo(np.float64).tiny)
        return (logits - np.log(-np.log(u))).argmax(-1)

    def _log_prob(self, logits: Array, action: Array, greedy: bool = False) -> Array:
        """Sum over dimensions of log_softmax(logits)[action]: float32 as torch's log_softmax, summed in float64.

        ``greedy``: the actions are the argmax, so the chosen logits are the maxima (one reduction fewer).
        """
        if logits.ndim == 2 and action.shape == self._dims.shape:  # one observation: plain indexing is cheaper
            chosen = logits[self._dims, action]
        else:
            chosen = np.take_along_axis(logits, action[..., None], -1)[..., 0]
        top = chosen if greedy else logits.max(-1)
        shifted = logits - top[..., None]
        lse = np.log(np.exp(shifted, out=shifted).sum(-1))
        if greedy:  # chosen - top is 0
            return -lse.sum(-1, dtype=np.float64)
        return ((chosen - top) - lse).sum(-1, dtype=np.float64)
