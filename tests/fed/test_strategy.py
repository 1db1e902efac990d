"""Strategy selection and the refused strategy/privacy combinations."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedTrimmedAvg, Krum

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
        s(strategy="trimmed_mean", privacy_mode="clip"),
        s(strategy="krum", privacy_mode="clip"),
        s(privacy_mode="distributed", noise_multiplier=1.0, secure_aggregation=True),
    ],
)
def test_allowed_combinations_build(settings):
    check_compatible(settings)
    strategy = build_strategy(settings, INIT, 4)
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping) == (settings.privacy_mode != "none")


def test_privacy_wrapper_noise_by_mode():
    central = build_strategy(s(privacy_mode="central", noise_multiplier=1.5), INIT, 4)
    distributed = build_strategy(s(privacy_mode="distributed", noise_multiplier=1.5, secure_aggregation=True), INIT, 4)
    clip = build_strategy(s(strategy="krum", privacy_mode="clip"), INIT, 5)
    assert isinstance(central, DifferentialPrivacyClientSideFixedClipping) and central.noise_multiplier == 1.5
    assert isinstance(distributed, DifferentialPrivacyClientSideFixedClipping) and distributed.noise_multiplier == 0.0
    assert isinstance(clip, DifferentialPrivacyClientSideFixedClipping) and isinstance(clip.strategy, Krum)
    assert isinstance(build_strategy(s(), INIT, 4), FedAvg)
    assert isinstance(build_strategy(s(strategy="trimmed_mean"), INIT, 4), FedTrimmedAvg)
