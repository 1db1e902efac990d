"""Compose every option of every config group and validate it against its schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from experiments.config import (
    STATIC_BASELINES,
    BenchmarkConfig,
    CompareConfig,
    DQNConfig,
    EnvConfig,
    FLConfig,
    PPOConfig,
    PrivacyConfig,
    ShaperConfig,
    flat_config,
    register_configs,
    to_benchmark_config,
    to_compare_config,
    to_typed,
)
from experiments.federated import FederatedConfig
from experiments.federated import register as register_federated
from shaping.config import RewardConfig, ScenarioConfig
from shaping.baselines import BASELINES
from shaping.policies import make_policy
from shaping.sim.events import has_events
from shaping.sim.layout import compile_scenario
from shaping.sim.scenarios import available_scenarios, load_scenario
from shaping.spec import scenario_specs

CONF = Path(__file__).resolve().parents[2] / "conf"
#: Schema of each group validated on its own (scenario and experiment go through the primary config).
GROUP_SCHEMAS: dict[str, tuple[type, ...]] = {
    "env": (EnvConfig,),
    "agent": (PPOConfig, DQNConfig),
    "reward": (RewardConfig,),
    "fl": (FLConfig,),
    "privacy": (PrivacyConfig,),
    "shaper": (ShaperConfig,),
}
GROUPS = {*GROUP_SCHEMAS, "scenario", "experiment"}
#: The primary config of an experiment/ file (the first word of its name) -> that config's schema.
EXPERIMENT_SCHEMAS: dict[str, type] = {"compare": CompareConfig, "federated": FederatedConfig}
#: Directories of conf/ that are data, not config groups: the generated scenario suites (shaping.sim.suite) and
#: tuned_static's cache of searched plans (shaping.tuned.cache) and the committed pretrained model (models/).
DATA_DIRS = {"suite", "tuned_static", "models"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register_configs()
    register_federated()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_groups_present():
    dirs = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert dirs == GROUPS | DATA_DIRS
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"
    assert len(options("scenario")) >= 4
    assert {"fedavg", "fedavgm", "fedprox", "fedadam", "trimmed_mean"} <= set(options("fl"))
    assert {"none", "central_dp", "distributed_dp"} <= set(options("privacy"))
    assert {"ppo", "dqn"} <= set(options("agent"))
    assert {"sim", "kernel"} <= set(options("shaper"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUP_SCHEMAS for o in options(g)])
def test_group_option_validates(group, option):
    cfg = compose(overrides=[f"+{group}={option}"])
    obj = OmegaConf.to_object(cfg[group])
    assert isinstance(obj, GROUP_SCHEMAS[group])
    if isinstance(obj, PPOConfig | DQNConfig):
        assert obj.name == option
    flat = flat_config(obj)
    assert flat and all(isinstance(v, bool | int | float | str) for v in flat.values())


@pytest.mark.parametrize("name", options("scenario"))
def test_scenario_composes_and_loads(name):
    composed = to_compare_config(compose("compare", overrides=[f"scenario={name}"])).scenario
    loaded = load_scenario(name)
    assert isinstance(composed, ScenarioConfig)
    assert composed == loaded, "Hydra and load_scenario must read a scenario the same way"
    assert composed.name == name
    specs = scenario_specs(loaded)
    assert len(specs) == len(loaded.tenants) >= 1
    compile_scenario(loaded)


def test_scenarios_differ():
    """The hand-written scenarios are not copies: the steady ones differ in their first path, and each
    variant with scheduled events differs from every other scenario in what it schedules or controls."""
    scenarios = [load_scenario(n) for n in available_scenarios()]
    steady = [s for s in scenarios if not has_events(s)]
    assert len({len(s.tenants) for s in scenarios}) >= 3
    assert len({len(s.paths) for s in scenarios}) >= 3
    assert len({s.paths[0].capacity_mbps for s in steady}) == len(steady)
    signatures = {(repr(s.paths), repr(s.tenants), repr(s.path_events), repr(s.load_events), tuple(s.controlled))
                  for s in scenarios}
    assert len(signatures) == len(scenarios)
    assert len({s.paths[0].base_delay_ms for s in scenarios}) >= 4
    assert max(p.capacity_mbps for s in scenarios for p in s.paths) >= 10_000


def test_primary_defaults():
    cfg = to_compare_config(compose("compare"))
    assert isinstance(cfg, CompareConfig)
    assert cfg.scenario.name == "default"
    assert cfg.policies == ["fifo", "static_priority", "fair_share", "fq_codel"]
    for ref in cfg.policies:
        assert make_policy(ref).name == ref
    flat = flat_config(cfg)
    assert flat["seeds"] == cfg.seeds and flat["env.device"] == "cpu" and flat["reward.sla_penalty"] == 1.0
    assert isinstance(flat["scenario.tenants"], str)  # lists travel as JSON strings


def test_benchmark_defaults():
    cfg = to_benchmark_config(compose("benchmark"))
    assert isinstance(cfg, BenchmarkConfig)
    assert cfg.policies == [] and cfg.suite == "heldout" and cfg.scenarios == []
    assert cfg.yardstick == [*STATIC_BASELINES, "tuned_static", "adaptive_heuristic"]
    assert cfg.static == [*STATIC_BASELINES, "tuned_static"]
    assert STATIC_BASELINES == list(BASELINES)
    assert (cfg.seeds, cfg.steps, cfg.workers, cfg.torch_threads, cfg.floor) == (16, None, 2, 1, 0.005)
    assert cfg.reward == RewardConfig() and cfg.output.dir is None
    # The config's defaults are the schema's, so code building a BenchmarkConfig gets the same run.
    assert cfg == BenchmarkConfig()


@pytest.mark.parametrize("option", options("reward"))
def test_benchmark_composes_every_reward(option):
    cfg = to_benchmark_config(compose("benchmark", overrides=[f"reward={option}"]))
    assert cfg.reward == OmegaConf.to_object(compose(overrides=[f"+reward={option}"]).reward)


@pytest.mark.parametrize(
    "overrides",
    [
        ["static=[fifo,tuned_static]", "yardstick=[fifo]"],  # static members must be in the yardstick
        ["yardstick=[]", "static=[]"],
        ["floor=0"],
        ["seeds=0"],
        ["workers=0"],
        ["policies=[fifo,fifo]"],
        ["suite=null"],
    ],
)
def test_benchmark_invalid_values_rejected(overrides):
    with pytest.raises(ValueError):
        to_benchmark_config(compose("benchmark", overrides=overrides))


def test_benchmark_overrides():
    cfg = to_benchmark_config(compose("benchmark", overrides=[
        "policies=[ppo:outputs/x/best.pt]", "scenarios=[default,conf/suite/heldout/heldout_lte_edge_s0.yaml]",
        "steps=100", "reward=sla_strict",
    ]))  # fmt: skip
    assert cfg.policies == ["ppo:outputs/x/best.pt"] and len(cfg.scenarios) == 2 and cfg.steps == 100
    assert cfg.reward.sla_penalty > RewardConfig().sla_penalty


def test_compare_controlled_override():
    assert to_compare_config(compose("compare")).controlled is None
    cfg = to_compare_config(compose("compare", overrides=["controlled=[gameco,bank]"]))
    assert cfg.controlled == ["gameco", "bank"]


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_composes(name):
    """Each experiment/ file is composed with the primary config its name starts with (compare_*, federated_*)."""
    primary = name.split("_")[0]
    assert primary in EXPERIMENT_SCHEMAS, f"conf/experiment/{name}.yaml names no primary config"
    obj = to_typed(compose(primary, overrides=[f"experiment={name}"]), EXPERIMENT_SCHEMAS[primary])
    if isinstance(obj, CompareConfig):
        assert obj.policies
        for ref in obj.policies:
            make_policy(ref)


def test_experiments_override_deltas():
    base = to_compare_config(compose("compare"))
    full = to_compare_config(compose("compare", overrides=["experiment=compare_full"]))
    assert full.steps is None and full.seeds > base.seeds and "greedy_premium" in full.policies
    assert full.scenario == base.scenario and full.reward == base.reward
    strict = to_compare_config(compose("compare", overrides=["experiment=compare_sla_strict"]))
    assert strict.reward.sla_penalty > base.reward.sla_penalty
    # The command line still wins over the experiment.
    assert to_compare_config(compose("compare", overrides=["experiment=compare_full", "seeds=2"])).seeds == 2
    sweep = compose("compare", overrides=["experiment=compare_all_scenarios"], return_hydra_config=True)
    assert str(sweep.hydra.mode) == "RunMode.MULTIRUN"
    assert sweep.hydra.sweeper.params.scenario == "glob(*)"


@pytest.mark.parametrize(
    "overrides",
    [
        ["+fl=fedavg", "fl.strategy=bogus"],
        ["+privacy=none", "privacy.mode=central"],  # central DP without noise
        ["+shaper=sim", "shaper.backend=tc"],
        ["+env=default", "env.batch_size=0"],
    ],
)
def test_invalid_values_rejected(overrides):
    group = overrides[0].split("=")[0].lstrip("+")
    with pytest.raises(ValueError):
        OmegaConf.to_object(compose(overrides=overrides)[group])


def test_wrong_types_rejected():
    with pytest.raises(ConfigCompositionException):
        compose(overrides=["+env=default", "env.batch_size=many"])
    with pytest.raises(ConfigCompositionException):
        compose("compare", overrides=["scenario.paths.0.capacity_mbps=fast"])
    with pytest.raises(ConfigCompositionException):
        compose("compare", overrides=["no_such_key=1"])
