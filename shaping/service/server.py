"""Server bootstrap: Client and Provider APIs, gRPC health and reflection, mTLS, Prometheus endpoint."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from shaping.service._proto.fedshape.v1 import client_pb2, client_pb2_grpc, provider_pb2, provider_pb2_grpc
from shaping.service.auth import Authenticator
from shaping.service.client import ClientServicer
from shaping.service.config import ServiceConfig
from shaping.service.executor import Blocking, CallExecutor, blocking_stream
from shaping.service.exposition import service_registry
from shaping.service.limits import CallLimiter, CallLimits, LimitInterceptor
from shaping.service.notify import Notifier
from shaping.service.provider import ProviderServicer
from shaping.service.telemetry import CallMetrics, MetricsInterceptor
from shaping.store import RulesStore

#: The least grace a stop gives open streams, so health watchers receive NOT_SERVING before they are cancelled.
_HEALTH_FLUSH_S = 0.2

SERVICE_NAMES = (
    client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name,
    provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name,
)


@dataclass(frozen=True)
class ServerTLS:
    """PEM material of an mTLS server: its certificate and key, and the CA that issues client certificates."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def is_loopback(host: str) -> bool:
    """Whether a listen host is a loopback address (plaintext is allowed only there)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def port_in_use(address: str) -> bool:
    """Whether some socket already listens on `host:port` (port 0 never is).

    gRPC finds this out too and refuses the bind, but only after logging a multi-line C-core error; asking
    first lets `fedshape serve` say it in one line. A port taken between this check and gRPC's bind still
    fails gRPC's bind.
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return False
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # gRPC reports a bad address itself
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
            try:
                probe.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return True
    return False


class _Health(health.HealthServicer):
    """gRPC health checking whose Watch streams queue their updates and tell the pool that they block.

    Why not grpc_health's default non-blocking Watch: its `set()` sends each watcher's update from the
    caller's thread while holding the servicer's lock, and a watch closing at that moment needs the same
    lock on gRPC's event thread, which that send waits for. `stop()` (NOT_SERVING to every watcher)
    then deadlocked now and then, with a client cancelling its watch (seen in CI, reproduced under load).
    The blocking form's `set()` only queues the update; each open watch holds a pool thread instead.
    """

    def __init__(self, blocking: Blocking) -> None:
        super().__init__(experimental_non_blocking=False)
        self._blocking = blocking

    def Watch(self, request: Any, context: Any, send_response_callback: Any = None) -> Any:
        return blocking_stream(super().Watch(request, context), self._blocking)


class _Reflection(reflection.ReflectionServicer):
    """Server reflection whose streams (one per client session, waiting for its next request) block."""

    def __init__(self, service_names: tuple[str, ...], blocking: Blocking) -> None:
        super().__init__(service_names)
        self._blocking = blocking

    def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> Any:
        return blocking_stream(super().ServerReflectionInfo(request_iterator, context), self._blocking)

class RulesServer:
    """The rules service on one address; `start()` binds, `port` is the bound port, `stop()` ends it.

    Plaintext needs `insecure_loopback=True` and a loopback address: callers then name themselves in the
    `fedshape-identity` header. Otherwise `tls` is required and every client must present a certificate
    issued by its CA (the identity is the certificate's `fedshape://role/name` SAN URI).
    """

    def __init__(self, store: RulesStore, config: ServiceConfig | None = None, *, address: str = "127.0.0.1:0",
                 tls: ServerTLS | None = None, insecure_loopback: bool = False,
                 metrics_address: tuple[str, int] | None = None, metrics_remote: bool = False,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        host = address.rsplit(":", 1)[0]
        if tls is None and not (insecure_loopback and is_loopback(host)):
            raise ValueError(f"plaintext on {address!r} refused: pass TLS credentials, or insecure_loopback=True"
                             " with a loopback address (127.0.0.1, ::1, localhost)")
        if metrics_address is not None and not (metrics_remote or is_loopback(metrics_address[0])):
            # /metrics has no authentication and shows every tenant's data: the provider's eyes only.
            raise ValueError(f"metrics on {metrics_address[0]!r} refused: /metrics has no authentication; serve it on"
                             " loopback (and scrape through an authenticating proxy), or pass metrics_remote=True")
        self.store = store
        self.config = config or ServiceConfig()
        self.address = address
        self.notifier = Notifier()
        auth = Authenticator(insecure_identity=tls is None, revoked=store.revoked_serials)
        cfg = self.config
        # A few threads run calls; each watch gets one of its own while it waits (shaping.service.executor).
        self.executor = CallExecutor(cfg.active_calls, cfg.max_watches, name="fedshape-rpc")
        self.client = ClientServicer(store, cfg, auth, self.notifier, clock, self.executor.blocking)
        self.provider = ProviderServicer(store, cfg, auth, self.notifier, clock, self.executor.blocking)
        self.health = _Health(self.executor.blocking)
        # Streams beyond max_watches would hold the threads that run calls: the limiter refuses them, and
        # caps each caller's share, before a call holds anything.
        self.limiter = CallLimiter(CallLimits(cfg.max_watches, cfg.max_watches_per_caller, cfg.max_calls_per_caller),
                                   auth)
        # Calls beyond this get RESOURCE_EXHAUSTED instead of queueing without bound.
        # gRPC sets SO_REUSEPORT on Linux by default: a second server on a port in use then binds as well and
        # the kernel splits connections between the two. Off, a taken port fails the bind below.
        self.registry = service_registry(store, self.config, registry, clock)
        # Outermost first: calls the limiter refuses are counted too.
        interceptors = [MetricsInterceptor(CallMetrics(self.registry)), LimitInterceptor(self.limiter)]
        self._server = grpc.server(self.executor, interceptors=interceptors,
                                   options=[("grpc.so_reuseport", 0)],
                                   maximum_concurrent_rpcs=cfg.max_watches + 64 * cfg.active_calls)
        client_pb2_grpc.add_ClientServiceServicer_to_server(self.client, self._server)
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(self.provider, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            _Reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.executor.blocking),
            self._server)
        self.port = self._bind(address, tls)
        self.metrics_address = metrics_address
        self._metrics: Any = None
        self.metrics_port: int | None = None

    def _bind(self, address: str, tls: ServerTLS | None) -> int:
        """Add the listening port; OSError when it cannot be bound (in use, bad address)."""
        try:
            if port_in_use(address):
                port = 0
            elif tls is None:
                port = self._server.add_insecure_port(address)
            else:
                creds = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem,
                                                    require_client_auth=True)
                port = self._server.add_secure_port(address, creds)
        except RuntimeError:  # grpcio >= 1.60 raises on a failed bind (and logs why); older versions return 0
            port = 0
        if port == 0:
            self._server.stop(None)
            self.executor.shutdown(wait=False)
            raise OSError(f"cannot listen on {address}: the port is in use, or the address is not on this host")
        return int(port)

    def start(self) -> RulesServer:
        """Serve; mark every service SERVING in gRPC health; start the Prometheus endpoint if asked."""
        self._server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.metrics_address is not None:
            host, port = self.metrics_address
            self._metrics, _ = start_http_server(port, addr=host, registry=self.registry)
            self.metrics_port = int(self._metrics.server_port)
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (watches end), the metrics endpoint too."""
        self.health.enter_graceful_shutdown()
        self.notifier.close()
        # enter_graceful_shutdown only queues NOT_SERVING on each health watch; a stop without grace
        # cancelled the streams before gRPC had written it (about one stop in 20), so give it a moment.
        self._server.stop(max(grace or 0.0, _HEALTH_FLUSH_S)).wait()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()

    def wait(self) -> None:
        """Block until the server stops."""
        self._server.wait_for_termination()
