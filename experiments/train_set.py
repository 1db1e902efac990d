"""Train the structure-aware set policy on the generator's training families: ``python -m experiments.train_set``.

The universal shaping policy's offline training (shaping.agents.train_set): scenarios drawn from every
training family (shaping.sim.families; never a held-out family), each controlled tenant of each one a task.
Each task's teacher (by default adaptive_heuristic, step by step; teacher.kind) is cloned into the one shared
model, then PPO trains it on every task in turn for a fixed number of environment steps. The best model is chosen on the
tasks' evaluation seeds. Writes into the output directory (Hydra's run directory unless output_dir is set):
best.pt and last.pt (``set:PATH`` for experiments.benchmark), cloned.pt (PPO's start), train.csv,
train.png, summary.json (the config, the tasks and their teachers, the fit of the cloning, the
evaluations) and scenarios/*.yaml.

    python -m experiments.train_set                                    # the default budget (docs/results.md)
    python -m experiments.train_set ppo.total_timesteps=50000 scenarios_per_family=2   # a quick look
    python -m experiments.benchmark policies=[set:outputs/DATE/TIME/best.pt]           # judge it
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import CONF_PATH, exits_2_on_config_error, register_configs, to_typed
from experiments.threads import torch_threads
from shaping.agents.set_policy import SetActorCritic, SetPolicyConfig, save_set_policy
from shaping.agents.imitation import TeacherFn
from shaping.agents.train_set import (
    baseline_teachers,
    clone_teachers,
    heuristic_teacher,
    pick_teachers,
    train_set_ppo,
    tune_teachers,
)
from shaping.agents.universal import TenantTask
from shaping.checks import above, at_least, within
from shaping.config import PPOConfig, TrainConfig
from shaping.sim.families import FAMILIES, families, get_family
from shaping.sim.generator import generate_scenario
from shaping.sim.suite import scenario_yaml
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.tuned.search import TuneSettings

log = logging.getLogger(__name__)


#: What a task's teacher can be (TeacherConfig.kind).
TEACHER_KINDS = ("baseline", "search", "heuristic")


@dataclass
class TeacherConfig:
    """Behaviour cloning before PPO: what each task's teacher is (kind) and how it is cloned."""

    kind: str = "heuristic"
    """'heuristic' (the default): adaptive_heuristic, the feedback controller, step by step; 'baseline': the
    best of the candidates on the picking seeds; 'search': the best constant plan tuned_static's search finds
    for the task's tenant (CoDel off), from every static baseline's plan, on the picking seeds."""
    candidates: list[str] = field(default_factory=lambda: ["static_priority", "fair_share", "fifo", "greedy_premium"])
    """Baselines a 'baseline' teacher is picked from (empty: no cloning of any kind, PPO starts from the random
    initialization). fq_codel's CoDel is not an action, so it cannot be one."""
    search_generations: int = 20
    """CatCMAwM generations of a 'search' teacher."""
    search_population: int = 16
    search_polish_rounds: int = 2
    search_cache: str | None = None
    """Directory where each task's search is kept and found again (None: searched every run). The searches
    depend on the scenarios and these settings, not on the training seed, so seeds can share one."""
    iterations: int = 168
    """Cloning rollouts (each task's in turn)."""
    learning_rate: float = 1e-3
    smoothing: float = 0.2
    """Label smoothing, so the cloned policy still explores when PPO starts."""
    pick_envs: int = 8
    pick_steps: int = 100
    pick_seed: int = 20_000
    """Seed of the picking runs (neither training's nor evaluation's)."""

    def __post_init__(self) -> None:
        at_least("teacher", self, 1, "iterations", "pick_envs", "pick_steps")
        at_least("teacher", self, 0, "search_generations", "search_polish_rounds")
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher.kind must be one of {list(TEACHER_KINDS)}, got {self.kind!r}")
        at_least("teacher", self, 4, "search_population")
        above("teacher", self, 0.0, "learning_rate")
        within("teacher", self, 0.0, 0.99, "smoothing")


@dataclass
class SetPPOConfig:
    """PPO settings (CleanRL names, shaping.config.PPOConfig)."""

    total_timesteps: int = 400_000
    """Environment steps over every task: the fixed budget a run is judged at."""
    num_steps: int = 64
    learning_rate: float = 3e-4
    anneal_lr: bool = True
    update_epochs: int = 4
    num_minibatches: int = 4
    ent_coef: float = 0.01
    clip_coef: float = 0.2

    def __post_init__(self) -> None:
        at_least("ppo", self, 1, "total_timesteps", "num_steps", "update_epochs", "num_minibatches")
        above("ppo", self, 0.0, "learning_rate")
        at_least("ppo", self, 0.0, "ent_coef", "clip_coef")


@dataclass
class SetEvalConfig:
    """Evaluation during training (the best model is chosen on it)."""

    every: int = 80
    """Iterations between evaluations (one rollout of one task each)."""
    envs: int = 4
    steps: int = 100
    seed: int = 10_000


@dataclass
class TrainSetConfig:
    """Primary config of experiments.train_set."""

    families: list[str] = field(default_factory=list)
    """Training families drawn from (empty: every family of the training split)."""
    scenarios_per_family: int = 6
    scenario_seed: int = 0
    """Scenarios are the generator's seeds scenario_seed .. scenario_seed + scenarios_per_family - 1."""
    num_envs: int = 16
    """Environments per task per rollout."""
    model: SetPolicyConfig = field(default_factory=SetPolicyConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    ppo: SetPPOConfig = field(default_factory=SetPPOConfig)
    evaluation: SetEvalConfig = field(default_factory=SetEvalConfig)
    seed: int = 0
    max_wall_s: float | None = None
    """Stop after the iteration past this many seconds (None: the whole budget); summary.json says so."""
    progress: bool = True
    output_dir: str | None = None
    torch_threads: int = 1
    """Torch intra-op threads: fixed, so a busy machine slows the run without changing it."""

    def __post_init__(self) -> None:
        at_least("train_set", self, 1, "scenarios_per_family", "num_envs", "torch_threads")
        above("train_set", self, 0.0, "max_wall_s")
        known = [f.name for f in families("training")]
        for name in self.families:
            if name not in known:
                why = "is held out" if name in FAMILIES else "is unknown"
                raise ValueError(f"family {name!r} {why}: train_set trains on the training families {known}")


def training_tasks(cfg: TrainSetConfig, directory: Path) -> list[TenantTask]:
    """Write the drawn scenarios into directory; one task per controlled tenant (the scenario is the YAML path)."""
    directory.mkdir(parents=True, exist_ok=True)
    fams = [get_family(n) for n in cfg.families] if cfg.families else families("training")
    tasks = []
    for fam in fams:
        for seed in range(cfg.scenario_seed, cfg.scenario_seed + cfg.scenarios_per_family):
            scenario = generate_scenario(fam, seed)
            path = directory / f"{scenario.name}.yaml"
            path.write_text(scenario_yaml(scenario))
            tasks += [TenantTask(str(path), tenant, cfg.num_envs) for tenant in scenario.controlled]
    return tasks


def _label(task: TenantTask) -> str:
    return f"{task.tenant}@{Path(task.scenario).stem}"


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    evals = [h for h in history if "eval_reward" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([h["env_steps"] for h in evals], [h["eval_reward"] for h in evals], marker="o")
    ax2.plot([h["env_steps"] for h in evals], [h["eval_sla_violation_rate"] for h in evals], marker="o")
    ax1.set_ylabel("reward (evaluation mean over tasks)")
    ax2.set_ylabel("SLA violation rate (evaluation mean)")
    for ax in (ax1, ax2):
        ax.set_xlabel("environment steps")
    fig.suptitle("Set policy training: greedy evaluation on the training tasks (the best is best.pt)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _teachers(
    tasks: list[TenantTask], te: TeacherConfig, progress: bool
) -> tuple[list[dict[str, Any]], list[torch.Tensor | Callable[[ShapingVectorEnv], TeacherFn]]]:
    """Each task's teacher (its name and, for a search, its SLA violation rate on the picking seeds) and what
    clone_teachers takes for it."""
    if te.kind == "heuristic":
        log.info("every task's teacher is adaptive_heuristic, step by step")
        return [{"teacher": "adaptive_heuristic"} for _ in tasks], [heuristic_teacher for _ in tasks]
    if te.kind == "baseline":
        log.info("picking each task's teacher of %s (%d x %d steps each)", te.candidates, te.pick_envs, te.pick_steps)
        names = pick_teachers(tasks, te.candidates, envs=te.pick_envs, steps=te.pick_steps, seed=te.pick_seed)
        return [{"teacher": n} for n in names], list(baseline_teachers(tasks, names))
    settings = TuneSettings(population=te.search_population, generations=te.search_generations, seeds=te.pick_envs,
                            steps=te.pick_steps, seed=te.pick_seed, polish_rounds=te.search_polish_rounds,
                            aqm=(False,))  # fmt: skip
    log.info("searching each task's teacher (%d generations x %d, %d x %d steps each)", te.search_generations,
             te.search_population, te.pick_envs, te.pick_steps)  # fmt: skip
    cache = Path(te.search_cache) if te.search_cache else None
    tuned = tune_teachers(tasks, settings, cache_dir=cache, progress=progress)
    labels = [{"teacher": t.source, "sla_violation_rate": round(t.sla_violation_rate, 5),
               "best_baseline": min(t.baselines.items(), key=lambda kv: kv[1].sla_violation_rate)[0],
               "best_baseline_rate": round(min(b.sla_violation_rate for b in t.baselines.values()), 5)}
              for t in tuned]  # fmt: skip
    return labels, [torch.as_tensor(t.actions[0]) for t in tuned]


def run_train_set(cfg: TrainSetConfig, out_dir: Path) -> dict[str, Any]:
    """Draw the tasks, clone their teachers, train with PPO; write the models, log, plot and summary.json."""
    with torch_threads(cfg.torch_threads):
        return _run(cfg, out_dir)


def _run(cfg: TrainSetConfig, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    tasks = training_tasks(cfg, out_dir / "scenarios")
    log.info("%d tasks from %d scenarios", len(tasks), len({t.scenario for t in tasks}))
    p = cfg.ppo
    ppo = PPOConfig(total_timesteps=p.total_timesteps, num_steps=p.num_steps, learning_rate=p.learning_rate,
                    anneal_lr=p.anneal_lr, update_epochs=p.update_epochs, num_minibatches=p.num_minibatches,
                    ent_coef=p.ent_coef, clip_coef=p.clip_coef)  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = SetActorCritic(cfg.model)
    te = cfg.teacher
    teachers: list[dict[str, Any]] = []
    cloned = None
    if te.candidates:
        teachers, actions = _teachers(tasks, te, cfg.progress)
        log.info("teachers: %s", Counter(t["teacher"] for t in teachers))
        clone_cfg = PPOConfig(num_steps=p.num_steps, learning_rate=te.learning_rate,
                              update_epochs=p.update_epochs, num_minibatches=p.num_minibatches)  # fmt: skip
        log.info("cloning the teachers: %d rollouts of %d x %d steps", te.iterations, cfg.num_envs, p.num_steps)
        cloned = clone_teachers(model, tasks, actions, te.iterations, clone_cfg, seed=cfg.seed,
                                smoothing=te.smoothing)  # fmt: skip
        log.info("cloned: %s", cloned)
        # PPO's start, kept so a benchmark can tell what PPO added to the cloned teachers.
        save_set_policy(out_dir / "cloned.pt", model, {"tasks": [_label(t) for t in tasks], "cloning": asdict(cloned)})
    ev = cfg.evaluation
    # The wall-clock cap covers the whole run: what the teachers took is deducted from PPO's share.
    left = None if cfg.max_wall_s is None else max(cfg.max_wall_s - (time.perf_counter() - start), 1e-3)
    train = TrainConfig(seed=cfg.seed, eval_every=ev.every, eval_envs=ev.envs, eval_steps=ev.steps,
                        eval_seed=ev.seed, progress=cfg.progress, tensorboard=False, max_wall_s=left)  # fmt: skip
    result = train_set_ppo(tasks, ppo, train, model=model, out_dir=out_dir)
    _plot(result.history, out_dir / "train.png")
    summary: dict[str, Any] = {
        "best": str(result.best_path) if result.best_path else None,
        "cloned": str(out_dir / "cloned.pt") if cloned else None,
        "last": str(result.last_path) if result.last_path else None,
        "config": asdict(cfg),
        "tasks": [{"task": _label(t), **(teachers[i] if teachers else {"teacher": None})} for i, t in enumerate(tasks)],
        "cloning": asdict(cloned) if cloned else None,
        "iterations": result.iterations,
        "planned_iterations": result.planned_iterations,
        "env_steps": result.env_steps,
        "stopped_early": result.iterations < result.planned_iterations,
        "wall_s": round(time.perf_counter() - start, 1),
        # On a shared machine the wall time follows the load; the process's CPU time much less so.
        "cpu_s": round(time.process_time() - cpu_start, 1),
        "ppo_wall_s": round(result.wall_s, 1),
        "best_eval": asdict(result.best_eval) if result.best_eval else None,
        "evals": {_label(t): asdict(result.evals[t.name]) for t in tasks if t.name in result.evals},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("wrote %s", out_dir)
    return summary


def register() -> None:
    """Register the primary schema next to the shared group schemas."""
    register_configs()
    ConfigStore.instance().store(name="train_set_schema", node=TrainSetConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train_set")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, train, print the summary's headline as JSON."""
    conf = to_typed(cfg, TrainSetConfig)
    out_dir = Path(conf.output_dir) if conf.output_dir else Path(HydraConfig.get().runtime.output_dir)
    summary = run_train_set(conf, out_dir)
    keys = ("best", "iterations", "planned_iterations", "env_steps", "stopped_early", "wall_s", "best_eval")
    print(json.dumps({k: summary[k] for k in keys}, indent=1), flush=True)


if __name__ == "__main__":
    register()
    main()
