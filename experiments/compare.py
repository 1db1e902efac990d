"""Compare shaping policies on one scenario: ``python -m experiments.compare [overrides]``.

Runs each policy (the static baselines by default; agent checkpoints, see shaping.policies.POLICY_KINDS)
for the controlled tenants of the scenario over a batch of seeds, then writes results.md (also printed),
results.json and PNG plots into Hydra's run directory. Every row is like for like: the same seeds, the same
controlled tenants (the scenario's `controlled`, or `controlled=[...]`; a checkpoint trained for one tenant
narrows a scenario without a list to that tenant) and the same neighbours, which run their scenario policies.

    python -m experiments.compare scenario=datacenter seeds=8 steps=600
    python -m experiments.compare policies=[fifo,fq_codel] output.plots=false
    python -m experiments.compare scenario=small_congested controlled=[studio]
    python -m experiments.compare experiment=compare_all_scenarios
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import CONF_PATH, CompareConfig, exits_2_on_config_error, register_configs, to_compare_config
from experiments.report import markdown_report, write_json, write_plots
from shaping.evaluation import PolicyResult, evaluate_policies
from shaping.policies import cannot_control, make_policy

log = logging.getLogger(__name__)


def compare_steps(cfg: CompareConfig) -> int:
    """Steps per episode: cfg.steps, else env.episode_steps, else the scenario's episode_steps."""
    if cfg.steps is not None:
        return cfg.steps
    return cfg.env.episode_steps or cfg.scenario.episode_steps


def run_compare(cfg: CompareConfig, out_dir: Path) -> dict[str, PolicyResult]:
    """Evaluate cfg.policies on cfg.scenario and write results.md, results.json and the plots.

    Args:
        cfg: the comparison's settings.
        out_dir: directory the results go to (created if missing).
    Returns:
        The results, keyed by policy name.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    steps = compare_steps(cfg)
    policies = [make_policy(ref) for ref in cfg.policies]
    # A checkpoint for another tenant would leave the controlled tenants on a fallback plan under its name.
    why = [w for p in policies if (w := cannot_control(p, cfg.controlled or [])) is not None]
    if why:
        raise ValueError(f"controlled={cfg.controlled}: {'; '.join(why)}")
    log.info(
        "scenario %s: %d policies x %d seeds x %d episodes x %d steps on %s",
        cfg.scenario.name, len(policies), cfg.seeds, cfg.episodes, steps, cfg.env.device,
    )
    results = evaluate_policies(
        cfg.scenario,
        policies,
        seeds=cfg.seeds,
        steps=steps,
        episodes=cfg.episodes,
        reward=cfg.reward,
        device=cfg.env.device,
        seed=cfg.env.seed,
        progress=cfg.progress,
        controlled=cfg.controlled,
    )
    controlled = next(iter(results.values())).controlled
    settings: dict[str, Any] = {
        "scenario": cfg.scenario.name,
        "policies": list(cfg.policies),
        "controlled": list(controlled),
        "neighbours": {t.name: t.policy for t in cfg.scenario.tenants if t.name not in controlled},
        "seeds": cfg.seeds,
        "steps": steps,
        "episodes": cfg.episodes,
        "seed": cfg.env.seed,
        "device": cfg.env.device,
        "reward": dataclasses.asdict(cfg.reward),
    }
    report = markdown_report(results, cfg.scenario, settings)
    (out_dir / "results.md").write_text(report)
    if cfg.output.plots:
        write_plots(results, out_dir, cfg.scenario.control_interval_ms)
    settings["wall_s"] = round(time.perf_counter() - start, 2)
    write_json(out_dir / "results.json", results, settings)
    if cfg.output.print_table:
        print(report, flush=True)
    log.info("wrote results to %s in %.1f s", out_dir, settings["wall_s"])
    return results


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="compare")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run."""
    conf = to_compare_config(cfg)
    out_dir = Path(conf.output.dir) if conf.output.dir else Path(HydraConfig.get().runtime.output_dir)
    run_compare(conf, out_dir)


if __name__ == "__main__":
    register_configs()
    main()
