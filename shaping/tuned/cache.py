"""The tuned_static cache: one JSON file per scenario and search, keyed by everything the result depends on.

The key is a SHA-256 over the scenario's full config (dataclasses.asdict), the controlled tenants, the search
settings (TuneSettings), shaping.spec.SPEC_VERSION and the cache format; the file is
``CACHE_DIR/<scenario name>-<key[:16]>.json``. An entry is reused only when its key, SPEC_VERSION and the
controlled tenants' spec fingerprints match, and (verify=True) when its plans, re-run on the training
seeds, still score what it recorded and no baseline now beats them: a simulator, baseline or neighbour
change makes it stale. A stale or mismatching entry is tuned again and overwritten, never reused. Entries of
an older config keep their own file; nothing reads them again.

File contents: the plans (per controlled tenant, its flat action and its ShapingPlan), the CoDel flag,
where the winner came from, the fingerprints, the objective on the training seeds and every baseline's,
the settings and budget, the library and version; and the validation (shaping.tuned.validation: its
settings, every candidate's score on the validation seeds, the pick and its plans). The validation is not
part of the key: an entry whose validation is missing or ran under other settings is validated again (a few
seconds) and rewritten, its search reused; with verify=True the pick is re-run on the validation seeds too.
The project commits its entries in conf/tuned_static/ (the hand-written scenarios' and the held-out suite's,
which the benchmark reads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shaping.baselines import BASELINES
from shaping.config import RewardConfig, ScenarioConfig
from shaping.evaluation import resolve_controlled_indices
from shaping.sim.scenarios import conf_dir
from shaping.spec import SPEC_VERSION, ClassShaping, ShapingPlan, scenario_specs
from shaping.tuned.objective import CandidateEvaluator, evaluate_named
from shaping.tuned.search import BaselineScore, TunedPlan, TuneSettings, tune_static
from shaping.tuned.validation import Validation, ValidationSettings

log = logging.getLogger(__name__)

#: Version of the file layout; part of the key.
CACHE_FORMAT = 1
#: How far a re-run on the training seeds may move a recorded violation rate before the entry is stale: the
#: C++ kernel and the torch sub-step (another device) agree to an ulp or two, which can flip a pair or two at
#: an SLA threshold; a change of the model moves it further.
VERIFY_TOLERANCE = 2e-3


def default_cache_dir() -> Path:
    """conf/tuned_static/ (beside the scenarios, shaping.sim.scenarios.conf_dir), so the hand-written scenarios'
    plans can be committed with them."""
    return conf_dir() / "tuned_static"


def cache_key(scenario: ScenarioConfig, controlled: Sequence[str], settings: TuneSettings) -> str:
    """SHA-256 (hex) of the scenario's full config, the controlled tenants, the settings, SPEC_VERSION and
    CACHE_FORMAT."""
    doc = {
        "format": CACHE_FORMAT,
        "spec_version": SPEC_VERSION,
        "scenario": asdict(scenario),
        "controlled": list(controlled),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(cache_dir: Path, scenario: ScenarioConfig, key: str) -> Path:
    """The entry's file: CACHE_DIR/<scenario name>-<key[:16]>.json (odd characters of the name as '_')."""
    return cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', scenario.name)}-{key[:16]}.json"


def to_json(tuned: TunedPlan, key: str) -> dict[str, Any]:
    """The entry as a JSON-ready dict."""
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "spec_version": SPEC_VERSION,
        "scenario": tuned.scenario,
        "controlled": list(tuned.controlled),
        "fingerprints": dict(zip(tuned.controlled, tuned.fingerprints, strict=True)),
        "aqm": tuned.aqm,
        "source": tuned.source,
        "actions": {name: list(a) for name, a in zip(tuned.controlled, tuned.actions, strict=True)},
        "plans": {p.tenant: asdict(p) for p in tuned.plans},
        "training": {
            "sla_violation_rate": tuned.sla_violation_rate,
            "mean_reward": tuned.mean_reward,
            "objective": tuned.objective,
            "seeds": tuned.settings.seeds,
            "steps": tuned.steps,
            "seed": tuned.settings.seed,
        },
        "baselines": {name: asdict(b) for name, b in tuned.baselines.items()},
        "settings": asdict(tuned.settings),
        "budget": {"evaluations": tuned.evaluations, "env_steps": tuned.env_steps},
        "library": tuned.library,
        "wall_s": round(tuned.wall_s, 2),
        **({"validation": _validation_json(tuned.validation)} if tuned.validation is not None else {}),
    }


def _validation_json(v: Validation) -> dict[str, Any]:
    return {
        "seeds": v.settings.seeds,
        "seed": v.settings.seed,
        "steps": v.steps,
        "winner": v.winner,
        "aqm": v.aqm,
        "scores": {n: {"sla_violation_rate": r, "mean_reward": w} for n, (r, w) in v.scores.items()},
        "plans": {p.tenant: asdict(p) for p in v.plans},
    }


def _plans_from_json(plans: dict[str, Any], names: Sequence[str]) -> tuple[ShapingPlan, ...]:
    return tuple(
        ShapingPlan(
            tenant=plans[n]["tenant"],
            classes=tuple(ClassShaping(**c) for c in plans[n]["classes"]),
            root_mbps=plans[n]["root_mbps"],
        )
        for n in names
    )


def _validation_from_json(doc: dict[str, Any], names: Sequence[str]) -> Validation:
    return Validation(
        settings=ValidationSettings(seeds=doc["seeds"], seed=doc["seed"]),
        steps=doc["steps"],
        scores={n: (s["sla_violation_rate"], s["mean_reward"]) for n, s in doc["scores"].items()},
        winner=doc["winner"],
        plans=_plans_from_json(doc["plans"], names),
        aqm=bool(doc["aqm"]),
    )


def from_json(doc: dict[str, Any]) -> TunedPlan:
    """An entry read back (to_json's inverse)."""
    names = tuple(doc["controlled"])
    raw = dict(doc["settings"])
    settings = TuneSettings(**{**raw, "aqm": tuple(raw["aqm"]), "reward": RewardConfig(**raw["reward"])})
    plans = _plans_from_json(doc["plans"], names)
    return TunedPlan(
        scenario=doc["scenario"],
        controlled=names,
        plans=plans,
        actions=tuple(tuple(doc["actions"][n]) for n in names),
        aqm=bool(doc["aqm"]),
        source=doc["source"],
        sla_violation_rate=doc["training"]["sla_violation_rate"],
        mean_reward=doc["training"]["mean_reward"],
        baselines={n: BaselineScore(**b) for n, b in doc["baselines"].items()},
        fingerprints=tuple(doc["fingerprints"][n] for n in names),
        settings=settings,
        evaluations=doc["budget"]["evaluations"],
        env_steps=doc["budget"]["env_steps"],
        steps=doc["training"]["steps"],
        library=doc["library"],
        wall_s=doc.get("wall_s", 0.0),
        validation=_validation_from_json(doc["validation"], names) if "validation" in doc else None,
    )


def save(path: Path, tuned: TunedPlan, key: str) -> None:
    """Write an entry (through a temporary file, so a reader never sees half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    text = json.dumps(to_json(tuned, key), indent=1)
    # One line per list of numbers (an action, the CoDel settings), not one line per number.
    text = re.sub(r"\[[-\d.,\s]+\]|\[(?:\s*(?:true|false),?)+\s*\]", lambda m: " ".join(m.group(0).split()), text)
    tmp.write_text(text + "\n")
    tmp.replace(path)


def stale_reason(
    doc: dict[str, Any], scenario: ScenarioConfig, controlled: Sequence[str], key: str, device: str, verify: bool
) -> str | None:
    """Why an entry cannot be reused for this scenario, controlled tenants and key; None when it can."""
    if doc.get("format") != CACHE_FORMAT or doc.get("key") != key:
        return "its key differs (scenario, controlled tenants, settings, SPEC_VERSION or cache format)"
    if doc.get("spec_version") != SPEC_VERSION:
        return f"it was tuned for SPEC_VERSION {doc.get('spec_version')}, this is {SPEC_VERSION}"
    specs = {s.name: s for s in scenario_specs(scenario)}
    if list(doc["controlled"]) != list(controlled) or any(
        doc["fingerprints"].get(n) != specs[n].fingerprint() for n in controlled
    ):
        return "the controlled tenants' spec fingerprints differ"
    return reevaluation_reason(scenario, from_json(doc), device) if verify else None


def reevaluation_reason(scenario: ScenarioConfig, tuned: TunedPlan, device: str = "cpu") -> str | None:
    """Re-run the tuned plans and the baselines' own plans on the training seeds: why the entry is stale (its
    score moved by more than VERIFY_TOLERANCE, or a baseline now beats it), None when it holds."""
    s = tuned.settings
    indices = resolve_controlled_indices(scenario, list(tuned.controlled))
    ev = CandidateEvaluator(scenario, indices, s.seeds, s.episode_steps(scenario), s.seed, s.reward, device)
    rate = float(ev.evaluate(ev.from_plans([tuned.plans]), tuned.aqm).sla_violation_rate[0])
    if abs(rate - tuned.sla_violation_rate) > VERIFY_TOLERANCE:
        return f"its plans now score {rate:.4f} on the training seeds, it recorded {tuned.sla_violation_rate:.4f}"
    specs = [scenario_specs(scenario)[i] for i in indices]
    # Baselines of the CoDel settings searched only: a setting not searched may win.
    own = {n: ([b.plan(sp) for sp in specs], b.aqm) for n, b in BASELINES.items() if b.aqm in s.aqm}
    for name, (r, _) in evaluate_named(ev, own).items():
        if r < rate - VERIFY_TOLERANCE:
            return f"baseline {name} now scores {r:.4f} on the training seeds, better than its {rate:.4f}"
    return None


def validation_reason(
    scenario: ScenarioConfig, tuned: TunedPlan, settings: ValidationSettings, device: str = "cpu", verify: bool = True
) -> str | None:
    """Why a cached entry must be validated again under settings (missing, other settings, or with verify its
    pick no longer scores what it recorded on the validation seeds); None when its validation holds."""
    v = tuned.validation
    if settings.seeds == 0:
        return None if v is None else "validation is off"
    if v is None:
        return "it has no validation"
    if v.settings != settings or v.steps != tuned.steps:
        was, now = v.settings, settings
        return f"it was validated on {was.seeds} seeds from {was.seed}, not {now.seeds} from {now.seed}"
    if not verify:
        return None
    indices = resolve_controlled_indices(scenario, list(tuned.controlled))
    ev = CandidateEvaluator(scenario, indices, settings.seeds, v.steps, settings.seed, tuned.settings.reward, device)
    rate = float(ev.evaluate(ev.from_plans([v.plans]), v.aqm).sla_violation_rate[0])
    recorded = v.scores[v.winner][0]
    if abs(rate - recorded) > VERIFY_TOLERANCE:
        return f"its pick now scores {rate:.4f} on the validation seeds, it recorded {recorded:.4f}"
    return None


def ensure_validated(
    cache_dir: Path,
    scenario: ScenarioConfig,
    tuned: TunedPlan,
    settings: ValidationSettings,
    *,
    device: str = "cpu",
    verify: bool = True,
) -> TunedPlan:
    """A cached entry validated under settings: as it is when its validation holds (validation_reason), else
    validated again and rewritten in its file (the search is reused)."""
    reason = validation_reason(scenario, tuned, settings, device, verify)
    if reason is None:
        return tuned
    log.info("tuned_static: validating %s again: %s", scenario.name, reason)
    out = tuned.validated(scenario, settings, device)
    key = cache_key(scenario, list(tuned.controlled), tuned.settings)
    save(cache_path(cache_dir, scenario, key), out, key)
    return out


def lookup(
    cache_dir: Path,
    scenario: ScenarioConfig,
    settings: TuneSettings,
    controlled: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    verify: bool = True,
) -> TunedPlan | None:
    """The cached result for this scenario, controlled tenants and settings, or None (missing or stale; logged)."""
    names = [scenario.tenants[i].name for i in resolve_controlled_indices(scenario, controlled)]
    key = cache_key(scenario, names, settings)
    path = cache_path(cache_dir, scenario, key)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    reason = stale_reason(doc, scenario, names, key, device, verify)
    if reason is not None:
        log.warning("tuned_static: ignoring %s: %s", path, reason)
        return None
    return from_json(doc)


def load_or_tune(
    scenario: ScenarioConfig,
    settings: TuneSettings | None = None,
    *,
    cache_dir: Path | None = None,
    controlled: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = False,
    verify: bool = True,
    retune: bool = False,
    validation: ValidationSettings | None = None,
) -> TunedPlan:
    """The scenario's tuned and validated plan from the cache, or tuned (tune_static) and written there.

    Args:
        scenario: the scenario.
        settings: search settings; None: TuneSettings().
        cache_dir: the cache directory; None: default_cache_dir().
        controlled: the controlled tenants; None: the scenario's.
        device: torch device of the simulator (search and verification).
        progress: show the search's progress bar.
        verify: re-run a cached entry on the training seeds before reusing it (a few seconds).
        retune: tune even when a valid entry exists, and overwrite it.
        validation: the validation's settings; None: ValidationSettings(). A cached search validated under
            others is validated again (ensure_validated), not tuned again.
    """
    s = settings if settings is not None else TuneSettings()
    v = validation if validation is not None else ValidationSettings()
    root = cache_dir if cache_dir is not None else default_cache_dir()
    names = [scenario.tenants[i].name for i in resolve_controlled_indices(scenario, controlled)]
    if not retune:
        hit = lookup(root, scenario, s, names, device=device, verify=verify)
        if hit is not None:
            return ensure_validated(root, scenario, hit, v, device=device, verify=verify)
    tuned = tune_static(scenario, s, controlled=names, device=device, progress=progress, validation=v)
    key = cache_key(scenario, names, s)
    save(cache_path(root, scenario, key), tuned, key)
    return tuned
