"""Checkpoints: the same actions after a round trip, and a clear error for another tenant's layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import shaping.agents.checkpoint as checkpoint_module
from experiments.config import PPOConfig
from shaping.agents import (
    ActorCritic,
    CheckpointMismatchError,
    EnvelopeConfig,
    build_envelope,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from shaping.sim.scenarios import load_scenario
from shaping.spec import SPEC_VERSION, ActionLayout, ObservationLayout, TenantSpec, scenario_specs


@pytest.fixture(scope="module")
def specs() -> list[TenantSpec]:
    return scenario_specs(load_scenario("default"))


def _agent(spec: TenantSpec) -> ActorCritic:
    torch.manual_seed(0)
    agent = ActorCritic(
        ObservationLayout(spec).size, ActionLayout(spec).nvec, hidden_sizes=(32, 16), envelope=build_envelope(spec)
    )
    agent.obs_norm.update(torch.rand(64, agent.obs_dim) * 3 + 1)
    return agent


def test_round_trip_gives_the_same_actions(tmp_path, specs):
    spec = specs[0]
    agent = _agent(spec)
    cfg = PPOConfig(learning_rate=1e-3, hidden_sizes=[32, 16])
    path = save_checkpoint(tmp_path / "run" / "agent.pt", agent, spec, cfg, extra={"seed": 7})
    loaded = load_checkpoint(path, spec)
    model = loaded.model
    assert isinstance(model, ActorCritic)
    assert loaded.kind == "ppo" and loaded.config == dataclasses.asdict(cfg)
    assert loaded.meta["spec_version"] == SPEC_VERSION and loaded.meta["tenant"] == spec.name
    assert loaded.meta["extra"] == {"seed": 7}
    for name in ("mean", "var", "count"):
        torch.testing.assert_close(getattr(model.obs_norm, name), getattr(agent.obs_norm, name))
    obs = torch.rand(256, agent.obs_dim) * 4
    assert torch.equal(model.act(obs), agent.act(obs))
    torch.manual_seed(1)
    sampled = agent.act(obs, deterministic=False)
    torch.manual_seed(1)
    assert torch.equal(model.act(obs, deterministic=False), sampled)
    assert model.envelope == build_envelope(spec)


def test_envelope_bounds_are_saved_and_can_be_overridden(tmp_path, specs):
    spec = specs[0]
    strict = EnvelopeConfig(max_drop_prob=0.0, min_rate_share=0.1)
    path = save_checkpoint(tmp_path / "agent.pt", _agent(spec), spec, {"lr": 1e-3}, envelope=strict)
    assert load_checkpoint(path, spec).model.envelope == build_envelope(spec, strict)
    assert load_checkpoint(path, spec, envelope=EnvelopeConfig()).model.envelope == build_envelope(spec)
    assert read_checkpoint(path)["config"] == {"lr": 1e-3}


def test_another_tenants_layout_is_refused_naming_both(tmp_path, specs):
    gameco, bank = specs[0], specs[1]
    path = save_checkpoint(tmp_path / "agent.pt", _agent(gameco), gameco)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, bank)
    msg = str(err.value)
    assert "'gameco'" in msg and "'bank'" in msg
    assert gameco.fingerprint() in msg and bank.fingerprint() in msg
    # Same tenant, different action levels: the message points at the differing part.
    changed = dataclasses.replace(gameco, drop_levels=(0.0, 0.5))
    with pytest.raises(CheckpointMismatchError, match=r"differing parts.*X="):
        load_checkpoint(path, changed)


def test_another_spec_version_is_refused_naming_both(tmp_path, specs, monkeypatch):
    spec = specs[0]
    path = save_checkpoint(tmp_path / "agent.pt", _agent(spec), spec)
    monkeypatch.setattr(checkpoint_module, "SPEC_VERSION", "999")
    with pytest.raises(CheckpointMismatchError, match=rf"layout version {SPEC_VERSION}, .* reads version 999") as err:
        load_checkpoint(path, spec)
    assert "\n" not in str(err.value)


def test_a_foreign_file_is_refused(tmp_path, specs):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a FedShape agent checkpoint"):
        load_checkpoint(path, specs[0])


@pytest.mark.parametrize("keep", [0, 0.5])
def test_an_empty_or_truncated_file_is_a_value_error(tmp_path, specs, keep):
    whole = save_checkpoint(tmp_path / "whole.pt", _agent(specs[0]), specs[0]).read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ValueError, match="not a readable agent checkpoint"):
        load_checkpoint(path, specs[0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_a_damaged_state_dict_is_a_value_error(tmp_path, specs):
    path = save_checkpoint(tmp_path / "a.pt", _agent(specs[0]), specs[0])
    payload = read_checkpoint(path)
    payload["state_dict"] = {k: v for k, v in list(payload["state_dict"].items())[1:]}
    torch.save(payload, path)
    with pytest.raises(ValueError, match="cannot be rebuilt: RuntimeError"):
        load_checkpoint(path, specs[0])
