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

from fed_server.robust import MedianNormClipping
from fed_server.strategy import (
    STRATEGIES,
    IncompatibleSettings,
    base_strategy,
    build_strategy,
    check_compatible,
    mean_metrics,
)
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
        (s(privacy_mode="central", noise_multiplier=1.0, clip_to_median=True), "clip_to_median"),
        (s(privacy_mode="clip", secure_aggregation=True, clip_to_median=True), "clip_to_median"),
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
        s(strategy="fedavgm", server_lr=4.0, privacy_mode="clip", clip_to_median=True),
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


def _round(strategy, start, updates):
    strategy.current_round_params = start  # what configure_fit records when it sends the round's model
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([start[0] + u]), num_examples=1, metrics={}))
        for u in updates
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None
    return parameters_to_ndarrays(params)[0] - start[0]


def test_without_secagg_the_server_clips_an_update_its_sender_did_not():
    """A malicious tenant skips its client's clipping; the server bounds its 100x update all the same."""
    start = [np.full(3, 0.5, dtype=np.float32)]
    strategy = build_strategy(s(privacy_mode="clip", clipping_norm=1.0), ndarrays_to_parameters(start), 2)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    honest = np.array([0.3, 0.4, 0.0], dtype=np.float32)  # norm 0.5: under the bound, kept as it is
    scaled = 100.0 * np.array([1.0, -2.0, 2.0], dtype=np.float32)  # norm 300
    clipped = scaled / np.linalg.norm(scaled)  # the same direction at the clipping norm
    np.testing.assert_allclose(_round(strategy, start, [honest, scaled]), (honest + clipped) / 2, rtol=1e-5, atol=1e-6)


def test_median_clipping_holds_a_scaled_update_to_the_honest_tenants_norm():
    """Honest updates far below the fixed bound: the fixed bound lets a 100x update through at the bound,
    the median bound cuts it to a typical honest norm."""
    start = [np.zeros(4, dtype=np.float32)]
    rng = np.random.default_rng(0)
    honest = [rng.normal(0, 0.01, 4).astype(np.float32) for _ in range(3)]
    attacker = 100.0 * rng.normal(0, 0.01, 4).astype(np.float32)
    norms = sorted(float(np.linalg.norm(u)) for u in [*honest, attacker])
    median = (norms[1] + norms[2]) / 2
    assert median < 1.0 < float(np.linalg.norm(attacker))

    fixed = build_strategy(s(privacy_mode="clip", clipping_norm=1.0), ndarrays_to_parameters(start), 4)
    robust = build_strategy(s(privacy_mode="clip", clipping_norm=1.0, clip_to_median=True),
                            ndarrays_to_parameters(start), 4)  # fmt: skip
    assert isinstance(robust, MedianNormClipping)
    unit = attacker / np.linalg.norm(attacker)
    np.testing.assert_allclose(_round(fixed, start, [*honest, attacker]), (sum(honest) + unit) / 4, atol=1e-6)
    clipped = [u * min(1.0, median / float(np.linalg.norm(u))) for u in [*honest, attacker]]
    np.testing.assert_allclose(_round(robust, start, [*honest, attacker]), sum(clipped) / 4, atol=1e-6)
    assert robust.clipping_norm == pytest.approx(median)


def test_median_clipping_never_clips_above_the_configured_norm():
    start = [np.zeros(2, dtype=np.float32)]
    robust = build_strategy(s(privacy_mode="clip", clipping_norm=0.5, clip_to_median=True),
                            ndarrays_to_parameters(start), 2)  # fmt: skip
    updates = [np.array([3.0, 4.0], dtype=np.float32), np.array([0.0, 10.0], dtype=np.float32)]
    mean = _round(robust, start, updates)
    assert robust.clipping_norm == 0.5
    np.testing.assert_allclose(mean, (np.array([0.3, 0.4]) + np.array([0.0, 0.5])) / 2, atol=1e-6)


def test_metrics_are_aggregated_over_the_tenants_as_the_report_states_them():
    fit = [
        (16, {"tenant": "a", "rollout_reward": 1.0, "dpsgd_epsilon": 2.0, "num_examples": 16}),
        (2, {"tenant": "b", "rollout_reward": -0.5, "dpsgd_epsilon": 5.5, "num_examples": 2, "flag": True}),
    ]
    # Each tenant counts once (not by its examples); an epsilon is the largest tenant's; text and flags stay out.
    assert mean_metrics(fit) == {"rollout_reward": 0.25, "dpsgd_epsilon": 5.5, "num_examples": 9.0}
    assert mean_metrics([]) == {}


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_fit_and_evaluate_metrics(name):
    """Flower's strategies warn on every round without them ("No fit_metrics_aggregation_fn provided")."""
    strategy = base_strategy(s(strategy=name), INIT, 4, lambda r: {})
    assert strategy.fit_metrics_aggregation_fn is mean_metrics
    assert strategy.evaluate_metrics_aggregation_fn is mean_metrics
