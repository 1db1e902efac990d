"""gRPC (BoringSSL) accepts shaping.pki credentials for mutual TLS, and peer_identity reads the tenant id."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from shaping import pki

PORT = 19111  # this area's loopback range is 19100-19119
METHOD = "/fedshape.test.Echo/WhoAmI"


@pytest.fixture(scope="module")
def ca() -> pki.Credentials:
    return pki.new_ca()


@pytest.fixture(scope="module")
def server(ca) -> Iterator[str]:
    def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        return pki.peer_identity(pem).uri.encode()

    handler = grpc.method_handlers_generic_handler(
        "fedshape.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((handler,))
    creds = pki.issue_server(ca, ["127.0.0.1", "localhost"])
    server_creds = grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_pem)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    if srv.add_secure_port(f"127.0.0.1:{PORT}", server_creds) == 0:
        pytest.skip(f"loopback port {PORT} is in use")
    srv.start()
    yield f"127.0.0.1:{PORT}"
    srv.stop(grace=None)


def _call(target: str, trust: bytes, client: pki.Credentials | None) -> bytes:
    creds = grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    with grpc.secure_channel(target, creds) as channel:
        result: bytes = channel.unary_unary(METHOD)(b"", timeout=10)
        return result


@pytest.mark.parametrize(("role", "name"), [("tenant", "acme"), ("provider", "ops")])
def test_mtls_carries_identity(ca, server, role, name):
    assert _call(server, ca.cert_pem, pki.issue_client(ca, role, name)) == f"fedshape://{role}/{name}".encode()


def test_client_from_another_ca_refused(ca, server):
    with pytest.raises(grpc.RpcError) as err:
        _call(server, ca.cert_pem, pki.issue_client(pki.new_ca("rogue"), "tenant", "acme"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_refused(ca, server):
    with pytest.raises(grpc.RpcError) as err:
        _call(server, ca.cert_pem, None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_not_trusted(ca, server):
    with pytest.raises(grpc.RpcError) as err:
        _call(server, pki.new_ca("other").cert_pem, pki.issue_client(ca, "tenant", "acme"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
