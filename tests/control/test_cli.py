"""``python -m shaping.control``: dry runs anywhere, a real run in our own network namespaces as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from shaping.agents.global_model import get_weights, make_model, save_weights
from shaping.agents.universal import UniversalLayout
from shaping.control.cli import agent_setup, build_parser, main
from tests.control.conftest import small_scenario


@pytest.fixture
def tenant_file(tmp_path):
    path = tmp_path / "small.yaml"
    OmegaConf.save(OmegaConf.structured(small_scenario()), path)
    return path


def test_dry_run_three_steps(tenant_file, tmp_path, capsys):
    rc = main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "fsm-x0", "--iface", "fsm-x1",
               "--dry-run", "--steps", "3", "--interval-ms", "20", "--experience", str(tmp_path / "exp"),
               "--app-socket", str(tmp_path / "app.sock")])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["tenant"] == "acme" and summary["modes"] == {"adaptive": 3}
    assert summary["recorded_operations"] > 0
    assert (tmp_path / "exp" / "meta.json").is_file()
    assert not (tmp_path / "app.sock").exists()  # removed on exit


def test_configuration_errors_exit_2(tenant_file, capsys):
    assert main(["--tenant-config", str(tenant_file), "--iface", "a", "--dry-run", "--steps", "1"]) == 2
    assert "pick one with --tenant" in capsys.readouterr().err
    assert main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "a", "--dry-run"]) == 2
    assert "give --iface 2 times" in capsys.readouterr().err
    assert main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "a", "--iface", "b",
                 "--dry-run", "--probe", "nope=tcp:1.2.3.4:80"]) == 2  # fmt: skip
    assert "unknown class 'nope'" in capsys.readouterr().err


def test_gateways_go_with_the_paths(tenant_file, capsys):
    base = ["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "a", "--iface", "b"]
    assert main([*base, "--gateway", "10.200.1.2", "--dry-run", "--steps", "1"]) == 2
    assert "give --gateway once per --iface (2)" in capsys.readouterr().err
    args = build_parser().parse_args([*base, "--gateway", "10.200.1.2", "--gateway", "10.200.2.2"])
    assert agent_setup(args).kernel.gateways == ("10.200.1.2", "10.200.2.2")
    assert agent_setup(build_parser().parse_args(base)).kernel.gateways == ()  # on-link


def _save(scenario, path):
    OmegaConf.save(OmegaConf.structured(scenario), path)
    return str(path)


def _bad_inputs(tmp_path, tenant_file) -> dict[str, tuple[list[str], str]]:
    """Arguments (after --tenant acme --dry-run) and the message each must exit 2 with."""
    ok = ["--tenant-config", str(tenant_file)]
    two = ["--iface", "a", "--iface", "b"]
    unreadable = "not a readable agent checkpoint"
    (tmp_path / "broken.yaml").write_text("name: x\ntenants: [ {name: a\n  paths: ]\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)  # the start of a zip, cut short
    overlap = small_scenario()
    overlap.tenants[0].entities[1].cidrs = ["10.200.30.0/24"]  # now holds web-vm's address
    overlap.tenants[0].classes[1].ports = [443]  # backup: tcp 443 like site
    tiny = small_scenario()
    tiny.tenants[0].cap_mbps = 1e-9
    return {
        "yaml": (["--tenant-config", str(tmp_path / "broken.yaml"), *two], "is not valid YAML: expected"),
        "empty checkpoint": ([*ok, *two, "--checkpoint", str(tmp_path / "empty.pt")], unreadable),
        "cut checkpoint": ([*ok, *two, "--checkpoint", str(tmp_path / "cut.pt")], unreadable),
        "loopback": ([*ok, "--iface", "lo", "--iface", "b"], "'lo' is the loopback interface"),
        "overlap": (["--tenant-config", _save(overlap, tmp_path / "overlap.yaml"), *two],
                    "classes 'backup' and 'site' overlap"),
        "tiny rate": (["--tenant-config", _save(tiny, tmp_path / "tiny.yaml"), *two], "too small for HTB"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["yaml", "empty checkpoint", "cut checkpoint", "loopback", "overlap", "tiny rate"]
)
def test_bad_inputs_exit_2_with_one_line(tenant_file, tmp_path, capsys, case):
    args, message = _bad_inputs(tmp_path, tenant_file)[case]
    assert main([*args, "--tenant", "acme", "--dry-run", "--steps", "1", "--interval-ms", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedshape-agent: error: ") and message in err[0], err


def test_module_entry_point_runs(tenant_file):
    out = subprocess.run(
        [sys.executable, "-m", "shaping.control", "--tenant-config", str(tenant_file), "--tenant", "acme",
         "--iface", "a", "--iface", "b", "--dry-run", "--steps", "2", "--interval-ms", "10"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 2


@pytest.mark.root
def test_real_run_in_a_network_namespace(tenant_file, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    from shaping.enforce.testing import netns_pair

    with netns_pair("fsm-cli", subnets=(33, 34)) as pair:
        rc = main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--netns", pair.a,
                   "--iface", pair.a_links[0], "--iface", pair.a_links[1], "--steps", "3", "--interval-ms", "50",
                   "--teardown"])  # fmt: skip
        assert rc == 0
        from pyroute2 import IPRoute

        with IPRoute(netns=pair.a, flags=0) as ipr:  # --teardown left nothing of ours
            idx = ipr.link_lookup(ifname=pair.a_links[0])[0]
            assert not [m for m in ipr.get_qdiscs(idx) if m.get_attr("TCA_KIND") == "htb"]


def test_a_global_model_drives_the_tenant(tmp_path, capsys):
    # The committed pretrained model (its summary.json beside it), as a federated round's model would.
    root = Path(__file__).resolve().parents[2]
    model = root / "conf" / "models" / "universal.npz"
    rc = main(["--tenant-config", "default", "--tenant", "gameco", "--iface", "fsm-g0", "--iface", "fsm-g1",
               "--checkpoint", str(model), "--dry-run", "--steps", "3", "--interval-ms", "20"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["modes"] == {"adaptive": 3}
    # Weights without their card do not fit the default hidden sizes: one line, exit 2.
    save_weights(tmp_path / "round_0001.npz", get_weights(make_model(UniversalLayout(), (8,))))
    rc = main(["--tenant-config", "default", "--tenant", "gameco", "--iface", "a", "--iface", "b",
               "--checkpoint", str(tmp_path / "round_0001.npz"), "--dry-run", "--steps", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not fit layout" in err[0], err


def test_a_model_inbox_is_wired_in_and_reported(tenant_file, tmp_path, capsys):
    inbox = ["--model-inbox", str(tmp_path / "inbox"), "--gate-seeds", "1", "--gate-steps", "5"]
    args = ["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "a", "--iface", "b", "--dry-run"]
    rc = main([*args, *inbox, "--steps", "3", "--interval-ms", "20", "--rollback-intervals", "4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_update"] == {"model_version": None, "gate": {}, "verdicts": [], "rollbacks": 0, "swaps": []}
    rc = main([*args, *inbox, "--gate-seeds", "0", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "gate needs margin >= 0, seeds >= 1" in err[0], err
