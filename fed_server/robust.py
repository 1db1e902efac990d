"""Norm bounding against a malicious tenant: each update clipped to the round's median update norm.

A fixed clipping norm bounds a tenant's update only at that norm. Honest updates shrink as training
converges (and under an annealed learning rate), so a bound chosen for the first rounds lies far above
them later: an attacker that scales its update then always arrives at the bound and outweighs every
honest tenant (measured in docs/results.md, "Robustness to a tenant that scales its update"). Clipping
each update to the median norm of the round's updates (FLAME's clipping, Nguyen et al., USENIX Security
2022) tracks the honest norms as long as fewer than half the sampled tenants misbehave, so a scaled update
weighs no more than a typical honest one.

The server must see the individual updates (no SecAgg+), and the bound is a statistic of the updates,
so no DP noise calibrated to a fixed bound may follow it (fed_server.strategy refuses both).
"""

from __future__ import annotations

import numpy as np
from flwr.common import FitRes, NDArrays, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy


def update_norm(params: NDArrays, reference: NDArrays) -> float:
    """L2 norm of params - reference over all arrays."""
    squares = (float(np.sum((np.asarray(p, np.float64) - r) ** 2)) for p, r in zip(params, reference, strict=True))
    return float(np.sqrt(sum(squares)))


class MedianNormClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side clipping (no noise) with the bound set each round to min(clipping_norm, median norm).

    Args:
        strategy: the strategy that aggregates the clipped updates.
        clipping_norm: the largest bound (a round whose median norm is larger clips there).
        num_sampled_clients: clients per round (Flower's wrapper warns when fewer reply).
    """

    def __init__(self, strategy: Strategy, clipping_norm: float, num_sampled_clients: int) -> None:
        super().__init__(strategy, 0.0, clipping_norm, num_sampled_clients)
        self.max_clipping_norm = clipping_norm

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Set this round's bound from the updates' norms, then clip and aggregate as the fixed wrapper does."""
        if results and not failures:
            sent = self.current_round_params
            norms = [update_norm(parameters_to_ndarrays(res.parameters), sent) for _, res in results]
            median = float(np.median(norms))
            # A zero median (half the updates empty) leaves the fixed bound: there is no scale to follow.
            self.clipping_norm = min(self.max_clipping_norm, median) if median > 0 else self.max_clipping_norm
        return super().aggregate_fit(server_round, results, failures)
