"""A strategy wrapper that records every round: per-tenant evaluation, epsilon, timing, and a checkpoint.

It delegates aggregation to the wrapped strategy unchanged, under the run's round numbers: a resumed
run's first round is round_offset + 1 to the wrapped strategy too, so what depends on the round
(FedAvgM's momentum, FedAdam's bias correction, the clients' seeds) goes on where the run stopped.
After each aggregation it saves the global model and the server optimizer's state
(fed_server.checkpoints, fed_server.server_state) and, after each evaluation, appends a record to the
history and rewrites the results file (JSON), so a run that dies mid-way leaves its rounds so far on
disk, and a caller can tell a finished run (``status: completed``) from a failed one.

A round tolerates clients that fail (a node killed mid-round, a ClientApp that raised, a SecAgg+ dropout)
while at least ``min_results`` of them answered: it aggregates those and records the failures. Fewer, or a
round that produced no aggregate at all (SecAgg+ halts below its reconstruction threshold), fail the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fed_server.checkpoints import GlobalCheckpoint, save_global, write_latest
from fed_server.server_state import server_state


class TrackedStrategy(Strategy):
    """Wraps a strategy; rounds are numbered from `round_offset` + 1 (a resumed run continues its numbering).

    Args:
        inner: the strategy that aggregates.
        round_offset: rounds done before this run (resume).
        epsilon_of: spent client-level epsilon after a given total number of rounds (None: no DP).
        checkpoint_dir: where the global model is saved every round ("" : nowhere).
        results_file: the JSON file rewritten every round ("" : none).
        history: records of the rounds before round_offset (resume).
        settings: the run's settings, written to the results file.
        min_results: fewest successful clients a training or evaluation round needs (fl.min_fit_clients).
        clock: time source (tests pass a fake one).
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        round_offset: int = 0,
        epsilon_of: Callable[[int], float] | None = None,
        checkpoint_dir: str = "",
        results_file: str = "",
        history: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        min_results: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.round_offset = round_offset
        self.epsilon_of = epsilon_of
        self.checkpoint_dir = checkpoint_dir
        self.results_file = results_file
        self.history: list[dict[str, Any]] = list(history or [])
        self.settings = settings or {}
        self.min_results = min_results
        self.clock = clock
        self._current: dict[str, Any] = {}
        self._ckpt: GlobalCheckpoint | None = None
        self._fit_start = 0.0
        self.status = "running"

    def __repr__(self) -> str:
        return f"TrackedStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The wrapped strategy's initial parameters."""
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Start timing the round, then let the wrapped strategy pick and configure clients."""
        self._fit_start = self.clock()
        self._current = {"round": self.round_offset + server_round}
        return self.inner.configure_fit(self.round_offset + server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate what the clients that answered sent (at least min_results), then checkpoint the new
        global model and note the clients' fit metrics and failures."""
        total = self.round_offset + server_round
        self._check_enough("training", total, len(results), failures)
        # The failures are counted here: Flower's DP wrappers (flwr 1.42) drop a whole round that has any.
        params, metrics = self.inner.aggregate_fit(total, results, [])
        self._current["fit_s"] = self.clock() - self._fit_start
        self._current["fit_clients"] = len(results)
        self._current["fit"] = [dict(res.metrics) for _, res in results]
        if failures:
            self._current["fit_failures"] = _describe(failures)
        if self.epsilon_of is not None:
            self._current["epsilon"] = self.epsilon_of(total)
        if params is not None and self.checkpoint_dir:
            self._ckpt = GlobalCheckpoint(total, parameters_to_ndarrays(params), list(self.history),
                                          server_state(self.inner))  # fmt: skip
            self._current["checkpoint"] = str(save_global(self.checkpoint_dir, self._ckpt))
        return params, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The wrapped strategy's evaluation round, once this round's training produced an aggregate."""
        if "fit_clients" not in self._current:
            # The fit workflow never called aggregate_fit: SecAgg+ halted (fewer nodes than its threshold
            # answered) or no client could be sampled. The global model did not move; and sampling for the
            # evaluation would wait (Flower's client manager: up to a day) for nodes that are gone.
            raise RuntimeError(f"round {self.round_offset + server_round}: training produced no aggregate "
                               "(SecAgg+ halted below its reconstruction threshold, or no client was sampled); "
                               "see the server log")  # fmt: skip
        return self.inner.configure_evaluate(self.round_offset + server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Record each tenant's evaluation of the global model and write the results file."""
        total = self.round_offset + server_round
        self._check_enough("evaluation", total, len(results), failures)
        if failures:
            self._current["eval_failures"] = _describe(failures)
        loss, metrics = self.inner.aggregate_evaluate(total, results, [])
        per_tenant = {str(res.metrics.get("tenant", i)): dict(res.metrics) for i, (_, res) in enumerate(results)}
        self._current["eval"] = per_tenant
        self._current["round_s"] = self.clock() - self._fit_start
        self.history.append(self._current)
        if self._ckpt is not None and self._ckpt.round == self._current["round"]:
            # The checkpoint was saved before this round's evaluation: add the round's record to it,
            # so a run resumed from it keeps every round's record.
            self._ckpt.history = list(self.history)
            write_latest(self.checkpoint_dir, self._ckpt)
        self.write()
        return loss, metrics

    def _check_enough(self, what: str, total: int, answered: int,
                      failures: list[tuple[ClientProxy, Any] | BaseException]) -> None:  # fmt: skip
        if answered < self.min_results:
            raise RuntimeError(f"round {total}: {what} needs {self.min_results} client(s), {answered} answered and "
                               f"{len(failures)} failed: {_describe(failures)[:3]}")  # fmt: skip

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """No server-side evaluation (tenants evaluate on their own held-out scenarios)."""
        return self.inner.evaluate(self.round_offset + server_round, parameters)

    def write(self) -> None:
        """Rewrite the results file with the settings, status and history."""
        if not self.results_file:
            return
        path = Path(self.results_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"status": self.status, "settings": self.settings, "rounds": self.history},
                                  indent=1, default=str))  # fmt: skip
        tmp.replace(path)


def _describe(failures: list[tuple[ClientProxy, Any] | BaseException]) -> list[str]:
    """One line per failed client: the error Flower reported, or the node and status of a failed reply."""
    out = []
    for failure in failures:
        if isinstance(failure, BaseException):
            out.append(" ".join(str(failure).split()) or type(failure).__name__)
        else:
            proxy, res = failure
            out.append(f"node {proxy.cid}: {res.status.code.name} {res.status.message}".strip())
    return out
