"""The federated entry point: Hydra composition of every fl x privacy option, and a tiny end-to-end run
through Flower's simulation engine with SecAgg+ and distributed DP (the report and checkpoints included)."""

from __future__ import annotations

from dataclasses import replace

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.federated import (
    FedEvalConfig,
    FederatedConfig,
    FedTrainConfig,
    FedYardstickConfig,
    TenantEntry,
    register,
    run_federated,
)
from fed_server.strategy import IncompatibleSettings, check_compatible
from shaping.baselines import BASELINES
from shaping.fed_settings import RunSettings

CONF = Path(__file__).resolve().parents[2] / "conf"
FL = sorted(p.stem for p in (CONF / "fl").glob("*.yaml"))
PRIVACY = sorted(p.stem for p in (CONF / "privacy").glob("*.yaml"))


#: Pairs composed here (each fl/ and privacy/ option alone is composed by tests/config); the strategy
#: tests cover every combination's refusal on plain settings.
PAIRS = [("fedavg", "none"), ("fedprox", "central_dp"), ("krum", "distributed_dp"), ("trimmed_mean", "clip")]


def test_fl_and_privacy_options_compose_and_are_either_run_or_refused():
    assert {f for f, _ in PAIRS} <= set(FL) and {p for _, p in PAIRS} <= set(PRIVACY)
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for fl, privacy in PAIRS:
            cfg = compose(config_name="federated", overrides=[f"fl={fl}", f"privacy={privacy}"])
            _check_option(OmegaConf.to_object(cfg))


def test_the_report_runs_every_static_baseline_by_default():
    """fq_codel included: the evaluator runs it with CoDel on the tenant's leaves (evaluate_baseline)."""
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        conf = OmegaConf.to_object(compose(config_name="federated"))
    assert isinstance(conf, FederatedConfig)
    assert sorted(conf.evaluation.baselines) == sorted(FedEvalConfig().baselines) == sorted(BASELINES)


def _check_option(conf):
    assert isinstance(conf, FederatedConfig) and len(conf.tenants) == 4
    s = RunSettings.from_config(_flat(conf))
    assert s.strategy == conf.fl.strategy and s.privacy_mode == conf.privacy.mode
    assert [t.name for t in s.tenants] == [f"{t.tenant}@{t.scenario}" for t in conf.tenants]
    noisy = conf.privacy.mode in ("central", "distributed")
    robust = conf.fl.strategy in ("trimmed_mean", "krum")
    refused = (noisy and (robust or conf.fl.strategy in ("fedadam", "fedavgm"))) or (
        robust and conf.privacy.secure_aggregation
    )
    if refused:
        with pytest.raises(IncompatibleSettings):
            check_compatible(s)
    else:
        check_compatible(s)


def _flat(conf):
    from experiments.config import flat_config

    return flat_config(conf)


@pytest.mark.slow
def test_tiny_secagg_distributed_dp_run_writes_the_report(tmp_path):
    cfg = FederatedConfig(
        tenants=[TenantEntry("default", "gameco", 2), TenantEntry("small_congested", "studio", 1),
                 TenantEntry("single_path", "devops", 1)],
        train=FedTrainConfig(local_iterations=1, num_steps=4, update_epochs=1, num_minibatches=1, hidden_sizes=[8]),
        evaluation=FedEvalConfig(envs=1, steps=3, baselines=["static_priority"]),
        yardstick=FedYardstickConfig(members=["static_priority", "tuned_static"], seeds=1, steps=3),
    )  # fmt: skip
    cfg.fl.rounds = 3
    cfg.privacy.mode, cfg.privacy.noise_multiplier, cfg.privacy.secure_aggregation = "distributed", 2.0, True
    # DP-SGD too (one step a round at sampling rate 1): its sample-level epsilon, 10.7 / 16.5 / 21.4 after
    # rounds 1-3, binds the budget before the client-level one (2.2 / 3.2 / 4.0).
    cfg.privacy.dpsgd_noise_multiplier = 0.5
    cfg.privacy.target_epsilon = 20.0
    res = run_federated(cfg, tmp_path)
    assert res["status"] == "stopped_at_privacy_budget"
    fed = res["federated"]
    assert [r["round"] for r in fed] == [1, 2]
    assert 0 < fed[0]["epsilon"] < fed[1]["epsilon"] <= 20.0
    sample = [[f["dpsgd_epsilon"] for f in r["fit"]] for r in fed]
    assert all(len(eps) == 3 for eps in sample)
    assert 0 < max(sample[0]) < min(sample[1]) and max(sample[1]) <= 20.0
    report = (tmp_path / "results.md").read_text()
    assert "sample-level epsilon" in report
    # The final global model against the yardstick on each tenant's own scenario; tuned_static only where its
    # plan is cached (gameco on default is, devops on single_path is not).
    assert report.index("against the yardstick") < report.index("against the best static baseline")
    assert "The final global model **beats the yardstick on " in report and " of 3 tenants**" in report
    yard = res["yardstick"]["tenants"]
    assert set(yard) == {"gameco@default", "studio@small_congested", "devops@single_path"}
    assert yard["gameco@default"]["controlled"] == ["gameco"]
    assert all(yard[t]["results"]["federated"]["applicable"] for t in yard)
    assert yard["gameco@default"]["results"]["tuned_static"]["applicable"]
    assert "python -m experiments.tune_static scenario=single_path controlled=[devops]" in (
        yard["devops@single_path"]["results"]["tuned_static"]["reason"]
    )
    # Each simulated tenant mirrored its state (with the accountant's history) for a resume.
    states = sorted((tmp_path / "tenant_state").glob("tenant_*.json"))
    assert [p.name for p in states] == ["tenant_0000.json", "tenant_0001.json", "tenant_0002.json"]
    assert all(len(json.loads(json.loads(p.read_text())["dpsgd_history"])) > 0 for p in states)
    assert set(fed[-1]["eval"]) == {"gameco@default", "studio@small_congested", "devops@single_path"}
    assert len(res["local_only"]) == 2 and len(res["centralized"]) == 2
    for name in ("results.md", "results.json", "reward.png", "sla.png", "epsilon.png"):
        assert (tmp_path / name).stat().st_size > 0
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["round"] == 2
    assert "federated_vs_centralized" in res["targets"]


def _composed(*overrides: str) -> FederatedConfig:
    """conf/federated.yaml with these command-line overrides (``experiment=NAME``: a variant of
    conf/experiment/), composed as experiments.federated composes it, as its dataclass."""
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        conf = OmegaConf.to_object(compose(config_name="federated", overrides=list(overrides)))
    assert isinstance(conf, FederatedConfig)
    return conf


def test_targets_config_overrides_only_the_budget_of_the_default():
    default = _composed()
    targets = _composed("experiment=federated_targets", "fl.rounds=3")
    assert (targets.fl.rounds, targets.evaluation.envs, targets.evaluation.steps) == (3, 4, 60)
    assert targets.tenants == default.tenants and targets.train == default.train
    assert targets.privacy == default.privacy and targets.fl.strategy == default.fl.strategy


def test_pretrained_config_needs_the_weights_and_keeps_the_targets_tenants(tmp_path):
    targets = _composed("experiment=federated_targets")
    unset = _composed("experiment=federated_pretrained")
    conf = _composed("experiment=federated_pretrained", "init.weights=/w.npz")
    population = _composed("experiment=federated_population_dp", "init.weights=/w.npz")
    assert conf.init.weights == "/w.npz" and conf.fl.local_normalizer
    assert (conf.fl.strategy, conf.fl.server_lr) == ("fedavgm", 2.0)
    # The DP population falls back to plain FedAvg, the one strategy central DP accepts here.
    assert population.fl.strategy == "fedavg"
    check_compatible(RunSettings.from_config(_flat(population)))
    check_compatible(RunSettings.from_config(_flat(conf)))
    assert conf.tenants == targets.tenants and conf.evaluation == targets.evaluation
    # The flat run config carries the settings to the Flower apps; a missing file is refused up front.
    from experiments.federated import run_config

    for missing in (unset, conf):
        with pytest.raises(FileNotFoundError, match=r"init\.weights: no file"):
            run_config(missing, tmp_path)
    conf.init.weights = str(tmp_path / "u.npz")
    (tmp_path / "u.npz").write_bytes(b"")
    s = RunSettings.from_config(run_config(conf, tmp_path))
    assert s.init_weights == str(tmp_path / "u.npz") and s.local_normalizer and s.local_iterations == 4


def test_scratch_config_is_the_pretrained_federation_without_the_start_and_with_more_rounds():
    scratch = _composed("experiment=federated_scratch")
    pretrained = _composed("experiment=federated_pretrained", "init.weights=/w.npz")
    assert scratch.init.weights == "" and scratch.fl.rounds == 24
    assert scratch.fl.strategy == pretrained.fl.strategy and scratch.fl.server_lr == pretrained.fl.server_lr
    assert scratch.fl.weighting == pretrained.fl.weighting == "uniform"
    assert scratch.fl.local_normalizer and pretrained.fl.local_normalizer
    assert scratch.train == pretrained.train and scratch.tenants == pretrained.tenants
    assert scratch.evaluation == pretrained.evaluation
    check_compatible(RunSettings.from_config(_flat(scratch)))


def test_scratch_long_config_runs_longer_with_the_sum_of_the_updates_an_annealed_rate_and_a_shared_normalizer():
    scratch = _composed("experiment=federated_scratch")
    long = _composed("experiment=federated_scratch_long")
    assert (long.fl.rounds, long.fl.server_lr) == (72, float(len(long.tenants)))
    assert long.train.anneal_lr and not scratch.train.anneal_lr
    assert scratch.fl.local_normalizer and not long.fl.local_normalizer
    assert replace(long.fl, rounds=scratch.fl.rounds, server_lr=scratch.fl.server_lr,
                   local_normalizer=scratch.fl.local_normalizer) == scratch.fl  # fmt: skip
    assert (replace(long.train, anneal_lr=False), long.tenants, long.evaluation, long.init) == (
        scratch.train, scratch.tenants, scratch.evaluation, scratch.init)
    check_compatible(RunSettings.from_config(_flat(long)))


def test_population_adds_randomized_tenants_that_the_run_settings_carry(tmp_path):
    from experiments.federated import PopulationConfig, run_config, with_population

    base = FederatedConfig(tenants=[TenantEntry("default", "gameco", 4)])
    assert with_population(base, tmp_path) is base  # no population: unchanged
    cfg = FederatedConfig(tenants=[TenantEntry("default", "gameco", 4)],
                          population=PopulationConfig(variants=5, num_envs=1, path_scale=2.0, seed=3))  # fmt: skip
    grown = with_population(cfg, tmp_path / "a")
    again = with_population(cfg, tmp_path / "b")
    assert grown.tenants[0] == cfg.tenants[0] and len(grown.tenants) == 6
    assert [t.tenant for t in grown.tenants] == [t.tenant for t in again.tenants]
    extra = grown.tenants[1:]
    assert all(Path(t.scenario).parent == tmp_path / "a" / "population" and t.num_envs == 1 for t in extra)
    s = RunSettings.from_config(run_config(grown, tmp_path / "a"))
    assert [t.name for t in s.tenants][1:] == [f"{t.tenant}@{t.scenario}" for t in extra]
    from shaping.agents.universal import make_env

    for task in s.tenants:  # every randomized tenant fits the federation's layout and runs
        make_env(task, s.layout, 1).reset_torch(seed=0)


def test_init_weights_are_found_from_the_working_directory_or_beside_conf(tmp_path, monkeypatch):
    from experiments.federated import resolve_weights

    here = tmp_path / "w.npz"
    here.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("w.npz") == here.resolve()
    # A path relative to the directory holding conf/ (the committed model) works from anywhere.
    assert resolve_weights("conf/federated.yaml") == (CONF / "federated.yaml").resolve()
    with pytest.raises(FileNotFoundError, match=r"init\.weights: no file .*missing\.npz"):
        resolve_weights("missing.npz")
