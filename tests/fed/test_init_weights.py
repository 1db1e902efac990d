"""A run that starts from a weights file: the file format, the layout check, and every arm starting there."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.common import Context, RecordDict

from experiments.fl_arms import centralized, local_only
from fed_client.app import TenantClient
from fed_server.checkpoints import GlobalCheckpoint, load_latest, save_global
from shaping.agents.global_model import get_weights, initial_model, load_weights, make_model, save_weights
from shaping.agents.local_train import LocalResult
from shaping.agents.universal import TenantTask, UniversalLayout
from shaping.config import PPOConfig
from shaping.fed_settings import RunSettings


def _pretrained(layout: UniversalLayout, hidden=(8,)) -> list[np.ndarray]:
    model = make_model(layout, hidden, seed=7)
    model.obs_norm.update(torch.randn(64, layout.obs_dim) * 2 + 1)
    return get_weights(model)


def test_weights_file_roundtrip_under_any_suffix(tmp_path):
    w = _pretrained(UniversalLayout())
    for name in ("universal.npz", "weights.bin"):
        path = save_weights(tmp_path / "sub" / name, w)
        assert path == tmp_path / "sub" / name  # no .npz appended
        back = load_weights(path)
        assert len(back) == len(w) and all(np.array_equal(a, b) for a, b in zip(w, back, strict=True))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights(tmp_path / "missing.npz")


def test_round_checkpoints_are_weights_files(tmp_path):
    w = _pretrained(UniversalLayout())
    path = save_global(tmp_path, GlobalCheckpoint(round=3, weights=w))
    assert all(np.array_equal(a, b) for a, b in zip(load_weights(path), w, strict=True))
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.round == 3


def test_initial_model_loads_the_file_and_its_normalizer_prior(tmp_path):
    layout = UniversalLayout()
    w = _pretrained(layout)
    path = save_weights(tmp_path / "u.npz", w)
    fresh = initial_model(layout, (8,), seed=0)
    loaded = initial_model(layout, (8,), seed=0, weights_file=path, norm_count=500.0)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(get_weights(loaded), w, strict=True))
    assert not np.allclose(get_weights(fresh)[2], w[2])
    assert float(loaded.obs_norm.count) == 500.0
    # The prior sets how far a local batch moves the statistics.
    mean_before = loaded.obs_norm.mean.clone()
    loaded.obs_norm.update(torch.full((5, layout.obs_dim), 100.0))
    assert float((loaded.obs_norm.mean - mean_before).abs().max()) < 100.0 * 5 / 500
    with pytest.raises(ValueError, match=r"u\.npz do not fit .* hidden sizes \[16\]"):
        initial_model(layout, (16,), seed=0, weights_file=path)


def _settings(path: str) -> RunSettings:
    return RunSettings(
        tenants=(TenantTask("small_congested", "studio", 1), TenantTask("single_path", "devops", 1)),
        rounds=1, local_iterations=1, ppo=PPOConfig(num_steps=2, update_epochs=1, num_minibatches=1),
        hidden_sizes=(8,), eval_envs=1, eval_steps=2, init_weights=path, init_norm_count=1e6,
    )  # fmt: skip


def test_reference_arms_start_from_the_file(tmp_path, monkeypatch):
    layout = UniversalLayout()
    w = _pretrained(layout)
    path = str(save_weights(tmp_path / "u.npz", w))
    s = _settings(path)
    started: list[list[np.ndarray]] = []
    import experiments.fl_arms as arms

    def spy(model, *args, **kwargs):
        started.append(get_weights(model))
        return LocalResult(num_examples=1, rollout_reward=0.0, optimizer_steps=0)

    monkeypatch.setattr(arms, "local_train", spy)
    local_only(s)
    centralized(s)
    assert len(started) == 3  # two local-only tenants, one centralized model
    for got in started:
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got, w, strict=True))


def test_client_gives_pretrained_statistics_their_prior_on_its_first_round(tmp_path):
    layout = UniversalLayout()
    w = _pretrained(layout)
    s = _settings(str(tmp_path / "only-on-the-server.npz"))  # the client never reads the file
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client = TenantClient(s, 0, s.tenants[0], ctx, None)
    new, _, _ = client.fit(w, {"server_round": 1})
    count = float(client.state["norm_count"])
    assert 1e6 < count < 1e6 + 100  # the prior plus the round's few observations
    # The statistics hardly moved from the pretrained ones.
    np.testing.assert_allclose(new[0], w[0], atol=1e-3)


def test_local_normalizer_never_travels_and_persists_in_the_node_state(tmp_path):
    layout = UniversalLayout()
    w_full = _pretrained(layout)
    path = str(save_weights(tmp_path / "u.npz", w_full))
    start = initial_model(layout, (8,), seed=0, weights_file=path)
    wire = get_weights(start, local_normalizer=True)
    assert len(wire) == len(w_full) - 2  # mean and std stay home
    assert all(np.array_equal(a, b) for a, b in zip(wire, w_full[2:], strict=True))

    s = dataclasses.replace(_settings(path), local_normalizer=True, init_norm_count=10.0)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client = TenantClient(s, 0, s.tenants[0], ctx, None)
    # The node starts from the run's initial statistics (it holds the weights file).
    np.testing.assert_allclose(client.model.obs_norm.mean.numpy(), w_full[0], rtol=1e-6)
    new, _, _ = client.fit(wire, {"server_round": 1})
    assert len(new) == len(wire)
    moved = np.asarray(client.state["norm_mean"])
    assert not np.allclose(moved, w_full[0])  # local observations updated them (prior of 10 only)
    # Next round a fresh client object (Flower makes one per round) restores them from the node state.
    again = TenantClient(s, 0, s.tenants[0], ctx, None)
    again._load(new)
    np.testing.assert_allclose(again.model.obs_norm.mean.numpy(), moved)
    assert float(again.model.obs_norm.count) == client.state["norm_count"]


@pytest.mark.parametrize(("weighting", "privacy"), [("examples", "none"), ("uniform", "none"), ("examples", "clip")])
def test_update_weight_is_examples_or_uniform(tmp_path, weighting, privacy):
    layout = UniversalLayout()
    s = dataclasses.replace(_settings(""), hidden_sizes=(8,), weighting=weighting, privacy_mode=privacy)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client = TenantClient(s, 0, s.tenants[0], ctx, None)
    _, n, metrics = client.fit(get_weights(make_model(layout, (8,))), {"server_round": 1})
    assert metrics["num_examples"] == 2  # 1 environment x 2 steps
    assert n == (2 if (weighting, privacy) == ("examples", "none") else 1)
