"""Federated training of simulated tenants through Flower's simulation engine: ``python -m experiments.federated``.

Hydra composes conf/federated.yaml (fl/ and privacy/ groups), the config is flattened to Flower's
``section.key -> scalar`` run config, and fed_server.app / fed_client.app run N simulated tenants with
flwr.simulation.run_simulation (Ray backend). It runs in a child process, so it needs no SuperLink and
whatever Flower or Ray leave behind ends with it; it installs nothing at run time (works offline), and
fails loudly: the child's exit code and the ServerApp's results file must both say the run completed.
Then the local-only and centralized arms and the static baselines run on the same tenants, and the report is written:
results.md (printed; it opens with the verdict against the best static baseline), results.json,
reward.png, sla.png, epsilon.png (when privacy is accounted), plus the global checkpoints. Flower's and
Ray's known noise stays out of the log, and the log file holds no colour codes (experiments.quiet).

    python -m experiments.federated                                  # 4 tenants, 4 rounds, a few minutes
    python -m experiments.federated experiment=federated_targets     # the budget of the measured targets
    python -m experiments.federated fl=fedprox privacy=central_dp fl.rounds=10
    python -m experiments.federated privacy=distributed_dp           # SecAgg+ with distributed DP
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import (
    CONF_PATH,
    FLConfig,
    PrivacyConfig,
    exits_2_on_config_error,
    flat_config,
    register_configs,
    to_typed,
)
from experiments.fl_yardstick import MEMBERS as YARDSTICK_MEMBERS
from experiments.processes import die_with_parent
from experiments.quiet import log_file, plain_log_files
from experiments.threads import torch_threads
from shaping.checks import above, at_least

if TYPE_CHECKING:
    from shaping.fed_settings import RunSettings

log = logging.getLogger(__name__)


@dataclass
class TenantEntry:
    """One simulated tenant (one SuperNode)."""

    scenario: str = "default"
    """Scenario name (conf/scenario/) or YAML path."""
    tenant: str = "gameco"
    """The scenario's tenant this node controls."""
    num_envs: int = 8
    """Environments per local iteration: the tenant's amount of data."""

    def __post_init__(self) -> None:
        at_least("tenants[].num_envs", self, 1, "num_envs")


@dataclass
class FedTrainConfig:
    """Local PPO training per round (shaping.agents.local_train)."""

    local_iterations: int = 2
    """PPO iterations (rollout + update) per round."""
    num_steps: int = 32
    """Steps per environment per iteration."""
    learning_rate: float = 3e-4
    """Adam learning rate (of round 1 when anneal_lr)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly over the rounds, in every arm (RunSettings.round_ppo)."""
    update_epochs: int = 4
    """PPO epochs per rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the global model's hidden layers."""

    def __post_init__(self) -> None:
        at_least("train", self, 1, "local_iterations", "num_steps", "update_epochs", "num_minibatches")
        above("train", self, 0.0, "learning_rate")
        if not self.hidden_sizes or any(not n >= 1 for n in self.hidden_sizes):
            raise ValueError(f"train.hidden_sizes must be a non-empty list of sizes >= 1, got {self.hidden_sizes}")


@dataclass
class FedEvalConfig:
    """Evaluation of each arm on each tenant's held-out seeds."""

    envs: int = 8
    """Environments per evaluation."""
    steps: int = 20
    """Control steps per evaluation."""
    seed: int = 1000
    """Seed of the held-out evaluation (training seeds start at `seed`)."""
    baselines: list[str] = field(
        default_factory=lambda: ["static_priority", "fair_share", "fifo", "fq_codel", "greedy_premium"]
    )
    """Static baselines run by each tenant for reference (its plan as the nearest action, with CoDel on its
    leaves for fq_codel)."""

    def __post_init__(self) -> None:
        at_least("evaluation", self, 1, "envs", "steps")


@dataclass
class SimulationConfig:
    """Flower's Ray backend on this machine."""

    client_num_cpus: float = 1.0
    """CPUs per ClientApp actor (fractional allowed; 2 cores -> 2 actors at 1.0)."""
    ray_num_cpus: int = 2
    """CPUs Ray may use."""
    timeout_s: float | None = 3600.0
    """Wall-clock limit of the Flower run; it is stopped and the command fails past it (None: no limit)."""
    arm_workers: int = 2
    """Processes running the local-only and centralized arms and the baselines side by side (1: in-process)."""

    def __post_init__(self) -> None:
        above("simulation", self, 0.0, "client_num_cpus", "timeout_s")
        at_least("simulation", self, 1, "ray_num_cpus", "arm_workers")


@dataclass
class FedOutputConfig:
    """Where the run writes."""

    dir: str | None = None
    """Results directory; None: Hydra's run directory."""
    plots: bool = True
    """Write the PNG plots."""
    resume: bool = False
    """Resume from dir/checkpoints/latest.json (the rounds already done are skipped)."""


@dataclass
class FedInitConfig:
    """Where the global model starts."""

    weights: str = ""
    """Weights file every arm starts from (experiments.pretrain_universal's universal.npz, or a round
    checkpoint of an earlier run); "" starts from the seeded random initialization."""
    norm_count: float = 1e5
    """With weights: the observations the file's normalizer statistics count for, so that a tenant's
    first rollouts shift them gently instead of replacing them (the policy was trained on their scaling)."""

    def __post_init__(self) -> None:
        above("init", self, 0.0, "norm_count")


@dataclass
class PopulationConfig:
    """Randomized tenants federating beside `tenants` (shaping.sim.variants): a provider's many tenants.

    Client-level DP needs many tenants (its noise on the mean falls as 1 / tenants); a few hand-written
    tenants plus a population of random ones is how a simulation gets there.
    """

    variants: int = 0
    """Randomized tenants added to the federation (0: none); their scenarios go to output_dir/population/."""
    num_envs: int = 2
    """Environments per local iteration of each of them (their amount of data)."""
    path_scale: float = 1.0
    """Network randomization of each variant (shaping.sim.variants.tenant_variant; 1: none)."""
    seed: int = 1
    """Seed of the draws (pretrain_universal's variants use 0 by default: these are other tenants)."""

    def __post_init__(self) -> None:
        at_least("population", self, 0, "variants")
        at_least("population", self, 1, "num_envs", "path_scale")


@dataclass
class FedYardstickConfig:
    """The final global model against the yardstick on each listed tenant's own scenario (experiments.fl_yardstick)."""

    enabled: bool = True
    """Run the comparison after the rounds (the report's verdict then opens with it)."""
    members: list[str] = field(default_factory=lambda: list(YARDSTICK_MEMBERS))
    """Yardstick members: the static baselines, tuned_static (where its plan is cached), adaptive_heuristic."""
    seeds: int = 4
    """Environments per row (the same seeds for every row)."""
    steps: int | None = None
    """Control steps per row; None: each scenario's episode_steps."""
    seed: int = 0
    """Base seed of the rows (the benchmark's: the evaluation seeds never used in training or tuning)."""

    def __post_init__(self) -> None:
        at_least("yardstick", self, 1, "seeds", "steps")


@dataclass
class AttackConfig:
    """A misbehaving tenant (robustness experiments)."""

    scale: float = 1.0
    """Factor applied to the attackers' updates (1: honest)."""
    tenants: list[int] = field(default_factory=list)
    """Indices of the attacking tenants."""


@dataclass
class FederatedConfig:
    """Primary config of experiments.federated."""

    tenants: list[TenantEntry] = field(default_factory=list)
    """The federation's tenants."""
    fl: FLConfig = field(default_factory=FLConfig)
    """Strategy and rounds (conf/fl/)."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """Clipping, DP, SecAgg+ (conf/privacy/)."""
    train: FedTrainConfig = field(default_factory=FedTrainConfig)
    evaluation: FedEvalConfig = field(default_factory=FedEvalConfig)
    compare_local: bool = True
    """Also train each tenant alone (local-only arm)."""
    compare_centralized: bool = True
    """Also train one model on all tenants' environments (centralized arm)."""
    seed: int = 0
    """Seed of the initial global model and of training."""
    init: FedInitConfig = field(default_factory=FedInitConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: FedOutputConfig = field(default_factory=FedOutputConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    yardstick: FedYardstickConfig = field(default_factory=FedYardstickConfig)
    torch_threads: int = 1
    """Torch intra-op threads of this process (the in-process arms and reports); Ray's client actors and the
    arm workers run one each, since they already share the cores."""

    def __post_init__(self) -> None:
        at_least("federated", self, 1, "torch_threads")
        bad = [i for i in self.attack.tenants if not 0 <= i < len(self.tenants) + self.population.variants]
        if bad:
            raise ValueError(f"attack.tenants {bad} are not tenant indices")


def with_population(cfg: FederatedConfig, out_dir: Path) -> FederatedConfig:
    """cfg with cfg.population.variants randomized tenants appended to its tenants.

    Each takes the slot of a random tenant of a random scenario in conf/scenario/ and a random mix of
    the classes of every tenant there (written to out_dir/population/, the same files for the same seed).
    """
    from shaping.sim.scenarios import available_scenarios, load_scenario
    from shaping.sim.variants import write_variants

    pop = cfg.population
    if pop.variants <= 0:
        return cfg
    every = [(sc, t.name) for sc in available_scenarios() for t in load_scenario(sc).tenants]
    written = write_variants(every, every, pop.variants, pop.seed, out_dir / "population",
                             path_scale=pop.path_scale, prefix="tenant")  # fmt: skip
    extra = [TenantEntry(scenario=path, tenant=tenant, num_envs=pop.num_envs) for path, tenant in written]
    return replace(cfg, tenants=[*cfg.tenants, *extra])


def resolve_weights(value: str) -> Path:
    """init.weights as an absolute file: a path as given (from the working directory), else from the directory
    that holds conf/, so that the committed model (conf/models/universal.npz) is found from anywhere.

    Raises:
        FileNotFoundError: neither exists (one line).
    """
    from shaping.sim.scenarios import conf_dir

    given = Path(value).expanduser()
    for path in (given, conf_dir().parent / given):
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(f"init.weights: no file {given.resolve()}")


def run_config(cfg: FederatedConfig, out_dir: Path) -> dict[str, Any]:
    """The flat run config the Flower apps read (shaping.fed_settings.RunSettings)."""
    flat: dict[str, Any] = flat_config(cfg)
    if cfg.init.weights:  # the Flower apps may run in another working directory
        flat["init.weights"] = str(resolve_weights(cfg.init.weights))
    flat["output.checkpoint_dir"] = str(out_dir / "checkpoints")
    flat["output.client_state_dir"] = str(out_dir / "tenant_state")
    flat["output.results_file"] = str(out_dir / "federated_rounds.json")
    return flat


def _simulate(
    flat: dict[str, Any], n_tenants: int, sim: SimulationConfig, log_file: str | None = None, parent: int = 0
) -> None:
    """Child-process body: run the simulation, then exit hard so no Flower thread can keep the process alive;
    if the parent dies first (a kill -9 of the run), the child and Ray's processes go with it."""
    from flwr.simulation import run_simulation

    from experiments.quiet import quiet_simulation
    from fed_client.app import make_client_app
    from fed_server.app import make_server_app

    if parent:
        die_with_parent(parent)
    code = 1
    try:
        quiet_simulation(log_file)
        run_simulation(
            server_app=make_server_app(flat),
            client_app=make_client_app(flat),
            num_supernodes=n_tenants,
            backend_config={
                "client_resources": {"num_cpus": sim.client_num_cpus, "num_gpus": 0.0},
                "init_args": {"num_cpus": sim.ray_num_cpus, "include_dashboard": False},
            },
        )
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # flwr 1.42: when the simulation runtime crashes (e.g. Ray's node fails to start within its
        # fixed 30 s on an overloaded host), the ServerApp thread keeps waiting for nodes and would hold
        # the process forever; os._exit ends it and the Ray processes it started.
        os._exit(code)


def run_flower(flat: dict[str, Any], n_tenants: int, sim: SimulationConfig) -> dict[str, Any]:
    """Run the ServerApp and ClientApps in Flower's simulation engine (in a child process, so whatever
    Flower or Ray leave behind ends with it); raise unless the run completed."""
    # Ray's workers inherit the environment: one torch thread per client actor, since the actors
    # already share the cores between them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ray (2.55) runs its workers at niceness 15, which starves the client actors on a busy host.
    os.environ.setdefault("RAY_worker_niceness", "0")
    results_file = Path(flat["output.results_file"])
    results_file.unlink(missing_ok=True)
    # The child is spawned, so it has no Hydra logging: it appends Flower's progress to the run's log file itself.
    args = (flat, n_tenants, sim, log_file(), os.getpid())
    proc = multiprocessing.get_context("spawn").Process(target=_simulate, args=args)
    proc.start()
    timed_out = False
    try:
        proc.join(sim.timeout_s)
        timed_out = proc.is_alive()
    finally:
        if proc.is_alive() and proc.pid is not None:  # the time limit, or Ctrl-C: the child leads its own group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.join(10)
    if timed_out:
        raise RuntimeError(f"the federated run did not finish within simulation.timeout_s={sim.timeout_s}")
    if proc.exitcode != 0:
        raise RuntimeError(f"the federated run failed (exit code {proc.exitcode}; see the log above)")
    if not results_file.exists():
        raise RuntimeError("the federated run failed before its first round (no results file; see the log above)")
    res = json.loads(results_file.read_text())
    if res["status"] not in ("completed", "stopped_at_privacy_budget"):
        raise RuntimeError(f"the federated run did not complete: {res['status']}")
    return dict(res)


def run_federated(cfg: FederatedConfig, out_dir: Path) -> dict[str, Any]:
    """The federated run, the reference arms and the report; returns what results.json holds."""
    from experiments.fl_arms import run_arms
    from experiments.fl_report import markdown, targets, write_plots
    from shaping.fed_settings import RunSettings

    out_dir.mkdir(parents=True, exist_ok=True)
    listed = [(t.scenario, t.tenant) for t in cfg.tenants]  # the yardstick's tenants: not the random population
    cfg = with_population(cfg, out_dir)
    if not cfg.tenants:
        raise ValueError("tenants is empty: the federation needs at least one tenant")
    start = time.perf_counter()
    flat = run_config(cfg, out_dir)
    flat["output.resume"] = cfg.output.resume
    if not cfg.output.resume:  # a fresh run's simulated tenants start fresh, even in a reused directory
        shutil.rmtree(flat["output.client_state_dir"], ignore_errors=True)
    fed = run_flower(flat, len(cfg.tenants), cfg.simulation)
    fed_s = time.perf_counter() - start
    s = RunSettings.from_config(flat)
    # The reference arms train as many rounds as the federation did (a privacy budget may stop it early),
    # so the targets compare final rounds of the same length.
    done = fed["rounds"][-1]["round"] if fed["rounds"] else 0
    s = replace(s, rounds=min(s.rounds, done))
    results: dict[str, Any] = {"status": fed["status"], "settings": flat, "federated": fed["rounds"]}
    arms_start = time.perf_counter()
    arms, wall = run_arms(s, local=cfg.compare_local, central=cfg.compare_centralized,
                          baselines=list(cfg.evaluation.baselines), workers=cfg.simulation.arm_workers)  # fmt: skip
    results.update(arms)
    wall = {"federated": round(fed_s, 1), **wall, "arms": round(time.perf_counter() - arms_start, 1)}
    least = min(t.num_envs for t in s.tenants)
    small = [t.name for t in s.tenants if t.num_envs == least]
    results["targets"] = targets(results, small)
    if cfg.yardstick.enabled and fed["rounds"]:
        yard_start = time.perf_counter()
        results["yardstick"] = against_yardstick(cfg, s, listed, Path(flat["output.checkpoint_dir"]))
        wall["yardstick"] = round(time.perf_counter() - yard_start, 1)
    results["wall_s"] = {**wall, "total": round(time.perf_counter() - start, 1)}
    report = markdown(results)
    (out_dir / "results.md").write_text(report)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if cfg.output.plots:
        write_plots(results, out_dir)
    print(report, flush=True)
    log.info("wrote %s in %.1f s", out_dir, time.perf_counter() - start)
    return results


def against_yardstick(
    cfg: FederatedConfig, s: RunSettings, tenants: list[tuple[str, str]], checkpoints: Path
) -> dict[str, Any]:
    """The final global model (checkpoints' latest) and the initial one against the yardstick, per tenant."""
    from experiments.benchmark_eval import EvalSettings
    from experiments.fl_yardstick import YardstickSettings, yardstick_comparison

    meta = json.loads((checkpoints / "latest.json").read_text())
    # The checkpoints' layout and hidden sizes, where a `universal:` policy reads them (beside the weights).
    card = {"layout": s.layout.to_config(), "hidden_sizes": list(s.hidden_sizes), "source": "experiments.federated"}
    (checkpoints / "summary.json").write_text(json.dumps(card, indent=1))
    y = cfg.yardstick
    settings = YardstickSettings(
        members=tuple(y.members), eval=EvalSettings(seeds=y.seeds, steps=y.steps, seed=y.seed),
        workers=cfg.simulation.arm_workers,
    )  # fmt: skip
    log.info("the final global model against the yardstick on %d tenants (%s)", len(tenants), ", ".join(y.members))
    initial = resolve_weights(cfg.init.weights) if cfg.init.weights else None
    return yardstick_comparison(tenants, checkpoints / meta["weights"], initial, settings)


def register() -> None:
    """Register the primary schema next to the shared group schemas."""
    register_configs()
    ConfigStore.instance().store(name="federated_schema", node=FederatedConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="federated")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate (exit 2 on a bad value), run."""
    conf = to_typed(cfg, FederatedConfig)
    out_dir = Path(conf.output.dir) if conf.output.dir else Path(HydraConfig.get().runtime.output_dir)
    # Flower installs app dependencies at run time unless told not to (flwr 1.42): never do that offline.
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    plain_log_files()
    with torch_threads(conf.torch_threads):
        run_federated(conf, out_dir)


if __name__ == "__main__":
    register()
    main()
