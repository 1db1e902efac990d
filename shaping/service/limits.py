"""Per-caller and global limits on open streams and running calls, as a gRPC server interceptor.

Why here and not in the call pool: the pool (shaping.service.executor) gives each open watch a thread
of its own, up to `max_watches`; a watch beyond that waits on one of the few threads that run every
other call. One tenant that opened a few hundred of its own watches therefore left no thread for anyone
else, and every other tenant's calls, the provider's and the gRPC health check timed out until those
watches closed. The interceptor sees every call (Client, Provider, health, reflection) once it has a
thread, learns who makes it, and refuses with RESOURCE_EXHAUSTED what would exceed the caller's share
or the global number of streams, before the call holds anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from shaping.service.auth import Authenticator, CallError, RevokedError


@dataclass(frozen=True)
class CallLimits:
    """How many calls may be open at once, per caller and in all (each limit must be >= 1)."""

    streams: int = 256
    """Server streams (watches, health watches, reflection sessions) open at once, all callers together.
    Keep it at or below the pool's `max_watches`: a stream beyond that would hold a thread that runs calls."""
    streams_per_caller: int = 16
    """Server streams one identity (a tenant, the provider, an unauthenticated peer address) may hold open.
    An agent needs three (rules, status, application metrics); the rest is room for the CLI and reconnects."""
    calls_per_caller: int = 32
    """Unary calls of one identity running at once (streams are counted above, not here)."""

    def __post_init__(self) -> None:
        for name in ("streams", "streams_per_caller", "calls_per_caller"):
            if getattr(self, name) < 1:
                raise ValueError(f"CallLimits.{name} must be >= 1, got {getattr(self, name)}")


def _peer_address(context: grpc.ServicerContext) -> str:
    """`ipv4:10.0.0.1` of a peer `ipv4:10.0.0.1:5555` (the port changes with every connection)."""
    peer = str(context.peer() or "unknown")
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class _Slot:
    """One admitted call's place in the counts; `release()` gives it back once, however often it is called."""

    __slots__ = ("_key", "_limiter", "_released")

    def __init__(self, limiter: CallLimiter, key: tuple[str, bool]) -> None:
        self._limiter = limiter
        self._key = key
        self._released = False

    def release(self) -> None:
        # Called from the call's thread and from gRPC's termination callback: the flag is read under the lock.
        with self._limiter._lock:
            if self._released:
                return
            self._released = True
            self._limiter._free_locked(self._key)


class CallLimiter:
    """Counts open calls per caller and in all; `admit` refuses (CallError RESOURCE_EXHAUSTED) beyond the limits."""

    def __init__(self, limits: CallLimits, auth: Authenticator) -> None:
        self.limits = limits
        self.auth = auth
        self._lock = threading.Lock()
        self._streams = 0
        self._per_caller: dict[tuple[str, bool], int] = {}

    def caller(self, context: grpc.ServicerContext) -> str:
        """Who a call counts against: its FedShape identity, else (health checks, bad certificates) its address."""
        try:
            ident = self.auth.identity(context)
        except RevokedError:
            raise  # refused outright, whatever the call
        except CallError:
            return f"peer {_peer_address(context)}"
        return f"{ident.role}/{ident.name}"

    def open_calls(self, caller: str, *, stream: bool) -> int:
        """Calls (streams or unary) of `caller` open now."""
        with self._lock:
            return self._per_caller.get((caller, stream), 0)

    def admit(self, caller: str, *, stream: bool) -> _Slot:
        """Count one more call of `caller`; RESOURCE_EXHAUSTED (as CallError) when a limit is reached."""
        lim = self.limits
        key = (caller, stream)
        with self._lock:
            mine = self._per_caller.get(key, 0)
            if stream and mine >= lim.streams_per_caller:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{caller} has {mine} streams open, the most one caller may hold; close one first")
            if stream and self._streams >= lim.streams:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the service has {self._streams} streams open, its limit; retry later")
            if not stream and mine >= lim.calls_per_caller:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{caller} has {mine} calls running, the most one caller may run; retry later")
            self._per_caller[key] = mine + 1
            self._streams += stream
        return _Slot(self, key)

    def _free_locked(self, key: tuple[str, bool]) -> None:
        left = self._per_caller[key] - 1
        if left:
            self._per_caller[key] = left
        else:
            del self._per_caller[key]
        self._streams -= key[1]


class LimitInterceptor(grpc.ServerInterceptor):
    """Wraps every method handler so that its call is admitted by a CallLimiter first."""

    def __init__(self, limiter: CallLimiter) -> None:
        self.limiter = limiter

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)

    def _admit(self, context: grpc.ServicerContext, *, stream: bool) -> _Slot:
        try:
            return self.limiter.admit(self.limiter.caller(context), stream=stream)  # a revoked caller: refused
        except CallError as err:
            context.abort(err.code, err.message)
            raise  # context.abort raises; this keeps the type checker honest

    def _unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            slot = self._admit(context, stream=False)
            try:
                return behavior(request, context)
            finally:
                slot.release()

        return admitted

    def _stream(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            slot = self._admit(context, stream=True)
            # The generator's `finally` runs when gRPC drops it; the callback covers a stream that never
            # got iterated again after its client went away.
            context.add_callback(slot.release)
            try:
                yield from behavior(request, context)
            finally:
                slot.release()

        return admitted
