"""Strategy selection and the refused strategy/privacy combinations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedAvgM,
    FedTrimmedAvg,
    Krum,
)

from fed_server.strategy import IncompatibleSettings, build_strategy, check_compatible
from shaping.fed_settings import RunSettings

INIT = ndarrays_to_parameters([])


def s(**kw):
    return dataclasses.replace(RunSettings(), **kw)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (s(strategy="trimmed_mean", secure_aggregation=True), "SecAgg"),
        (s(strategy="krum", secure_aggregation=True, privacy_mode="distributed", noise_multiplier=1.0), "SecAgg"),
        (s(privacy_mode="distributed", noise_multiplier=1.0), "needs SecAgg"),
        (s(strategy="krum", privacy_mode="central", noise_multiplier=1.0), "sensitivity"),
        (s(strategy="fedadam", privacy_mode="central", noise_multiplier=1.0), "sensitivity"),
        (s(strategy="fedavgm", server_lr=2.0, privacy_mode="central", noise_multiplier=1.0), "sensitivity"),
        (s(strategy="nope"), "unknown strategy"),
    ],
)
def test_refused_combinations_say_why(settings, match):
    with pytest.raises(IncompatibleSettings, match=match):
        check_compatible(settings)


@pytest.mark.parametrize(
    "settings",
    [
        s(),
        s(strategy="fedprox", proximal_mu=0.1, privacy_mode="central", noise_multiplier=1.0),
        s(strategy="fedadam", secure_aggregation=True),
        s(strategy="fedavgm", server_lr=2.0, secure_aggregation=True, privacy_mode="clip"),
        s(strategy="trimmed_mean", privacy_mode="clip"),
        s(strategy="krum", privacy_mode="clip"),
        s(privacy_mode="distributed", noise_multiplier=1.0, secure_aggregation=True),
    ],
)
def test_allowed_combinations_build(settings):
    check_compatible(settings)
    strategy = build_strategy(settings, INIT, 4)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping) == settings.server_clips
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping) == settings.clients_clip


def test_privacy_wrapper_noise_by_mode():
    central = build_strategy(s(privacy_mode="central", noise_multiplier=1.5), INIT, 4)
    central_secagg = build_strategy(s(privacy_mode="central", noise_multiplier=1.5, secure_aggregation=True), INIT, 4)
    distributed = build_strategy(s(privacy_mode="distributed", noise_multiplier=1.5, secure_aggregation=True), INIT, 4)
    clip = build_strategy(s(strategy="krum", privacy_mode="clip"), INIT, 5)
    assert isinstance(central, DifferentialPrivacyServerSideFixedClipping) and central.noise_multiplier == 1.5
    assert isinstance(central_secagg, DifferentialPrivacyClientSideFixedClipping)
    assert central_secagg.noise_multiplier == 1.5
    assert isinstance(distributed, DifferentialPrivacyClientSideFixedClipping) and distributed.noise_multiplier == 0.0
    assert isinstance(clip, DifferentialPrivacyServerSideFixedClipping) and isinstance(clip.strategy, Krum)
    assert isinstance(build_strategy(s(), INIT, 4), FedAvg)
    assert isinstance(build_strategy(s(strategy="trimmed_mean"), INIT, 4), FedTrimmedAvg)


def test_fedavgm_steps_by_the_server_learning_rate():
    """FedAvgM moves the global model by server_lr times the clients' mean update."""
    start = [np.zeros(3, dtype=np.float32)]
    strategy = build_strategy(s(strategy="fedavgm", server_lr=2.0), ndarrays_to_parameters(start), 2)
    assert isinstance(strategy, FedAvgM)
    updates = [np.array([1.0, 0.0, -1.0], dtype=np.float32), np.array([3.0, 2.0, -1.0], dtype=np.float32)]
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([u]), num_examples=1, metrics={}))
        for u in updates
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 2.0 * np.mean(updates, axis=0))


def test_the_config_schema_offers_exactly_the_server_strategies():
    """experiments.config keeps its own list (it does not import Flower); the two must agree."""
    from experiments.config import FL_STRATEGIES
    from fed_server.strategy import STRATEGIES

    assert FL_STRATEGIES == STRATEGIES


def test_without_secagg_the_server_clips_an_update_its_sender_did_not():
    """A malicious tenant skips its client's clipping; the server bounds its 100x update all the same."""
    start = [np.full(3, 0.5, dtype=np.float32)]
    strategy = build_strategy(s(privacy_mode="clip", clipping_norm=1.0), ndarrays_to_parameters(start), 2)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    strategy.current_round_params = start  # what configure_fit records when it sends the round's model
    honest = np.array([0.3, 0.4, 0.0], dtype=np.float32)  # norm 0.5: under the bound, kept as it is
    scaled = 100.0 * np.array([1.0, -2.0, 2.0], dtype=np.float32)  # norm 300
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([start[0] + u]), num_examples=1, metrics={}))
        for u in (honest, scaled)
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None
    clipped = scaled / np.linalg.norm(scaled)  # the same direction at the clipping norm
    expected = start[0] + (honest + clipped) / 2
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], expected, rtol=1e-5, atol=1e-6)
