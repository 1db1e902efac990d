"""The server optimizer's state, saved with every checkpoint so that a resumed run goes on as if never stopped.

FedAvgM keeps a momentum vector and FedAdam (Flower's FedOpt family) its first and second moments
across rounds; without them a resumed run restarts its server optimizer from zero. The state is read
from, and written back to, the innermost strategy (the DP and clipping wrappers hold theirs in
``.strategy``). FedAdam's current weights are the global model itself, which the checkpoint holds.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import FedAvgM, Strategy

log = logging.getLogger(__name__)

#: Attributes of Flower's strategies that carry state from round to round (lists of arrays, or None).
STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")


def base_strategy(strategy: Strategy) -> Strategy:
    """The strategy inside the wrappers (DifferentialPrivacy*, clipping), which does the aggregation."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy


def server_state(strategy: Strategy) -> dict[str, list[np.ndarray]]:
    """The optimizer state the strategy holds now, by attribute name (empty for FedAvg and the robust rules)."""
    base = base_strategy(strategy)
    state = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(base, name, None)
        if value:
            state[name] = [np.array(v, copy=True) for v in value]
    return state


def restore_server_state(strategy: Strategy, state: dict[str, list[np.ndarray]]) -> None:
    """Put a checkpoint's optimizer state back; refuses state the strategy does not keep."""
    base = base_strategy(strategy)
    for name, arrays in state.items():
        if name not in STATE_ATTRIBUTES or not hasattr(base, name):
            raise ValueError(f"the checkpoint holds server state {name!r}, which {type(base).__name__} does not "
                             "keep: resume with the strategy the run started with")  # fmt: skip
        setattr(base, name, [np.array(a, copy=True) for a in arrays])
    if isinstance(base, FedAvgM) and base.server_momentum > 0 and base.momentum_vector is None:
        # A checkpoint written without the momentum: FedAvgM refuses to start past round 1 without
        # one, so it restarts from zero (what every resumed run did before the state was saved).
        log.warning("the checkpoint holds no FedAvgM momentum: it restarts at zero")
        if base.initial_parameters is not None:
            base.momentum_vector = [np.zeros_like(w) for w in parameters_to_ndarrays(base.initial_parameters)]
