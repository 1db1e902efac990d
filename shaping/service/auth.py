"""Who is calling: the FedShape identity of the peer's verified client certificate (or, on loopback, a header)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from shaping.pki import Identity, PKIError, certificate_serial, peer_identity
from shaping.rules.validate import RulesError
from shaping.service.executor import blocking_stream
from shaping.spec.tenant import SpecError
from shaping.store import AlreadyExistsError, ConflictError, NotFoundError

log = logging.getLogger(__name__)

#: Metadata key naming the caller ("tenant/acme") on an explicitly insecure loopback server only.
IDENTITY_HEADER = "fedshape-identity"

F = TypeVar("F", bound=Callable[..., Any])


class CallError(Exception):
    """An RPC failure with its gRPC status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RevokedError(CallError):
    """The caller's certificate has been revoked: every call is refused, the health check included."""


class Authenticator:
    """Maps a call to an Identity.

    With TLS the identity is read from the client certificate that gRPC has already verified against
    the CA (`x509_pem_cert` of the auth context). `insecure_identity=True` (plaintext loopback, for
    tests and local trials, only when asked for) reads it from the `fedshape-identity` header instead.
    """

    def __init__(self, *, insecure_identity: bool = False,
                 revoked: Callable[[], frozenset[str]] = frozenset) -> None:
        self.insecure_identity = insecure_identity
        self.revoked = revoked
        # Parsing a certificate costs ~100 us; a connection presents the same one on every call.
        self._from_pem = functools.lru_cache(maxsize=4096)(_identity_and_serial)

    def identity(self, context: grpc.ServicerContext) -> Identity:
        """The caller's identity; CallError(UNAUTHENTICATED) when there is none."""
        if self.insecure_identity:
            return self._from_header(context)
        certs = context.auth_context().get("x509_pem_cert") or []
        if not certs:
            raise CallError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required (mTLS)")
        try:
            ident, serial = self._from_pem(bytes(certs[0]))
        except PKIError as err:
            raise CallError(grpc.StatusCode.UNAUTHENTICATED, f"client certificate carries no identity: {err}") from None
        # Checked on every call, not cached with the certificate: a revocation applies to open connections too.
        if serial in self.revoked():
            raise RevokedError(grpc.StatusCode.UNAUTHENTICATED,
                               f"client certificate serial {serial} has been revoked; ask the provider for a new one")
        return ident

    @staticmethod
    def _from_header(context: grpc.ServicerContext) -> Identity:
        value = dict(context.invocation_metadata()).get(IDENTITY_HEADER)
        role, _, name = str(value or "").partition("/")
        if role not in ("tenant", "provider") or not 0 < len(name) <= 64:
            raise CallError(grpc.StatusCode.UNAUTHENTICATED,
                            f"insecure loopback server: send metadata {IDENTITY_HEADER}: tenant/NAME or provider/NAME")
        return Identity(role, name)  # type: ignore[arg-type]  # role checked above


def _identity_and_serial(cert: bytes) -> tuple[Identity, str]:
    return peer_identity(cert), certificate_serial(cert)


def scope(ident: Identity, tenant: str) -> str:
    """The tenant a tenant-role call may touch: its own (an empty field means its own); else PERMISSION_DENIED.

    The check comes before any lookup, so a refused call learns nothing about the other tenant.
    """
    if ident.role != "tenant":
        raise CallError(grpc.StatusCode.PERMISSION_DENIED, "the Client API is for tenants; use a tenant certificate")
    if tenant and tenant != ident.name:
        raise CallError(grpc.StatusCode.PERMISSION_DENIED, "a tenant may only access its own resources")
    return ident.name


def require_provider(ident: Identity) -> None:
    """PERMISSION_DENIED unless the caller has the provider role."""
    if ident.role != "provider":
        raise CallError(grpc.StatusCode.PERMISSION_DENIED, "the Provider API needs a provider certificate")


def still_wanted(context: grpc.ServicerContext, margin_s: float = 0.0) -> None:
    """CallError(DEADLINE_EXCEEDED or CANCELLED) when the caller has given up on the call, or will within `margin_s`.

    A write checks this just before it commits, so that a caller told DEADLINE_EXCEEDED finds nothing
    written when it retries.
    """
    remaining = context.time_remaining()  # None: the caller set no deadline
    if remaining is not None and remaining <= margin_s:
        raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        "the call's deadline passed before the write; nothing written")
    if not context.is_active():
        raise CallError(grpc.StatusCode.CANCELLED, "the caller cancelled before the write; nothing written")


def abort(context: grpc.ServicerContext, err: BaseException) -> NoReturn:
    """Abort the call with the status code that fits the error (INTERNAL hides details)."""
    if isinstance(err, CallError):
        context.abort(err.code, err.message)
    if isinstance(err, RulesError | SpecError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    if isinstance(err, NotFoundError):
        context.abort(grpc.StatusCode.NOT_FOUND, str(err.args[0]))
    if isinstance(err, AlreadyExistsError):
        context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err.args[0]))
    if isinstance(err, ConflictError):
        context.abort(grpc.StatusCode.ABORTED, str(err))
    log.exception("internal error", exc_info=err)
    context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")
    raise RuntimeError("grpc's context.abort returned")  # it raises; this line keeps the type checker honest


def rpc(method: F) -> F:
    """Turn exceptions raised by a unary servicer method into gRPC statuses."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as err:
            abort(context, err)

    return wrapper  # type: ignore[return-value]


def stream_rpc(method: F) -> F:
    """As `rpc`, for server-streaming methods (errors surface while the stream is iterated).

    A stream waits for changes most of its life: it runs inside the servicer's `blocking()`, so that the
    server's pool serves other calls on another thread meanwhile (shaping.service.executor).
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from blocking_stream(method(self, request, context), self.blocking)
        except Exception as err:
            abort(context, err)

    return wrapper  # type: ignore[return-value]
