"""Client side: a channel to the rules service, with mTLS credentials or, on loopback, a named identity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shaping.service._proto.fedshape.v1 import client_pb2_grpc, provider_pb2_grpc
from shaping.service.auth import IDENTITY_HEADER


@dataclass(frozen=True)
class ClientTLS:
    """PEM material of an mTLS client: the CA to trust, and the client's certificate and key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    server_name: str | None = None
    """Name to check the server certificate against, when it differs from the dialled host."""


class _Identity(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the identity header to every call (insecure loopback servers only read it)."""

    def __init__(self, identity: str) -> None:
        self.header = (IDENTITY_HEADER, identity)

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or []), self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def connect(target: str, *, tls: ClientTLS | None = None, identity: str | None = None) -> grpc.Channel:
    """A channel to `target` (host:port).

    Args:
        target: the service address.
        tls: mTLS material; None for a plaintext loopback server.
        identity: "tenant/NAME" or "provider/NAME", sent in a header to a plaintext loopback server.
    """
    if tls is not None:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
        return grpc.secure_channel(target, creds, options=options)
    channel = grpc.insecure_channel(target)
    if identity is not None:
        channel = grpc.intercept_channel(channel, _Identity(identity))
    return channel


def open_channel(target: str, identity: str, *, pki: Path | None = None,
                 server_name: str | None = None) -> grpc.Channel:
    """A channel to `target` speaking as `identity`, with the `fedshape-pki` files of `pki` (mTLS) or without.

    Args:
        target: the service address (host:port).
        identity: "tenant/NAME" or "provider/NAME"; with `pki` it picks PKI/<role>-<name>.pem and .key.
        pki: directory of `fedshape-pki` files (ca.pem and the caller's pair); None: plaintext loopback, the
            identity sent in a header.
        server_name: name to check the server certificate against, when it differs from the dialled host.
    Raises:
        PKIError: a certificate that is missing, unreadable, expired or not yet valid.
    """
    from shaping.pki import check_validity, read_credentials

    if pki is None:
        return connect(target, identity=identity)
    role, _, name = identity.partition("/")
    creds = read_credentials(pki, f"{role}-{name}")
    ca_pem = (pki / "ca.pem").read_bytes()
    # An expired certificate fails the TLS handshake, which gRPC reports as "Socket closed": say it first.
    check_validity(creds.cert_pem, str(pki / f"{role}-{name}.pem"))
    check_validity(ca_pem, str(pki / "ca.pem"))
    return connect(target, tls=ClientTLS(ca_pem, creds.cert_pem, creds.key_pem, server_name=server_name))


def client_stub(channel: grpc.Channel) -> client_pb2_grpc.ClientServiceStub:
    """Client API stub on a channel."""
    return client_pb2_grpc.ClientServiceStub(channel)


def provider_stub(channel: grpc.Channel) -> provider_pb2_grpc.ProviderServiceStub:
    """Provider API stub on a channel."""
    return provider_pb2_grpc.ProviderServiceStub(channel)
