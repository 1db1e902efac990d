"""Control policies: anything that maps an observation to a Decision (action, log-probability, plan).

- ModelPolicy wraps a trained agent (ActorCritic or BranchingQNetwork, e.g. from a checkpoint) with
  epsilon-greedy exploration that never leaves the safety envelope;
- StaticPolicy always returns one plan (the tenant's static rules: the watchdog's fallback);
- ScriptedPolicy calls a function (tests, the testbed, hand-written controllers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from shaping.agents.checkpoint import load_checkpoint
from shaping.agents.envelope import Envelope, EnvelopeConfig, build_envelope, random_actions
from shaping.control.backend import Observed
from shaping.spec import ActionLayout, ShapingPlan, TenantSpec


@dataclass(frozen=True)
class Decision:
    """What a policy decided for the next interval."""

    plan: ShapingPlan
    """The plan to apply (before the guard)."""
    action: np.ndarray
    """(D,) int64 flat MultiDiscrete action; for plan-only policies the nearest action (ActionLayout.encode)."""
    logprob: float = math.nan
    """Log-probability of ``action`` under the behaviour policy that drew it; nan when not defined."""
    explored: bool = False
    """The action was an exploration draw (epsilon) rather than the policy's own choice."""


@runtime_checkable
class ControlPolicy(Protocol):
    """Maps what the backend observed to a Decision; called from a worker thread, once per interval."""

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        ...

    def decide(self, observed: Observed) -> Decision:
        """The decision for the next interval."""
        ...


class StaticPolicy:
    """The same plan every interval (static rules; the fallback).

    Args:
        spec: the tenant.
        plan: the plan; validated against the spec.
        name: name in logs and metrics.
    """

    def __init__(self, spec: TenantSpec, plan: ShapingPlan, name: str = "static") -> None:
        plan.validate(spec)
        self.plan = plan
        self._name = name
        self._action = ActionLayout(spec).encode(plan)

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return self._name

    def decide(self, observed: Observed) -> Decision:
        """The static plan."""
        return Decision(self.plan, self._action.copy())


class ScriptedPolicy:
    """A function of the observation returning a flat action (decoded by the spec) or a plan.

    Args:
        spec: the tenant.
        fn: ``fn(observed) -> np.ndarray | ShapingPlan``.
        name: name in logs and metrics.
    """

    def __init__(self, spec: TenantSpec, fn: Callable[[Observed], np.ndarray | ShapingPlan], name: str = "scripted"):
        self.layout = ActionLayout(spec)
        self.fn = fn
        self._name = name

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return self._name

    def decide(self, observed: Observed) -> Decision:
        """Call the function; an action is decoded, a plan is encoded to its nearest action."""
        out = self.fn(observed)
        if isinstance(out, ShapingPlan):
            return Decision(out, self.layout.encode(out))
        action = np.asarray(out, dtype=np.int64).reshape(-1)
        return Decision(self.layout.decode(action), action)


class ModelPolicy:
    """A trained agent as a control policy, with epsilon-greedy exploration inside the envelope.

    With probability ``1 - epsilon`` the agent acts (greedy when ``deterministic``, else a sample of
    its masked distribution); with probability ``epsilon`` every action dimension is drawn uniformly
    from the envelope's allowed choices (``random_actions``). Both branches only ever pick allowed
    choices, so exploration stays inside the envelope.

    The recorded log-probability is that of the behaviour policy for actor-critic models,
    ``log((1 - eps) * pi(a|s) + eps * u(a))`` with ``u`` uniform over the envelope, so importance
    ratios against it are exact when sampling (``deterministic=False``); with a greedy actor it is
    the model's ``log pi(a|s)`` mixed the same way (the greedy choice itself has no density). For
    Q-networks it is nan.

    Args:
        model: ActorCritic or BranchingQNetwork, its normalizer inside (observations are raw).
        spec: the tenant; the envelope is built from it when ``envelope`` is None.
        envelope: the allowed choices; set on the model as well.
        epsilon: exploration probability per interval.
        deterministic: greedy actions (deployment) instead of samples of the policy.
        generator: random source of the exploration draws (seeded in tests).
        name: name in logs and metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TenantSpec,
        *,
        envelope: Envelope | None = None,
        epsilon: float = 0.0,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
        name: str = "model",
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.layout = ActionLayout(spec)
        nvec = tuple(int(n) for n in self.layout.nvec)
        model_nvec = tuple(getattr(model, "nvec", nvec))
        if model_nvec != nvec:
            raise ValueError(f"model has action sizes {list(model_nvec)}, tenant {spec.name!r} needs {list(nvec)}")
        self.envelope = envelope or getattr(model, "envelope", None) or build_envelope(spec)
        model.set_envelope(self.envelope)  # type: ignore[operator]
        self.model = model.eval()
        self.epsilon = float(epsilon)
        self.deterministic = deterministic
        self.generator = generator or torch.Generator().manual_seed(0)
        self._name = name
        allowed = torch.tensor([sum(m) for m in self.envelope.masks], dtype=torch.float64)
        self._log_uniform = float(-torch.log(allowed).sum())

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        spec: TenantSpec,
        *,
        envelope: EnvelopeConfig | None = None,
        epsilon: float = 0.0,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> ModelPolicy:
        """Load a checkpoint trained for ``spec`` (CheckpointMismatchError otherwise)."""
        ckpt = load_checkpoint(path, spec, envelope=envelope)
        return cls(
            ckpt.model, spec, envelope=getattr(ckpt.model, "envelope", None), epsilon=epsilon,
            deterministic=deterministic, generator=generator, name=f"{ckpt.kind}:{os.fspath(path)}",
        )  # fmt: skip

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return self._name

    def _agent_action(self, obs: torch.Tensor) -> torch.Tensor:
        model: Any = self.model  # ActorCritic or BranchingQNetwork: both have act(obs, deterministic)
        if getattr(model, "kind", "") == "dqn":
            return torch.as_tensor(model.act(obs, deterministic=True))
        return torch.as_tensor(model.act(obs, deterministic=self.deterministic))

    def _logprob(self, obs: torch.Tensor, action: torch.Tensor) -> float:
        scorer = getattr(self.model, "get_action_and_value", None)
        if scorer is None:
            return math.nan
        model: Any = self.model
        _, logp, _, _ = scorer(model.obs_norm(obs), action)
        logp_f = float(logp)
        if self.epsilon == 0.0:
            return logp_f
        mix = (1 - self.epsilon) * math.exp(logp_f) + self.epsilon * math.exp(self._log_uniform)
        return math.log(mix) if mix > 0 else -math.inf

    @torch.no_grad()
    def decide(self, observed: Observed) -> Decision:
        """The agent's action (or an exploration draw), decoded to a plan."""
        obs = observed.obs.to(torch.float32).view(1, -1)
        explored = self.epsilon > 0 and float(torch.rand((), generator=self.generator)) < self.epsilon
        if explored:
            action = random_actions(self.envelope, 1, generator=self.generator)
        else:
            action = self._agent_action(obs).view(1, -1).long()
        logprob = self._logprob(obs, action)
        flat = action.view(-1).cpu().numpy().astype(np.int64)
        return Decision(self.layout.decode(flat), flat, logprob, explored)
