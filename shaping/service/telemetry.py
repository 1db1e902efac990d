"""The rules service's own request metrics: calls per method and status code, and unary call latency.

A hand-rolled server interceptor over prometheus_client: py-grpc-prometheus, the one library for this,
is unmaintained (last release 2020) and registers into the process-global registry, while the service
keeps its metrics in a registry of its own (shaping.service.exposition).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

#: Latency buckets, seconds: a read takes about a millisecond, a write waits for an fsync.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CallMetrics:
    """Counters and a latency histogram of the service's calls, in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("fedshape_rpc_requests", "Calls finished, by method and gRPC status code",
                                ["method", "code"], registry=registry)
        self.started = Counter("fedshape_rpc_started", "Calls started, by method", ["method"], registry=registry)
        self.duration = Histogram("fedshape_rpc_duration_seconds", "Time a unary call took on the server, by method",
                                  ["method"], registry=registry, buckets=BUCKETS)


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    """The status a call ended with: what it set or aborted with, else OK (UNKNOWN if it raised)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Wraps every method handler so that its calls are counted (the method label is the full gRPC method)."""

    def __init__(self, metrics: CallMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.metrics = metrics
        self.clock = clock

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED; labels stay a fixed set
            return None
        method = str(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream), handler.request_deserializer, handler.response_serializer)

    def _unary(self, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        m = self.metrics

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            m.started.labels(method).inc()
            start, failed = self.clock(), True
            try:
                out = behavior(request, context)
                failed = False
                return out
            finally:
                m.duration.labels(method).observe(self.clock() - start)
                m.requests.labels(method, _code(context, failed)).inc()

        return counted

    def _stream(self, method: str,
                behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
        m = self.metrics

        def counted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            m.started.labels(method).inc()
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            except GeneratorExit:  # gRPC dropped the stream (its client went away): not the servicer's failure
                failed = False
                raise
            finally:
                m.requests.labels(method, _code(context, failed)).inc()

        return counted
