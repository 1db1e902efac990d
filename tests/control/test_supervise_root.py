"""Root only: a real agent under fedshape-supervise in our own namespaces; SIGSTOP, static rules, SIGCONT, takeover."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from shaping.agents import ActorCritic, save_checkpoint
from shaping.spec import ActionLayout, ObservationLayout, tenant_spec
from tests.control.conftest import small_scenario

pytestmark = pytest.mark.root
INTERVAL_MS = 100.0


def _wait_for(cond: Callable[[], bool], timeout_s: float, every_s: float = 0.005) -> float | None:
    """Seconds until ``cond()`` held, or None after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(every_s)
    return None


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_sigstopped_agent_gets_the_static_rules_within_two_intervals(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    from shaping.control import cli
    from shaping.control.kernel_backend import KernelSetup, make_enforcer
    from shaping.enforce import EnforceConfig, NetlinkBackend, target_from_spec
    from shaping.enforce.kinds.htb import desired_classes
    from shaping.enforce.testing import netns_pair

    scenario = small_scenario()
    tenant = tmp_path / "small.yaml"
    OmegaConf.save(OmegaConf.structured(scenario), tenant)
    spec = tenant_spec(scenario, "acme")
    torch.manual_seed(0)  # an untrained agent: its greedy plan is not the static one
    model = ActorCritic(ObservationLayout(spec).size, ActionLayout(spec).nvec, (16, 16))
    checkpoint = save_checkpoint(tmp_path / "agent.pt", model, spec)

    with netns_pair("fsm-sup", subnets=(38, 39)) as pair:
        agent_args = ["--tenant-config", str(tenant), "--tenant", "acme", "--netns", pair.a,
                      "--iface", pair.a_links[0], "--iface", pair.a_links[1], "--checkpoint", str(checkpoint),
                      "--interval-ms", str(INTERVAL_MS), "--teardown", "--log-level", "WARNING"]  # fmt: skip
        static = cli.agent_setup(cli.build_parser().parse_args(agent_args)).static_plan
        target = target_from_spec(spec, EnforceConfig(interfaces=pair.a_links, netns=pair.a))
        want = {(op.interface, op.classid): op.rate for op in desired_classes(spec, static, target)}
        reader = NetlinkBackend(target, kinds=["htb"])
        checker, _ = make_enforcer(spec, KernelSetup(pair.a_links, pair.a))

        def all_static() -> bool:  # HTB, nftables and policy routing: nothing left to change
            checker.reconcile()
            return not checker.plan(static)

        def rates() -> dict[tuple[str, int], int]:
            return {key: c.rate for key, c in reader.read_state().classes.items()}

        command = [sys.executable, "-m", "shaping.control.supervise", "--kill-after-s", "30", "--", *agent_args]
        sup = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
        try:
            assert _wait_for(lambda: rates() == want, 30.0) is not None, "the supervisor never applied the rules"
            assert _wait_for(lambda: rates() not in ({}, want), 30.0) is not None, "the agent never took over"
            (agent,) = _children(sup.pid)
            time.sleep(0.5)  # past its first step, whose grace is longer than the deadline
            os.kill(agent, signal.SIGSTOP)
            t0 = time.monotonic()
            restored = _wait_for(lambda: rates() == want, 3.0)
            assert restored is not None and restored <= 2 * INTERVAL_MS / 1e3, restored
            # The rest (marks, drops, paths) follows the rates in the same restore; its time is in the
            # supervisor's log line, since one full read of the kernel here takes tens of milliseconds.
            assert _wait_for(all_static, 2.0, every_s=0.0) is not None
            whole = time.monotonic() - t0
            print(f"after SIGSTOP: static rates {restored * 1e3:.0f} ms, the whole plan read back {whole * 1e3:.0f} ms")
            os.kill(agent, signal.SIGCONT)  # it re-reads the kernel (SIGUSR1) and applies its own plan again
            assert _wait_for(lambda: rates() != want, 5.0) is not None
            sup.send_signal(signal.SIGTERM)
            _, err = sup.communicate(timeout=20)
            assert sup.returncode == 0, err
            assert rates() == {}  # the agent's --teardown on SIGTERM
        finally:
            if sup.poll() is None:
                os.killpg(sup.pid, signal.SIGKILL)
                sup.wait(5)
            reader.close()
            checker.close()
        assert "silent for" in err and "static rules restored in" in err and "answers again" in err, err
        print(next(line for line in err.splitlines() if "silent for" in line))
