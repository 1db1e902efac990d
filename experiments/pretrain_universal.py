"""Pretraining of the federation's universal model in the simulator: ``python -m experiments.pretrain_universal``.

The provider's offline step before a federation (shaping.agents.pretrain_universal): one model over the
universal layout imitates a static baseline (shaping.agents.imitation), then is trained with PPO on the
provider's own simulated tenants and on randomized variants of them (shaping.sim.variants: new class
mixes in their slots), the best weights chosen on the listed tenants' held-out seeds; then, for
reference only, those weights and the static baselines run on the report tenants (by default the
embedded federation's four, which pretraining never sees). Writes into
the output directory (Hydra's run directory unless output_dir is set):
universal.npz (best weights, for ``experiments.federated init.weights=...``), last.npz, pretrain.csv,
pretrain.png, summary.json, variants/*.yaml (the variant scenarios).

    python -m experiments.pretrain_universal                       # about 5 minutes on 2 cores (286 s measured)
    python -m experiments.pretrain_universal iterations=36 evaluation.every=18   # a quick look
    python -m experiments.federated init.weights=outputs/DATE/TIME/universal.npz
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from experiments.config import CONF_PATH, exits_2_on_config_error, register_configs, to_typed
from experiments.threads import torch_threads
from shaping.checks import above, at_least, within
from experiments.fl_arms import initial_policy, static_baselines
from experiments.federated import TenantEntry
from shaping.agents.global_model import make_model, save_weights
from shaping.agents.imitation import CloneStats, clone_baseline
from shaping.agents.pretrain_universal import PretrainEval, PretrainResult, pretrain_universal
from shaping.agents.universal import PaddedEnv, TenantTask, UniversalLayout, make_env
from shaping.config import PPOConfig
from shaping.fed_settings import RunSettings
from shaping.sim.variants import write_variants

log = logging.getLogger(__name__)


@dataclass
class UniversalTrainConfig:
    """PPO settings of the pretraining."""

    num_steps: int = 128
    """Steps per environment per iteration."""
    learning_rate: float = 3e-4
    """Adam's initial learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the iterations."""
    update_epochs: int = 4
    num_minibatches: int = 4
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Must equal the federation's train.hidden_sizes."""

    def __post_init__(self) -> None:
        at_least("train", self, 1, "num_steps", "update_epochs", "num_minibatches")
        above("train", self, 0.0, "learning_rate")
        if not self.hidden_sizes or any(not n >= 1 for n in self.hidden_sizes):
            raise ValueError(f"train.hidden_sizes must be a non-empty list of sizes >= 1, got {self.hidden_sizes}")



@dataclass
class ImitationConfig:
    """Behaviour cloning of a static baseline before PPO (shaping.agents.imitation)."""

    baseline: str | None = "static_priority"
    """The baseline imitated; None: PPO starts from the random initialization."""
    iterations: int = 96
    """Rollouts of the baseline (each tenant's in turn), each followed by PPO-shaped minibatch epochs."""
    learning_rate: float = 1e-3
    smoothing: float = 0.2
    """Label smoothing: the share of each action field's target spread over its other choices, so the
    cloned policy still explores when PPO starts (cloned to certainty, PPO barely moves it)."""

    def __post_init__(self) -> None:
        at_least("imitation", self, 0, "iterations")
        above("imitation", self, 0.0, "learning_rate")
        within("imitation", self, 0.0, 1.0, "smoothing")



@dataclass
class VariantsConfig:
    """Randomized tenants trained on beside `tenants` (shaping.sim.variants): new class mixes in their slots."""

    count: int = 30
    """Variants (0: none); each takes a random tenant of `tenants` and a random mix of their classes."""
    num_envs: int = 32
    """Environments per iteration of each variant."""
    path_scale: float = 1.0
    """Network randomization: each variant's path capacities and base delays are scaled by log-uniform
    factors in [1 / path_scale, path_scale] (1: the slot's network as it is)."""
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("variants", self, 0, "count")
        at_least("variants", self, 1, "num_envs", "path_scale")



@dataclass
class UniversalEvalConfig:
    """Evaluation during pretraining (selection) and of the result (report)."""

    every: int = 72
    """Iterations between evaluations on the pretraining tenants' held-out seeds."""
    envs: int = 8
    steps: int = 60
    seed: int = 5000
    """Seed of the selection evaluations (held out from training's seeds)."""
    report_seed: int = 1000
    """Seed of the report tenants' evaluation (the federation's evaluation seed)."""
    heldout_variants: int = 0
    """Randomized tenants never trained on, added to the selection evaluation so the best weights are
    the ones that serve new tenants best, not only new seeds of the trained ones (0: none)."""
    heldout_seed: int = 1000
    """Seed of the held-out variants' draws (the training variants use variants.seed)."""
    baselines: list[str] = field(default_factory=lambda: ["static_priority", "fair_share", "fifo", "greedy_premium"])

    def __post_init__(self) -> None:
        at_least("evaluation", self, 1, "every", "envs", "steps")
        at_least("evaluation", self, 0, "heldout_variants")



@dataclass
class UniversalPretrainConfig:
    """Primary config of experiments.pretrain_universal."""

    tenants: list[TenantEntry] = field(default_factory=list)
    """The provider's simulated tenants trained on (num_envs: environments per iteration)."""
    report_tenants: list[TenantEntry] = field(default_factory=list)
    """Tenants the result is compared with the static baselines on; never trained or selected on."""
    iterations: int = 288
    """PPO iterations in all (each on one tenant, in turn)."""
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    train: UniversalTrainConfig = field(default_factory=UniversalTrainConfig)
    evaluation: UniversalEvalConfig = field(default_factory=UniversalEvalConfig)
    seed: int = 0
    max_wall_s: float | None = None
    """Stop at the first evaluation past this many seconds (None: run every iteration)."""
    progress: bool = True
    output_dir: str | None = None
    torch_threads: int = 1
    """Torch intra-op threads: fixed, so a busy machine slows the run without changing it."""

    def __post_init__(self) -> None:
        at_least("pretrain_universal", self, 1, "iterations", "torch_threads")
        above("pretrain_universal", self, 0.0, "max_wall_s")
        if not self.tenants and self.variants.count == 0:
            raise ValueError("tenants is empty and variants.count is 0: nothing to train on")



def _task(t: TenantEntry) -> TenantTask:
    return TenantTask(t.scenario, t.tenant, t.num_envs)


def variant_tasks(cfg: UniversalPretrainConfig, count: int, seed: int, num_envs: int, directory: Path, *,
                  path_scale: float = 1.0, prefix: str = "variant") -> list[TenantTask]:  # fmt: skip
    """Write `count` variants of cfg.tenants' slots and classes into directory; their tasks (the scenario
    is the YAML path)."""
    if count <= 0:
        return []
    pairs = [(t.scenario, t.tenant) for t in cfg.tenants]
    written = write_variants(pairs, pairs, count, seed, directory, path_scale=path_scale, prefix=prefix)
    return [TenantTask(path, tenant, num_envs) for path, tenant in written]


def _report(cfg: UniversalPretrainConfig, weights: Path, layout: UniversalLayout) -> dict[str, Any]:
    """The weights file and the static baselines on the report tenants' held-out seeds, evaluated as the
    federated report does (experiments.fl_arms)."""
    ev = cfg.evaluation
    s = RunSettings(tenants=tuple(_task(e) for e in cfg.report_tenants), layout=layout,
                    hidden_sizes=tuple(cfg.train.hidden_sizes), eval_envs=ev.envs, eval_steps=ev.steps,
                    eval_seed=ev.report_seed, init_weights=str(weights))  # fmt: skip
    per_arm = {"pretrained": initial_policy(s), **static_baselines(s, list(ev.baselines))}
    out: dict[str, Any] = {"tenants": {t.name: {arm: res[t.name] for arm, res in per_arm.items()} for t in s.tenants},
                           "mean": {}}  # fmt: skip
    if s.tenants:
        for arm, res in per_arm.items():
            out["mean"][arm] = {key: sum(v[key] for v in res.values()) / len(res)
                                for key in ("reward", "sla_violation_rate")}  # fmt: skip
        best = min(ev.baselines, key=lambda b: out["mean"][b]["sla_violation_rate"]) if ev.baselines else None
        if best is not None:
            b_sla = out["mean"][best]["sla_violation_rate"]
            out["vs_best_baseline"] = {"baseline": best, "baseline_sla": b_sla,
                                       "pretrained_sla": out["mean"]["pretrained"]["sla_violation_rate"],
                                       "sla_ratio": out["mean"]["pretrained"]["sla_violation_rate"] / b_sla
                                       if b_sla > 0 else None}  # fmt: skip
    return out


def _plot(history: list[PretrainEval], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h.env_steps for h in history]
    ax1.plot(steps, [h.reward for h in history], marker="o", label="held-out mean")
    ax1.plot(steps, [h.rollout_reward for h in history], ls="--", label="rollouts")
    ax2.plot(steps, [h.sla_violation_rate for h in history], marker="o")
    ax1.set_ylabel("reward")
    ax2.set_ylabel("SLA violation rate (held-out mean)")
    for ax in (ax1, ax2):
        ax.set_xlabel("environment steps")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_pretrain_universal(cfg: UniversalPretrainConfig, out_dir: Path) -> dict[str, Any]:
    """Pretrain, write the weights, the log, the plot and summary.json; returns the summary.

    Runs with ``cfg.torch_threads`` torch threads (restored after); ``stopped_early`` in the summary says
    whether max_wall_s cut training short of ``iterations``.
    """
    with torch_threads(cfg.torch_threads):
        return _run_pretrain_universal(cfg, out_dir)


def _run_pretrain_universal(cfg: UniversalPretrainConfig, out_dir: Path) -> dict[str, Any]:
    if not cfg.tenants:
        raise ValueError("tenants is empty: pretraining needs at least one simulated tenant")
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = UniversalLayout()
    t = cfg.train
    ppo = PPOConfig(num_steps=t.num_steps, learning_rate=t.learning_rate, anneal_lr=t.anneal_lr,
                    update_epochs=t.update_epochs, num_minibatches=t.num_minibatches,
                    hidden_sizes=list(t.hidden_sizes))  # fmt: skip
    tasks = [_task(e) for e in cfg.tenants]
    v = cfg.variants
    variants = variant_tasks(cfg, v.count, v.seed, v.num_envs, out_dir / "variants", path_scale=v.path_scale)
    train_envs = [make_env(task, layout) for task in [*tasks, *variants]]
    ev = cfg.evaluation
    # On the scenarios' own networks (no path_scale): the tenants the model will meet.
    heldout = variant_tasks(cfg, ev.heldout_variants, ev.heldout_seed, ev.envs, out_dir / "heldout", prefix="heldout")
    eval_envs: list[tuple[str, PaddedEnv]] = [
        (task.name, make_env(task, layout, ev.envs, episode_steps=max(ev.steps, 1))) for task in [*tasks, *heldout]]
    model = make_model(layout, t.hidden_sizes, cfg.seed)
    cloned: CloneStats | None = None
    im = cfg.imitation
    if im.baseline:
        log.info("cloning %s on %d tenants (%d iterations)", im.baseline, len(train_envs), im.iterations)
        cloned = clone_baseline(model, train_envs, im.baseline, im.iterations,
                                replace(ppo, learning_rate=im.learning_rate), seed=cfg.seed,
                                smoothing=im.smoothing)  # fmt: skip
        log.info("cloned: %s", cloned)
    csv_path = out_dir / "pretrain.csv"
    bar = tqdm(total=cfg.iterations, unit="it", desc="pretrain/universal", disable=not cfg.progress)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", "env_steps", "wall_s", "rollout_reward", "eval_reward", "eval_sla"])

        def on_eval(e: PretrainEval) -> None:
            writer.writerow([e.iteration, e.env_steps, round(e.wall_s, 2), e.rollout_reward, e.reward,
                             e.sla_violation_rate])  # fmt: skip
            f.flush()
            bar.update(e.iteration - bar.n)
            bar.set_postfix(eval=f"{e.reward:.3f}", sla=f"{e.sla_violation_rate:.3f}")

        try:
            result: PretrainResult = pretrain_universal(
                model, train_envs, eval_envs, ppo, iterations=cfg.iterations, eval_every=ev.every,
                eval_steps=ev.steps, eval_seed=ev.seed, seed=cfg.seed, max_wall_s=cfg.max_wall_s, on_eval=on_eval)
        finally:
            bar.close()
    save_weights(out_dir / "universal.npz", result.best_weights)
    save_weights(out_dir / "last.npz", result.last_weights)
    _plot(result.history, out_dir / "pretrain.png")
    summary = {
        "weights": str(out_dir / "universal.npz"),
        "layout": layout.to_config(),
        "hidden_sizes": list(t.hidden_sizes),
        "tenants": [task.name for task in tasks],
        "variants": [f"{task.tenant}@{Path(task.scenario).name}" for task in variants],
        "heldout_variants": [f"{task.tenant}@{Path(task.scenario).name}" for task in heldout],
        "iterations": result.iterations,
        "env_steps": result.env_steps,
        "wall_s": round(result.wall_s, 1),
        "stopped_early": result.stopped_early,
        "imitation": {"baseline": cfg.imitation.baseline, **asdict(cloned)} if cloned else None,
        "best": asdict(result.best),
        "report": _report(cfg, out_dir / "universal.npz", layout),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("wrote %s", out_dir)
    return summary


def register() -> None:
    """Register the primary schema next to the shared group schemas."""
    register_configs()
    ConfigStore.instance().store(name="pretrain_universal_schema", node=UniversalPretrainConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="pretrain_universal")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, print the summary's headline."""
    conf = to_typed(cfg, UniversalPretrainConfig)
    out_dir = Path(conf.output_dir) if conf.output_dir else Path(HydraConfig.get().runtime.output_dir)
    summary = run_pretrain_universal(conf, out_dir)
    brief = {k: summary[k] for k in ("weights", "iterations", "env_steps", "wall_s", "stopped_early")}
    brief["best_selection_eval"] = {k: summary["best"][k] for k in ("iteration", "reward", "sla_violation_rate")}
    brief["report"] = summary["report"].get("mean", {})
    brief["vs_best_baseline"] = summary["report"].get("vs_best_baseline")
    print(json.dumps(brief, indent=1), flush=True)


if __name__ == "__main__":
    register()
    main()
