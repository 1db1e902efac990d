"""The legacy Flower path, in one place: LegacyContext + DefaultWorkflow, with SecAgg+ as its fit workflow.

Flower 1.42 runs SecAgg+ only through the legacy workflow (SecAggPlusWorkflow inside DefaultWorkflow,
clients being NumPyClients behind ``secaggplus_mod``); the message-API strategies of flwr.serverapp
have no secure aggregation yet, so every run uses this path and plain runs just leave SecAgg+ out.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

#: Fixed-point range of SecAgg+: weights (and the normalizer's mean and std, < 10 by construction of
#: the observation) are clipped to +-CLIPPING_RANGE before quantization; 2**22 levels give a resolution
#: of 2 * 16 / 2**22 = 7.6e-6, below one Adam step at the default learning rate.
CLIPPING_RANGE = 16.0
QUANTIZATION_RANGE = 2**22


#: Each client shares its keys with about half the sampled clients, and 2/3 of those are needed to unmask.
#: Fractions, so the protocol fits the clients sampled each round (Flower rounds the share count up to an
#: odd one, at least 3, and the threshold to at least 2) rather than a count fixed before nodes join.
SHARES_FRACTION = 0.5
THRESHOLD_FRACTION = 2 / 3


def secaggplus_workflow(timeout: float | None = None) -> SecAggPlusWorkflow:
    """SecAgg+ with each client sharing its keys with about half the others, 2/3 of them needed to unmask.

    A round survives dropouts while every remaining client keeps the threshold of its neighbours; below
    that the workflow halts the round (fed_server.tracking then fails the run).
    """
    return SecAggPlusWorkflow(
        num_shares=SHARES_FRACTION,
        reconstruction_threshold=THRESHOLD_FRACTION,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        timeout=timeout,
    )


def run_legacy(grid: Grid, context: Context, strategy: Strategy, rounds: int, secure: bool) -> None:
    """Run `rounds` rounds of the strategy through DefaultWorkflow, with SecAgg+ when secure."""
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=secaggplus_workflow()) if secure else DefaultWorkflow()
    workflow(grid, legacy)
