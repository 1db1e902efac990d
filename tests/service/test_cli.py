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
    assert rc == 0 and "p99<==80" in text
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
