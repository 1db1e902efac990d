"""tuned_static as a policy: the controlled tenants run their tuned constant plans, neighbours their own.

``make_policy("tuned_static")`` (or ``tuned_static:CACHE_DIR``) gives a TunedStaticPolicy. It knows no
scenario until the evaluation binds it (shaping.policies.bind_policy): binding looks the scenario up in the
cache or tunes it there (shaping.tuned.cache.load_or_tune) and returns a TunedPlanPolicy, whose aqm is the
tuned CoDel choice (the evaluation applies it to the controlled tenants only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shaping.config import ScenarioConfig
from shaping.policies import Policy, PolicyInput, neighbour_plans
from shaping.sim.layout import ScenarioTensors
from shaping.spec import PlanBatch, stack_plans
from shaping.tuned.cache import cache_key, load_or_tune
from shaping.tuned.objective import place
from shaping.tuned.search import TunedPlan, TuneSettings
from shaping.tuned.validation import ValidationSettings

#: Name of the policy in reports.
POLICY_NAME = "tuned_static"


@dataclass
class TunedPlanPolicy:
    """A TunedPlan driving its controlled tenants; every other tenant gets its scenario policy's plan."""

    tuned: TunedPlan
    scenario: ScenarioConfig
    name: str = POLICY_NAME
    _key: tuple[ScenarioTensors, int] | None = field(default=None, init=False, repr=False)
    _plans: PlanBatch | None = field(default=None, init=False, repr=False)

    @property
    def aqm(self) -> bool:
        """The tuned CoDel choice of the controlled tenants' leaves."""
        return self.tuned.final_aqm

    @property
    def tenants(self) -> tuple[str, ...]:
        """The tenants it was tuned for (shaping.policies.controllable_tenants)."""
        return self.tuned.controlled

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """The tuned plans for the controlled tenants, the neighbours' scenario plans for the rest."""
        b = int(inp.state.t.shape[0])
        if self._plans is None or self._key is None or self._key[0] is not inp.tensors or self._key[1] != b:
            st = inp.tensors
            names = [s.name for s in st.specs]
            if [t.name for t in self.scenario.tenants] != names:
                raise ValueError(f"tuned_static was bound to {self.scenario.name!r}, not to tenants {names}")
            base, _ = neighbour_plans(st, self.scenario, b)
            mine = stack_plans([list(self.tuned.final_plans)], st.n_classes, st.device)
            idx = torch.tensor([names.index(n) for n in self.tuned.controlled], device=st.device)
            self._plans = place(base, PlanBatch(*(x.expand(b, *x.shape[1:]) for x in mine)), idx)
            self._key = (inp.tensors, b)
        return self._plans


@dataclass
class TunedStaticPolicy:
    """tuned_static before it knows its scenario: binding (for_scenario) looks up or tunes the plans.

    Args:
        cache_dir: the cache directory (shaping.tuned.cache).
        settings: the search settings (part of the cache key).
        validation: the validation's settings (shaping.tuned.validation).
        device: torch device of the search and of the cache's verification.
        progress: show the search's progress bar when a scenario is tuned.
    """

    cache_dir: Path
    settings: TuneSettings = field(default_factory=TuneSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    device: str = "cpu"
    progress: bool = False
    name: str = POLICY_NAME
    _bound: dict[str, TunedPlanPolicy] = field(default_factory=dict, init=False, repr=False)

    @property
    def aqm(self) -> bool:
        """False until bound: the evaluation reads the bound policy's aqm."""
        return False

    def for_scenario(self, scenario: ScenarioConfig, controlled: Sequence[str]) -> Policy:
        """The tuned plans of this scenario and controlled tenants (from the cache, else tuned and cached)."""
        key = cache_key(scenario, list(controlled), self.settings)
        if key not in self._bound:
            tuned = load_or_tune(
                scenario, self.settings, cache_dir=self.cache_dir, controlled=controlled, device=self.device,
                progress=self.progress, validation=self.validation,
            )  # fmt: skip
            self._bound[key] = TunedPlanPolicy(tuned, scenario, name=self.name)
        return self._bound[key]

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Refused: the plans depend on the scenario's whole config, which a PolicyInput does not carry."""
        raise RuntimeError(
            "tuned_static needs its scenario: run it through shaping.evaluation.evaluate_policy, or bind it first "
            "with shaping.policies.bind_policy(policy, scenario, controlled)"
        )
