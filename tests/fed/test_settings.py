"""The flat run-config keys: pyproject declares exactly RunSettings' keys (flwr 1.42 refuses undeclared ones)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from experiments.federated import FederatedConfig, run_config
from shaping.agents.universal import TenantTask
from shaping.fed_settings import KEYS, RunSettings

ROOT = Path(__file__).resolve().parents[2]


def _flatten(table, prefix=""):
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _declared():
    with (ROOT / "pyproject.toml").open("rb") as f:
        return _flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def test_pyproject_declares_every_settings_key_with_its_default():
    declared = _declared()
    assert set(declared) == set(KEYS) == set(RunSettings().to_config())
    assert RunSettings.from_config(declared) == RunSettings()


def test_flat_keys_round_trip_through_strings_as_flwr_passes_them():
    s = RunSettings(
        strategy="fedprox",
        rounds=7,
        target_epsilon=8.0,
        secure_aggregation=True,
        tenants=(TenantTask("default", "gameco", 3),),
        hidden_sizes=(16,),
        attack_tenants=(0, 2),
    )
    assert RunSettings.from_config(s.to_config()) == s
    as_strings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in s.to_config().items()}
    assert RunSettings.from_config(as_strings) == s
    assert RunSettings.from_config({"privacy.target_epsilon": "null"}).target_epsilon is None


def test_the_hydra_entry_point_sets_every_key(tmp_path):
    assert set(KEYS) <= set(run_config(FederatedConfig(), tmp_path))


def test_round_ppo_anneals_the_learning_rate_over_the_rounds_only_when_asked():
    s = RunSettings(rounds=4, anneal_lr=True)
    lr = s.ppo.learning_rate
    assert [s.round_ppo(r).learning_rate for r in (1, 2, 3, 4)] == [lr, 0.75 * lr, 0.5 * lr, 0.25 * lr]
    assert s.round_ppo(9).learning_rate == 0.25 * lr  # a round past the plan (resumed with more) keeps the last rate
    assert s.round_ppo(0) == s.ppo  # a round the server did not number
    assert RunSettings(rounds=4).round_ppo(3) == RunSettings().ppo
    assert s.round_ppo(2).num_steps == s.ppo.num_steps


def test_central_dp_without_noise_cannot_start_from_a_flat_run_config():
    # flwr run --run-config bypasses the Hydra schema: the settings check the same privacy ranges.
    with pytest.raises(ValueError, match=r"privacy\.mode=central needs noise_multiplier > 0"):
        RunSettings.from_config({"privacy.mode": "central", "privacy.noise_multiplier": 0.0})
    with pytest.raises(ValueError, match=r"privacy\.target_epsilon must be > 0"):
        RunSettings.from_config({"privacy.target_epsilon": 0.0})
    assert RunSettings.from_config({"privacy.mode": "central", "privacy.noise_multiplier": 1.0}).noise_multiplier == 1


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"fl.rounds": 0}, r"^fl\.rounds must be >= 1, got 0$"),
        ({"fl.rounds": "-3"}, r"^fl\.rounds must be >= 1, got -3$"),
        ({"fl.fraction_fit": 0.0}, r"^fl\.fraction_fit must be in \(0, 1\], got 0\.0$"),
        ({"fl.min_fit_clients": 0}, r"^fl\.min_fit_clients must be >= 1, got 0$"),
        ({"fl.min_available_clients": -1}, r"^fl\.min_available_clients must be >= 0, got -1$"),
        ({"fl.trim_beta": 0.5}, r"^fl\.trim_beta must be in \[0, 0\.5\), got 0\.5$"),
        ({"fl.weighting": "tokens"}, r"^fl\.weighting must be examples or uniform, got 'tokens'$"),
        ({"train.local_iterations": 0}, r"^train\.local_iterations must be >= 1, got 0$"),
        ({"evaluation.envs": 0}, r"^evaluation\.envs must be >= 1, got 0$"),
        ({"train.num_steps": 0}, r"^train\.num_steps must be >= 1, got 0$"),
        ({"train.learning_rate": 0.0}, r"^train\.learning_rate must be > 0, got 0\.0$"),
        ({"seed": -1}, r"^seed must be >= 0, got -1$"),
        ({"train.hidden_sizes": "[]"}, r"^train\.hidden_sizes must list at least one layer"),
        ({"train.hidden_sizes": "[64, 0]"}, r"^train\.hidden_sizes entry must be >= 1, got 0$"),
        ({"tenants": '[{"scenario": "default", "tenant": "gameco", "num_envs": 0}]'},
         r"^tenants: gameco@default's num_envs must be >= 1, got 0$"),
    ],
)
def test_impossible_values_are_refused_with_one_line_naming_the_key(flat, message):
    """flwr run --run-config bypasses the Hydra schema: the settings refuse what could never run."""
    with pytest.raises(ValueError, match=message) as err:
        RunSettings.from_config(flat)
    assert "\n" not in str(err.value)


def test_the_hydra_schema_refuses_zero_rounds_too():
    from experiments.config import FLConfig

    with pytest.raises(ValueError, match=r"^fl\.rounds must be >= 1, got 0$"):
        FLConfig(rounds=0)
