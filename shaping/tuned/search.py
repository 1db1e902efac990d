"""tune_static: the best constant plan of a scenario's controlled tenants, found by CatCMAwM on the training seeds.

The search is a black box over the simulator: the controlled tenants' actions, concatenated into one joint
action (shaping.tuned.space), are the variables; a candidate's score is its SLA violation rate on the training
seeds, with the mean reward breaking ties (shaping.tuned.objective). Every generation is one batched
simulation of population x seeds environments.

Protocol, in order:
1. Every static baseline (shaping.baselines.BASELINES, black boxes TenantSpec -> ShapingPlan) runs for the
   controlled tenants, as its own plan and as the nearest action of the grid (ActionLayout.encode), under
   each CoDel setting searched and under its own CoDel setting.
2. For each CoDel setting in settings.aqm (the simulator's CoDel switch is per tenant, not per environment,
   so a batch cannot mix both), CatCMAwM starts at the best grid candidate under that setting (an encoded
   baseline, or the winner of a setting searched before, re-run under this one) and runs
   settings.generations generations of settings.population candidates; then up to settings.polish_rounds
   rounds of steepest descent over single-choice changes of the best grid candidate polish the result.
3. The best candidate ever evaluated wins: lowest violation rate, then highest reward. The baselines' own
   plans are candidates too, so the result is never worse than a baseline on the training seeds.
4. The winner and every baseline's own plans run on validation seeds (shaping.tuned.validation); the best
   of them there is the plan tuned_static runs (TunedPlan.final_plans), so an overfit winner gives way.

Training seeds: Simulator seed settings.seed (TRAIN_SEED, 1_000_000, by default), never the evaluation's
seeds (evaluate_policy and the benchmark start at seed 0). Everything is deterministic given settings.seed:
the simulator draws from its own torch generator, the optimizer from numpy generators seeded from it; no
decision depends on wall time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cmaes
import numpy as np
import torch
from tqdm.auto import tqdm

from shaping.baselines import BASELINES
from shaping.config import RewardConfig, ScenarioConfig
from shaping.evaluation import resolve_controlled_indices
from shaping.spec import ActionLayout, PlanBatch, ShapingPlan, TenantSpec, scenario_specs
from shaping.tuned.objective import CandidateEvaluator, Scores
from shaping.tuned.space import SearchSpace
from shaping.tuned.validation import Validation, ValidationSettings, validate

#: Base seed of the training environments; evaluations (evaluate_policy, the benchmark) count up from 0.
TRAIN_SEED = 1_000_000
#: Weight of the mean reward in the scalar the optimizer ranks by (violation rate - weight x reward). The
#: reward per step lies within a few units (at most 2.5 with the default weights, minus one per violated
#: class), so the term moves the scalar by ~1e-5 at most: less than one violated (class, step) pair of the
#: default training budget (1 / (seeds x steps x SLA classes), 5e-5 for 8 seeds x 600 steps x 4 classes).
#: It orders candidates with equal violation rates; the winner is picked by (rate, -reward) exactly.
REWARD_TIE_WEIGHT = 1e-6
#: The optimizer, as the cache records it.
LIBRARY = f"cmaes {cmaes.__version__} CatCMAwM"


@dataclass(frozen=True)
class TuneSettings:
    """Budget and protocol of one search (part of the cache key)."""

    population: int = 16
    """Candidates per generation (at least 4)."""
    generations: int = 30
    """Generations per CoDel setting."""
    seeds: int = 8
    """Training environments per candidate."""
    steps: int | None = None
    """Control steps of the training episode; None: the scenario's episode_steps."""
    seed: int = TRAIN_SEED
    """Base seed of the training environments and of the optimizer."""
    polish_rounds: int = 5
    """Rounds of steepest descent on the grid after the optimizer, per CoDel setting (each round one batch of
    every joint action one choice away from the best; it stops early at a local optimum)."""
    aqm: tuple[bool, ...] = (False, True)
    """CoDel settings of the controlled tenants' leaves searched, one search each."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of the tie-break."""

    def __post_init__(self) -> None:
        # CatCMAwM's rank-mu learning rate is 0 below 4 candidates (one parent).
        if self.population < 4 or self.generations < 0 or self.polish_rounds < 0 or self.seeds < 1:
            raise ValueError(f"need population >= 4, generations and polish_rounds >= 0, seeds >= 1; got {self}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps}")
        if not self.aqm or len(set(self.aqm)) != len(self.aqm):
            raise ValueError(f"aqm must list distinct settings, got {self.aqm}")

    def episode_steps(self, scenario: ScenarioConfig) -> int:
        """Steps of the training episode on a scenario."""
        return scenario.episode_steps if self.steps is None else self.steps


@dataclass(frozen=True)
class BaselineScore:
    """A static baseline's own plans, with its own CoDel setting, on the training seeds."""

    aqm: bool
    sla_violation_rate: float
    mean_reward: float


@dataclass(frozen=True)
class TunedPlan:
    """The result of a search: constant plans of the controlled tenants and how they scored."""

    scenario: str
    """Name of the scenario."""
    controlled: tuple[str, ...]
    """The controlled tenants, in scenario order."""
    plans: tuple[ShapingPlan, ...]
    """Their plans, in the same order."""
    actions: tuple[tuple[int, ...], ...]
    """Their flat actions (for a baseline's own plan: its nearest action, which may differ from the plan)."""
    aqm: bool
    """Whether their leaves run CoDel."""
    source: str
    """Where the winner came from: 'search', 'baseline:NAME' (a baseline's own plan), 'encoded:NAME'."""
    sla_violation_rate: float
    """The controlled tenants' SLA violation rate on the training seeds."""
    mean_reward: float
    """Their mean reward per step on the training seeds."""
    baselines: dict[str, BaselineScore]
    """Every static baseline (own plans, own CoDel setting) on the training seeds."""
    fingerprints: tuple[str, ...]
    """The controlled tenants' spec fingerprints (TenantSpec.fingerprint)."""
    settings: TuneSettings
    """The search's settings."""
    evaluations: int
    """Candidates evaluated."""
    env_steps: int
    """Environment steps simulated (candidates x seeds x steps)."""
    steps: int
    """Control steps of the training episode (settings.steps, or the scenario's episode_steps)."""
    library: str = LIBRARY
    """Optimizer library and version."""
    wall_s: float = 0.0
    """Wall-clock time of the search (recorded only, never used in a decision)."""
    validation: Validation | None = None
    """The winner against the baselines on validation seeds (step 4); None: not validated."""

    @property
    def final_plans(self) -> tuple[ShapingPlan, ...]:
        """The plans tuned_static runs: the validation's pick, else the search's winner."""
        return self.validation.plans if self.validation is not None else self.plans

    @property
    def final_aqm(self) -> bool:
        """The CoDel setting tuned_static runs with."""
        return self.validation.aqm if self.validation is not None else self.aqm

    @property
    def final_source(self) -> str:
        """Where the plans tuned_static runs come from: the search's source, or the baseline the validation
        preferred ('validated:baseline:NAME')."""
        v = self.validation
        return self.source if v is None or v.winner == "search" else f"validated:{v.winner}"

    def validated(self, scenario: ScenarioConfig, settings: ValidationSettings, device: str = "cpu") -> TunedPlan:
        """This result with step 4 run under settings (without validation when settings.seeds is 0)."""
        if settings.seeds == 0:
            return dataclasses.replace(self, validation=None)
        v = validate(
            scenario, self.controlled, self.plans, self.aqm, self.steps, settings, self.settings.reward, device
        )
        return dataclasses.replace(self, validation=v)

    @property
    def objective(self) -> float:
        """The scalar the optimizer ranks by: violation rate - REWARD_TIE_WEIGHT x mean reward."""
        return self.sla_violation_rate - REWARD_TIE_WEIGHT * self.mean_reward


#: A candidate as the search records it: source, flat actions per tenant, plans per tenant (() when decoded).
_Row = tuple[str, tuple[np.ndarray, ...], tuple[ShapingPlan, ...]]


@dataclass
class _Incumbent:
    """A candidate and its key (violation rate, -reward): lower is better."""

    key: tuple[float, float] = (float("inf"), float("inf"))
    actions: tuple[np.ndarray, ...] = ()
    plans: tuple[ShapingPlan, ...] = ()
    aqm: bool = False
    source: str = ""


@dataclass
class _Archive:
    """The best candidate evaluated so far, and per CoDel setting the best one on the action grid (where the
    optimizer and the polish start)."""

    best: _Incumbent = field(default_factory=_Incumbent)
    grid: dict[bool, _Incumbent] = field(default_factory=dict)

    def offer(self, scores: Scores, aqm: bool, rows: Sequence[_Row]) -> None:
        """Keep the best of a scored batch; rows are (source, actions, plans), plans () for decoded actions."""
        for rate, reward, (source, actions, plans) in zip(scores[0], scores[1], rows, strict=True):
            cand = _Incumbent((float(rate), -float(reward)), actions, plans, aqm, source)
            # Strict: of equal candidates the earlier stays.
            if cand.key < self.best.key:
                self.best = cand
            if not plans and cand.key < self.grid.setdefault(aqm, _Incumbent()).key:
                self.grid[aqm] = cand


def tune_static(
    scenario: ScenarioConfig,
    settings: TuneSettings | None = None,
    *,
    controlled: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = False,
    validation: ValidationSettings | None = None,
) -> TunedPlan:
    """Search the controlled tenants' best constant plan and CoDel setting on the training seeds, then
    validate it against the baselines on validation seeds.

    Args:
        scenario: the scenario.
        settings: budget and protocol; None: TuneSettings() (population 16 x 30 generations per CoDel
            setting x 8 seeds x the scenario's episode).
        controlled: names of the tenants the plan drives; None: the scenario's `controlled` (every tenant
            when it names none). The others run their scenario policies.
        device: torch device of the simulator.
        progress: show a tqdm progress bar (one tick per batch).
        validation: step 4's settings; None: ValidationSettings() (64 seeds).
    Returns:
        The best candidate ever evaluated, never worse than a static baseline on the training seeds, with
        its validation (final_plans: never worse than a static baseline on the validation seeds).
    """
    s = settings if settings is not None else TuneSettings()
    start_time = time.perf_counter()
    indices = resolve_controlled_indices(scenario, controlled)
    specs = [scenario_specs(scenario)[i] for i in indices]
    space = SearchSpace(tuple(ActionLayout(spec) for spec in specs))
    ev = CandidateEvaluator(scenario, indices, s.seeds, s.episode_steps(scenario), s.seed, s.reward, device)
    archive = _Archive()
    settings_run = sorted(set(s.aqm) | {b.aqm for b in BASELINES.values()})
    per_setting = s.generations + s.polish_rounds if space.searchable else 0
    bar = tqdm(total=len(settings_run) + per_setting * len(s.aqm), desc=f"tune {scenario.name}", disable=not progress)
    rng = np.random.default_rng(s.seed)
    with bar:
        baselines = _run_baselines(ev, space, specs, settings_run, s.aqm, archive, bar)
        for aqm in s.aqm:
            opt_seed = int(rng.integers(2**31 - 1))  # drawn even when nothing is searched: same stream
            if per_setting:
                _carry_over(ev, aqm, archive)
                _search(ev, space, aqm, s, opt_seed, archive, bar)
                _polish(ev, space, aqm, s.polish_rounds, archive, bar)
    best = archive.best
    plans = best.plans or tuple(lay.decode(a) for lay, a in zip(space.layouts, best.actions, strict=True))
    tuned = TunedPlan(
        scenario=scenario.name,
        controlled=tuple(spec.name for spec in specs),
        plans=plans,
        actions=tuple(tuple(int(x) for x in a) for a in best.actions),
        aqm=best.aqm,
        source=best.source,
        sla_violation_rate=best.key[0],
        mean_reward=-best.key[1],
        baselines=baselines,
        fingerprints=tuple(spec.fingerprint() for spec in specs),
        settings=s,
        evaluations=ev.evaluations,
        env_steps=ev.env_steps,
        steps=ev.steps,
        wall_s=time.perf_counter() - start_time,
    )
    return tuned.validated(scenario, validation if validation is not None else ValidationSettings(), device)


def _run_baselines(
    ev: CandidateEvaluator,
    space: SearchSpace,
    specs: Sequence[TenantSpec],
    settings_run: Sequence[bool],
    searched: Sequence[bool],
    archive: _Archive,
    bar: tqdm,
) -> dict[str, BaselineScore]:
    """Every baseline's own plans and nearest actions under each CoDel setting, offered to the archive under the
    searched settings; returns each baseline's score under its own setting."""
    names = list(BASELINES)
    own = {n: tuple(BASELINES[n].plan(spec) for spec in specs) for n in names}
    encoded = {n: tuple(lay.encode(p) for lay, p in zip(space.layouts, own[n], strict=True)) for n in names}
    batch = _concat(ev.from_plans([own[n] for n in names]), ev.from_actions([encoded[n] for n in names]))
    rows = [(f"baseline:{n}", encoded[n], own[n]) for n in names] + [(f"encoded:{n}", encoded[n], ()) for n in names]
    out: dict[str, BaselineScore] = {}
    for aqm in settings_run:
        rate, reward = ev.evaluate(batch, aqm)
        out.update({n: BaselineScore(aqm, float(rate[i]), float(reward[i])) for i, n in enumerate(names)
                    if BASELINES[n].aqm == aqm})  # fmt: skip
        if aqm in searched:
            archive.offer(Scores(rate, reward), aqm, rows)
        bar.update(1)
    return out


def _carry_over(ev: CandidateEvaluator, aqm: bool, archive: _Archive) -> None:
    """Run the best grid candidates of the CoDel settings searched before under this one: the search under this
    setting then starts from whichever is best, not from the baselines again."""
    others = [inc.actions for a, inc in archive.grid.items() if a != aqm and inc.source == "search"]
    if others:
        rate, reward = ev.evaluate(ev.from_actions(others), aqm)
        archive.offer(Scores(rate, reward), aqm, [("search", a, ()) for a in others])


def _search(
    ev: CandidateEvaluator, space: SearchSpace, aqm: bool, s: TuneSettings, seed: int, archive: _Archive, bar: tqdm
) -> None:
    """s.generations generations of CatCMAwM under one CoDel setting, from the best grid candidate so far."""
    opt = space.optimizer(space.join(archive.grid[aqm].actions), s.population, seed)
    for _ in range(s.generations):
        solutions = [opt.ask() for _ in range(s.population)]
        actions = [tuple(space.split(space.decode(sol))) for sol in solutions]
        rate, reward = ev.evaluate(ev.from_actions(actions), aqm)
        archive.offer(Scores(rate, reward), aqm, [("search", a, ()) for a in actions])
        opt.tell([(sol, float(r - REWARD_TIE_WEIGHT * w)) for sol, r, w in zip(solutions, rate, reward, strict=True)])
        bar.set_postfix(aqm=aqm, best=f"{archive.best.key[0]:.4f}", refresh=False)
        bar.update(1)


def _polish(ev: CandidateEvaluator, space: SearchSpace, aqm: bool, rounds: int, archive: _Archive, bar: tqdm) -> None:
    """Steepest descent on the grid under one CoDel setting: each round runs every joint action one choice away
    from the best grid candidate as one batch and moves to the best of them; it stops at a local optimum.

    CatCMAwM's sampling around its mean rarely tries the single changes that finish a discrete search (its
    step size shrinks once the mean's neighbourhood stops paying), so this pass ends the search."""
    for done in range(rounds):
        before = archive.grid[aqm].key
        moves = space.neighbours(space.join(archive.grid[aqm].actions))
        actions = [tuple(space.split(m)) for m in moves]
        rate, reward = ev.evaluate(ev.from_actions(actions), aqm)
        archive.offer(Scores(rate, reward), aqm, [("search", a, ()) for a in actions])
        bar.update(1)
        if archive.grid[aqm].key >= before:
            bar.update(rounds - done - 1)
            return


def _concat(a: PlanBatch, b: PlanBatch) -> PlanBatch:
    return PlanBatch(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))
