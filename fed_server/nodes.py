"""How many clients a run has: the nodes connected to the SuperLink when it starts, not a list in the config.

In a deployment each SuperNode declares its tenant in its own node config, so the run config's ``tenants``
(the simulation's list) says nothing about how many nodes there are; waiting for that many hung a 3-node
deployment at "Secure aggregation commencing" (Flower's client manager waits a day for the nodes it was
told to expect). The simulation engine registers all its nodes before the ServerApp starts, so there the
count is the number of simulated tenants, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.server import Grid

from shaping.fed_settings import RunSettings

log = logging.getLogger(__name__)


def nodes_needed(s: RunSettings) -> int:
    """Nodes the server waits for before round 1: fl.min_available_clients, else fl.min_fit_clients."""
    return s.min_available_clients or s.min_fit_clients


def wait_for_nodes(
    grid: Grid,
    needed: int,
    *,
    poll_s: float = 1.0,
    report_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Wait until at least `needed` nodes are connected and return how many are.

    Logs every `report_s` seconds how many nodes it still waits for, so a run short of nodes says so
    instead of hanging silently.
    """
    next_report = clock()
    while (joined := len(list(grid.get_node_ids()))) < needed:
        if clock() >= next_report:
            log.warning("waiting for nodes: %d of the %d needed (fl.min_available_clients / fl.min_fit_clients) "
                        "have joined", joined, needed)  # fmt: skip
            next_report = clock() + report_s
        sleep(poll_s)
    log.info("%d node(s) joined: the run's clients", joined)
    return joined
