"""Aggregation strategies of the federation and which privacy settings each can be combined with.

The strategies are Flower's (legacy ``flwr.server.strategy``, because SecAgg+ in flwr 1.42 runs only
through the legacy DefaultWorkflow, and one code path serves every privacy setting):
fedavg, fedavgm (FedAvg with a server learning rate and momentum), fedprox, fedadam, trimmed_mean
(FedTrimmedAvg), krum. Privacy wraps the chosen strategy in one of Flower's fixed-clipping wrappers,
which add the noise at the server (``clip`` mode: clipping without noise; ``distributed``: the clients
add the noise shares, the server none). Who clips (RunSettings.server_clips): without SecAgg+ the
server clips each update itself (DifferentialPrivacyServerSideFixedClipping), because a malicious
tenant would skip its own client's clipping; under SecAgg+ the server sees only the sum, so the
clients clip (DifferentialPrivacyClientSideFixedClipping with their fixedclipping_mod), which bounds
honest tenants only. ``privacy.clip_to_median`` clips at the round's median update norm instead
(fed_server.robust).

Refused combinations (check_compatible raises IncompatibleSettings saying why):
- a robust rule (trimmed_mean, krum) with SecAgg+: the server sees only the masked sum, never the
  individual updates a robust rule must rank or trim;
- clip_to_median outside clip mode or with SecAgg+: the server needs each update's norm, and DP noise is
  calibrated to a fixed bound, not to one read from the updates;
- distributed DP without SecAgg+: each share alone is far too little noise to protect one update;
- central or distributed noise with krum, trimmed_mean, fedadam or fedavgm: the noise is calibrated to the
  sensitivity of the *mean* of clipped updates (C / n); Krum returns one client's update (sensitivity C),
  a trimmed mean has larger sensitivity than the mean, FedAdam's noise would be added after its
  adaptive step, which rescales it, and FedAvgM's server learning rate scales the mean (and its momentum
  carries each update into later rounds) before the noise is added. Clipping alone (``clip``) works with
  all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.common import Metrics, Parameters, Scalar
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fed_server.privacy import distributed_share_std
from fed_server.robust import MedianNormClipping
from shaping.fed_settings import RunSettings

STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "trimmed_mean", "krum")
ROBUST = ("trimmed_mean", "krum")
#: Fit-config key carrying each client's distributed-DP noise share (std, in weight units).
KEY_NOISE_SHARE = "fedshape.noise_share_std"


class IncompatibleSettings(ValueError):
    """The strategy cannot be combined with the privacy settings (the message says why)."""


def check_compatible(s: RunSettings) -> None:
    """Raise IncompatibleSettings for the refused strategy/privacy combinations (module docstring)."""
    if s.strategy not in STRATEGIES:
        raise IncompatibleSettings(f"unknown strategy {s.strategy!r}; known: {STRATEGIES}")
    if s.privacy_mode not in ("none", "clip", "central", "distributed"):
        raise IncompatibleSettings(f"unknown privacy mode {s.privacy_mode!r}")
    if s.strategy in ROBUST and s.secure_aggregation:
        raise IncompatibleSettings(
            f"{s.strategy} needs the individual updates, but SecAgg+ only reveals their sum: "
            "use fedavg/fedavgm/fedprox/fedadam with secure aggregation, or turn it off"
        )
    if s.privacy_mode == "distributed" and not s.secure_aggregation:
        raise IncompatibleSettings(
            "distributed DP needs SecAgg+ (privacy.secure_aggregation=true): without it the server sees each "
            "update with only its small noise share"
        )
    if s.clip_to_median and (s.privacy_mode != "clip" or s.secure_aggregation):
        raise IncompatibleSettings(
            "privacy.clip_to_median needs privacy.mode=clip without SecAgg+: the server must see each update's "
            "norm, and a bound taken from the updates would break DP noise calibrated to a fixed one"
        )
    if s.client_level_dp and s.strategy in (*ROBUST, "fedadam", "fedavgm"):
        raise IncompatibleSettings(
            f"{s.privacy_mode} DP noise is calibrated to the mean of clipped updates; {s.strategy} changes the "
            "sensitivity (see fed_server/strategy.py). Use fedavg or fedprox, or privacy.mode=clip"
        )


def mean_metrics(results: list[tuple[int, Metrics]]) -> Metrics:
    """The clients' numeric metrics over the tenants, as the report states them (experiments.fl_report): each
    tenant counts once, and an epsilon is the largest tenant's (the federation's guarantee is the weakest one).

    Flower logs these in its run summary. Text metrics (the tenant's name) and flags are left out; the
    per-tenant records stay in TrackedStrategy's history.
    """
    values: dict[str, list[float]] = {}
    for _, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    return {k: max(v) if k.endswith("epsilon") else sum(v) / len(v) for k, v in values.items()}


def sampled_clients(s: RunSettings, n_clients: int) -> int:
    """Clients sampled for training each round out of n_clients (what DP noise is calibrated to)."""
    return max(1, round(s.fraction_fit * n_clients))


def min_clients(s: RunSettings, n_clients: int) -> int:
    """Fewest clients a round needs: fl.min_fit_clients, at most the run's n_clients."""
    return max(1, min(s.min_fit_clients, n_clients))


def min_results(s: RunSettings, n_clients: int) -> int:
    """Fewest answers a round aggregates: min_clients, but every sampled client under client-level DP.

    Central and distributed noise are calibrated to the mean of all sampled clients' updates: a mean of
    fewer has a larger sensitivity (and fewer distributed noise shares), so the accounted epsilon would
    understate what the round spent. Those rounds fail instead of aggregating.
    """
    return sampled_clients(s, n_clients) if s.client_level_dp else min_clients(s, n_clients)


def _round_config(server_round: int) -> dict[str, Scalar]:
    return {"server_round": server_round}


def base_strategy(s: RunSettings, initial: Parameters, n_clients: int,
                  on_fit_config: Callable[[int], dict[str, Scalar]]) -> Strategy:  # fmt: skip
    """Flower's strategy for s.strategy; every client still connected is evaluated each round.

    A round waits for min_fit_clients nodes only (min_clients), not for all n_clients: a node that died is
    not waited for (Flower's client manager would wait a day for it), and the failures a round tolerates are
    counted by fed_server.tracking.TrackedStrategy, which needs min_clients answers.
    """
    least = min_clients(s, n_clients)
    common = {
        "fraction_fit": s.fraction_fit, "fraction_evaluate": 1.0, "min_fit_clients": least,
        "min_evaluate_clients": least, "min_available_clients": least, "initial_parameters": initial,
        "on_fit_config_fn": on_fit_config, "accept_failures": True,
        # The round's number reaches the evaluation too: the client publishes the round's model under it.
        "on_evaluate_config_fn": _round_config,
        "fit_metrics_aggregation_fn": mean_metrics, "evaluate_metrics_aggregation_fn": mean_metrics,
    }  # fmt: skip
    if s.strategy == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)  # type: ignore[arg-type]
    if s.strategy == "fedavgm":
        return FedAvgM(server_learning_rate=s.server_lr, server_momentum=s.server_momentum,
                       **common)  # type: ignore[arg-type]  # fmt: skip
    if s.strategy == "fedadam":
        return FedAdam(eta=s.server_lr, eta_l=s.client_lr, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau,
                       **common)  # type: ignore[arg-type]  # fmt: skip
    if s.strategy == "trimmed_mean":
        return FedTrimmedAvg(beta=s.trim_beta, **common)  # type: ignore[arg-type]
    if s.strategy == "krum":
        return Krum(num_malicious_clients=s.krum_malicious, **common)  # type: ignore[arg-type]
    return FedAvg(**common)  # type: ignore[arg-type]


def build_strategy(s: RunSettings, initial: Parameters, n_clients: int) -> Strategy:
    """The strategy with its privacy wrapper, after check_compatible."""
    check_compatible(s)
    sampled = sampled_clients(s, n_clients)

    def fit_config(server_round: int) -> dict[str, Scalar]:
        cfg: dict[str, Scalar] = {"server_round": server_round}
        if s.privacy_mode == "distributed":
            cfg[KEY_NOISE_SHARE] = distributed_share_std(s.noise_multiplier, s.clipping_norm, sampled)
        return cfg

    strategy = base_strategy(s, initial, n_clients, fit_config)
    if s.privacy_mode == "none":
        return strategy
    server_noise = s.noise_multiplier if s.privacy_mode == "central" else 0.0
    if s.clip_to_median:
        return MedianNormClipping(strategy, s.clipping_norm, sampled)
    if s.server_clips:
        return DifferentialPrivacyServerSideFixedClipping(strategy, server_noise, s.clipping_norm, sampled)
    return DifferentialPrivacyClientSideFixedClipping(strategy, server_noise, s.clipping_norm, sampled)
