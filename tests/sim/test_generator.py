"""Scenario generator, families and the committed held-out suite: validity, determinism, ranges, splits."""

from __future__ import annotations

import ipaddress
import itertools
import math
import random

import numpy as np
import pytest
import torch

from shaping.config import APPS
from shaping.policies import PolicyInput, make_policy
from shaping.sim.events import event_kinds, has_events, validate_events
from shaping.sim.families import (
    DISRUPTIONS,
    EVENT_KINDS,
    FAMILIES,
    NEIGHBOUR_POLICIES,
    FamilyConfig,
    families,
    get_family,
    heldout_novelty,
)
from shaping.sim.generator import generate_scenario
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator
from shaping.sim.suite import HELDOUT_SEEDS, diff_suite, render_suite, suite_dir, suite_index
from shaping.spec import scenario_specs

SEEDS = range(4)
#: Values are rounded to 3 significant digits, so they may overshoot a range's end by this much.
ROUNDING = 0.005


def _within(x: float, lo: float, hi: float) -> bool:
    return lo * (1 - ROUNDING) <= x <= hi * (1 + ROUNDING)


def _check_scenario(fam: FamilyConfig, sc) -> None:
    """Everything a generated scenario of `fam` promises, beyond validating."""
    scenario_specs(sc)
    validate_events(sc)
    assert sc.family == fam.name and sc.episode_steps == fam.episode_steps
    assert fam.paths[0] <= len(sc.paths) <= fam.paths[1]
    assert fam.tenants[0] <= len(sc.tenants) <= fam.tenants[1]
    caps = [p.capacity_mbps for p in sc.paths]
    assert caps == sorted(caps, reverse=True), "the primary path is the largest"
    for p in sc.paths:
        assert _within(p.capacity_mbps, *fam.capacity_mbps)
        assert _within(2 * p.base_delay_ms, *fam.rtt_ms)
    min_delay = min(p.base_delay_ms for p in sc.paths)
    nets = []
    for t in sc.tenants:
        assert fam.classes[0] <= len(t.classes) <= fam.classes[1]
        assert all(dict(fam.mix)[c.app] > 0 for c in t.classes)
        for c in t.classes:
            assert c.qos.max_p99_ms is None or c.qos.max_p99_ms > min_delay
            assert (c.qos.max_p99_ms is not None) == (c.app in ("gaming", "transactions", "web"))
            assert (c.qos.app_floor is not None) == (c.app in ("gaming", "transactions", "video"))
            assert (c.qos.max_loss is not None) == (c.app == "gaming")
            assert c.qos.min_mbps is None or (c.app == "bulk" and c.qos.min_mbps <= c.mbps)
        nets += [ipaddress.ip_network(cidr) for e in t.entities for cidr in e.cidrs]
    block = ipaddress.ip_network("10.200.0.0/16")
    assert all(n.subnet_of(block) for n in nets)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(nets, 2))
    names = [t.name for t in sc.tenants]
    assert 1 <= len(sc.controlled) <= min(3, len(names)) and set(sc.controlled) <= set(names)
    for t in sc.tenants:
        if t.name in sc.controlled:
            assert t.arrive_step == 0 and t.leave_step is None
        else:
            assert t.policy in NEIGHBOUR_POLICIES
    kinds = set(event_kinds(sc)) | ({"diurnal_curve"} if sc.load.diurnal_curve else set())
    assert set(fam.required_events) <= kinds
    assert kinds - {"diurnal"} <= set(fam.events)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_draws_valid_scenarios_within_its_ranges(name):
    fam = get_family(name)
    for seed in SEEDS:
        sc = generate_scenario(name, seed)
        assert sc.name == f"{name}_s{seed}"
        _check_scenario(fam, sc)


def test_same_family_and_seed_give_the_same_scenario_without_touching_global_rng():
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    for fam in FAMILIES.values():
        assert generate_scenario(fam, 3) == generate_scenario(fam.name, 3)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_different_seeds_and_families_differ():
    for fam in FAMILIES.values():
        a, b = generate_scenario(fam, 0), generate_scenario(fam, 1)
        assert (a.paths, a.tenants) != (b.paths, b.tenants)
    first = [generate_scenario(f, 0).paths for f in FAMILIES.values()]
    assert len({str(p) for p in first}) == len(first)


def test_families_together_cover_the_promised_ranges():
    fams = list(FAMILIES.values())
    assert min(f.capacity_mbps[0] for f in fams) == 1.0 and max(f.capacity_mbps[1] for f in fams) == 10_000.0
    assert min(f.rtt_ms[0] for f in fams) == 0.1 and max(f.rtt_ms[1] for f in fams) == 300.0
    assert min(f.paths[0] for f in fams) == 1 and max(f.paths[1] for f in fams) == 4
    assert min(f.tenants[0] for f in fams) == 2 and max(f.tenants[1] for f in fams) == 8
    assert min(f.classes[0] for f in fams) == 1 and max(f.classes[1] for f in fams) == 8
    assert all(any(dict(f.mix)[app] > 0 for f in fams) for app in APPS)
    assert {k for f in fams for k in f.events} == set(EVENT_KINDS)


def test_heldout_families_leave_the_training_envelope():
    training, heldout = families("training"), families("heldout")
    assert training and heldout and not {f.name for f in training} & {f.name for f in heldout}
    for f in training:
        assert 10.0 <= f.capacity_mbps[0] and f.capacity_mbps[1] <= 1000.0
        assert 2.0 <= f.rtt_ms[0] and f.rtt_ms[1] <= 150.0
        assert len(set(f.events) & set(DISRUPTIONS)) <= 1, "training never combines path and load events"
        assert f.outages == (1, 1)
        assert heldout_novelty(f, training) == []
    for f in heldout:
        assert heldout_novelty(f, training), f"{f.name} lies inside the training envelope"
        # Capacities beyond training lie wholly beyond it (1-10 Mbit/s or 1-10 Gbit/s), not astride it.
        lo, hi = f.capacity_mbps
        assert 10.0 <= lo <= hi <= 1000.0 or hi <= 10.0 or lo >= 1000.0


def test_family_config_rejects_impossible_families():
    with pytest.raises(ValueError, match="two paths"):
        FamilyConfig("x", "heldout", "", paths=(1, 2), required_events=("failure",))
    with pytest.raises(ValueError, match="unknown"):
        FamilyConfig("x", "heldout", "", required_events=("meteor",))
    with pytest.raises(ValueError, match="2-8 tenants"):
        FamilyConfig("x", "training", "", tenants=(2, 9))
    with pytest.raises(KeyError, match="known"):
        get_family("nope")


def test_committed_heldout_suite_matches_the_generator_and_validates():
    # The files are the generator's text, so each loads as the scenario it was drawn as (checked on a
    # sample below: loading all of them through OmegaConf takes ~20 s).
    assert diff_suite(suite_dir("heldout"), render_suite("heldout", HELDOUT_SEEDS)) == []
    entries = suite_index("heldout")["scenarios"]
    suite = [generate_scenario(e["family"], e["seed"]) for e in entries]
    assert len(suite) >= 40 and len({sc.name for sc in suite}) == len(suite)
    for entry, sc in zip(entries, suite, strict=True):
        assert entry["name"] == sc.name and entry["file"] == f"{sc.name}.yaml"
        assert entry["events"] == event_kinds(sc)
        _check_scenario(get_family(entry["family"]), sc)
    kinds = [set(event_kinds(sc)) for sc in suite]
    for group in ("failure", "degradation", "flash_crowd", "arrival", "departure"):
        assert any(group in k for k in kinds), f"no held-out scenario with {group}"
    assert any(not has_events(sc) for sc in suite)
    assert {sc.family for sc in suite} == {f.name for f in families("heldout")}


@pytest.mark.parametrize("name", ["heldout_datacenter", "heldout_lte_backup_failure", "heldout_video_surge"])
def test_generated_scenarios_simulate_with_finite_metrics(name):
    sc = generate_scenario(name, 0)
    sim = Simulator(sc, batch_size=2, seed=0)
    policy = make_policy("static_priority")
    st = sim.tensors
    last = None
    with torch.inference_mode():
        for t in range(3):
            last = sim.step(policy(PolicyInput(t, st, sim.state, last)), torch.zeros(st.n_tenants, dtype=torch.bool))
            for field in last.metrics:
                assert torch.isfinite(field).all()
    assert math.isfinite(float(last.metrics.delivered_mbps.sum())) and float(last.metrics.delivered_mbps.sum()) > 0


def test_suite_files_load_back_as_the_generated_scenarios():
    entries = suite_index("heldout")["scenarios"]
    for entry in entries[:: len(entries) // 3]:
        loaded = load_scenario(str(suite_dir("heldout") / entry["file"]))
        assert loaded == generate_scenario(entry["family"], entry["seed"])
