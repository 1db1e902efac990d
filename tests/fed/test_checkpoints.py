"""Global checkpoints every round, resuming from the latest, and the per-round records of a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg

from fed_server.checkpoints import GlobalCheckpoint, load_latest, save_global
from fed_server.tracking import TrackedStrategy

OK = Status(Code.OK, "")


def test_checkpoint_roundtrip_and_latest(tmp_path):
    assert load_latest(tmp_path) is None
    w1 = [np.ones((2, 3), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    save_global(tmp_path, GlobalCheckpoint(1, w1, [{"round": 1}]))
    save_global(tmp_path, GlobalCheckpoint(2, [w * 2 for w in w1], [{"round": 1}, {"round": 2}]))
    ck = load_latest(tmp_path)
    assert ck is not None and ck.round == 2 and len(ck.history) == 2
    np.testing.assert_array_equal(ck.weights[0], w1[0] * 2)
    assert (tmp_path / "round_0001.npz").exists()


def _fit(value, n=1):
    return None, FitRes(OK, ndarrays_to_parameters([np.full(3, value, dtype=np.float32)]), n, {"tenant": f"t{value}"})


def _eval(name, reward):
    return None, EvaluateRes(OK, -reward, 1, {"tenant": name, "reward": reward, "sla_violation_rate": 0.1})


def test_tracked_strategy_checkpoints_records_and_continues_numbering(tmp_path):
    ticks = iter(range(100))
    tracked = TrackedStrategy(
        FedAvg(), round_offset=2, epsilon_of=lambda r: 0.5 * r, checkpoint_dir=str(tmp_path / "ck"),
        results_file=str(tmp_path / "r.json"), history=[{"round": 1}, {"round": 2}], clock=lambda: float(next(ticks)),
    )  # fmt: skip
    tracked._fit_start = 0.0
    tracked._current = {"round": 3}
    params, _ = tracked.aggregate_fit(1, [_fit(1.0), _fit(3.0)], [])
    assert params is not None
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 2.0)
    tracked.aggregate_evaluate(1, [_eval("a", 1.0), _eval("b", 0.0)], [])
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["status"] == "running" and [r["round"] for r in rec["rounds"]] == [1, 2, 3]
    last = rec["rounds"][-1]
    assert last["epsilon"] == 1.5 and set(last["eval"]) == {"a", "b"} and last["fit_clients"] == 2
    ck = load_latest(tmp_path / "ck")
    assert ck is not None and ck.round == 3  # a resumed run continues from here
    assert [r["round"] for r in ck.history] == [1, 2, 3]  # with every round's record, this one's included
    assert set(ck.history[-1]["eval"]) == {"a", "b"}


def test_a_round_aggregates_the_clients_that_answered_while_min_fit_clients_holds(tmp_path):
    tracked = TrackedStrategy(FedAvg(), min_results=2, results_file=str(tmp_path / "r.json"))
    tracked._current = {"round": 1}
    params, _ = tracked.aggregate_fit(1, [_fit(1.0), _fit(3.0)], [RuntimeError("node 7 went offline")])
    assert params is not None
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], 2.0)  # the two that answered
    tracked.aggregate_evaluate(1, [_eval("a", 1.0), _eval("b", 0.0)], [RuntimeError("node 7 went offline")])
    record = json.loads((tmp_path / "r.json").read_text())["rounds"][0]
    assert record["fit_clients"] == 2 and record["fit_failures"] == ["node 7 went offline"]
    assert record["eval_failures"] == ["node 7 went offline"]


def test_a_round_with_fewer_answers_than_min_fit_clients_fails_loudly():
    tracked = TrackedStrategy(FedAvg(), min_results=2)
    tracked._current = {"round": 1}
    expected = r"round 1: training needs 2 client\(s\), 1 answered and 1 failed: \['boom'\]"
    with pytest.raises(RuntimeError, match=expected):
        tracked.aggregate_fit(1, [_fit(1.0)], [RuntimeError("boom")])


def test_a_round_without_an_aggregate_fails_the_run():
    """SecAgg+ halts a round below its threshold without calling aggregate_fit: the evaluation refuses to start."""
    tracked = TrackedStrategy(FedAvg())
    tracked._current = {"round": 1}
    with pytest.raises(RuntimeError, match="round 1: training produced no aggregate"):
        tracked.configure_evaluate(1, ndarrays_to_parameters([]), SimpleClientManager())


def _server(strategy: str, start: list[np.ndarray]):
    from fed_server.strategy import build_strategy
    from shaping.fed_settings import RunSettings

    s = RunSettings(strategy=strategy, server_lr=0.5, server_momentum=0.9, privacy_mode="clip", clipping_norm=100.0)
    return build_strategy(s, ndarrays_to_parameters(start), 2)


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam"])
def test_a_resumed_run_continues_the_server_optimizer_exactly(tmp_path, strategy):
    """Rounds 1-3 in one go, and round 1 then a resume from its checkpoint for rounds 2-3, end equal."""
    from fed_server.app import restore_server_state
    from fed_server.server_state import server_state

    start = [np.zeros(3, dtype=np.float32)]
    client_values = {1: (1.0, 3.0), 2: (0.5, -1.0), 3: (2.0, 2.5)}

    def play(tracked, rounds, params):
        for r in rounds:
            local = r - tracked.round_offset
            tracked._current = {"round": r}
            base = parameters_to_ndarrays(params)[0]
            # What the server-side clipping wrapper's configure_fit records as the round's model.
            tracked.inner.current_round_params = [base]
            params, _ = tracked.aggregate_fit(local, [_fit(base[0] + v) for v in client_values[r]], [])
            tracked.aggregate_evaluate(local, [_eval("a", float(r))], [])
        return parameters_to_ndarrays(params)[0]

    whole = TrackedStrategy(_server(strategy, start))
    straight = play(whole, [1, 2, 3], ndarrays_to_parameters(start))

    first = TrackedStrategy(_server(strategy, start), checkpoint_dir=str(tmp_path / "ck"))
    play(first, [1], ndarrays_to_parameters(start))
    ck = load_latest(tmp_path / "ck")
    assert ck is not None and ck.round == 1 and ck.server_state  # momentum, or Adam's two moments
    resumed_inner = _server(strategy, ck.weights)
    restore_server_state(resumed_inner, ck.server_state)
    resumed = TrackedStrategy(resumed_inner, round_offset=1)
    np.testing.assert_allclose(play(resumed, [2, 3], ndarrays_to_parameters(ck.weights)), straight, rtol=1e-6)
    # Without the state the resumed run would have gone elsewhere: the state matters here. (A checkpoint
    # without it, as older versions wrote, restarts the momentum at zero.)
    cold_inner = _server(strategy, ck.weights)
    restore_server_state(cold_inner, {})
    cold = TrackedStrategy(cold_inner, round_offset=1)
    assert not np.allclose(play(cold, [2, 3], ndarrays_to_parameters(ck.weights)), straight, rtol=1e-3)
    assert set(server_state(whole.inner)) == ({"momentum_vector"} if strategy == "fedavgm" else {"m_t", "v_t"})


def test_server_state_of_another_strategy_is_refused():
    from fed_server.server_state import restore_server_state, server_state

    fedavg = _server("fedavg", [np.zeros(3, dtype=np.float32)])
    assert server_state(fedavg) == {}
    with pytest.raises(ValueError, match="resume with the strategy"):
        restore_server_state(fedavg, {"momentum_vector": [np.zeros(3)]})
