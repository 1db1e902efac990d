"""FedShape's Flower ServerApp: wiring of strategy, privacy, accounting, checkpoints and the legacy workflow.

Run settings are the flat keys of shaping.fed_settings.RunSettings (context.run_config over the
defaults the app was built with). ``app`` is what ``flwr run`` loads (pyproject's [tool.flwr.app]);
experiments.federated builds one with make_server_app(flat_config) for the simulation engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, ServerApp

from fed_server.checkpoints import load_latest
from fed_server.nodes import nodes_needed, wait_for_nodes
from fed_server.privacy import epsilon_after, rounds_allowed
from fed_server.secagg import run_legacy
from fed_server.server_state import restore_server_state
from fed_server.strategy import build_strategy, min_results
from fed_server.tracking import TrackedStrategy
from shaping.agents.global_model import get_weights, initial_model
from shaping.fed_settings import RunSettings

log = logging.getLogger(__name__)


def run_server(grid: Grid, context: Context, config: Mapping[str, Any]) -> TrackedStrategy:
    """One federated run: resume if asked, cap the rounds to the privacy budget, run, mark the result."""
    s = RunSettings.from_config(config)  # refuses impossible values before anything starts
    n_clients = wait_for_nodes(grid, nodes_needed(s))
    ckpt = load_latest(s.checkpoint_dir) if (s.resume and s.checkpoint_dir) else None
    done = ckpt.round if ckpt else 0
    if ckpt:  # a resumed run never reads init.weights again
        weights = ckpt.weights
    else:
        weights = get_weights(initial_model(s.layout, s.hidden_sizes, s.seed, s.init_weights), s.local_normalizer)
    epsilon_of = ((lambda r: epsilon_after(r, s.noise_multiplier, s.fraction_fit, s.delta))
                  if s.client_level_dp else None)  # fmt: skip
    allowed = rounds_allowed(s)
    if allowed < s.rounds:
        log.warning("privacy budget epsilon=%s at delta=%s allows %d of %d rounds: stopping after round %d",
                    s.target_epsilon, s.delta, allowed, s.rounds, allowed)  # fmt: skip
    remaining = max(0, allowed - done)
    inner = build_strategy(s, ndarrays_to_parameters(weights), n_clients)
    if ckpt:
        restore_server_state(inner, ckpt.server_state)
    settings = {**dict(config), "rounds_allowed_by_budget": allowed, "resumed_from_round": done, "clients": n_clients}
    tracked = TrackedStrategy(inner, round_offset=done, epsilon_of=epsilon_of, checkpoint_dir=s.checkpoint_dir,
                              results_file=s.results_file, history=ckpt.history if ckpt else None,
                              settings=settings, min_results=min_results(s, n_clients))  # fmt: skip
    try:
        if remaining > 0:
            run_legacy(grid, context, tracked, remaining, s.secure_aggregation)
        tracked.status = "completed" if allowed == s.rounds else "stopped_at_privacy_budget"
    except BaseException as exc:
        tracked.status = f"failed: {exc!r}"
        raise
    finally:
        tracked.write()
    return tracked


def make_server_app(defaults: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are `defaults` overridden by the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, {**(defaults or {}), **dict(context.run_config)})

    return app


app = make_server_app()
