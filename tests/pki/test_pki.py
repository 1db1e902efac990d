"""Unit tests of shaping.pki: chains, SAN identities, wrong CAs, key files and the CLI."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from shaping import pki


@pytest.fixture(scope="module")
def ca() -> pki.Credentials:
    return pki.new_ca("Test CA")


@pytest.fixture(scope="module")
def other_ca() -> pki.Credentials:
    return pki.new_ca("Someone else's CA")


def test_ca_is_a_ca(ca):
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("role", ["tenant", "provider"])
def test_client_identity_round_trip(ca, role):
    creds = pki.issue_client(ca, role, "acme-01")
    identity = pki.verify_client(ca.cert_pem, creds.cert_pem)
    assert identity == pki.Identity(role, "acme-01")
    assert identity.uri == f"fedshape://{role}/acme-01"
    der = x509.load_pem_x509_certificate(creds.cert_pem).public_bytes(serialization.Encoding.DER)
    assert pki.peer_identity(der) == identity
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert cert.subject.rfc4514_string() == f"O={role},CN=acme-01"


def test_key_matches_certificate(ca):
    creds = pki.issue_client(ca, "tenant", "t1")
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    assert key.public_key() == x509.load_pem_x509_certificate(creds.cert_pem).public_key()


def test_wrong_ca_rejected(ca, other_ca):
    creds = pki.issue_client(other_ca, "tenant", "mallory")
    with pytest.raises(pki.PKIError, match="does not verify"):
        pki.verify_client(ca.cert_pem, creds.cert_pem)
    server = pki.issue_server(other_ca, ["localhost"])
    with pytest.raises(pki.PKIError, match="does not verify"):
        pki.verify_server(ca.cert_pem, server.cert_pem, "localhost")


def test_server_cert_hosts_and_usage(ca):
    server = pki.issue_server(ca, ["rules.example", "127.0.0.1", "::1"])
    for host in ("rules.example", "127.0.0.1", "::1"):
        pki.verify_server(ca.cert_pem, server.cert_pem, host)
    with pytest.raises(pki.PKIError):
        pki.verify_server(ca.cert_pem, server.cert_pem, "other.example")
    # A server certificate is not a client certificate: no clientAuth, no identity.
    with pytest.raises(pki.PKIError):
        pki.verify_client(ca.cert_pem, server.cert_pem)
    with pytest.raises(pki.PKIError, match="exactly one"):
        pki.peer_identity(server.cert_pem)


def test_client_cert_is_not_a_server_cert(ca):
    client = pki.issue_client(ca, "tenant", "localhost")
    with pytest.raises(pki.PKIError):
        pki.verify_server(ca.cert_pem, client.cert_pem, "localhost")


def test_expired_certificate_rejected():
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ca = pki.new_ca(now=old)
    creds = pki.issue_client(ca, "tenant", "t1", days=1, now=old)
    with pytest.raises(pki.PKIError):
        pki.verify_client(ca.cert_pem, creds.cert_pem)
    assert pki.verify_client(ca.cert_pem, creds.cert_pem, now=old + dt.timedelta(hours=1)).name == "t1"


@pytest.mark.parametrize("name", ["", "a/b", "../x", "-x", "x-", "a b", "x" * 64, "tenant\n", "Acme"])
def test_bad_names_rejected(ca, name):
    with pytest.raises(pki.PKIError, match="invalid name"):
        pki.issue_client(ca, "tenant", name)


@pytest.mark.parametrize("name", ["acme", "a", "x" * 63, "team-1.eu_west"])
def test_certificate_names_are_exactly_the_rules_tenant_names(ca, name):
    # A tenant certificate is only useful for a name the rules service accepts as a tenant.
    from shaping.rules import check_name
    from shaping.rules.model import Limits

    check_name("tenant", name, Limits())
    assert pki.peer_identity(pki.issue_client(ca, "tenant", name).cert_pem).name == name


def test_bad_role_and_garbage_rejected(ca):
    with pytest.raises(pki.PKIError, match="unknown role"):
        pki.issue_client(ca, "admin", "x")  # type: ignore[arg-type]
    with pytest.raises(pki.PKIError, match=r"not an X\.509"):
        pki.peer_identity(b"not a certificate")
    with pytest.raises(pki.PKIError, match="at least one"):
        pki.issue_server(ca, [])


def test_ca_key_must_match(ca, other_ca):
    with pytest.raises(pki.PKIError, match="does not belong"):
        pki.issue_client(pki.Credentials(ca.cert_pem, other_ca.key_pem), "tenant", "x")


def test_write_credentials_modes(tmp_path, ca):
    key_file = tmp_path / "certs" / "ca.key"
    key_file.parent.mkdir()
    key_file.write_bytes(b"old")
    key_file.chmod(0o644)  # a pre-existing, too-open key file is tightened
    cert_path, key_path = pki.write_credentials(tmp_path / "certs", "ca", ca)
    assert key_path == key_file
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert pki.read_credentials(tmp_path / "certs", "ca") == ca


def test_node_keypair_loads_like_flower(tmp_path):
    private, public = pki.new_node_keypair()
    key = serialization.load_ssh_private_key(private, None)
    pub = serialization.load_ssh_public_key(public)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == pub
    assert public.startswith(b"ecdsa-sha2-nistp384 ")
    key_path, pub_path = pki.write_node_keypair(tmp_path, "node-0")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pub_path.name == "node-0.pub"


def test_node_public_key_accepted_by_flower_cli(tmp_path):
    register = pytest.importorskip("flwr.cli.supernode.register")
    _, pub_path = pki.write_node_keypair(tmp_path, "n")
    assert register.try_load_public_key(pub_path)


def test_cli_end_to_end(tmp_path, capsys):
    d = tmp_path / "pki"
    assert pki.main(["init", str(d)]) == 0
    assert pki.main(["init", str(d)]) == 1  # refuses to replace the CA silently
    assert "exists" in capsys.readouterr().err
    assert pki.main(["server", str(d), "--host", "localhost", "--host", "127.0.0.1"]) == 0
    assert pki.main(["tenant", str(d), "acme"]) == 0
    assert pki.main(["provider", str(d), "ops"]) == 0
    assert pki.main(["flower-nodes", str(d), "2"]) == 0
    assert pki.main(["tenant", str(d), "bad/name"]) == 1
    ca_pem = (d / "ca.pem").read_bytes()
    assert pki.verify_client(ca_pem, (d / "tenant-acme.pem").read_bytes()) == pki.Identity("tenant", "acme")
    assert pki.verify_client(ca_pem, (d / "provider-ops.pem").read_bytes()) == pki.Identity("provider", "ops")
    pki.verify_server(ca_pem, (d / "server.pem").read_bytes(), "127.0.0.1")
    assert sorted(p.name for p in (d / "nodes").iterdir()) == ["node-0", "node-0.pub", "node-1", "node-1.pub"]
    for key in ("ca.key", "server.key", "tenant-acme.key", "nodes/node-1"):
        assert stat.S_IMODE((d / key).stat().st_mode) == 0o600
    assert pki.main(["server", str(tmp_path / "empty"), "--host", "x"]) == 1


def test_module_entry_point(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "shaping.pki", "node-key", str(tmp_path), "tenant-node"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "tenant-node"), str(tmp_path / "tenant-node.pub")]
    bad = subprocess.run(
        [sys.executable, "-m", "shaping.pki", "server", str(tmp_path / "none"), "--host", "h"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 1 and "fedshape-pki init" in bad.stderr


def test_check_validity_names_an_expired_or_future_certificate():
    import datetime as dt

    from shaping.pki import PKIError, check_validity, issue_client, new_ca

    now = dt.datetime.now(dt.UTC)
    ca = new_ca()
    check_validity(issue_client(ca, "tenant", "acme", days=1).cert_pem, "fresh.pem")
    expired = issue_client(ca, "tenant", "acme", days=1, now=now - dt.timedelta(days=3)).cert_pem
    with pytest.raises(PKIError, match=r"certificate old\.pem expired on \d{4}-\d\d-\d\d"):
        check_validity(expired, "old.pem")
    future = issue_client(ca, "tenant", "acme", days=1, now=now + dt.timedelta(days=3)).cert_pem
    with pytest.raises(PKIError, match="not valid before"):
        check_validity(future, "new.pem")


def test_leaf_certificates_last_90_days_and_serials_read_every_way():
    import datetime as dt

    from shaping.pki import LEAF_DAYS, PKIError, certificate_serial, issue_client, load_certificate, new_ca, serial_hex

    ca = new_ca()
    cert = issue_client(ca, "tenant", "acme").cert_pem
    parsed = load_certificate(cert)
    assert LEAF_DAYS == 90
    assert parsed.not_valid_after_utc - parsed.not_valid_before_utc == dt.timedelta(days=90)
    serial = certificate_serial(cert)
    assert serial == f"{parsed.serial_number:x}"
    assert serial_hex(f"serial={serial.upper()}") == serial_hex("0x" + serial) == serial
    assert serial_hex("0a:1b") == "a1b" and serial_hex(0xA1B) == "a1b"
    for bad in ("", "xyz", "0", "1" * 41):
        with pytest.raises(PKIError):
            serial_hex(bad)
