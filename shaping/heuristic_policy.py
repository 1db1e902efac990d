"""adaptive_heuristic as a Policy of the batched simulator: one controller state per controlled tenant.

Every controlled tenant (PolicyInput.controlled; every tenant when empty) runs its own
shaping.heuristic controller over the B environments, fed with its TenantView slices of the previous
step's measurements. The other tenants' rows carry their static_priority plans (the evaluation
overwrites them with the neighbours' plans). An environment whose control step is 0 starts a new
episode: its controller state goes back to the tenant's static rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shaping import heuristic
from shaping.baselines import static_priority_plan
from shaping.heuristic import HeuristicSettings, HeuristicState, TenantRules
from shaping.policies import PolicyInput
from shaping.sim.layout import ScenarioTensors
from shaping.sim.simulator import StepOutput
from shaping.sim.tenant_view import TenantView
from shaping.spec import PathMetrics, PlanBatch, stack_plans

#: Name of the policy in POLICY_KINDS and in reports.
NAME = "adaptive_heuristic"


@dataclass
class _Tenant:
    """One controlled tenant: its view of the simulator, its rules and its controllers' state (B, ...)."""

    view: TenantView
    rules: TenantRules
    state: HeuristicState


@dataclass
class AdaptiveHeuristicPolicy:
    """The adaptive heuristic driving every controlled tenant of a batched simulator.

    Args:
        settings: the controller's thresholds.
    """

    settings: HeuristicSettings = field(default_factory=HeuristicSettings)
    _key: tuple[ScenarioTensors, int, tuple[int, ...]] | None = field(default=None, init=False, repr=False)
    _tenants: dict[int, _Tenant] = field(default_factory=dict, init=False, repr=False)
    _base: PlanBatch | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """Name used in reports."""
        return NAME

    @property
    def aqm(self) -> bool:
        """No CoDel: the controller shapes with HTB rates, priorities and marks only."""
        return False

    def _setup(self, inp: PolicyInput, batch: int, controlled: tuple[int, ...]) -> None:
        """Rules and fresh states for a new scenario, batch size or set of controlled tenants."""
        st = inp.tensors
        self._tenants = {}
        for k in controlled:
            rules = TenantRules.of(st.specs[k], self.settings, st.device)
            state = heuristic.initial_state(rules, self.settings, batch)
            self._tenants[k] = _Tenant(TenantView.of(st, k), rules, state)
        # The rows of the tenants it does not drive (the evaluation puts their neighbours' plans there).
        one = stack_plans([[static_priority_plan(s) for s in st.specs]], st.n_classes, st.device)
        self._base = PlanBatch(*(x.expand(batch, *x.shape[1:]) for x in one))
        self._key = (st, batch, controlled)

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Plans of every tenant for this step, shape (B, K, C)."""
        batch = int(inp.state.t.shape[0])
        controlled = inp.controlled or tuple(range(inp.tensors.n_tenants))
        key = self._key
        if key is None or key[0] is not inp.tensors or key[1] != batch or key[2] != controlled:
            self._setup(inp, batch, controlled)
        assert self._base is not None
        fresh = inp.state.t == 0  # environments at the start of an episode (every one when last is None)
        if inp.last is None:
            fresh = torch.ones_like(fresh)
        fields = [x.clone() for x in self._base]
        for k, t in self._tenants.items():
            t.state = advance(t.rules, self.settings, t.state, t.view, inp.last, fresh)
            n = t.view.n_classes
            for f, x in zip(fields, heuristic.plan(t.rules, t.state), strict=True):
                f[:, k, :n] = x
        return PlanBatch(*fields)


def advance(
    rules: TenantRules,
    settings: HeuristicSettings,
    state: HeuristicState,
    view: TenantView,
    last: StepOutput | None,
    fresh: torch.Tensor,
) -> HeuristicState:
    """One tenant's controller state after the interval ``last`` (its measurements through ``view``; None:
    nothing measured yet), started again from the static rules where ``fresh`` (B,) is True (a new episode)."""
    if last is not None:
        m, _ = view.metrics(last)
        paths: PathMetrics = view.paths(last)
        state = heuristic.step(rules, settings, state, m, paths)
    if bool(fresh.any()):
        state = heuristic.reset_where(state, heuristic.initial_state(rules, settings, fresh.shape[0]), fresh)
    return state


def adaptive_heuristic_policy(arg: str = "") -> AdaptiveHeuristicPolicy:
    """POLICY_KINDS factory: the heuristic with default settings (it takes no argument)."""
    if arg:
        raise KeyError(f"{NAME} takes no argument, got {arg!r}")
    return AdaptiveHeuristicPolicy()
