"""Typed schemas of FedShape's Hydra config groups (conf/), registered in Hydra's ConfigStore.

Each group option under conf/GROUP/ names its schema first in its defaults list (e.g. ``ppo_schema``),
so composing any option validates it against the dataclass here. The scenario, reward and agent
groups use shaping.config's dataclasses (re-exported here), which the core imports without Hydra.
Scenario YAMLs carry no defaults list because shaping.sim.scenarios.load_scenario reads them
without Hydra, so the primary configs' typed ``scenario`` field validates them instead.

Entry points compose a primary config (conf/compare.yaml, ...), convert it with to_object and
hand plain dataclasses to plain functions. flat_config turns a config into the flat
``section.key -> scalar`` mapping that Flower's run_config and node_config take.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from shaping.checks import above, at_least, check_privacy, check_tree, one_line, within
from shaping.sim.scenarios import ScenarioFileError, UnknownScenarioError
from shaping.config import DQNConfig, PPOConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.sim.scenarios import default_conf_dir

T = TypeVar("T")

#: The Hydra entry points' config directory (``@hydra.main(config_path=CONF_PATH)``): the repository's conf/,
#: or an installed FedShape's package data (a relative "../conf" would point into site-packages).
CONF_PATH = str(default_conf_dir())

#: Known values of the string-typed choices (checked in __post_init__ so OmegaConf.to_object fails early).
FL_STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "trimmed_mean", "krum")
PRIVACY_MODES = ("none", "clip", "central", "distributed")
SHAPER_BACKENDS = ("sim", "kernel")


class ConfigError(ValueError):
    """A configuration value refused before any work starts; its message is one line naming the key."""


def to_typed(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as a ``schema`` instance, every value checked before any work starts.

    The schemas' ``__post_init__`` check their own fields (OmegaConf.to_object runs them); on top,
    ``check_tree`` refuses a nan or infinite float and a negative seed anywhere in the tree.

    Raises:
        ConfigError: the first value refused, on one line.
    """
    try:
        obj = OmegaConf.to_object(cfg)
        if not isinstance(obj, schema):
            raise TypeError(f"expected a {schema.__name__}, got {type(obj).__name__}")
        check_tree(obj)
    except (ValueError, TypeError, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err
    return obj


def exits_2_on_config_error(main: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap a Hydra task function: a ConfigError prints ``PROG: config error: ...`` on stderr and exits 2, and
    so does a scenario the command line names that does not exist or does not load (ScenarioFileError).

    SystemExit is not an Exception, so Hydra (1.3) lets it through instead of printing a traceback.
    """

    @functools.wraps(main)
    def run(cfg: DictConfig) -> T:
        try:
            return main(cfg)
        except (ConfigError, ScenarioFileError, UnknownScenarioError) as err:
            print(f"{Path(sys.argv[0]).stem}: config error: {one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return run


def _check_choice(what: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"{what} must be one of {known}, got {value!r}")


@dataclass
class EnvConfig:
    """The simulated training environment (consumed by the Gymnasium/PettingZoo envs and the agents)."""

    batch_size: int = 16
    """Environments simulated together: the batch dimension of one Simulator."""
    device: str = "cpu"
    """Torch device of the simulator and the policy: cpu, cuda, cuda:1, ..."""
    seed: int = 0
    """Base seed of the simulator's random generator (and of the policies' initialisation)."""
    episode_steps: int | None = None
    """Control steps per episode before truncation; None: the scenario's episode_steps."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"env.batch_size must be >= 1, got {self.batch_size}")
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError(f"env.episode_steps must be >= 1 or null, got {self.episode_steps}")


@dataclass
class FLConfig:
    """Federated learning run (Flower strategy) (fed_server, fed_client)."""

    strategy: str = "fedavg"
    """Aggregation: fedavg, fedavgm, fedprox, fedadam, trimmed_mean or krum (Flower's strategies of those names)."""
    rounds: int = 10
    """Federated rounds."""
    clients: int = 4
    """Clients (tenants, one SuperNode each) in the federation."""
    fraction_fit: float = 1.0
    """Fraction of clients sampled for training each round."""
    min_fit_clients: int = 2
    """Fewest clients a training round needs: a round whose other clients fail (or drop out of SecAgg+
    within its threshold) still aggregates the updates it got."""
    min_available_clients: int = 0
    """Nodes the server waits for before the first round (0: min_fit_clients); the run's clients are the
    nodes connected then (in a simulation: every tenant)."""
    local_epochs: int = 1
    """Local training epochs (PPO iterations) per round on each client."""
    proximal_mu: float = 0.0
    """FedProx proximal term weight (0: plain FedAvg local objective)."""
    server_lr: float = 1e-2
    """Server learning rate: FedAdam's eta, FedAvgM's server_learning_rate (1: plain FedAvg)."""
    server_momentum: float = 0.0
    """FedAvgM server momentum (0: none)."""
    client_lr: float = 1e-2
    """FedAdam client-side learning rate hint (Flower's eta_l)."""
    beta_1: float = 0.9
    """FedAdam first moment decay."""
    beta_2: float = 0.99
    """FedAdam second moment decay."""
    tau: float = 1e-9
    """FedAdam adaptivity (epsilon)."""
    trim_beta: float = 0.2
    """Fraction trimmed from each end before averaging (FedTrimmedAvg's beta)."""
    krum_malicious: int = 1
    """Malicious clients Krum tolerates (Flower Krum's num_malicious_clients)."""
    local_normalizer: bool = False
    """Keep the observation normalizer's statistics local (FedBN-style): they are the tenant's traffic
    statistics, and DP noise on a near-constant feature's tiny std blows that input up. The features
    constant for a tenant (application slots, SLAs, paths) keep the initial statistics instead."""
    weighting: str = "examples"
    """Weight of each tenant's update in the mean: examples (FedAvg's, by environment steps) or uniform
    (every tenant the same, as the centralized arm gives every tenant the same iterations; always so
    under clipping or DP)."""

    def __post_init__(self) -> None:
        _check_choice("fl.strategy", self.strategy, FL_STRATEGIES)
        _check_choice("fl.weighting", self.weighting, ("examples", "uniform"))
        at_least("fl", self, 1, "rounds", "clients", "min_fit_clients", "local_epochs")
        at_least("fl", self, 0, "krum_malicious", "min_available_clients")
        within("fl", self, 0.0, 1.0, "fraction_fit", "server_momentum", "beta_1", "beta_2")
        above("fl", self, 0.0, "fraction_fit", "server_lr", "client_lr", "tau")
        at_least("fl", self, 0.0, "proximal_mu")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ValueError(f"fl.trim_beta must be in [0, 0.5), got {self.trim_beta}")


@dataclass
class PrivacyConfig:
    """Differential privacy of the federated updates (fed_server.privacy, fed_client.privacy)."""

    mode: str = "none"
    """none; clip (the server clips, no noise); central (the server clips and adds noise); distributed (clients
    clip and add noise shares, SecAgg+ sums). Under SecAgg+ the clients clip in every mode."""
    noise_multiplier: float = 0.0
    """Gaussian noise standard deviation as a multiple of the clipping norm."""
    clipping_norm: float = 1.0
    """L2 norm each client's model update is clipped to."""
    clip_to_median: bool = False
    """clip mode only, without SecAgg+: clip each round at min(clipping_norm, the median norm of the round's
    updates), so a scaled update weighs no more than a typical honest one (fed_server.robust)."""
    delta: float = 1e-5
    """Delta of the (epsilon, delta) guarantee the accountant reports."""
    target_epsilon: float | None = None
    """Stop federating once the spent epsilon would exceed this (the client-level epsilon under central or
    distributed DP, and each tenant's sample-level epsilon under DP-SGD); None: no budget."""
    secure_aggregation: bool = False
    """Mask client updates with SecAgg+ so the server sees only their sum."""
    dpsgd_noise_multiplier: float = 0.0
    """Opacus DP-SGD noise multiplier of local training (sample-level DP); 0: off."""
    dpsgd_max_grad_norm: float = 1.0
    """Opacus DP-SGD per-sample gradient clipping bound."""

    def __post_init__(self) -> None:
        _check_choice("privacy.mode", self.mode, PRIVACY_MODES)
        check_privacy(self.mode, self.noise_multiplier, self.clipping_norm, self.delta, self.target_epsilon,
                      self.dpsgd_noise_multiplier, self.dpsgd_max_grad_norm)  # fmt: skip
        noised = self.mode in ("central", "distributed") or self.dpsgd_noise_multiplier > 0
        if self.target_epsilon is not None and not noised:
            # Without noise nothing is accounted and the budget is ignored (fed_server's rounds_allowed): a run
            # its author believes bounded by epsilon would not be. Refused here, at the command line's edge.
            raise ValueError(f"privacy.target_epsilon={self.target_epsilon} needs noise: mode central or distributed, "
                             "or dpsgd_noise_multiplier > 0 (null: no budget)")  # fmt: skip


@dataclass
class ShaperConfig:
    """Where the tenant agent's plans are applied (shaping.enforce)."""

    backend: str = "sim"
    """sim (the batched simulator) or kernel (Linux tc and nftables through netlink)."""
    interfaces: list[str] = field(default_factory=list)
    """Interface of each scenario path, in path order; empty: the scenario's path names."""
    control_interval_ms: float = 100.0
    """Time between two control steps (observe, decide, apply)."""
    dry_run: bool = False
    """Record the operations a plan needs instead of applying them (kernel backend)."""

    def __post_init__(self) -> None:
        _check_choice("shaper.backend", self.backend, SHAPER_BACKENDS)
        if self.control_interval_ms <= 0:
            raise ValueError("shaper.control_interval_ms must be > 0")


@dataclass
class OutputConfig:
    """What a comparison or a benchmark writes."""

    dir: str | None = None
    """Directory of the results; None: Hydra's run directory (outputs/DATE/TIME/)."""
    plots: bool = True
    """Write the PNG plots."""
    print_table: bool = True
    """Print results.md to stdout."""


@dataclass
class CompareConfig:
    """Primary config of experiments.compare: policies against each other on one scenario."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The scenario (conf/scenario/)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Device and base seed (env.batch_size is not used: `seeds` is the comparison's batch)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights used for mean_reward."""
    policies: list[str] = field(default_factory=lambda: ["fifo", "static_priority", "fair_share", "fq_codel"])
    """Policy references (shaping.policies.make_policy): baseline names, later ``kind:checkpoint``."""
    controlled: list[str] | None = None
    """Tenants every policy drives (the others run their scenario policies in every row); None: the scenario's
    `controlled`, narrowed to the tenants every policy can control when it names none."""
    seeds: int = 4
    """Environments per policy, simulated as one batch."""
    steps: int | None = 300
    """Control steps per episode; None: env.episode_steps, else the scenario's episode_steps."""
    episodes: int = 1
    """Episodes per environment, run one after another."""
    progress: bool = True
    """Show a progress bar per policy."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """What to write and where."""

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("policies must name at least one policy")
        at_least("compare", self, 1, "seeds", "episodes", "steps")


#: The static baselines (shaping.baselines), in the order reports list them.
STATIC_BASELINES = ["fifo", "static_priority", "fair_share", "fq_codel", "greedy_premium"]


@dataclass
class BenchmarkConfig:
    """Primary config of experiments.benchmark: policies against the yardstick over a suite of scenarios."""

    policies: list[str] = field(default_factory=list)
    """Policy references judged against the yardstick (shaping.policies.make_policy), e.g. ppo:PATH."""
    yardstick: list[str] = field(
        default_factory=lambda: [*STATIC_BASELINES, "tuned_static", "adaptive_heuristic"]
    )
    """What an operator would deploy instead; every member is evaluated too, and on each scenario a policy is
    compared with the member (other than itself) with the fewest SLA violations."""
    static: list[str] = field(default_factory=lambda: [*STATIC_BASELINES, "tuned_static"])
    """The yardstick's constant-plan members (static baselines, tuned_static): the 'best static' reference."""
    suite: str | None = "heldout"
    """Suite under conf/suite/ (or a directory written by experiments.make_suite), used when `scenarios` is empty."""
    scenarios: list[str] = field(default_factory=list)
    """Scenario names (conf/scenario/NAME.yaml) or YAML paths; when not empty, these instead of the suite."""
    seeds: int = 16
    """Environments per (scenario, policy), simulated as one batch; the same seeds for every policy."""
    steps: int | None = None
    """Control steps per scenario; None: each scenario's episode_steps (its events are scheduled within them)."""
    seed: int = 0
    """Base seed of the simulator."""
    device: str = "cpu"
    """Torch device of the simulator."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of mean_reward."""
    floor: float = 0.005
    """Added to both violation rates of a ratio, (v + floor) / (best + floor), so a reference without
    violations does not divide by zero (experiments.yardstick)."""
    tie_tolerance: float = 0.0
    """Violation rates within this of the reference's count as a tie, not a win or a loss."""
    workers: int = 2
    """Worker processes, one scenario at a time each; 1: in the entry point's process."""
    torch_threads: int = 1
    """Torch intra-op threads of each worker: fixed, so results and timings do not follow the machine's load."""
    progress: bool = True
    """Show a progress bar over (scenario, policy) pairs."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """What to write and where."""

    def __post_init__(self) -> None:
        for what, refs in (("policies", self.policies), ("yardstick", self.yardstick), ("static", self.static)):
            if len(set(refs)) != len(refs):
                raise ValueError(f"{what} lists a policy twice: {refs}")
        if not self.yardstick:
            raise ValueError("the yardstick must name at least one policy")
        if not set(self.static) <= set(self.yardstick):
            extra = sorted(set(self.static) - set(self.yardstick))
            raise ValueError(f"static must be members of the yardstick; not in it: {extra}")
        if not self.scenarios and not self.suite:
            raise ValueError("name a suite or list scenarios")
        at_least("benchmark", self, 1, "seeds", "steps")
        if self.floor <= 0 or self.tie_tolerance < 0:
            raise ValueError(f"floor must be > 0 and tie_tolerance >= 0, got {self.floor}, {self.tie_tolerance}")
        if self.workers < 1 or self.torch_threads < 1:
            raise ValueError("workers and torch_threads must be >= 1")


@dataclass
class SearchConfig:
    """Budget and protocol of tuned_static's search (shaping.tuned.TuneSettings; part of the cache key)."""

    population: int = 16
    """Candidates per generation."""
    generations: int = 30
    """Generations per CoDel setting."""
    seeds: int = 8
    """Training environments per candidate."""
    steps: int | None = None
    """Control steps of the training episode; None: the scenario's episode_steps."""
    seed: int = 1_000_000
    """Base seed of the training environments and of the optimizer (evaluations count up from 0)."""
    polish_rounds: int = 5
    """Rounds of steepest descent on the grid after the optimizer, per CoDel setting."""
    aqm: list[bool] = field(default_factory=lambda: [False, True])
    """CoDel settings of the controlled tenants' leaves searched, one search each."""

    def __post_init__(self) -> None:
        at_least("search", self, 1, "population", "generations", "seeds", "steps")
        at_least("search", self, 0, "polish_rounds")
        if not self.aqm:
            raise ValueError("search.aqm must list at least one CoDel setting")


@dataclass
class ValidationConfig:
    """tuned_static's validation: the search's winner against the baselines on fresh seeds
    (shaping.tuned.ValidationSettings; not part of the cache key)."""

    seeds: int = 16
    """Validation environments per candidate; 0: keep the search's winner unvalidated."""
    seed: int = 2_000_000
    """Base seed of the validation environments (distinct from search.seed and the evaluations' 0)."""

    def __post_init__(self) -> None:
        at_least("validation", self, 0, "seeds")


@dataclass
class TuneStaticConfig:
    """Primary config of experiments.tune_static: tune tuned_static's plans and write them to the cache."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The scenario (conf/scenario/), tuned when `scenarios` is empty."""
    scenarios: list[str] = field(default_factory=list)
    """Scenario names (conf/scenario/NAME.yaml) or YAML paths, tuned one after another; empty: `scenario`."""
    controlled: list[str] | None = None
    """Tenants the plans drive; None: each scenario's `controlled` (every tenant when it names none)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Device of the simulator (env.seed and env.batch_size are not used: search.seed and search.seeds are)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of the tie-break."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Budget and protocol of the search."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """The validation of the search's winner."""
    cache_dir: str | None = None
    """Cache directory; None: conf/tuned_static/ (shaping.tuned.default_cache_dir)."""
    retune: bool = False
    """Tune even when the cache holds a valid entry, and overwrite it."""
    verify: bool = True
    """Re-run a cached entry on the training seeds before reusing it."""
    progress: bool = True
    """Show a progress bar per scenario."""


@dataclass
class FinalEvalConfig:
    """The evaluation after pretraining: the agent against static baselines on held-out seeds."""

    baselines: list[str] = field(default_factory=lambda: ["static_priority", "fq_codel"])
    """Static baselines compared with the agent: each drives the agent's tenant in its row, while the other
    tenants run their scenario policies in every row."""
    seeds: int = 8
    """Environments (held-out seeds) simulated together."""
    steps: int = 300
    """Control steps of the evaluation episode."""
    seed: int = 1000
    """Base seed of the evaluation; training draws its seeds from train.seed, so these are held out."""
    heldout_scenarios: list[str] = field(default_factory=list)
    """Scenarios not trained on, evaluated too where they hold the tenant with the same spec (others are skipped)."""

    def __post_init__(self) -> None:
        at_least("evaluation", self, 1, "seeds", "steps")


@dataclass
class PretrainConfig:
    """Primary config of experiments.pretrain: offline PPO training of one tenant, then a comparison."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The training scenario (conf/scenario/); the final evaluation runs on it."""
    extra_scenarios: list[str] = field(default_factory=list)
    """Names or paths of further scenarios trained in turn (they must give the tenant the same spec)."""
    tenant: str | None = None
    """Name of the controlled tenant; None: the scenario's first tenant."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights of training and evaluation."""
    # Any, not PPOConfig | DQNConfig: OmegaConf has no unions of structured types; the agent group's
    # schema (ppo_schema, dqn_schema) types the node when it is composed, and MISSING makes one required.
    agent: Any = MISSING
    """PPOConfig (agent=ppo) or DQNConfig (agent=dqn) from conf/agent/; train_ppo or train_dqn runs by its type."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch, seeds, periodic evaluation and logging of the training loop."""
    evaluation: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    """The final comparison against static baselines."""
    output_dir: str | None = None
    """Directory of the checkpoints, logs and summary; None: Hydra's run directory."""
    torch_threads: int = 1
    """Torch intra-op threads of training and evaluation: fixed, so a busy machine slows the run without
    changing it (torch's default, one per core, was 15x slower on a loaded host)."""

    def __post_init__(self) -> None:
        at_least("pretrain", self, 1, "torch_threads")


#: (group, schema name, schema) registered by register_configs.
GROUP_SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("env", "env_schema", EnvConfig),
    ("agent", "ppo_schema", PPOConfig),
    ("agent", "dqn_schema", DQNConfig),
    ("reward", "reward_schema", RewardConfig),
    ("fl", "fl_schema", FLConfig),
    ("privacy", "privacy_schema", PrivacyConfig),
    ("shaper", "shaper_schema", ShaperConfig),
)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent); entry points call it before composing."""
    cs = ConfigStore.instance()
    cs.store(name="compare_schema", node=CompareConfig)
    cs.store(name="benchmark_schema", node=BenchmarkConfig)
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(name="tune_static_schema", node=TuneStaticConfig)
    for group, name, node in GROUP_SCHEMAS:
        cs.store(group=group, name=name, node=node)


def to_compare_config(cfg: DictConfig) -> CompareConfig:
    """The composed config as a CompareConfig instance (validated: ``to_typed``)."""
    return to_typed(cfg, CompareConfig)


def to_benchmark_config(cfg: DictConfig) -> BenchmarkConfig:
    """The composed config as a BenchmarkConfig instance (validated: ``to_typed``)."""
    return to_typed(cfg, BenchmarkConfig)


def flat_config(cfg: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Flatten a dataclass or DictConfig to ``a.b.c -> scalar`` (Flower's run_config / node_config).

    Lists and None become JSON strings, since Flower's config values are scalars.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if is_dataclass(cfg) and not isinstance(cfg, type):
        items: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    elif isinstance(cfg, dict):
        items = cfg
    else:
        raise TypeError(f"cannot flatten {type(cfg).__name__}")
    out: dict[str, bool | int | float | str] = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if (is_dataclass(value) and not isinstance(value, type)) or isinstance(value, dict):
            out.update(flat_config(value, prefix=f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=asdict)
    return out
