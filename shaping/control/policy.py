"""Control policies: anything that maps an observation to a Decision (action, log-probability, plan).

- ModelPolicy wraps a trained agent (ActorCritic or BranchingQNetwork, e.g. from a checkpoint) with
  epsilon-greedy exploration that never leaves the safety envelope;
- StaticPolicy always returns one plan (the tenant's static rules: the watchdog's fallback);
- ScriptedPolicy calls a function (tests, the testbed, hand-written controllers).
"""

from __future__ import annotations

import math
import operator
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from shaping.agents.checkpoint import load_checkpoint
from shaping.agents.envelope import Envelope, EnvelopeConfig, build_envelope, random_actions
from shaping.agents.numpy_actor import NumpyActor, UnsupportedModelError
from shaping.agents.projection import is_global_weights, tenant_model
from shaping.control.backend import Observed
from shaping.spec import ActionLayout, ShapingPlan, TenantSpec

_version = operator.attrgetter("_version")


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

    Inference runs in numpy (NumpyActor: the same actions and log-probabilities as the torch model,
    several times faster on one observation) for ActorCritic and BranchingQNetwork; other models,
    or ``fast=False``, run the model's torch methods. The numpy snapshot is rebuilt at the next
    ``decide`` whenever the model's weights, normalizer statistics or envelope changed in place.

    Args:
        model: ActorCritic or BranchingQNetwork, its normalizer inside (observations are raw).
        spec: the tenant; the envelope is built from it when ``envelope`` is None.
        envelope: the allowed choices; set on the model as well.
        epsilon: exploration probability per interval.
        deterministic: greedy actions (deployment) instead of samples of the policy.
        generator: random source of the exploration draws and samples (seeded in tests); the numpy
            path draws from a numpy Generator seeded from it once.
        name: name in logs and metrics.
        fast: infer with NumpyActor when the model supports it (False: always torch).
    """

    plan_cache_size = 1024
    """Decoded plans kept by ``decide`` (least recently used out first)."""

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
        fast: bool = True,
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
        self._rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=self.generator)))
        self._plans: OrderedDict[bytes, ShapingPlan] = OrderedDict()
        self._actor: NumpyActor | None = None
        self._watched: tuple[torch.Tensor, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._allowed: torch.Tensor | None = None
        if fast:
            try:
                self._snapshot()
            except UnsupportedModelError:
                pass  # e.g. SharedActorCritic: its torch methods serve it

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
        """Load a checkpoint trained for ``spec`` (CheckpointMismatchError otherwise), or a global model (a
        weights .npz of a federated round or of pretraining, shaping.agents.projection) made the tenant's own."""
        if is_global_weights(path):
            model = tenant_model(path, spec)
            env = build_envelope(spec, envelope)
            return cls(model, spec, envelope=env, epsilon=epsilon, deterministic=deterministic, generator=generator,
                       name=f"global:{os.fspath(path)}")  # fmt: skip
        ckpt = load_checkpoint(path, spec, envelope=envelope)
        return cls(
            ckpt.model, spec, envelope=getattr(ckpt.model, "envelope", None), epsilon=epsilon,
            deterministic=deterministic, generator=generator, name=f"{ckpt.kind}:{os.fspath(path)}",
        )  # fmt: skip

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return self._name

    @property
    def numpy_actor(self) -> NumpyActor | None:
        """The numpy snapshot ``decide`` infers with, rebuilt if the model changed; None on the torch path."""
        stale = self._versions != tuple(map(_version, self._watched))  # map: ~3x cheaper than a generator here
        if self._actor is not None and (stale or getattr(self.model, "_allowed", None) is not self._allowed):
            self._snapshot()
        return self._actor

    def _snapshot(self) -> None:
        """(Re)build the numpy actor and remember what it copied: the parameters, the normalizer's statistics
        (by version counter: load_state_dict, optimizer steps and RunningNorm.update bump it in place) and
        the envelope mask (set_envelope replaces the tensor, so its counter restarts: kept by identity)."""
        model: Any = self.model
        self._actor = NumpyActor.from_model(model)
        self._watched = (*model.parameters(), model.obs_norm.mean, model.obs_norm.var, model._allowed)
        self._versions = tuple(map(_version, self._watched))
        self._allowed = model._allowed

    def _agent_action(self, obs: torch.Tensor) -> torch.Tensor:
        model: Any = self.model  # ActorCritic or BranchingQNetwork: both have act(obs, deterministic)
        if getattr(model, "kind", "") == "dqn":
            return torch.as_tensor(model.act(obs, deterministic=True))
        return torch.as_tensor(model.act(obs, deterministic=self.deterministic))

    def _mix(self, logp: float) -> float:
        """The behaviour log-probability: the policy's mixed with the envelope's uniform draw by epsilon."""
        if self.epsilon == 0.0 or math.isnan(logp):
            return logp
        mix = (1 - self.epsilon) * math.exp(logp) + self.epsilon * math.exp(self._log_uniform)
        return math.log(mix) if mix > 0 else -math.inf

    def _logprob(self, obs: torch.Tensor, action: torch.Tensor) -> float:
        scorer = getattr(self.model, "get_action_and_value", None)
        if scorer is None:
            return math.nan
        model: Any = self.model
        _, logp, _, _ = scorer(model.obs_norm(obs), action)
        return self._mix(float(logp))

    def decide(self, observed: Observed) -> Decision:
        """The agent's action (or an exploration draw), decoded to a plan."""
        actor = self.numpy_actor
        if actor is None:
            return self._decide_torch(observed)
        t = observed.obs
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.requires_grad:  # the monitor's is already fine
            t = t.detach().to("cpu", torch.float32)
        obs = t.numpy().reshape(-1)
        explored = self.epsilon > 0 and self._rng.random() < self.epsilon
        logp = math.nan
        if explored:
            action = actor.random_actions(1, self._rng)[0]
            if actor.has_log_prob:
                logp = float(actor.log_prob(obs, action))
        elif actor.has_log_prob:
            action, lp = actor.act_and_log_prob(obs, None if self.deterministic else self._rng)
            logp = float(lp)
        else:  # Q-network: greedy; its exploration is the epsilon branch
            action = actor.act(obs)
        flat = action.astype(np.int64, copy=False)
        return Decision(self._decode(flat), flat, self._mix(logp), explored)

    def _decode(self, action: np.ndarray) -> ShapingPlan:
        """ActionLayout.decode, memoized (plans are immutable): a deployed greedy policy repeats its
        actions, and decoding one costs more than inferring it (torch ops on a one-element batch)."""
        key = action.tobytes()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.layout.decode(action)
            if len(self._plans) > self.plan_cache_size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    @torch.no_grad()
    def _decide_torch(self, observed: Observed) -> Decision:
        """``decide`` with the model's torch methods (models NumpyActor does not cover)."""
        obs = observed.obs.to(torch.float32).view(1, -1)
        explored = self.epsilon > 0 and float(torch.rand((), generator=self.generator)) < self.epsilon
        if explored:
            action = random_actions(self.envelope, 1, generator=self.generator)
        else:
            action = self._agent_action(obs).view(1, -1).long()
        logprob = self._logprob(obs, action)
        flat = action.view(-1).cpu().numpy().astype(np.int64)
        return Decision(self._decode(flat), flat, logprob, explored)
