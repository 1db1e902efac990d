"""Several tenants learning at once on the shared bottleneck: ``python -m experiments.multiagent [overrides]``.

Trains PPO for every tenant of the scenario (shaping.agents.train_multi): independent learners (one
network per tenant) and/or one parameter-shared network (tenant indicator in the observation), then
evaluates them on held-out seeds against the static baselines, every tenant running the baseline,
including greedy_premium, the case where every tenant marks all its traffic premium (EF, top priority).
Writes results.md (also printed), results.json and multiagent.png into Hydra's run directory:
total utility (the sum of the tenants' mean rewards), per-tenant SLA violation rate, Jain's fairness
index across tenants (of per-tenant efficiency), utilization.

    python -m experiments.multiagent
    python -m experiments.multiagent modes=[shared] agent.total_timesteps=400000 train.max_wall_s=600
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import CONF_PATH, FinalEvalConfig, exits_2_on_config_error, register_configs, to_typed
from experiments.threads import torch_threads
from shaping.checks import at_least
from shaping.agents.train_multi import MultiAgentPolicy, MultiTrainResult, train_multi
from shaping.config import PPOConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.evaluation import PolicyResult, evaluate_policies
from shaping.policies import Policy, make_policy

log = logging.getLogger(__name__)

#: Training modes: one network per tenant, or one network shared by every tenant.
MODES = ("independent", "shared")


def _default_baselines() -> list[str]:
    return ["fifo", "static_priority", "fair_share", "fq_codel", "greedy_premium"]


@dataclass
class MultiAgentConfig:
    """Primary config of experiments.multiagent."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The scenario (conf/scenario/); its tenants share the paths."""
    tenants: list[str] | None = None
    """Names of the learning tenants; None: every tenant (the others follow their scenario policy)."""
    modes: list[str] = field(default_factory=lambda: list(MODES))
    """Which learners to train: independent, shared (parameter sharing), or both (one after the other)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of training and evaluation (every tenant's)."""
    agent: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters of every learner (conf/agent/ppo.yaml and the budget in multiagent.yaml)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch, seeds, periodic evaluation and logging; max_wall_s bounds each mode's training."""
    evaluation: FinalEvalConfig = field(default_factory=lambda: FinalEvalConfig(baselines=_default_baselines()))
    """Baselines (every tenant runs each), held-out seeds and steps of the final comparison."""
    output_dir: str | None = None
    """Directory of the results; None: Hydra's run directory."""
    torch_threads: int = 1
    """Torch intra-op threads of training and evaluation: fixed, so a busy machine slows the run without changing it."""

    def __post_init__(self) -> None:
        at_least("multiagent", self, 1, "torch_threads")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")


def policy_rows(results: dict[str, PolicyResult]) -> dict[str, dict[str, Any]]:
    """Per policy: total utility, SLA violation rate, Jain's index, utilization and the per-tenant figures."""
    rows = {}
    for name, r in results.items():
        rows[name] = {
            "total_utility": sum(t.reward for t in r.tenants.values()),
            "sla_violation_rate": r.sla_violation_rate,
            "jain_index": r.jain_throughput,
            "utilization": r.utilization,
            "tenants": {n: asdict(t) for n, t in r.tenants.items()},
        }
    return rows


def markdown(rows: dict[str, dict[str, Any]], scenario: str, settings: dict[str, Any]) -> str:
    """The comparison as a markdown table (one row per policy)."""
    tenants = list(next(iter(rows.values()))["tenants"])
    head = ["policy", "total utility", "SLA violations", "Jain's index", "utilization",
            *(f"SLA viol. {t}" for t in tenants)]  # fmt: skip
    lines = [
        f"# Multi-agent learning on scenario `{scenario}`", "",
        f"{settings['seeds']} held-out seeds x {settings['steps']} steps. Total utility: sum over tenants of the "
        "mean reward per step. Jain's index across tenants of delivered / min(cap, demand). Baselines: every "
        "tenant runs the baseline (`greedy_premium`: every tenant marks all its traffic premium).", "",
        "| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1),
    ]  # fmt: skip
    for name, r in rows.items():
        cells = [f"`{name}`", f"{r['total_utility']:.3f}", f"{100 * r['sla_violation_rate']:.1f}%",
                 f"{r['jain_index']:.3f}", f"{100 * r['utilization']:.1f}%",
                 *(f"{100 * r['tenants'][t]['sla_violation_rate']:.1f}%" for t in tenants)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    """multiagent.png: total utility, Jain's index, and per-tenant SLA violation rate per policy."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    tenants = list(rows[names[0]]["tenants"])
    fig, axes = plt.subplots(1, 3, figsize=(16.0, 4.5))
    axes[0].bar(names, [rows[n]["total_utility"] for n in names])
    axes[0].set_title("Total utility (sum of tenants' mean reward)")
    axes[1].bar(names, [rows[n]["jain_index"] for n in names])
    axes[1].set_title("Jain's fairness index across tenants")
    axes[1].set_ylim(0.0, 1.05)
    width = 0.8 / len(tenants)
    x = np.arange(len(names))
    for i, t in enumerate(tenants):
        axes[2].bar(x - 0.4 + width * (i + 0.5), [100 * rows[n]["tenants"][t]["sla_violation_rate"] for n in names],
                    width, label=t)  # fmt: skip
    axes[2].set_xticks(x, names)
    axes[2].set_title("SLA violation rate per tenant, %")
    axes[2].legend(fontsize="small")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_summary(res: MultiTrainResult) -> dict[str, Any]:
    return {
        "iterations": res.iterations,
        "planned_iterations": res.planned_iterations,
        "wall_clock_stopped": res.wall_clock_stopped,
        "env_steps": res.env_steps,
        "wall_s": round(res.wall_s, 2),
        "s_per_iteration": round(res.wall_s / max(res.iterations, 1), 3),
        "best_eval": None if res.best_eval is None else {
            "total_reward": res.best_eval.total_reward, **asdict(res.best_eval)},
        "checkpoints": {k: str(v) for k, v in res.checkpoints.items()},
    }  # fmt: skip


def run_multiagent(cfg: MultiAgentConfig, out_dir: Path) -> dict[str, Any]:
    """Train the learners of each mode, compare them with the baselines and write the report into out_dir.

    Runs with ``cfg.torch_threads`` torch threads (restored after); ``train.MODE.wall_clock_stopped`` in
    results.json says whether train.max_wall_s cut a mode's training short.
    """
    with torch_threads(cfg.torch_threads):
        return _run_multiagent(cfg, out_dir)


def _run_multiagent(cfg: MultiAgentConfig, out_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    learners: list[Policy] = []
    trained: dict[str, Any] = {}
    for mode in cfg.modes:
        log.info("training %s learners on %s", mode, cfg.scenario.name)
        res = train_multi(cfg.scenario, cfg.agent, cfg.train, shared=mode == "shared", tenants=cfg.tenants,
                          reward=cfg.reward, out_dir=out_dir / mode)  # fmt: skip
        trained[mode] = _train_summary(res)
        learners.append(MultiAgentPolicy(res.groups, cfg.scenario, name=f"ppo_{mode}"))
    ev = cfg.evaluation
    results = evaluate_policies(
        cfg.scenario, [*(make_policy(b) for b in ev.baselines), *learners],
        seeds=ev.seeds, steps=ev.steps, reward=cfg.reward, device=cfg.train.device, seed=ev.seed,
        progress=cfg.train.progress,
    )  # fmt: skip
    rows = policy_rows(results)
    settings = {"scenario": cfg.scenario.name, "seeds": ev.seeds, "steps": ev.steps, "seed": ev.seed,
                "modes": list(cfg.modes), "baselines": list(ev.baselines)}  # fmt: skip
    report = markdown(rows, cfg.scenario.name, settings)
    (out_dir / "results.md").write_text(report)
    plot(rows, out_dir / "multiagent.png")
    best_baseline = max(ev.baselines, key=lambda b: rows[b]["total_utility"])
    doc = {"settings": settings, "train": trained, "policies": rows, "best_baseline_by_utility": best_baseline,
           "wall_s": round(time.perf_counter() - start, 2)}  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2))
    print(report, flush=True)
    return doc


def register() -> None:
    """Store this entry point's schema (and the shared group schemas) in Hydra's ConfigStore."""
    register_configs()
    ConfigStore.instance().store(name="multiagent_schema", node=MultiAgentConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="multiagent")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run."""
    conf = to_typed(cfg, MultiAgentConfig)
    out_dir = Path(conf.output_dir) if conf.output_dir else Path(HydraConfig.get().runtime.output_dir)
    run_multiagent(conf, out_dir)


if __name__ == "__main__":
    register()
    main()
