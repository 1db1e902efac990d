"""tuned_static's last step: the search's winner against every static baseline on validation seeds.

Why: the search ranks thousands of candidates on a few training seeds, so its winner's training score is biased
low (the minimum over many noisy scores), and on a scenario whose load varies a lot from seed to seed it can
fit those seeds: on one held-out scenario the winner had 13% SLA violations on the training seeds against the
best baseline's 15%, and 19% against 13% on fresh ones. An operator who tuned a link by hand would try the
result on fresh load before keeping it; this step does that. The search's winner and every static baseline's
own plan (with its own CoDel setting) run on validation seeds (VALIDATION_SEED, distinct from the training
seeds and from the evaluation's, which count up from 0); the one with the fewest SLA violations there, then
the highest reward, is tuned_static's plan. Of equal ones the search's winner stays.

The validation seeds never see the benchmark's seeds, so the pick is as honest as the search: both are
decided before any evaluation seed runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shaping.baselines import BASELINES
from shaping.config import RewardConfig, ScenarioConfig
from shaping.evaluation import resolve_controlled_indices
from shaping.spec import ShapingPlan, scenario_specs
from shaping.tuned.objective import CandidateEvaluator, evaluate_named

#: Base seed of the validation environments: far from TRAIN_SEED (1,000,000) and from the evaluation's 0.
VALIDATION_SEED = 2_000_000
#: The search's winner, as a candidate of the validation.
SEARCH = "search"


@dataclass(frozen=True)
class ValidationSettings:
    """How the search's winner is checked against the baselines (not part of the search's cache key: a
    cached search is validated again when these change)."""

    seeds: int = 64
    """Validation environments per candidate; 0: no validation (the search's winner is kept)."""
    seed: int = VALIDATION_SEED
    """Base seed of the validation environments."""

    def __post_init__(self) -> None:
        if self.seeds < 0:
            raise ValueError(f"validation seeds must be >= 0, got {self.seeds}")


@dataclass(frozen=True)
class Validation:
    """The candidates' scores on the validation seeds and the one kept."""

    settings: ValidationSettings
    steps: int
    """Control steps of each validation episode (the search's)."""
    scores: dict[str, tuple[float, float]]
    """Per candidate ('search', 'baseline:NAME'): (SLA violation rate, mean reward) on the validation seeds."""
    winner: str
    """The candidate kept."""
    plans: tuple[ShapingPlan, ...]
    """Its plans, per controlled tenant."""
    aqm: bool
    """Its CoDel setting."""


def validate(
    scenario: ScenarioConfig,
    controlled: Sequence[str],
    search_plans: Sequence[ShapingPlan],
    search_aqm: bool,
    steps: int,
    settings: ValidationSettings,
    reward: RewardConfig | None = None,
    device: str = "cpu",
) -> Validation:
    """Run the search's winner and every static baseline's own plans on the validation seeds; keep the best.

    Args:
        scenario: the scenario.
        controlled: the controlled tenants (the search's).
        search_plans: the search's winning plans, per controlled tenant.
        search_aqm: the search's CoDel setting.
        steps: control steps per episode (the search's).
        settings: seeds and base seed; settings.seeds must be >= 1.
        reward: reward weights of the tie-break (the search's).
        device: torch device of the simulator.
    """
    if settings.seeds < 1:
        raise ValueError("validate needs at least one validation seed")
    indices = resolve_controlled_indices(scenario, list(controlled))
    specs = [scenario_specs(scenario)[i] for i in indices]
    ev = CandidateEvaluator(scenario, indices, settings.seeds, steps, settings.seed, reward or RewardConfig(), device)
    candidates: dict[str, tuple[tuple[ShapingPlan, ...], bool]] = {SEARCH: (tuple(search_plans), search_aqm)}
    candidates.update({f"baseline:{n}": (tuple(b.plan(spec) for spec in specs), b.aqm) for n, b in BASELINES.items()})
    scores = evaluate_named(ev, candidates)
    # min keeps the first of equal keys, and the search's winner is first: of equal candidates it stays.
    winner = min(scores, key=lambda n: (scores[n][0], -scores[n][1]))
    plans, aqm = candidates[winner]
    return Validation(settings, steps, scores, winner, plans, aqm)
