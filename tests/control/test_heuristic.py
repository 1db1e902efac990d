"""adaptive_heuristic in the control loop: SimBackend, guard and watchdog, a path failure, the CLI's --policy."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from omegaconf import OmegaConf

from shaping.baselines import static_priority_plan
from shaping.config import PathEventConfig
from shaping.control import ControlLoop, Guard, LoopConfig, Mode, SimBackend, WatchdogConfig
from shaping.control.cli import main
from shaping.control.heuristic import HeuristicControlPolicy
from shaping.spec import ActionLayout
from tests.control.conftest import small_scenario

GAME = 0


def from_rules(plan, rules):
    """The plan is the static rules' (routes, priorities, marks, rates), bulk guaranteed its SLA minimum with
    the controller's headroom."""
    keys = [(c.path, c.priority, c.dscp, c.ceil_mbps, c.drop_prob) for c in plan.classes]
    rates = [c.rate_mbps for c in plan.classes]
    return (keys == [(c.path, c.priority, c.dscp, c.ceil_mbps, c.drop_prob) for c in rules.classes]
            and rates == [10.0, 12.0, 10.0] and plan.root_mbps == rules.root_mbps)  # fmt: skip


def failing_scenario():
    """acme and rival on eth0/eth1; eth0 is down from step 10 to step 25."""
    sc = small_scenario()
    sc.path_events = [PathEventConfig(path="eth0", start_step=10, end_step=25, capacity_factor=0.0)]
    return sc


def test_the_loop_runs_the_heuristic_through_the_guard_and_fails_over():
    backend = SimBackend(failing_scenario(), "acme", seed=0)
    rules = static_priority_plan(backend.spec)
    policy = HeuristicControlPolicy(backend.spec)
    # The SLA fallback would put the static rules' routes back on the failed path: off for this policy.
    config = LoopConfig(realtime=False, deadline_s=2.0, watchdog=WatchdogConfig(sla_threshold=1.0))
    loop = ControlLoop(backend, policy, rules, config=config)
    records = []
    loop.run(60, on_step=records.append)
    loop.close()
    assert all(r.mode is Mode.ADAPTIVE and r.policy == "adaptive_heuristic" for r in records)
    assert all(r.guard_changes == () for r in records)  # its plans are inside the envelope
    guard = Guard(backend.spec, rules=rules)
    assert all(guard.clamp(p).plan == p for p in backend.applied)
    assert from_rules(backend.applied[0], rules)  # the first decision is the static rules
    game = [p.classes[GAME].path for p in backend.applied]
    home = rules.classes[GAME].path
    assert home == 0 and game[:10] == [0] * 10
    # The interval of simulated step 10 is observed at loop step 10: its plan takes game off eth0.
    assert game[10] == 1 and game[10:25] == [1] * 15
    assert game[-1] == 0  # back once eth0 has been healthy for the hysteresis
    layout = ActionLayout(backend.spec)
    assert all((r.decision.action == layout.encode(r.decision.plan)).all() for r in records if r.decision)


def test_a_new_episode_starts_from_the_static_rules():
    backend = SimBackend(failing_scenario(), "acme", seed=0, episode_steps=15)
    rules = static_priority_plan(backend.spec)
    loop = ControlLoop(
        backend,
        HeuristicControlPolicy(backend.spec),
        rules,
        config=LoopConfig(realtime=False, deadline_s=2.0, watchdog=WatchdogConfig(sla_threshold=1.0)),
    )
    loop.run(17)
    loop.close()
    # Intervals 0..15 are the first episode; the one observed at loop step 15 ends it, and the decision made
    # from it is still the controller's, the next one (step 16, after the reset's warm-up) the static rules.
    assert backend.applied[11].classes[GAME].path == 1
    assert not from_rules(backend.applied[15], rules) and from_rules(backend.applied[16], rules)


@pytest.fixture
def tenant_file(tmp_path):
    path = tmp_path / "small.yaml"
    OmegaConf.save(OmegaConf.structured(small_scenario()), path)
    return path


def test_cli_runs_the_heuristic(tenant_file, capsys):
    rc = main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "fsm-x0", "--iface", "fsm-x1",
               "--dry-run", "--steps", "3", "--interval-ms", "200", "--policy", "adaptive_heuristic"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["policy"] == "adaptive_heuristic" and summary["modes"] == {"adaptive": 3}


@pytest.mark.root
def test_cli_runs_the_heuristic_on_real_interfaces(tenant_file, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    from shaping.enforce.testing import netns_pair

    with netns_pair("fsm-heu", subnets=(36, 37)) as pair:
        rc = main(["--tenant-config", str(tenant_file), "--tenant", "acme", "--netns", pair.a,
                   "--iface", pair.a_links[0], "--iface", pair.a_links[1], "--steps", "5", "--interval-ms", "200",
                   "--policy", "adaptive_heuristic", "--teardown"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["policy"] == "adaptive_heuristic" and summary["steps"] == 5 and summary["fallbacks"] == 0


def test_cli_policy_choice_errors(tenant_file, capsys):
    base = ["--tenant-config", str(tenant_file), "--tenant", "acme", "--iface", "a", "--iface", "b", "--dry-run",
            "--steps", "1"]  # fmt: skip
    assert main([*base, "--policy", "checkpoint"]) == 2
    assert "--policy checkpoint needs --checkpoint" in capsys.readouterr().err
    assert main([*base, "--policy", "adaptive_heuristic", "--checkpoint", "x.pt"]) == 2
    assert "does not go with --policy adaptive_heuristic" in capsys.readouterr().err


def test_cli_turns_the_sla_fallback_off_for_the_heuristic_unless_told():
    from shaping.control.cli import build_parser, sla_threshold

    base = ["--tenant-config", "x.yaml", "--iface", "a"]
    parse = build_parser().parse_args
    assert sla_threshold(parse(base)) == 0.5
    assert sla_threshold(parse([*base, "--policy", "adaptive_heuristic"])) == 1.0
    assert sla_threshold(parse([*base, "--policy", "adaptive_heuristic", "--sla-threshold", "0.7"])) == 0.7
