"""FedShape PKI: a small CA, server and per-tenant client certificates, and Flower SuperNode keys."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from shaping.names import MAX_NAME_LEN, NAME_RULE, is_valid_name

Role = Literal["tenant", "provider"]
ROLES: tuple[str, ...] = get_args(Role)
URI_SCHEME = "fedshape"
# Certificates start a little in the past so that peers with a slightly late clock accept them.
_BACKDATE = dt.timedelta(minutes=5)
#: Default validity of a server or client certificate, days: a stolen key is good for at most this long even
#: if nobody revokes it (the CA's own default stays ten years; its key is kept offline).
LEAF_DAYS = 90


class PKIError(ValueError):
    """A certificate or key is malformed, untrusted or carries no FedShape identity."""


@dataclass(frozen=True)
class Credentials:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Identity:
    """Who a client certificate speaks for: ``fedshape://<role>/<name>``."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        """The SAN URI that carries this identity."""
        return f"{URI_SCHEME}://{self.role}/{self.name}"


def _check_name(name: str) -> str:
    # Names become a URI path segment and a file name, and a tenant's must be a valid rules tenant name.
    if not is_valid_name(name):
        raise PKIError(f"invalid name {name!r}: use 1..{MAX_NAME_LEN} {NAME_RULE}")
    return name


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(ca: Credentials) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("the CA key is not an EC key")
    if key.public_key() != cert.public_key():
        raise PKIError("the CA key does not belong to the CA certificate")
    return cert, key


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, days: int, now: dt.datetime | None
) -> x509.CertificateBuilder:
    start = _now(now) - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def new_ca(common_name: str = "FedShape CA", days: int = 3650, *, now: dt.datetime | None = None) -> Credentials:
    """Make a self-signed CA (EC P-256, CA:true, may sign leaves only).

    Args:
        common_name: the CA's subject CN.
        days: validity.
        now: the clock (defaults to the current UTC time).
    """
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Credentials(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _issue_leaf(
    ca: Credentials,
    subject: x509.Name,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    now: dt.datetime | None,
) -> Credentials:
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Credentials(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server(
    ca: Credentials, hosts: Sequence[str], days: int = LEAF_DAYS, *, now: dt.datetime | None = None
) -> Credentials:
    """Issue a TLS server certificate (serverAuth) for ``hosts`` (DNS names or IP addresses, in the SAN).

    Args:
        ca: the issuing CA.
        hosts: every name or address clients dial; the first one is also the CN.
        days: validity.
        now: the clock.
    """
    if not hosts:
        raise PKIError("a server certificate needs at least one host name or address")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return _issue_leaf(ca, subject, [_host_name(h) for h in hosts], ExtendedKeyUsageOID.SERVER_AUTH, days, now)


def issue_client(
    ca: Credentials, role: Role, name: str, days: int = LEAF_DAYS, *, now: dt.datetime | None = None
) -> Credentials:
    """Issue a client certificate (clientAuth): CN=name, O=role, SAN URI ``fedshape://<role>/<name>``.

    Args:
        ca: the issuing CA.
        role: "tenant" or "provider".
        name: the tenant id (or operator name); 1-64 characters of A-Z a-z 0-9 . _ -.
        days: validity.
        now: the clock.
    """
    if role not in ROLES:
        raise PKIError(f"unknown role {role!r}; expected one of {ROLES}")
    identity = Identity(role, _check_name(name))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, role)]
    )
    san = [x509.UniformResourceIdentifier(identity.uri)]
    return _issue_leaf(ca, subject, san, ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def load_certificate(cert: bytes) -> x509.Certificate:
    """Parse a certificate given as PEM or DER bytes."""
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as err:
        raise PKIError(f"not an X.509 certificate: {err}") from err


def serial_hex(serial: int | str) -> str:
    """A certificate serial as the service stores it: hex, lower case, no `0x`, colons or leading zeros.

    Accepts an int or text as `openssl x509 -serial` (`serial=0A1B...`) or browsers (`0a:1b:...`) print it.
    """
    if isinstance(serial, int):
        value = serial
    else:
        text = serial.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
        if not 0 < len(text) <= 40 or any(ch not in "0123456789abcdef" for ch in text):
            raise PKIError(f"serial {serial[:60]!r} is not 1..40 hex digits (as `openssl x509 -serial` prints it)")
        value = int(text, 16)
    if value <= 0:
        raise PKIError(f"serial must be positive, got {value}")
    return f"{value:x}"


def certificate_serial(cert: bytes) -> str:
    """The serial of a certificate (PEM or DER), as serial_hex writes it."""
    return serial_hex(load_certificate(cert).serial_number)


def _identity_from_uri(uri: str) -> Identity | None:
    prefix = f"{URI_SCHEME}://"
    if not uri.startswith(prefix):
        return None
    role, sep, name = uri[len(prefix):].partition("/")
    if not sep or role not in ROLES or not is_valid_name(name):
        raise PKIError(f"malformed FedShape identity URI {uri!r}")
    return Identity(role, name)  # type: ignore[arg-type]  # role checked against ROLES above


def peer_identity(cert: bytes) -> Identity:
    """Read the FedShape identity from a client certificate's SAN URI (PEM or DER).

    This does not check the chain: call it on a certificate the TLS layer (or :func:`verify_client`) has
    verified. Raises :class:`PKIError` when there is no single ``fedshape://`` URI.
    """
    parsed = load_certificate(cert)
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as err:
        raise PKIError("certificate has no subjectAltName, so no FedShape identity") from err
    found = [i for u in san.get_values_for_type(x509.UniformResourceIdentifier) if (i := _identity_from_uri(u))]
    if len(found) != 1:
        raise PKIError(f"expected exactly one {URI_SCHEME}:// SAN URI, found {len(found)}")
    return found[0]


def verify_client(ca_cert: bytes, cert: bytes, *, now: dt.datetime | None = None) -> Identity:
    """Verify that ``cert`` is a clientAuth certificate issued by ``ca_cert`` and return its identity.

    Raises :class:`PKIError` when the chain does not verify (wrong CA, expired, not for client use).
    """
    store = Store([load_certificate(ca_cert)])
    verifier = PolicyBuilder().store(store).time(_now(now)).build_client_verifier()
    try:
        verifier.verify(load_certificate(cert), [])
    except VerificationError as err:
        raise PKIError(f"client certificate does not verify against the CA: {err}") from err
    return peer_identity(cert)


def verify_server(ca_cert: bytes, cert: bytes, host: str, *, now: dt.datetime | None = None) -> None:
    """Verify that ``cert`` is a serverAuth certificate for ``host`` issued by ``ca_cert``; raise PKIError if not."""
    store = Store([load_certificate(ca_cert)])
    subject = _host_name(host)
    verifier = PolicyBuilder().store(store).time(_now(now)).build_server_verifier(subject)  # type: ignore[arg-type]
    try:
        verifier.verify(load_certificate(cert), [])
    except VerificationError as err:
        raise PKIError(f"server certificate does not verify for {host!r}: {err}") from err


def new_node_keypair() -> tuple[bytes, bytes]:
    """Make a Flower SuperNode authentication key pair: (OpenSSH private key, OpenSSH public key line).

    Flower 1.42 loads the SuperNode key with ``load_ssh_private_key`` (``--auth-supernode-private-key``) and
    ``flwr supernode register`` loads the public key with ``load_ssh_public_key`` (any NIST EC curve); we use
    P-384 like Flower's own ``ssh-keygen -t ecdsa -b 384`` example.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # also when the file existed with looser permissions
        f.write(data)


def write_credentials(directory: str | os.PathLike[str], name: str, creds: Credentials) -> tuple[Path, Path]:
    """Write ``<name>.pem`` (0644) and ``<name>.key`` (0600) into ``directory``; return (cert, key) paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / f"{_check_name(name)}.pem", d / f"{name}.key"
    _write(key_path, creds.key_pem, 0o600)
    _write(cert_path, creds.cert_pem, 0o644)
    return cert_path, key_path


def write_node_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Make a SuperNode key pair and write ``<name>`` (private, 0600) and ``<name>.pub``; return both paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    private, public = new_node_keypair()
    key_path, pub_path = d / _check_name(name), d / f"{name}.pub"
    _write(key_path, private, 0o600)
    _write(pub_path, public, 0o644)
    return key_path, pub_path


def check_validity(cert: bytes, what: str, *, now: dt.datetime | None = None) -> None:
    """PKIError, in one line, when a certificate is expired or not valid yet.

    A TLS peer that refuses an expired certificate just closes the connection, and gRPC then reports
    "Socket closed" as if the service were down; checking our own certificates first says what is wrong.

    Args:
        cert: the certificate, PEM or DER.
        what: how to name it in the message (its file, say).
        now: the clock (defaults to the current UTC time).
    """
    parsed = load_certificate(cert)
    at = _now(now)
    if at > parsed.not_valid_after_utc:
        raise PKIError(f"certificate {what} expired on {parsed.not_valid_after_utc:%Y-%m-%d %H:%M} UTC;"
                       " ask for a new one (fedshape-pki tenant|provider|server DIR NAME)")
    if at < parsed.not_valid_before_utc:
        raise PKIError(f"certificate {what} is not valid before {parsed.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
                       " (is this machine's clock right?)")


def read_credentials(directory: str | os.PathLike[str], name: str) -> Credentials:
    """Read ``<name>.pem`` and ``<name>.key`` written by :func:`write_credentials`."""
    d = Path(directory)
    try:
        return Credentials((d / f"{name}.pem").read_bytes(), (d / f"{name}.key").read_bytes())
    except FileNotFoundError as err:
        raise PKIError(f"missing {err.filename}; run `fedshape-pki init {d}` first") from err


# ---- command line: fedshape-pki / python -m shaping.pki -------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedshape-pki", description="Make FedShape's CA, certificates and Flower keys.")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make the CA (DIR/ca.pem, DIR/ca.key)")
    init.add_argument("dir", type=Path)
    init.add_argument("--cn", default="FedShape CA", help="the CA's common name")
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates every certificate)")
    server = sub.add_parser("server", help="issue DIR/server.pem for the SuperLink and the rules service")
    server.add_argument("dir", type=Path)
    server.add_argument("--host", action="append", required=True, help="DNS name or IP clients dial (repeat)")
    server.add_argument("--name", default="server", help="file name stem (default: server)")
    for role in ROLES:
        client = sub.add_parser(role, help=f"issue DIR/{role}-NAME.pem, a {role} client certificate")
        client.add_argument("dir", type=Path)
        client.add_argument("name")
    nodes = sub.add_parser("flower-nodes", help="make N SuperNode auth key pairs in DIR/nodes/")
    nodes.add_argument("dir", type=Path)
    nodes.add_argument("n", type=int)
    nodes.add_argument("--prefix", default="node", help="key name prefix (default: node -> node-0, node-0.pub)")
    node_key = sub.add_parser("node-key", help="make one SuperNode auth key pair DIR/NAME, DIR/NAME.pub")
    node_key.add_argument("dir", type=Path)
    node_key.add_argument("name")
    for sp in (server, *(sub.choices[r] for r in ROLES)):
        sp.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity in days (default: {LEAF_DAYS})")
    init.add_argument("--days", type=int, default=3650, help="validity in days (default: 3650)")
    return p


def _run(args: argparse.Namespace) -> list[Path]:
    d: Path = args.dir
    if args.command == "init":
        if (d / "ca.key").exists() and not args.force:
            raise PKIError(f"{d / 'ca.key'} exists; pass --force to replace the CA")
        return list(write_credentials(d, "ca", new_ca(args.cn, args.days)))
    if args.command == "server":
        return list(write_credentials(d, args.name, issue_server(read_credentials(d, "ca"), args.host, args.days)))
    if args.command in ROLES:
        creds = issue_client(read_credentials(d, "ca"), args.command, args.name, args.days)
        return list(write_credentials(d, f"{args.command}-{args.name}", creds))
    if args.command == "flower-nodes":
        if args.n < 1:
            raise PKIError("flower-nodes needs N >= 1")
        return [p for i in range(args.n) for p in write_node_keypair(d / "nodes", f"{args.prefix}-{i}")]
    return list(write_node_keypair(d, args.name))  # node-key


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedshape-pki`` command; return the exit status (0 ok, 1 error)."""
    args = _parser().parse_args(argv)
    try:
        for path in _run(args):
            print(path)
    except (PKIError, OSError) as err:
        print(f"fedshape-pki: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
