"""Tune tuned_static's constant plans and write them to the cache: ``python -m experiments.tune_static [overrides]``.

For each scenario (the composed `scenario`, or each of `scenarios`) it loads the cached result (shaping.tuned
load_or_tune: reused only when its key and a re-run on the training seeds still match) or runs the search, and
prints one line: the search's SLA violation rate on the training seeds against every static baseline's, and
which plan the validation on fresh seeds kept (shaping.tuned.validation).

    python -m experiments.tune_static scenario=edge_gaming
    python -m experiments.tune_static scenario=default scenario.controlled=[gameco] search.steps=300
    python -m experiments.tune_static scenarios=[conf/suite/heldout/heldout_lte_edge_s0.yaml] cache_dir=/tmp/my_plans
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments.config import CONF_PATH, TuneStaticConfig, exits_2_on_config_error, register_configs, to_typed
from shaping.config import ScenarioConfig
from shaping.sim.scenarios import load_scenario
from shaping.tuned import TunedPlan, TuneSettings, cache_key, default_cache_dir, load_or_tune, lookup
from shaping.tuned.cache import cache_path, ensure_validated
from shaping.tuned.validation import ValidationSettings

log = logging.getLogger(__name__)


def settings_of(cfg: TuneStaticConfig) -> TuneSettings:
    """The search settings a config asks for."""
    s = cfg.search
    return TuneSettings(
        population=s.population, generations=s.generations, seeds=s.seeds, steps=s.steps, seed=s.seed,
        polish_rounds=s.polish_rounds, aqm=tuple(s.aqm), reward=cfg.reward,
    )  # fmt: skip


def validation_of(cfg: TuneStaticConfig) -> ValidationSettings:
    """The validation settings a config asks for."""
    return ValidationSettings(seeds=cfg.validation.seeds, seed=cfg.validation.seed)


def summary_line(tuned: TunedPlan, cached: bool, path: Path) -> str:
    """One line: the plan tuned_static keeps; the search's winner against every baseline on the training seeds;
    the validation's scores; the search's size and time; the cache file."""
    s = tuned.settings
    base = ", ".join(f"{n} {b.sla_violation_rate:.4f}" for n, b in tuned.baselines.items())
    how = "cached" if cached else "tuned"
    v = tuned.validation
    if v is None:
        checked = "not validated"
    else:
        runner_up = min((n for n in v.scores if n != v.winner), key=lambda n: (v.scores[n][0], -v.scores[n][1]))
        checked = (
            f"on {v.settings.seeds} validation seeds {v.winner} {v.scores[v.winner][0]:.4f} vs next best "
            f"{runner_up} {v.scores[runner_up][0]:.4f}"
        )
    return (
        f"{tuned.scenario} [{','.join(tuned.controlled)}]: tuned_static keeps {tuned.final_source} "
        f"(CoDel {'on' if tuned.final_aqm else 'off'}); search {tuned.sla_violation_rate:.4f} ({tuned.source}) "
        f"vs {base}, SLA violation rate on {s.seeds} training seeds x {tuned.steps} steps; {checked}; "
        f"{how}: {tuned.evaluations} candidates in {tuned.wall_s:.0f} s; {path}"
    )


def run_tune_static(cfg: TuneStaticConfig) -> list[TunedPlan]:
    """Load or tune every scenario of cfg, print a summary line each, and return the results."""
    scenarios: list[ScenarioConfig] = [load_scenario(n) for n in cfg.scenarios] if cfg.scenarios else [cfg.scenario]
    settings, validation = settings_of(cfg), validation_of(cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    out = []
    for scenario in scenarios:
        hit = None if cfg.retune else lookup(cache_dir, scenario, settings, cfg.controlled, device=cfg.env.device,
                                             verify=cfg.verify)  # fmt: skip
        if hit is not None:
            tuned = ensure_validated(cache_dir, scenario, hit, validation, device=cfg.env.device, verify=cfg.verify)
        else:
            tuned = load_or_tune(
                scenario, settings, cache_dir=cache_dir, controlled=cfg.controlled, device=cfg.env.device,
                progress=cfg.progress, retune=True, validation=validation,
            )  # fmt: skip
        path = cache_path(cache_dir, scenario, cache_key(scenario, list(tuned.controlled), settings))
        print(summary_line(tuned, hit is not None, path), flush=True)
        out.append(tuned)
    return out


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="tune_static")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run."""
    conf = to_typed(cfg, TuneStaticConfig)
    run_tune_static(conf)


if __name__ == "__main__":
    register_configs()
    main()
