"""Deployment: SuperLink + SuperNodes over TLS with SuperNode authentication on loopback (experiments.deploy_local)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from experiments import deploy_local
from experiments.deploy_local import LocalDeployment, NodeSpec
from shaping import pki

BIN = Path(sys.executable).parent
TINY_APP = Path(__file__).parent / "tiny_app"
REPO = Path(__file__).parents[2]
# Ports 19100-19119 are this area's loopback range: runs use PORT..PORT+3, the TLS test one port.
RUN_PORT, REAL_PORT, TLS_PORT = 19100, 19104, 19110

needs_flower = pytest.mark.skipif(
    not all((BIN / b).exists() for b in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower 1.42 binaries (flower-superlink, flower-supernode, flwr) not installed next to this Python",
)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_make_pki_writes_what_flower_needs(tmp_path):
    dep = LocalDeployment(tmp_path)
    dep.make_pki([NodeSpec("node-0"), NodeSpec("node-1", registered=False)])
    config = tomllib.loads((tmp_path / "flwr-cli" / "config.toml").read_text())
    conn = config["superlink"][config["superlink"]["default"]]
    assert conn == {"address": "127.0.0.1:19100", "root-certificates": str(tmp_path / "pki" / "ca.pem")}
    ca_pem = (tmp_path / "pki" / "ca.pem").read_bytes()
    for host in ("127.0.0.1", "localhost"):
        pki.verify_server(ca_pem, (tmp_path / "pki" / "server.pem").read_bytes(), host)
    for name in ("node-0", "node-1"):
        key = tmp_path / "pki" / "nodes" / name
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        serialization.load_ssh_private_key(key.read_bytes(), None)  # what flower-supernode loads


def test_config_values_from_the_command_line():
    assert [deploy_local._config_value(v) for v in ("3", "0.5", "true", "x/y")] == [3, 0.5, True, "x/y"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec and typer, imported by flwr.cli.build
def test_stage_app_copies_without_touching_the_original(tmp_path):
    """`flwr run APP` would comment out APP's [tool.flwr.federations]; we stage a copy and run that."""
    app = tmp_path / "tiny_app"
    shutil.copytree(TINY_APP, app)
    legacy = (app / "pyproject.toml").read_text() + '\n[tool.flwr.federations]\ndefault = "local"\n'
    (app / "pyproject.toml").write_text(legacy)
    overrides: dict[str, str | int] = {"output.results_file": "/x.json", "num-server-rounds": 5}
    staged = LocalDeployment(tmp_path / "work").stage_app(app, overrides)
    assert (app / "pyproject.toml").read_text() == legacy
    assert staged.name == "tiny_app"
    assert (staged / "tiny_app" / "server_app.py").read_bytes() == (app / "tiny_app" / "server_app.py").read_bytes()
    assert not (staged / ".info").exists()
    config = tomllib.loads((staged / "pyproject.toml").read_text())
    assert "federations" not in config["tool"]["flwr"]
    assert config["tool"]["flwr"]["app"]["config"] == {
        "num-server-rounds": 5, "result-path": "", "output": {"results_file": "/x.json"}
    }


@needs_flower
@pytest.mark.slow
def test_superlink_speaks_tls_only(tmp_path):
    """The SuperLink answers TLS with our server certificate; other CAs and plaintext get nowhere."""
    if not _port_free(TLS_PORT):
        pytest.skip(f"loopback port {TLS_PORT} is in use")
    with LocalDeployment(tmp_path, port=TLS_PORT) as dep:
        dep.make_pki([])
        dep.start_superlink(timeout=60)  # returns after a verified handshake with our CA
        other = tmp_path / "other-ca.pem"
        other.write_bytes(pki.new_ca("Other CA").cert_pem)
        context = ssl.create_default_context(cafile=str(other))
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=10) as sock:
                context.wrap_socket(sock, server_hostname="127.0.0.1")
        with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                reply = sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert not reply.startswith(b"HTTP/1.1 2")
        assert f"Uvicorn running on https://127.0.0.1:{TLS_PORT}" in dep.log("superlink")
        pid = dep.procs.pid("superlink")
        family = {pid: dep.procs.start_time(pid), **dep.procs.descendants(pid)}
    assert len(family) >= 2  # the SuperLink and the SuperExec it starts
    assert all(dep.procs.start_time(p) != start for p, start in family.items())


def _pem_body(openssh_pub: bytes) -> str:
    """First base64 line of the SubjectPublicKeyInfo PEM, as Flower 1.42's SuperLink logs a refused key."""
    pem = serialization.load_ssh_public_key(openssh_pub).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode().splitlines()[1]


def _deploy(tmp_path: Path, app: Path, port: int, extra: list[str]) -> tuple[dict, dict[str, str], Path]:
    """Run `python -m experiments.deploy_local` with 2 registered nodes and 1 intruder; (summary, logs, workdir)."""
    if not all(_port_free(p) for p in range(port, port + 4)):
        pytest.skip(f"loopback ports {port}-{port + 3} are in use")
    work = tmp_path / "deploy"
    argv = [
        "--app", str(app), "--workdir", str(work), "--nodes", "2", "--unregistered", "1", "--port", str(port),
        "--timeout", "500", "--summary", str(tmp_path / "summary.json"), *extra,
    ]
    started = time.monotonic()
    rc = deploy_local.main(argv)
    print(f"deployment run took {time.monotonic() - started:.1f} s")
    logs = {p.stem: p.read_text(errors="replace") for p in work.glob("*.log")}
    assert rc == 0, "\n".join(f"== {k}\n{v[-3000:]}" for k, v in logs.items())
    return json.loads((tmp_path / "summary.json").read_text()), logs, work


def _assert_tls_auth_and_refusal(summary: dict, logs: dict[str, str], work: Path, port: int) -> set[int]:
    """The run completed over TLS with the registered nodes only; the intruder was refused; nothing is left."""
    assert summary["status"] == "finished:completed"
    registered = {int(i) for i in summary["registered_node_ids"].values()}
    assert len(registered) == 2

    # Over TLS: the SuperLink serves HTTPS, and the nodes dialled it with our CA (they refuse anything else).
    assert f"Uvicorn running on https://127.0.0.1:{port}" in logs["superlink"]
    assert {int(n["node-id"]) for n in summary["nodes"]} == registered
    assert all(n["status"] == "online" for n in summary["nodes"])

    # The intruder was refused at activation, exited, and never got a node id or a message.
    assert summary["refused"]["intruder-0"] not in (None, 0)
    assert "[code: 2004] Failed to activate SuperNode" in logs["intruder-0"]
    assert "SuperNode ID:" not in logs["intruder-0"]
    intruder_key = _pem_body((work / "pki" / "nodes" / "intruder-0.pub").read_bytes())
    lines = logs["superlink"].splitlines()
    refusals = [line for line in lines if "No SuperNode found with the given public key" in line]
    assert len(refusals) == 1 and intruder_key in refusals[0]
    activated = {int(i) for i in re.findall(r"\[Fleet\.ActivateNode\] Activated node_id=(\d+)", logs["superlink"])}
    pushed = {int(i) for i in re.findall(r"\[Fleet\.PushMessages\] Push replies from node_id=(\d+)", logs["superlink"])}
    assert activated == registered and pushed == registered

    # Every process the helper started is gone, and the ports are free again.
    assert shutil.which("pgrep"), "pgrep is needed for the leftover check"
    leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True, check=False).stdout
    assert leftovers.strip() == "", leftovers
    assert all(_port_free(p) for p in range(port, port + 4))
    return registered


@needs_flower
@pytest.mark.slow
def test_two_rounds_over_tls_with_authenticated_nodes_and_an_intruder_refused(tmp_path):
    """deploy_local on the tiny app: 2 registered nodes train 2 rounds over TLS; an unregistered node is refused."""
    result = tmp_path / "result.json"
    extra = ["--run-config", "num-server-rounds=2", "--run-config", f"result-path={result}"]
    summary, logs, work = _deploy(tmp_path, TINY_APP, RUN_PORT, extra)
    registered = _assert_tls_auth_and_refusal(summary, logs, work, RUN_PORT)
    # Two rounds, both registered nodes trained in each: w = 0 + 2 * mean(0 + 1, 1 + 1) = 3.
    record = json.loads(result.read_text())
    assert record["num_rounds"] == 2 and sorted(record["train_metrics"]) == ["1", "2"]
    assert set(record["node_ids"]) == registered
    assert record["final_model"] == [3.0, 3.0, 3.0, 3.0]


@needs_flower
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FEDSHAPE_DEPLOY_REAL_APP") != "1",
    reason="FedShape's own apps train PPO in every ClientApp (minutes on a busy host): set FEDSHAPE_DEPLOY_REAL_APP=1",
)
def test_fedshape_apps_two_rounds_over_tls(tmp_path):
    """fed_server/fed_client (pyproject's [tool.flwr.app]) deployed: two tenants, two rounds, an intruder refused."""
    results = tmp_path / "results.json"
    tenants = [{"scenario": "default", "tenant": "gameco", "num_envs": 2},
               {"scenario": "single_path", "tenant": "office", "num_envs": 2}]  # fmt: skip
    extra = [
        "--run-config", "fl.rounds=2", "--run-config", "train.local_iterations=1",
        "--run-config", "evaluation.steps=10",
        # Keys the app does not declare in [tool.flwr.app.config] (1.42 refuses them in --run-config):
        "--app-config", f"tenants={json.dumps(tenants)}", "--app-config", "train.num_steps=16",
        "--app-config", "evaluation.envs=1", "--app-config", f"output.results_file={results}",
    ]
    summary, logs, work = _deploy(tmp_path, REPO, REAL_PORT, extra)
    _assert_tls_auth_and_refusal(summary, logs, work, REAL_PORT)
    record = json.loads(results.read_text())
    assert record["status"] == "completed"
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    for r in record["rounds"]:
        assert r["fit_clients"] == 2
        assert sorted(f["tenant"] for f in r["fit"]) == ["gameco@default", "office@single_path"]


def test_main_reports_a_missing_app(tmp_path, capsys):
    rc = deploy_local.main(["--app", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w"), "--port", "19112"])
    assert rc == 1
    assert "not a Flower app" in capsys.readouterr().err


def test_impossible_settings_of_fedshapes_apps_are_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("nothing may start")

    monkeypatch.setattr(deploy_local, "deploy", never)
    rc = deploy_local.main(["--app", str(REPO), "--workdir", str(tmp_path / "w"), "--run-config", "fl.rounds=0"])
    assert rc == 2
    assert capsys.readouterr().err == "deploy_local: fl.rounds must be >= 1, got 0\n"
    deploy_local.check_run_config(TINY_APP, {"num-server-rounds": 0})  # another app's settings are its own


@pytest.mark.parametrize("status", ["finished:failed", "finished:stopped"])
def test_a_failed_run_exits_non_zero_although_flwr_run_exits_0(tmp_path, capsys, monkeypatch, status):
    outcome = deploy_local.RunOutcome(7, status, {"node-0": 1}, [], {}, {"status": status}, {})
    monkeypatch.setattr(deploy_local, "deploy", lambda *args, **kwargs: outcome)
    rc = deploy_local.main(["--app", str(TINY_APP), "--workdir", str(tmp_path / "w")])
    assert rc == 1
    assert f"deploy_local: run 7 ended {status}" in capsys.readouterr().err
    monkeypatch.setattr(deploy_local, "deploy", lambda *args, **kwargs: outcome.__class__(
        7, "finished:completed", {"node-0": 1}, [], {}, {}, {}))  # fmt: skip
    assert deploy_local.main(["--app", str(TINY_APP), "--workdir", str(tmp_path / "w")]) == 0


def test_nodes_declare_their_tenants_as_deployed_tenants_do():
    nodes = deploy_local.node_specs(2, ["gameco@default", "office@single_path"], {"num-envs": 2})
    assert [(n.name, dict(n.node_config)) for n in nodes] == [
        ("node-0", {"tenant": "gameco", "scenario": "default", "num-envs": 2}),
        ("node-1", {"tenant": "office", "scenario": "single_path", "num-envs": 2}),
    ]
    assert deploy_local.node_specs(2, [], {})[1].node_config == {"partition-id": 1, "num-partitions": 2}
