"""The static rules' routing: interactive classes on the lowest-delay path that carries them, bulk where
the tenant's share is spare, overflow to the next path, nothing moved with one path."""

from __future__ import annotations

import dataclasses

import pytest

from shaping.path_assignment import assign_paths, latency_sensitive, path_shares
from shaping.sim.scenarios import load_scenario
from shaping.spec import scenario_specs, tenant_spec
from tests.path_scenarios import four_paths


def _by_name(scenario: str, tenant: str) -> dict[str, int]:
    spec = tenant_spec(load_scenario(scenario), tenant)
    return {tc.name: p for tc, p in zip(spec.classes, assign_paths(spec), strict=True)}


def test_shares_are_the_first_paths_fraction_on_every_path():
    gameco = tenant_spec(load_scenario("default"), "gameco")  # 4 x 100 Mbit/s caps on 200 + 100 Mbit/s
    assert path_shares(gameco) == pytest.approx((50.0, 25.0))
    acme = tenant_spec(four_paths(), "acme")
    assert path_shares(acme) == pytest.approx((100.0, 25.0, 50.0, 75.0))


def test_default_interactive_on_the_fast_path_bulk_on_the_other():
    assert _by_name("default", "gameco") == {"game": 0, "web": 0, "video": 0, "backup": 1}
    assert _by_name("default", "bank") == {"trades": 0, "portal": 0, "archive": 1}
    # Bulk leaves eth0 to the interactive classes although gameco's share of eth0 (50) is the larger one.
    assert _by_name("default", "streamer") == {"live": 0, "chat": 0, "sync": 1}


def test_the_lowest_delay_path_need_not_be_the_first():
    # default_heldout_paths: eth1 (6 ms) is faster than eth0 (15 ms); gameco's share of it is 27.5 Mbit/s,
    # so video (25) after game (6) goes on to eth0, and web (12) fits beside game.
    assert _by_name("default_heldout_paths", "gameco") == {"game": 1, "web": 1, "video": 0, "backup": 0}


def test_four_paths_by_hand():
    """acme's shares: wide 100, fast 25, mid 50, far 75 (delay order fast 5, mid 15, wide 40, far 60 ms).

    game (budget 40 -> paths within 20 ms: fast, mid): fast, 6 of 25 used. trades (60 -> within 30 ms):
    6 + 20 > 25 on fast, so mid (20 of 50). site (web, 300 ms SLA, loose next to 60 ms): the first path
    that carries 30: mid (50 of 50). stream (video 10): fast (16 of 25). backup (100): least loaded is
    wide (100 / 100). sync (60): far (60 / 75) beats wide (160 / 100).
    """
    spec = tenant_spec(four_paths(), "acme")
    assert assign_paths(spec) == (1, 2, 2, 0, 3, 1)


def test_latency_class_that_would_exceed_its_share_moves_to_the_next_path():
    spec = tenant_spec(four_paths(), "acme")
    assert assign_paths(spec)[1] == 2  # trades, above (fast's 25 minus game's 6)
    smaller = dataclasses.replace(spec, classes=(spec.classes[0], dataclasses.replace(spec.classes[1], mbps=10.0)))
    assert assign_paths(smaller) == (1, 1)  # 6 + 10 fits on fast


def test_several_bulk_classes_spread_over_the_paths():
    spec = tenant_spec(four_paths(), "acme")
    paths = assign_paths(spec)
    assert paths[3] != paths[4]  # backup and sync
    # Two bulk classes of a two-path tenant: one on the spare path, the next where share is left.
    gameco = tenant_spec(load_scenario("default"), "gameco")
    second = dataclasses.replace(gameco.classes[3], name="backup2")
    two_bulk = dataclasses.replace(gameco, classes=(*gameco.classes, second))
    assert assign_paths(two_bulk) == (0, 0, 0, 1, 0)


def test_tight_sla_makes_a_class_latency_sensitive():
    spec = tenant_spec(four_paths(), "acme")
    site = spec.classes[2]
    assert not latency_sensitive(site, spec)  # 300 ms against a 60 ms path
    tight = dataclasses.replace(site, qos=dataclasses.replace(site.qos, max_p99_ms=100.0))
    assert latency_sensitive(tight, spec)
    assert latency_sensitive(spec.classes[0], spec) and not latency_sensitive(spec.classes[3], spec)


def test_no_path_within_the_budget_means_the_lowest_delay_path():
    # edge_gaming: matches has a 60 ms SLA; both paths (35, 55 ms) take more than half of it.
    assert _by_name("edge_gaming", "arena")["matches"] == 0


def test_one_path_or_unpublished_paths_keep_every_class_on_path_0():
    for spec in scenario_specs(load_scenario("single_path")):
        assert assign_paths(spec) == (0,) * len(spec.classes)
    gameco = tenant_spec(load_scenario("default"), "gameco")
    unknown = dataclasses.replace(gameco, path_mbps=(), path_delay_ms=())
    assert assign_paths(unknown) == (0, 0, 0, 0)
    assert path_shares(unknown) == (gameco.bottleneck_share_mbps, 0.0)
