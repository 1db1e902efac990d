"""gRPC health watches: they hear NOT_SERVING when the server stops, and stopping never waits on them."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shaping.service import RulesServer
from shaping.store import RulesStore
from tests.service.conftest import config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _watch(target: str) -> tuple[grpc.Channel, grpc.Future]:
    channel = grpc.insecure_channel(target)
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
    assert next(stream).status == SERVING
    return channel, stream


def _stop_within(server: RulesServer, seconds: float) -> bool:
    """Stop the server on another thread; True when that finished within `seconds`."""
    stopper = threading.Thread(target=server.stop, args=(0,), daemon=True)
    stopper.start()
    stopper.join(seconds)
    return not stopper.is_alive()


def test_a_stopping_server_tells_its_health_watchers_not_serving(tmp_path) -> None:
    store = RulesStore(tmp_path / "h.db")
    server = RulesServer(store, config(), insecure_loopback=True).start()
    channel, stream = _watch(f"127.0.0.1:{server.port}")
    try:
        assert _stop_within(server, 10)
        assert next(stream).status == NOT_SERVING
    finally:
        stream.cancel()
        channel.close()
        store.close()


def test_stop_does_not_deadlock_with_watchers_cancelling_at_the_same_moment(tmp_path) -> None:
    # grpc_health's non-blocking Watch sent NOT_SERVING from stop()'s thread under the servicer's lock
    # while a cancelled watch's close callback waited for that lock on gRPC's event thread: stop() hung
    # now and then (once in about 20 tries of 2 watches under CPU load). Many rounds of many watches.
    for round_ in range(12):
        store = RulesStore(tmp_path / f"h{round_}.db")
        server = RulesServer(store, config(), insecure_loopback=True).start()
        watches = [_watch(f"127.0.0.1:{server.port}") for _ in range(8)]
        for _, stream in watches:
            stream.cancel()
        stopped = _stop_within(server, 15)
        for channel, _ in watches:
            channel.close()
        store.close()
        assert stopped, f"RulesServer.stop() still waiting after 15 s in round {round_}"
