"""Every configuration value is checked before any work starts: a bad one is a one-line error and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments import (
    bench_train,
    federated,
    live_federation,
    multiagent,
    pretrain_universal,
    testbed,
    train_sb3,
    train_set,
)
from shaping.sim.scenarios import load_scenario
from experiments.config import (
    BenchmarkConfig,
    CompareConfig,
    ConfigError,
    PretrainConfig,
    TuneStaticConfig,
    exits_2_on_config_error,
    register_configs,
    to_typed,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
ROOT = CONF.parent
#: Primary config -> its schema; the conf/NAME*.yaml files compose against these.
SCHEMAS: dict[str, type] = {
    "compare": CompareConfig,
    "benchmark": BenchmarkConfig,
    "pretrain": PretrainConfig,
    "tune_static": TuneStaticConfig,
    "federated": federated.FederatedConfig,
    "pretrain_universal": pretrain_universal.UniversalPretrainConfig,
    "bench_train": bench_train.BenchTrainConfig,
    "multiagent": multiagent.MultiAgentConfig,
    "testbed": testbed.TestbedConfig,
    "live_federation": live_federation.LiveFederationConfig,
    "train_sb3": train_sb3.TrainSB3Config,
    "train_set": train_set.TrainSetConfig,
}


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register_configs()
    for module in (federated, pretrain_universal, bench_train, multiagent, testbed, train_sb3, train_set,
                   live_federation):
        module.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _schema(name: str) -> type:
    """The schema of conf/NAME.yaml: that of the longest primary name it starts with."""
    return SCHEMAS[max((p for p in SCHEMAS if name == p or name.startswith(f"{p}_")), key=len)]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_primary_config_passes(name: str):
    to_typed(compose(name), _schema(name))


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("federated", ["privacy.target_epsilon=-3"], "privacy.target_epsilon must be > 0 (null: no budget), got -3.0"),
        ("federated", ["privacy.target_epsilon=0"], "privacy.target_epsilon must be > 0 (null: no budget), got 0.0"),
        ("federated", ["privacy.target_epsilon=8"], "privacy.target_epsilon=8.0 needs noise"),
        ("federated", ["privacy=central_dp", "privacy.noise_multiplier=0"], "needs noise_multiplier > 0"),
        ("federated", ["fl.rounds=0"], "fl.rounds must be >= 1, got 0"),
        ("federated", ["fl.fraction_fit=1.5"], "fl.fraction_fit must be in [0, 1]"),
        ("federated", ["train.learning_rate=0"], "train.learning_rate must be > 0"),
        ("federated", ["seed=-1"], "seed must be >= 0, got -1"),
        ("federated", ["attack.tenants=[9]"], "attack.tenants [9] are not tenant indices"),
        ("federated", ["simulation.timeout_s=0"], "simulation.timeout_s must be > 0"),
        ("compare", ["seeds=-1"], "compare.seeds must be >= 1, got -1"),
        ("compare", ["reward.latency=nan"], "reward.latency must be"),
        ("benchmark", ["seeds=-1"], "benchmark.seeds must be >= 1, got -1"),
        ("pretrain", ["agent.learning_rate=-1"], "agent.learning_rate must be > 0"),
        ("pretrain", ["agent.gamma=1.5"], "agent.gamma must be in [0, 1]"),
        ("pretrain", ["train.seed=-1"], "train.seed must be >= 0, got -1"),
        ("pretrain", ["train.max_wall_s=0"], "train.max_wall_s must be > 0"),
        ("pretrain", ["evaluation.seeds=0"], "evaluation.seeds must be >= 1"),
        ("pretrain", ["agent=dqn", "agent.tau=0"], "agent.tau must be > 0"),
        ("pretrain", ["scenario.paths.0.capacity_mbps=inf"], "scenario.paths.0.capacity_mbps must be finite"),
        ("pretrain_universal", ["iterations=0"], "pretrain_universal.iterations must be >= 1"),
        ("pretrain_universal", ["variants.num_envs=0"], "variants.num_envs must be >= 1"),
        ("tune_static", ["search.population=0"], "search.population must be >= 1"),
        ("bench_train", ["num_envs=0"], "bench_train.num_envs must be >= 1"),
        ("train_set", ["families=[heldout_lte_edge]"], "family 'heldout_lte_edge' is held out"),
        ("train_set", ["families=[nope]"], "family 'nope' is unknown"),
        ("train_set", ["teacher.kind=oracle"], "teacher.kind must be one of"),
        ("train_set", ["ppo.total_timesteps=0"], "ppo.total_timesteps must be >= 1"),
        ("train_set", ["model.n_heads=3"], "d_model 64 is not a multiple of n_heads 3"),
        ("train_set", ["teacher.smoothing=1"], "teacher.smoothing must be in [0, 0.99]"),
    ],
)
def test_bad_values_are_refused_by_key(name: str, overrides: list[str], message: str):
    with pytest.raises(ConfigError) as info:
        to_typed(compose(name, overrides=overrides), _schema(name))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_config_error_exits_2_with_one_line(capsys):
    @exits_2_on_config_error
    def main(cfg: DictConfig) -> None:
        to_typed(cfg, CompareConfig)

    with pytest.raises(SystemExit) as info:
        main(compose("compare", overrides=["episodes=0"]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("config error: compare.episodes must be >= 1, got 0")


@pytest.mark.parametrize(
    ("scenario", "message"),
    [("nope", "unknown scenario 'nope'; available: ["), ("conf/suite/heldout/index.yaml", "Key 'suite' not in")],
)
def test_a_scenario_that_does_not_load_exits_2_with_one_line(capsys, scenario: str, message: str):
    @exits_2_on_config_error
    def main(cfg: DictConfig) -> None:
        load_scenario(str(ROOT / scenario) if scenario.endswith(".yaml") else scenario)

    with pytest.raises(SystemExit) as info:
        main(compose("compare"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error: " in err[0] and message in err[0]


def test_the_entry_point_exits_2_before_any_work(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.federated", "privacy.target_epsilon=0", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    message = "privacy.target_epsilon must be > 0 (null: no budget), got 0.0"
    assert out.stderr.strip() == f"federated: config error: {message}"
    assert not (tmp_path / "federated_rounds.json").exists()


@pytest.mark.parametrize(
    ("module", "runner", "inner", "name"),
    [
        ("experiments.pretrain_universal", "run_pretrain_universal", "_run_pretrain_universal", "pretrain_universal"),
        ("experiments.multiagent", "run_multiagent", "_run_multiagent", "multiagent"),
    ],
)
def test_training_entry_points_fix_the_thread_count(monkeypatch, tmp_path, module, runner, inner, name):
    import importlib

    import torch

    mod = importlib.import_module(module)
    conf = to_typed(compose(name, overrides=["torch_threads=3"]), _schema(name))
    seen: list[int] = []
    monkeypatch.setattr(mod, inner, lambda cfg, out: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    getattr(mod, runner)(conf, tmp_path)
    assert seen == [3] and torch.get_num_threads() == before


def test_the_federated_entry_point_fixes_the_thread_count(monkeypatch, tmp_path):
    import torch

    seen: list[int] = []
    monkeypatch.setattr(federated, "run_federated", lambda cfg, out: seen.append(torch.get_num_threads()))
    federated.main(compose("federated", overrides=["torch_threads=3", f"output.dir={tmp_path}"]))
    assert seen == [3]
