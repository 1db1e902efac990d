"""Policies that drive every tenant of a batched simulator, and the table that names them.

A policy maps what the simulator shows at a control step (PolicyInput) to the plans of every
tenant of every environment (a PlanBatch). The static baselines are policies, and so are agent
checkpoints: POLICY_KINDS maps ``ppo`` to a loader, so ``make_policy("ppo:outputs/run/best.pt")``
drives the checkpoint's tenant with the agent and the other tenants with their baselines.
``tuned_static`` (shaping.tuned) is the best constant plan found by search for a scenario; it needs the
scenario's whole configuration, so the evaluation binds it to the scenario first (bind_policy).
Evaluation, the comparison entry point and the reports only ever see the Policy protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from shaping.baselines import BASELINES, Baseline, get_baseline
from shaping.config import ScenarioConfig
from shaping.sim.layout import ScenarioTensors
from shaping.sim.simulator import SimState, StepOutput
from shaping.spec import PlanBatch, controlled_indices, stack_plans


class PolicyInput(NamedTuple):
    """What a policy sees at one control step of a batch of B environments."""

    step: int
    """Control step within the episode (0 right after a reset)."""
    tensors: ScenarioTensors
    """The scenario's static tensors: tenant specs, caps, QoS, action levels."""
    state: SimState
    """The simulator's dynamic state (queues, windows, load processes), batch size B."""
    last: StepOutput | None
    """Measurements of the previous step (None at step 0); feed ObservationLayout.build."""
    controlled: tuple[int, ...] = ()
    """Indices of the tenants the policy controls (empty: every tenant). The evaluation overwrites the
    other tenants' rows with their neighbours' plans, so a policy may leave them as they come."""


@runtime_checkable
class Policy(Protocol):
    """Maps a PolicyInput to the plans of every tenant, a PlanBatch of shape (B, K, C)."""

    @property
    def name(self) -> str:
        """Name used in reports."""
        ...

    @property
    def aqm(self) -> bool:
        """Whether the tenants' leaf queues run CoDel (the simulator's aqm switch)."""
        ...

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Plans for every environment and tenant."""
        ...


@runtime_checkable
class ScenarioBound(Protocol):
    """A policy that needs the scenario's whole configuration, not only its tensors, before it runs (tuned_static
    looks up or tunes its plans for the scenario and its controlled tenants, and only then knows its aqm)."""

    def for_scenario(self, scenario: ScenarioConfig, controlled: Sequence[str]) -> Policy:
        """The policy as it runs on this scenario with these controlled tenants."""
        ...


def bind_policy(policy: Policy, scenario: ScenarioConfig, controlled: Sequence[str]) -> Policy:
    """The policy bound to a scenario and its controlled tenants (ScenarioBound); any other policy as it is."""
    return policy.for_scenario(scenario, controlled) if isinstance(policy, ScenarioBound) else policy


@dataclass
class StaticPolicy:
    """A static baseline as a policy: the same plan every step, built once per scenario and batch."""

    baseline: Baseline
    _key: tuple[ScenarioTensors, int] | None = field(default=None, init=False, repr=False)
    _plans: PlanBatch | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """The baseline's name."""
        return self.baseline.name

    @property
    def aqm(self) -> bool:
        """Whether the baseline runs CoDel on the leaves (fq_codel)."""
        return self.baseline.aqm

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """The baseline's plans, expanded over the batch."""
        b = int(inp.state.t.shape[0])
        if self._plans is None or self._key is None or self._key[0] is not inp.tensors or self._key[1] != b:
            st = inp.tensors
            row = [self.baseline.plan(spec) for spec in st.specs]
            one = stack_plans([row], st.n_classes, st.device)
            self._plans = PlanBatch(*(x.expand(b, *x.shape[1:]).contiguous() for x in one))
            self._key = (inp.tensors, b)
        return self._plans


def baseline_policy(name: str) -> Policy:
    """A static baseline (shaping.baselines.BASELINES) by name."""
    return StaticPolicy(get_baseline(name))


#: Builds a policy from the argument of a reference ``kind:argument`` (a name, a checkpoint path).
PolicyFactory = Callable[[str], Policy]


def ppo_policy(path: str) -> Policy:
    """A PPO checkpoint (shaping.agents.train_ppo) driving its tenant; the other tenants keep their baselines."""
    from shaping.agents.policy import AgentPolicy  # deferred: shaping.agents.policy imports this module

    return AgentPolicy(path)


def dqn_policy(path: str) -> Policy:
    """A DQN checkpoint (shaping.agents.train_dqn) driving its tenant; the other tenants keep their baselines."""
    from shaping.agents.policy import AgentPolicy  # deferred: shaping.agents.policy imports this module

    return AgentPolicy(path, name=f"dqn:{path}")


def universal_policy(path: str) -> Policy:
    """The federation's universal model (a weights .npz) driving every controlled tenant that fits its layout."""
    from shaping.agents.policy import UniversalPolicy  # deferred: shaping.agents.policy imports this module

    return UniversalPolicy(path)


def set_policy(path: str) -> Policy:
    """A set policy (shaping.agents.set_policy weights) driving every controlled tenant, any classes and paths."""
    from shaping.agents.policy import SetPolicy  # deferred: shaping.agents.policy imports this module

    return SetPolicy(path)


def tuned_static_policy(cache_dir: str) -> Policy:
    """The best constant plan found by search for each scenario it runs on (shaping.tuned), looked up in
    cache_dir ('': shaping.tuned.default_cache_dir()) or tuned there on first use."""
    from shaping.tuned import TunedStaticPolicy, default_cache_dir  # deferred: shaping.tuned imports this module

    return TunedStaticPolicy(Path(cache_dir) if cache_dir else default_cache_dir())


def adaptive_heuristic_policy(arg: str) -> Policy:
    """The rule-based feedback controller (shaping.heuristic) driving every controlled tenant; no argument."""
    from shaping.heuristic_policy import adaptive_heuristic_policy as make  # deferred: it imports this module

    return make(arg)


#: Policy kinds by name: ``baseline:fifo``, ``ppo:outputs/pretrain/best.pt``, ``dqn:outputs/pretrain/best.pt``,
#: ``universal:outputs/pretrain_universal/universal.npz``, ``set:outputs/set/set_policy.pt``, ``tuned_static`` or
#: ``tuned_static:CACHE_DIR``, and ``adaptive_heuristic``.
POLICY_KINDS: dict[str, PolicyFactory] = {
    "baseline": baseline_policy,
    "ppo": ppo_policy,
    "dqn": dqn_policy,
    "universal": universal_policy,
    "set": set_policy,
    "tuned_static": tuned_static_policy,
    "adaptive_heuristic": adaptive_heuristic_policy,
}
#: Kinds whose bare name is a complete reference (they take no argument, or it has a default).
BARE_KINDS: tuple[str, ...] = ("tuned_static", "adaptive_heuristic")


def make_policy(ref: str) -> Policy:
    """A policy from a reference: ``kind:argument``, a bare baseline name (``fifo``) or a kind whose bare name
    is complete (``tuned_static``, ``adaptive_heuristic``).

    Raises:
        KeyError: unknown kind or baseline, with the known names in the message.
    """
    kind, sep, arg = ref.partition(":")
    if not sep:
        kind, arg = (ref, "") if ref in BARE_KINDS else ("baseline", ref)
    try:
        factory = POLICY_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown policy kind {kind!r} in {ref!r}; known kinds: {sorted(POLICY_KINDS)}") from None
    return factory(arg)


def known_policies() -> list[str]:
    """References that need no argument beyond their name: the static baselines and the bare kinds."""
    return [*BASELINES, *BARE_KINDS]


def controllable_tenants(policy: Policy) -> tuple[str, ...] | None:
    """The tenants a policy can control (a single-tenant checkpoint: its tenant), None for any tenant."""
    tenants = getattr(policy, "tenants", None)
    return None if tenants is None else tuple(tenants)


def cannot_control(policy: Policy, tenants: Sequence[str]) -> str | None:
    """Why a policy cannot drive these tenants (it controls only others, see controllable_tenants); None if it can."""
    can = controllable_tenants(policy)
    if can is None or set(tenants) <= set(can):
        return None
    return f"{policy.name!r} controls only {list(can)}, not {list(tenants)}"


def resolve_controlled(scenario: ScenarioConfig, policies: Sequence[Policy]) -> list[str]:
    """The tenants every compared policy controls, so that rows are like for like.

    The scenario's `controlled` list when it has one; else the tenants every policy can control (a
    checkpoint trained for one tenant narrows it to that tenant); else every tenant.

    Raises:
        ValueError: a policy cannot control the scenario's controlled tenants, or the policies share none.
    """
    names = [t.name for t in scenario.tenants]
    wanted = [names[i] for i in controlled_indices(scenario)]
    limits = [(p.name, controllable_tenants(p)) for p in policies]
    if scenario.controlled:
        for name, can in limits:
            if can is not None and not set(wanted) <= set(can):
                raise ValueError(f"policy {name!r} controls only {list(can)}; {scenario.name!r} controls {wanted}")
        return wanted
    common = [n for n in names if all(can is None or n in can for _, can in limits)]
    if not common:
        raise ValueError(f"the policies control no common tenant of scenario {scenario.name!r}: {dict(limits)}")
    return common


def neighbour_plans(tensors: ScenarioTensors, scenario: ScenarioConfig, batch: int) -> tuple[PlanBatch, torch.Tensor]:
    """Every tenant's scenario `policy` plan expanded over a batch, and (K,) bool whether that policy runs CoDel:
    what the neighbours of the controlled tenants do in every row of a comparison."""
    bases = [get_baseline(t.policy) for t in scenario.tenants]
    one = stack_plans([[b.plan(spec) for b, spec in zip(bases, tensors.specs, strict=True)]], tensors.n_classes,
                      tensors.device)  # fmt: skip
    plans = PlanBatch(*(x.expand(batch, *x.shape[1:]).contiguous() for x in one))
    return plans, torch.tensor([b.aqm for b in bases], dtype=torch.bool, device=tensors.device)
