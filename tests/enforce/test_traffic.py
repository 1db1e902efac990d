"""Real packets through the enforcement (root, ~6 s): a class's rate, its DSCP mark, drops and path."""

from __future__ import annotations

import pytest

from shaping.enforce import KernelEnforcer, NetlinkBackend
from shaping.enforce.fast_stats import FastStats
from shaping.enforce.testing import NetnsPair
from shaping.spec import TenantSpec
from tests.enforce.conftest import make_plan, make_spec, pair_target, with_class
from tests.enforce.traffic import WIRE_OVERHEAD, udp_run, wire_mbps

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_class_rate_is_enforced_within_10_percent(spec: TenantSpec, pair: NetnsPair) -> None:
    plan = with_class(make_plan(spec), 0, rate_mbps=8.0, ceil_mbps=8.0, burst_bytes=10_000)
    with KernelEnforcer(spec, pair_target(spec, pair)) as enf:
        enf.apply(plan)
        res = udp_run(pair.a, pair.a_addrs[0], pair.b, pair.b_addrs[0], 5000, mbps=20.0, duration=2.5)
        stamps = res["stamps"]
        assert isinstance(stamps, list) and len(stamps) > 100
        got = wire_mbps(stamps)
        assert abs(got - 8.0) <= 0.8, f"class shaped to 8 Mbit/s delivered {got:.2f} Mbit/s"
        # The class's own counters saw the traffic (nft put it in the class, not the default one).
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        idx = backend.ipr.link_lookup(ifname=pair.a_links[0])[0]
        fast = FastStats(pair.a)
        try:
            stats = fast.read_classes([idx])
        finally:
            fast.close()
        assert stats[0x10010].bytes >= len(stamps) * (1400 + WIRE_OVERHEAD)
        assert stats[0x10010].drops + stats[0x10010].overlimits > 0
        assert stats[0x10002].bytes < stats[0x10010].bytes / 100


def test_dscp_drops_and_path_are_enforced(spec: TenantSpec, pair: NetnsPair) -> None:
    plan = with_class(make_plan(spec), 0, dscp=46, drop_prob=0.25, path=1)
    with KernelEnforcer(spec, pair_target(spec, pair)) as enf:
        enf.apply(plan)
        res = udp_run(pair.a, pair.a_addrs[0], pair.b, pair.b_addrs[0], 5000, mbps=4.0, duration=1.5)
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        idx = [backend.ipr.link_lookup(ifname=n)[0] for n in pair.a_links]
        fast = FastStats(pair.a)
        try:
            p0, p1 = (fast.read_classes([i]) for i in idx)
        finally:
            fast.close()
    assert res["tos"] == 46 << 2
    stamps = res["stamps"]
    assert isinstance(stamps, list)
    kept = p1[0x10010].packets
    assert kept > 100 and p0[0x10010].packets == 0  # the class took path 1 only
    # Drops happen before the qdisc: HTB counted what survived, the receiver got all of it.
    sent = res["sent"]
    assert isinstance(sent, int)
    assert 0.65 <= kept / sent <= 0.85, f"kept {kept} of {sent} packets with drop probability 0.25"
    assert len(stamps) == pytest.approx(kept, rel=0.02)


def test_destination_match_classifies_only_traffic_to_those_addresses(pair: NetnsPair) -> None:
    # Class 0 matches udp 5000 to side b's second address only; it is sent down path 1.
    spec = make_spec(game_dst=(f"{pair.b_addrs[1]}/32",))
    plan = with_class(make_plan(spec), 0, path=1)
    with KernelEnforcer(spec, pair_target(spec, pair)) as enf:
        enf.apply(plan)
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        idx = [backend.ipr.link_lookup(ifname=n)[0] for n in pair.a_links]
        fast = FastStats(pair.a)
        try:
            other = udp_run(pair.a, pair.a_addrs[0], pair.b, pair.b_addrs[0], 5000, mbps=2.0, duration=1.0)
            after_other = [fast.read_classes([i]) for i in idx]
            matched = udp_run(pair.a, pair.a_addrs[0], pair.b, pair.b_addrs[1], 5000, mbps=2.0, duration=1.0)
            after_matched = [fast.read_classes([i]) for i in idx]
        finally:
            fast.close()
    assert isinstance(other["stamps"], list) and len(other["stamps"]) > 100
    assert isinstance(matched["stamps"], list) and len(matched["stamps"]) > 100
    # Traffic to the other address stayed unclassified: not in class 0 on either path, and unmarked.
    assert after_other[0][0x10010].packets == 0 and after_other[1][0x10010].packets == 0
    assert after_other[0][0x10002].packets >= len(other["stamps"])
    # Traffic to the class's destination was classified and routed down path 1.
    assert after_matched[1][0x10010].packets >= len(matched["stamps"])
    assert after_matched[0][0x10010].packets == 0
