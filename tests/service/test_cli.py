"""`fedshape` against a running service: tables, JSON round trip, and clear errors."""

from __future__ import annotations

import io
import json

import yaml

from shaping.cli import main
from shaping.rules.codec import rules_to_dict
from tests.rules.conftest import acme_rules


def run(running, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(["--target", running.target, *argv], out=out)
    return rc, out.getvalue()


def test_tenant_and_provider_commands(running, tmp_path, capsys):
    assert run(running, "--as", "provider/ops", "provider", "create", "acme", "--cap", "100")[0] == 0
    rules_file = tmp_path / "rules.yaml"
    d = rules_to_dict(acme_rules())
    del d["tenant"], d["revision"], d["cap_mbps"]
    rules_file.write_text(yaml.safe_dump(d))
    rc, text = run(running, "--as", "tenant/acme", "tenant", "apply", str(rules_file))
    assert rc == 0 and "revision 2" in text and "web-vm" in text
    assert "CLASS" in text and "udp/27015" in text
    rc, text = run(running, "--as", "tenant/acme", "tenant", "rules", "--json")
    assert json.loads(text)["classes"][0]["name"] == "game"
    rc, text = run(running, "--as", "tenant/acme", "tenant", "mode", "adaptive", "--entity", "net")
    net_row = next(line for line in text.splitlines() if line.startswith("net "))
    assert rc == 0 and net_row.split()[:3] == ["net", "subnet", "adaptive"]
    rc, text = run(running, "--as", "tenant/acme", "tenant", "qos", "site", "--max-p99-ms", "80")
    assert rc == 0 and "p99<=80" in text and "<==" not in text
    assert run(running, "--as", "tenant/acme", "tenant", "push", "game", "--fps", "55")[0] == 0
    rc, text = run(running, "--as", "tenant/acme", "tenant", "status")
    assert rc == 0 and "reported never (stale)" in text
    rc, text = run(running, "--as", "provider/ops", "provider", "tenants")
    assert rc == 0 and text.splitlines()[0].split()[:3] == ["TENANT", "CAP_MBPS", "REV"]
    assert text.splitlines()[2].split()[:2] == ["acme", "100"]
    rc, text = run(running, "--as", "provider/ops", "provider", "metrics", "acme")
    assert rc == 0 and "fps" in text
    for cmd in ("health", "federation"):
        assert run(running, "--as", "provider/ops", "provider", cmd)[0] == 0


def test_errors_are_clear(running, capsys):
    rc, _ = run(running, "--as", "tenant/acme", "tenant", "rules")
    assert rc == 1 and "NOT_FOUND: tenant 'acme' is not registered" in capsys.readouterr().err
    run(running, "--as", "provider/ops", "provider", "create", "acme", "--cap", "100")
    rc, _ = run(running, "--as", "tenant/acme", "tenant", "add-entity", "vm1", "--cidr", "10.0.0.300/32")
    assert rc == 1 and "INVALID_ARGUMENT: entity 'vm1' has an invalid address" in capsys.readouterr().err
    rc, _ = run(running, "--as", "tenant/acme", "provider", "tenants")
    assert rc == 2 and "need --as provider/NAME" in capsys.readouterr().err
    rc = main(["--target", "127.0.0.1:1", "--as", "tenant/acme", "tenant", "rules"], out=io.StringIO())
    assert rc == 1 and "is the service running at 127.0.0.1:1?" in capsys.readouterr().err


def test_pki_option_before_or_after_serve():
    from pathlib import Path

    from shaping.cli import parser

    assert parser().parse_args(["serve", "--pki", "a"]).pki == Path("a")
    assert parser().parse_args(["--pki", "b", "serve"]).pki == Path("b")


def test_service_commands_do_not_import_torch(tmp_path):
    # torch (and gymnasium, numpy) cost 4-9 s of start-up on every command, which needs none of them.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, io\n"
            "from shaping.cli import main\n"
            "rc = main(['--target', '127.0.0.1:1', '--as', 'tenant/acme', 'tenant', 'rules'], out=io.StringIO())\n"
            "print(rc, sorted(m for m in ('torch', 'gymnasium', 'numpy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout.split("\n")[0] == "1 []", proc.stdout + proc.stderr


def test_malformed_yaml_is_one_line(running, tmp_path, capsys):
    run(running, "--as", "provider/ops", "provider", "create", "acme", "--cap", "100")
    bad = tmp_path / "rules.yaml"
    bad.write_text("entities:\n  - name: vm\n   kind: [vm\n")
    rc, _ = run(running, "--as", "tenant/acme", "tenant", "apply", str(bad))
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fedshape: error: {bad}: line 3 column") and "not valid YAML or JSON" in err


def test_expired_certificate_is_named(tmp_path, capsys):
    import datetime as dt

    from shaping import pki

    ca = pki.new_ca()
    pki.write_credentials(tmp_path, "ca", ca)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    pki.write_credentials(tmp_path, "tenant-acme", pki.issue_client(ca, "tenant", "acme", days=1, now=old))
    rc = main(["--target", "127.0.0.1:1", "--pki", str(tmp_path), "--as", "tenant/acme", "tenant", "rules"],
              out=io.StringIO())
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert f"certificate {tmp_path / 'tenant-acme.pem'} expired on" in err and "Socket closed" not in err


def test_provider_revokes_a_certificate_by_file_or_serial(running, tmp_path, capsys):
    from shaping import pki

    cert = pki.issue_client(pki.new_ca(), "tenant", "acme").cert_pem
    (tmp_path / "acme.pem").write_bytes(cert)
    serial = pki.certificate_serial(cert)
    rc, text = run(running, "--as", "provider/ops", "provider", "revoke", "--cert", str(tmp_path / "acme.pem"),
                   "--reason", "laptop stolen")
    assert rc == 0 and text.strip() == f"revoked certificate serial {serial}"
    assert run(running, "--as", "provider/ops", "provider", "revoke", "0A:1B")[0] == 0
    rc, text = run(running, "--as", "provider/ops", "provider", "revoked")
    rows = [line.split()[0] for line in text.splitlines()[2:]]
    assert rc == 0 and sorted(rows) == sorted([serial, "a1b"]) and "laptop stolen" in text
    rc, _ = run(running, "--as", "provider/ops", "provider", "revoke", "nothex")
    assert rc == 1 and "is not 1..40 hex digits" in capsys.readouterr().err
