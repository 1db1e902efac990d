"""The call pool: a few threads run calls, and waiting streams do not starve them."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shaping.service import RulesServer
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2, rules_pb2
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.service.executor import CallExecutor
from shaping.store import RulesStore
from tests.service.conftest import config


def test_at_most_workers_tasks_run_at_once() -> None:
    pool = CallExecutor(workers=2, max_blocked=4)
    lock, running, peak = threading.Lock(), [0], [0]

    def task(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i * i

    try:
        results = [f.result(timeout=10) for f in [pool.submit(task, i) for i in range(20)]]
    finally:
        pool.shutdown()
    assert results == [i * i for i in range(20)]
    assert peak[0] == 2


def test_a_blocking_task_gets_a_thread_in_its_place_and_gives_it_back() -> None:
    pool = CallExecutor(workers=1, max_blocked=4)
    release = threading.Event()

    def waiter() -> str:
        with pool.blocking():
            assert release.wait(10), "the other task never ran: the pool starved it"
        return "released"

    try:
        first = pool.submit(waiter)
        # With one worker busy waiting, this only runs because the waiter declared that it blocks.
        second = pool.submit(release.set)
        assert second.result(timeout=10) is None and first.result(timeout=10) == "released"
        deadline = time.monotonic() + 5
        while pool.threads > 1 and time.monotonic() < deadline:
            pool.submit(lambda: None).result(timeout=5)  # a finishing task lets a surplus thread leave
            time.sleep(0.01)
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_errors_travel_in_the_future_and_shutdown_refuses_new_work() -> None:
    pool = CallExecutor(workers=1)

    def boom() -> None:
        raise ValueError("bad call")

    with pytest.raises(ValueError, match="bad call"):
        pool.submit(boom).result(timeout=5)
    assert pool.submit(lambda: 7).result(timeout=5) == 7  # the thread survived the error
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)
    with pytest.raises(ValueError, match="workers >= 1"):
        CallExecutor(workers=0)


def test_shutdown_can_cancel_queued_calls() -> None:
    pool = CallExecutor(workers=1)
    gate = threading.Event()
    busy = pool.submit(gate.wait, 10)
    queued = pool.submit(lambda: "ran")
    time.sleep(0.05)
    gate.set()
    pool.shutdown(wait=True, cancel_futures=True)
    assert busy.result(timeout=5) is True
    assert queued.cancelled() or queued.result(timeout=5) == "ran"
    assert isinstance(queued, futures.Future)


def test_open_watches_health_and_reflection_streams_do_not_starve_calls(tmp_path) -> None:
    # A server with a single call thread and six open streams of every kind still answers calls (without
    # CallExecutor.blocking the first stream holds the only thread: the next call times out).
    store = RulesStore(tmp_path / "one.db")
    cfg = config()
    cfg.active_calls = 1
    server = RulesServer(store, cfg, insecure_loopback=True).start()
    channels: list[grpc.Channel] = []
    streams: list[grpc.Future] = []
    sessions: list[_Requests] = []
    try:
        target = f"127.0.0.1:{server.port}"

        def channel(identity: str) -> grpc.Channel:
            ch = connect(target, identity=identity)
            channels.append(ch)
            return ch

        provider_stub(channel("provider/ops")).CreateTenant(provider_pb2.CreateTenantRequest(name="acme",
                                                                                             cap_mbps=100.0))
        tenant = client_stub(channel("tenant/acme"))
        for _ in range(2):
            watch = tenant.WatchRules(cpb.WatchRulesRequest(after_revision=0), timeout=20)
            next(watch)  # the stream is open and waiting on the server
            streams.append(watch)
            health_stub = health_pb2_grpc.HealthStub(channel("tenant/acme"))
            health = health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=20)
            assert next(health).status == health_pb2.HealthCheckResponse.SERVING
            streams.append(health)
            requests = _Requests()
            sessions.append(requests)
            refl_stub = reflection_pb2_grpc.ServerReflectionStub(channel("tenant/acme"))
            refl = refl_stub.ServerReflectionInfo(requests, timeout=20)
            requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
            assert next(refl).list_services_response.service
            streams.append(refl)  # the session stays open, the server waiting for its next request
        started = time.monotonic()
        assert tenant.GetRules(rules_pb2.TenantRef(), timeout=5).tenant == "acme"
        assert time.monotonic() - started < 2.0
    finally:
        for r in sessions:
            r.close()
        for s in streams:
            s.cancel()
        for ch in channels:
            ch.close()
        server.stop(0)
        store.close()


class _Requests:
    """A request iterator that blocks until told to end: a client session left open."""

    def __init__(self) -> None:
        self._items: list[object] = []
        self._cond = threading.Condition()
        self._done = False

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> object:
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._done, timeout=10)
            if self._items:
                return self._items.pop(0)
            raise StopIteration

