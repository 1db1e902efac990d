"""The yardstick run: policies against the best of the static baselines, tuned_static and adaptive_heuristic
on every scenario of a suite: ``python -m experiments.benchmark [overrides]``.

Evaluates the yardstick's members and the policies under test on each scenario (experiments.benchmark_eval:
same seeds, same controlled tenants, same neighbours for every policy), summarizes each policy against the
best member per scenario (experiments.yardstick) and writes results.json, results.md (also printed) and
PNG plots (experiments.benchmark_report) into Hydra's run directory. docs/benchmark.md says how to read them.

    python -m experiments.benchmark                                    # the yardstick on the held-out suite
    python -m experiments.benchmark policies=[ppo:outputs/DATE/TIME/best.pt]
    python -m experiments.benchmark yardstick=[fifo,fq_codel] static=[fifo,fq_codel] scenarios=[default,datacenter]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.benchmark_eval import EvalSettings, evaluate_suite, scenario_path
from experiments.benchmark_report import markdown_report, write_plots
from experiments.config import (
    CONF_PATH,
    BenchmarkConfig,
    exits_2_on_config_error,
    register_configs,
    to_benchmark_config,
)
from experiments.yardstick import annotate, heuristic_sanity, summarize, tuned_sanity
from shaping.baselines import BASELINES
from shaping.policies import make_policy
from shaping.sim.scenarios import UnknownScenarioError, available_scenarios
from shaping.sim.suite import suite_dir, suite_index

log = logging.getLogger(__name__)


def benchmark_files(cfg: BenchmarkConfig) -> list[str]:
    """The scenario files of a benchmark: cfg.scenarios when listed, else the suite's in its index's order.

    A listed name is conf/scenario/NAME.yaml, or else the suite's NAME.yaml (so one scenario of the suite can
    be run alone by its name).

    Raises:
        UnknownScenarioError: a listed scenario, the suite or one of its files does not exist (one line).
    """
    suite_root = suite_dir(cfg.suite) if cfg.suite else None
    if cfg.scenarios:
        files = [_listed(ref, suite_root) for ref in cfg.scenarios]
    else:
        assert suite_root is not None and cfg.suite is not None  # BenchmarkConfig refuses neither
        files = [suite_root / entry["file"] for entry in suite_index(cfg.suite)["scenarios"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        where = f"conf/scenario ({', '.join(available_scenarios())})"
        if suite_root is not None:
            where += f" or the {cfg.suite} suite ({suite_root})"
        raise UnknownScenarioError(f"no scenario file {', '.join(missing)}; names are looked up in {where}")
    return [str(f) for f in files]


def _listed(ref: str, suite_root: Path | None) -> Path:
    path = scenario_path(ref)
    if not path.is_file() and suite_root is not None and Path(ref).suffix not in (".yaml", ".yml"):
        return suite_root / f"{ref}.yaml"
    return path


def evaluated_refs(cfg: BenchmarkConfig) -> list[str]:
    """The references evaluated on each scenario: the policies, then the yardstick's members not among them."""
    return list(dict.fromkeys([*cfg.policies, *cfg.yardstick]))


def _settings(cfg: BenchmarkConfig, files: list[str], machine_threads: int) -> dict[str, Any]:
    return {
        "suite": None if cfg.scenarios else cfg.suite,
        "scenario_files": files,
        "policies": list(cfg.policies),
        "yardstick": list(cfg.yardstick),
        "static": list(cfg.static),
        "seeds": cfg.seeds,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "device": cfg.device,
        "reward": dataclasses.asdict(cfg.reward),
        "floor": cfg.floor,
        "tie_tolerance": cfg.tie_tolerance,
        "workers": cfg.workers,
        "torch_threads": cfg.torch_threads,
        "machine_torch_threads": machine_threads,
        "cpu_count": os.cpu_count(),
    }


def yardstick_sanity(cfg: BenchmarkConfig, scenarios: dict[str, Any]) -> dict[str, Any]:
    """Whether the yardstick is sound on this suite: each adaptive member (in the yardstick, not static) against
    the best static baseline on the scenarios with a failure, and each searched constant plan (static, not a
    baseline of shaping.baselines: tuned_static) against every baseline on its own scenario."""
    baselines = [r for r in cfg.static if r in BASELINES]
    if not baselines:
        return {"adaptive": [], "tuned": []}
    adaptive = [r for r in cfg.yardstick if r not in cfg.static]
    tuned = [r for r in cfg.static if r not in BASELINES]
    return {
        "adaptive": [heuristic_sanity(scenarios, r, baselines, cfg.floor, cfg.tie_tolerance) for r in adaptive],
        "tuned": [tuned_sanity(scenarios, r, baselines, cfg.tie_tolerance) for r in tuned],
    }


def run_benchmark(cfg: BenchmarkConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate, summarize and write results.json, results.md and the plots into out_dir.

    Args:
        cfg: the benchmark's settings.
        out_dir: directory of the results (created if missing).
    Returns:
        The results document (what results.json holds): settings, summary per policy, scenarios.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = benchmark_files(cfg)
    refs = evaluated_refs(cfg)
    for ref in refs:  # an unknown reference or a missing checkpoint fails here, before any worker starts
        make_policy(ref)
    settings = _settings(cfg, files, torch.get_num_threads())
    log.info("benchmark: %d policies x %d scenarios, %d seeds, %d workers x %d torch threads",
             len(refs), len(files), cfg.seeds, cfg.workers, cfg.torch_threads)  # fmt: skip
    ev = EvalSettings(cfg.seeds, cfg.steps, cfg.seed, cfg.device, cfg.reward, cfg.torch_threads)
    records = evaluate_suite(files, refs, ev, workers=cfg.workers, progress=cfg.progress)
    scenarios = {r["name"]: r for r in records}
    if len(scenarios) != len(records):
        raise ValueError(f"scenario names must be unique, got {[r['name'] for r in records]}")
    annotate(scenarios, cfg.yardstick, cfg.static, cfg.floor)
    summary = summarize(scenarios, refs, cfg.yardstick, cfg.static, cfg.floor, cfg.tie_tolerance)
    settings["timing"] = {
        "load_s": round(sum(r["load_s"] for r in records), 2),
        "evaluate_s": round(sum(row.get("wall_s", 0.0) for r in records for row in r["results"].values()), 2),
        "jobs_s": round(sum(r["job_s"] for r in records), 2),
        "jobs_cpu_s": round(sum(r["cpu_s"] for r in records), 2),
        "evaluation_wall_s": round(time.perf_counter() - start, 2),
    }
    doc: dict[str, Any] = {
        "settings": settings,
        "summary": {ref: dataclasses.asdict(s) for ref, s in summary.items()},
        "sanity": yardstick_sanity(cfg, scenarios),
        "scenarios": scenarios,
    }
    report = markdown_report(doc)
    (out_dir / "results.md").write_text(report)
    if cfg.output.plots:
        write_plots(doc, out_dir)
    settings["wall_s"] = round(time.perf_counter() - start, 2)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    if cfg.output.print_table:
        print(report, flush=True)
    log.info("wrote results to %s in %.1f s", out_dir, settings["wall_s"])
    return doc


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="benchmark")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run."""
    conf = to_benchmark_config(cfg)
    out_dir = Path(conf.output.dir) if conf.output.dir else Path(HydraConfig.get().runtime.output_dir)
    run_benchmark(conf, out_dir)


if __name__ == "__main__":
    register_configs()
    main()
