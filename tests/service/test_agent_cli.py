"""``fedshape-agent --service``: the deployed agent follows the tenant's rules in the service and reports back."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from omegaconf import OmegaConf

from shaping import pki
from shaping.cli import main as fedshape
from shaping.control.cli import build_parser
from shaping.control.cli import main as agent_main
from shaping.service import RulesServer, ServerTLS
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent_run import ServiceError, check_service, run_service
from shaping.service.channel import client_stub, open_channel, provider_stub
from shaping.service.convert import rules_to_pb
from shaping.store import RulesStore
from tests.rules.conftest import acme_rules, provider_scenario
from tests.service.conftest import config
from tests.service.test_agent import _wait

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scenario_file(tmp_path) -> Path:
    """The service's scenario (provider paths), as `fedshape serve --scenario` reads it."""
    path = tmp_path / "provider.yaml"
    OmegaConf.save(OmegaConf.structured(provider_scenario()), path)
    return path


def _args(target: str, scenario_file: Path, *extra: str, tenant: str = "acme") -> list[str]:
    return ["--service", target, "--tenant", tenant, "--tenant-config", str(scenario_file), "--iface", "fsm-s0",
            "--iface", "fsm-s1", "--dry-run", "--interval-ms", "20", "--report-interval-s", "0.1",
            "--connect-attempts", "2", *extra]  # fmt: skip


class _Agent:
    """run_service on a thread, stopped by an event (as SIGTERM stops it in the process)."""

    def __init__(self, argv: list[str]) -> None:
        self.stop = threading.Event()
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(build_parser().parse_args(argv),), daemon=True)
        self.thread.start()

    def _run(self, args) -> None:
        try:
            self.summary = run_service(args, stop=self.stop)
        except BaseException as err:  # handed to the test
            self.error = err

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and self.error is None, self.error
        assert self.summary is not None
        return self.summary


def _status_text(target: str) -> str:
    out = io.StringIO()
    assert fedshape(["--target", target, "--as", "tenant/acme", "tenant", "status"], out=out) == 0
    return out.getvalue()


def test_the_agent_follows_rules_and_modes_set_through_the_client_api(with_acme, scenario_file, tmp_path):
    t, target = with_acme.tenant(), with_acme.target
    stored = t.GetRules(pb.TenantRef()).revision
    agent = _Agent(_args(target, scenario_file, "--model-inbox", str(tmp_path / "models"), "--gate-seeds", "1",
                         "--gate-steps", "5", "--state-file", str(tmp_path / "rules.json")))  # fmt: skip
    try:
        # The stored rules (web-vm adaptive, net static) reach the agent, and its report reaches the Client API.
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).applied_revision == stored, 30)
        s = t.GetAgentStatus(pb.TenantRef())
        assert s.mode == "mixed" and s.steps > 0 and not s.stale
        assert [c.name for c in s.classes] == ["game", "backup", "site"]
        assert s.HasField("model")  # --model-inbox: the real ModelUpdater, its state in the report

        # Static for every entity: a new revision, enforced and reported.
        static = t.SetMode(cpb.SetModeRequest(mode=pb.MODE_STATIC)).revision
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).applied_revision == static, 30)
        s = t.GetAgentStatus(pb.TenantRef())
        assert s.mode == "static" and not s.HasField("model")  # no adaptive entity: no model hand-over

        # A QoS change, then adaptive again.
        t.SetQoS(cpb.SetQoSRequest(class_name="site", qos=pb.QoS(max_p99_ms=80.0)))
        adaptive = t.SetMode(cpb.SetModeRequest(mode=pb.MODE_ADAPTIVE)).revision
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).applied_revision == adaptive, 30)
        assert t.GetAgentStatus(pb.TenantRef()).mode == "adaptive"

        # `fedshape tenant status` shows the agent's report; the Provider API lists it.
        text = _status_text(target)
        assert f"revision {adaptive}" in text and "adaptive" in text, text
        summary, = with_acme.provider().ListTenants(ppb.ListTenantsRequest()).tenants
        assert summary.agent.applied_revision == adaptive
    finally:
        result = agent.finish()
    assert result["tenant"] == "acme" and result["revision"] == adaptive
    assert result["revisions"][0] == stored and result["revisions"][-1] == adaptive and static in result["revisions"]
    assert result["steps"] > 0 and result["recorded_operations"] > 0 and "model_update" in result
    assert json.loads((tmp_path / "rules.json").read_text())["revision"] == adaptive


def test_a_step_budget_ends_the_run_with_a_summary(with_acme, scenario_file, capsys):
    assert agent_main(_args(with_acme.target, scenario_file, "--steps", "5")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] >= 5 and summary["policy"] and summary["revision"] == summary["revisions"][-1]
    assert with_acme.tenant().GetAgentStatus(pb.TenantRef()).steps >= 1


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_an_unknown_tenant_exits_1_with_one_line(with_acme, scenario_file, capsys):
    assert agent_main(_args(with_acme.target, scenario_file, "--steps", "1", tenant="nobody")) == 1
    err = _one_line_error(capsys)
    assert "tenant 'nobody' is unknown to the rules service" in err and "not registered" in err


def test_an_unreachable_service_is_retried_then_exits_1(scenario_file, tmp_path, capsys, caplog):
    store = RulesStore(tmp_path / "gone.db")
    server = RulesServer(store, config(), insecure_loopback=True).start()
    target = f"127.0.0.1:{server.port}"
    server.stop(0)
    store.close()
    # Nothing listens there now.
    started = time.monotonic()
    assert agent_main(_args(target, scenario_file, "--steps", "1")) == 1
    assert time.monotonic() - started >= 0.5  # one back-off between the two attempts
    err = _one_line_error(capsys)
    assert f"rules service at {target} unreachable after 2 attempts: UNAVAILABLE" in err
    assert "attempt 1 of 2; retrying in 0.5 s" in caplog.text


def test_check_service_backs_off_and_stops_on_a_refusal():
    class _Err(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

        def details(self):
            return "said no"

    class _Stub:
        def __init__(self, codes):
            self.codes = list(codes)

        def GetRules(self, ref, timeout):
            code = self.codes.pop(0)
            if code is None:
                return pb.RuleSet(tenant=ref.tenant, revision=4)
            raise _Err(code)

    sleeps: list[float] = []
    u = grpc.StatusCode.UNAVAILABLE
    assert check_service(_Stub([u, u, u, None]), "x:1", "acme", 5, sleep=sleeps.append).revision == 4
    assert sleeps == [0.5, 1.0, 2.0]
    with pytest.raises(ServiceError, match="unreachable after 3 attempts"):
        check_service(_Stub([u] * 3), "x:1", "acme", 3, sleep=sleeps.append)
    for code, what in ((grpc.StatusCode.UNAUTHENTICATED, "refused the agent's credentials: said no"),
                       (grpc.StatusCode.PERMISSION_DENIED, "does not let this identity act as tenant 'acme'")):
        sleeps.clear()
        with pytest.raises(ServiceError, match=what):
            check_service(_Stub([code]), "x:1", "acme", 5, sleep=sleeps.append)
        assert sleeps == []  # not retried


def test_configuration_errors_exit_2(with_acme, scenario_file, capsys):
    argv = _args(with_acme.target, scenario_file)
    no_tenant = [a for a in argv if a not in ("--tenant", "acme")]
    assert agent_main(no_tenant) == 2
    assert "--service needs --tenant NAME" in _one_line_error(capsys)
    one_iface = argv[:argv.index("--iface")] + argv[argv.index("--iface") + 2:]
    assert agent_main(one_iface) == 2
    assert "has 2 paths ['eth0', 'eth1']: give --iface 2 times" in _one_line_error(capsys)
    assert agent_main([*argv, "--policy", "checkpoint"]) == 2  # the stored rules have an adaptive entity
    assert "--policy checkpoint needs --checkpoint" in _one_line_error(capsys)
    assert agent_main(["--iface", "a", "--dry-run"]) == 2  # neither a scenario file nor a service
    assert "give --tenant-config FILE" in _one_line_error(capsys)


@pytest.fixture
def tls_service(tmp_path):
    """An mTLS service with acme registered; DIR holds the files `fedshape-pki` writes (ca, server, tenant-acme)."""
    d = tmp_path / "pki"
    ca = pki.new_ca()
    pki.write_credentials(d, "ca", ca)
    pki.write_credentials(d, "tenant-acme", pki.issue_client(ca, "tenant", "acme"))
    pki.write_credentials(d, "provider-ops", pki.issue_client(ca, "provider", "ops"))
    srv = pki.issue_server(ca, ["127.0.0.1"])
    store = RulesStore(tmp_path / "tls.db")
    server = RulesServer(store, config(), tls=ServerTLS(srv.cert_pem, srv.key_pem, ca.cert_pem)).start()
    target = f"127.0.0.1:{server.port}"
    with open_channel(target, "provider/ops", pki=d) as ch:
        provider_stub(ch).CreateTenant(ppb.CreateTenantRequest(name="acme", cap_mbps=100.0))
    with open_channel(target, "tenant/acme", pki=d) as ch:
        client_stub(ch).PutRules(cpb.PutRulesRequest(rules=rules_to_pb(acme_rules())))
    try:
        yield target, d
    finally:
        server.stop(0)
        store.close()


def test_mtls_with_the_tenant_certificate_and_a_revoked_one(tls_service, scenario_file, capsys):
    target, d = tls_service
    assert agent_main([*_args(target, scenario_file, "--steps", "3"), "--pki", str(d)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] >= 3
    with open_channel(target, "provider/ops", pki=d) as ch:
        serial = pki.certificate_serial((d / "tenant-acme.pem").read_bytes())
        provider_stub(ch).RevokeCertificate(ppb.RevokeCertificateRequest(serial=serial, reason="test"))
    assert agent_main([*_args(target, scenario_file, "--steps", "3"), "--pki", str(d)]) == 1
    err = _one_line_error(capsys)
    assert "refused the agent's credentials" in err and "revoked" in err
    (d / "tenant-acme.pem").unlink()
    assert agent_main([*_args(target, scenario_file, "--steps", "3"), "--pki", str(d)]) == 2
    assert "missing" in _one_line_error(capsys)


def test_sigterm_stops_the_deployed_agent_gracefully(with_acme, scenario_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shaping.control", *_args(with_acme.target, scenario_file)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = with_acme.tenant()
        assert _wait(lambda: t.GetAgentStatus(pb.TenantRef()).steps > 0, 60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["tenant"] == "acme" and summary["steps"] > 0


def test_with_a_state_file_an_unreachable_service_leaves_the_kept_rules_in_force(with_acme, scenario_file, tmp_path,
                                                                                 capsys, caplog):
    state = tmp_path / "rules.json"
    argv = _args(with_acme.target, scenario_file, "--steps", "3", "--state-file", str(state))
    assert agent_main(argv) == 0
    kept = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["revision"]
    with_acme.server.stop(0)
    assert agent_main(argv) == 0  # the service is gone: the kept rules are enforced, the watch retried meanwhile
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["revisions"] == [kept] and summary["steps"] >= 3 and summary["reports_failed"] >= 1
    assert f"enforcing the rules kept in {state}" in caplog.text
    state.unlink()
    assert agent_main(argv) == 1  # nothing kept: unreachable is an error
    assert "unreachable after 2 attempts" in _one_line_error(capsys)


def test_rules_the_loop_cannot_be_built_for_stop_the_agent_with_one_line(with_acme, scenario_file, capsys):
    # A probe of a class the tenant's rules do not have: the loop of those rules cannot be built.
    assert agent_main(_args(with_acme.target, scenario_file, "--steps", "3", "--probe", "nope=tcp:127.0.0.1:9")) == 1
    err = _one_line_error(capsys)
    assert err.startswith("fedshape-agent: error: tenant acme: stopped:") and "unknown class 'nope'" in err
