"""Tune tuned_static's constant plans and write them to the cache: ``python -m experiments.tune_static [overrides]``.

For each scenario (the composed `scenario`, or each of `scenarios`) it loads the cached result (shaping.tuned
load_or_tune: reused only when its key and a re-run on the training seeds still match) or runs the search, and
prints one line: tuned_static's SLA violation rate on the training seeds against every static baseline's.

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
from shaping.tuned.cache import cache_path

log = logging.getLogger(__name__)


def settings_of(cfg: TuneStaticConfig) -> TuneSettings:
    """The search settings a config asks for."""
    s = cfg.search
    return TuneSettings(
        population=s.population, generations=s.generations, seeds=s.seeds, steps=s.steps, seed=s.seed,
        polish_rounds=s.polish_rounds, aqm=tuple(s.aqm), reward=cfg.reward,
    )  # fmt: skip


def summary_line(tuned: TunedPlan, cached: bool, path: Path) -> str:
    """One line: tuned_static against every baseline on the training seeds, the search's size and time, the
    cache file."""
    s = tuned.settings
    base = ", ".join(f"{n} {b.sla_violation_rate:.4f}" for n, b in tuned.baselines.items())
    how = "cached" if cached else "tuned"
    return (
        f"{tuned.scenario} [{','.join(tuned.controlled)}]: tuned_static {tuned.sla_violation_rate:.4f} "
        f"({tuned.source}, CoDel {'on' if tuned.aqm else 'off'}) vs {base}; SLA violation rate on {s.seeds} "
        f"training seeds x {tuned.steps} steps; {how}: {tuned.evaluations} candidates in "
        f"{tuned.wall_s:.0f} s; {path}"
    )


def run_tune_static(cfg: TuneStaticConfig) -> list[TunedPlan]:
    """Load or tune every scenario of cfg, print a summary line each, and return the results."""
    scenarios: list[ScenarioConfig] = [load_scenario(n) for n in cfg.scenarios] if cfg.scenarios else [cfg.scenario]
    settings = settings_of(cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    out = []
    for scenario in scenarios:
        hit = None if cfg.retune else lookup(cache_dir, scenario, settings, cfg.controlled, device=cfg.env.device,
                                             verify=cfg.verify)  # fmt: skip
        tuned = hit or load_or_tune(
            scenario, settings, cache_dir=cache_dir, controlled=cfg.controlled, device=cfg.env.device,
            progress=cfg.progress, retune=True,
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
