"""A round tolerates failed clients while fl.min_fit_clients holds, with and without SecAgg+.

The real ServerApp body (fed_server.app.run_server: Flower's DefaultWorkflow, SecAggPlusWorkflow, the
strategies, TrackedStrategy) runs against an in-process grid that hands each message to a small ClientApp
per node, and answers for a killed node as Flower's SuperLink does for a node that went offline: an error
reply. No Ray, no processes: the protocol runs in well under a second.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fed_server.app import run_server
from fed_server.checkpoints import load_latest
from shaping.agents.global_model import get_weights, initial_model
from shaping.agents.universal import UniversalLayout

@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.42 stamps messages with the process's task identity, which its ServerApp process sets."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


SHIFTS = {1: 0.01, 2: 0.03, 3: 0.5}  # node id -> how far its "training" moves every weight


class _Shift(NumPyClient):
    def __init__(self, shift: float) -> None:
        self.shift = shift

    def fit(self, parameters, config):
        return [p + np.float32(self.shift) for p in parameters], 1, {"tenant": f"t{self.shift}"}

    def evaluate(self, parameters, config):
        return 0.0, 1, {"tenant": f"t{self.shift}", "reward": 0.0, "sla_violation_rate": 0.0}


def _client_app(secure: bool) -> ClientApp:
    def client_fn(context: Context):
        return _Shift(SHIFTS[context.node_id]).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


class LoopbackGrid(Grid):
    """Delivers each message to its node's ClientApp in-process; a killed node answers with an error reply."""

    def __init__(self, app: ClientApp, kill: dict[int, int]) -> None:
        self.app, self.kill = app, kill  # node id -> messages it answers before it dies
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in SHIFTS}
        self.answered = dict.fromkeys(SHIFTS, 0)
        self.dead: set[int] = set()  # nodes the SuperLink noticed are gone (their message got an error reply)
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in SHIFTS if n not in self.dead]

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.answered[node] >= self.kill.get(node, 10**9):
                self.dead.add(node)
                replies.append(Message(Error(ErrorCode.NODE_UNAVAILABLE, f"node {node} went offline"), reply_to=msg))
                continue
            self.answered[node] += 1
            # A copy, as the wire gives each node its own: SecAgg+'s mod edits the message it gets, and the
            # workflow's messages to different nodes share records.
            replies.append(self.app(copy.deepcopy(msg), self.contexts[node]))
        return replies


def _run(tmp_path, secure: bool, kill: dict[int, int], min_fit: int):
    config = {"fl.rounds": 2, "fl.min_fit_clients": min_fit, "fl.weighting": "uniform",
              "privacy.secure_aggregation": secure, "train.hidden_sizes": "[8]",
              "output.checkpoint_dir": str(tmp_path / "ck")}  # fmt: skip
    grid = LoopbackGrid(_client_app(secure), kill)
    return run_server(grid, Context(1, 0, {}, RecordDict(), {}), config)


def _start() -> list[np.ndarray]:
    return get_weights(initial_model(UniversalLayout(), (8,), 0, ""), False)


@pytest.mark.parametrize("secure", [False, True], ids=["fedavg", "secagg+"])
def test_a_node_killed_mid_round_leaves_the_others_aggregated(tmp_path, secure):
    # Node 3 dies in round 1 before it sends its update: in plain FedAvg at once, under SecAgg+ after it
    # shared its keys (setup and share-keys stages), so the others' shares of its secret must unmask the sum.
    tracked = _run(tmp_path, secure, kill={3: 2 * secure}, min_fit=2)
    assert tracked.status == "completed"
    assert [r["fit_clients"] for r in tracked.history] == [2, 2]
    assert "node 3 went offline" in tracked.history[0]["fit_failures"][0]
    assert "fit_failures" not in tracked.history[1]  # round 2 samples the two nodes still connected
    ckpt = load_latest(tmp_path / "ck")
    assert ckpt is not None and ckpt.round == 2
    for got, start in zip(ckpt.weights, _start(), strict=True):
        # Two rounds of the mean of the survivors' shifts (0.01 and 0.03), not of all three (0.18 a round).
        # SecAgg+ quantizes each weight times num_examples / max_weight (flwr 1.42's default max_weight 1000)
        # to 2**22 levels over +-16: with one example a client, steps of 2 * 16 * 1000 / 2**22 = 0.0076.
        np.testing.assert_allclose(got, start + 2 * 0.02, atol=0.02 if secure else 1e-6)


@pytest.mark.parametrize("secure", [False, True], ids=["fedavg", "secagg+"])
def test_a_round_below_min_fit_clients_fails_the_run(tmp_path, secure):
    # Two of three nodes die in round 1: one answer is below min_fit_clients=2 (and below SecAgg+'s threshold).
    with pytest.raises(RuntimeError, match="round 1: training"):
        _run(tmp_path, secure, kill={2: 2 * secure, 3: 2 * secure}, min_fit=2)


def test_the_run_counts_the_nodes_that_joined_not_the_tenants_list(tmp_path):
    """Three nodes and the default four-tenant run config: the run starts with three (it used to wait for four)."""
    tracked = _run(tmp_path, True, kill={}, min_fit=2)
    assert tracked.status == "completed" and tracked.settings["clients"] == 3
    assert [r["fit_clients"] for r in tracked.history] == [3, 3]
