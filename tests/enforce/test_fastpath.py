"""The batched HTB fast path and the struct-decoded counters: encoding (pure) and kernel round trips (root)."""

from __future__ import annotations

import struct

import pytest
from pyroute2.netlink.rtnl import RTM_DELRULE, RTM_NEWRULE
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from shaping.enforce import HtbClass, HtbFastPath, KernelEnforcer, NetlinkBackend
from shaping.enforce.fast_stats import FastStats
from shaping.enforce.fastpath import FastPathError, encode_change, encode_rule
from shaping.enforce.kinds.htb import buffer_ticks
from shaping.enforce.kinds.routing import PolicyRule
from shaping.enforce.testing import NetnsPair
from shaping.spec import TenantSpec
from tests.enforce.conftest import make_plan, pair_target, with_class


def decode(data: bytes) -> tcmsg:
    msg = tcmsg(bytes(data))
    msg.decode()
    return msg


def test_patched_message_decodes_like_pyroute2_encoding() -> None:
    fp = HtbFastPath(sock=object())  # type: ignore[arg-type]  # _message never touches the socket
    first = HtbClass("change", "eth0", 0x10010, 0x10001, 1_000_000, 2_000_000, 10_000, 20_000, 1)
    fp._message(7, first, 1)  # builds the template
    second = HtbClass("change", "eth0", 0x10010, 0x10001, 3_000_000, 5_000_000, 30_000, 50_000, 4)
    patched = bytes(fp._message(7, second, 99))
    msg = decode(patched)
    parms = msg.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")
    assert (msg["index"], msg["handle"], msg["parent"]) == (7, 0x10010, 0x10001)
    assert (parms["rate"], parms["ceil"], parms["prio"]) == (3_000_000, 5_000_000, 4)
    assert parms["buffer"] == buffer_ticks(3_000_000, 30_000) and parms["cbuffer"] == buffer_ticks(5_000_000, 50_000)
    assert struct.unpack_from("=I", patched, 8)[0] == 99
    # Same bytes as a fresh encoding of the second class (apart from the sequence number).
    fresh = bytearray(encode_change(7, second))
    struct.pack_into("=I", fresh, 8, 99)
    assert patched == bytes(fresh)
    assert len(patched) < 200  # no 2 KB rate tables


def test_supports_only_32bit_changes() -> None:
    fp = HtbFastPath(sock=object())  # type: ignore[arg-type]
    assert fp.supports(HtbClass("change", "e", 1, 1, 10, 10, 1, 1, 0))
    assert not fp.supports(HtbClass("add", "e", 1, 1, 10, 10, 1, 1, 0))
    assert not fp.supports(HtbClass("change", "e", 1, 1, 10, 1 << 33, 1, 1, 0))


@pytest.mark.root
def test_fast_changes_reach_kernel_and_errors_are_reported(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    with KernelEnforcer(spec, target) as enf:
        enf.apply(make_plan(spec))
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        for step in range(1, 4):
            res = enf.apply(with_class(make_plan(spec), 0, rate_mbps=5.0 * step, burst_bytes=6250 * step))
            assert res.fast
            got = backend.read_state().classes[(pair.a_links[0], 0x10010)]
            assert got.rate == 625_000 * step
        idx = backend.ipr.link_lookup(ifname=pair.a_links[0])[0]
        fp = HtbFastPath(pair.a)
        try:
            missing = HtbClass("change", pair.a_links[0], 0x10099, 0x10001, 1000, 1000, 3000, 3000, 0)
            ok = HtbClass("change", pair.a_links[0], 0x10011, 0x10001, 7000, 9000, 3000, 3000, 2)
            with pytest.raises(FastPathError, match="0x10099"):
                fp.change([(idx, missing), (idx, ok)])
            assert backend.read_state().classes[(pair.a_links[0], 0x10011)].rate == 7000  # the rest still applied
        finally:
            fp.close()


def test_rule_messages_decode_like_the_rules_pyroute2_sends() -> None:
    add = fibmsg(encode_rule(PolicyRule("add", 20001, 0x4601, 101), 5))
    add.decode()
    assert add["header"]["type"] == RTM_NEWRULE and add["header"]["sequence_number"] == 5
    assert (add.get_attr("FRA_PRIORITY"), add.get_attr("FRA_FWMARK"), add.get_attr("FRA_TABLE")) == (20001, 0x4601, 101)
    assert add.get_attr("FRA_FWMASK") == 0xFFFFFFFF
    delete = fibmsg(encode_rule(PolicyRule("delete", 20001, 0x4601, 101), 6))
    delete.decode()
    assert delete["header"]["type"] == RTM_DELRULE


@pytest.mark.root
def test_path_changes_go_as_one_rule_batch(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    with KernelEnforcer(spec, target) as enf:
        enf.apply(make_plan(spec))
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        applied = backend.ops_applied
        res = enf.apply(with_class(make_plan(spec), 0, path=1))
        assert [o.verb for o in res.ops] == ["delete", "add"]  # class 0's rule, now to path 1's table
        assert backend.ops_applied == applied  # not through pyroute2
        assert backend.read_state().rules == enf.state.rules
        assert enf.state.rules[target.rule_priority_base].table == target.paths[1].table
        fp = HtbFastPath(pair.a)
        try:
            with pytest.raises(FastPathError, match="delete of rule priority 20099"):
                fp.change_rules([PolicyRule("delete", 20099, target.mark(0), 100)])
        finally:
            fp.close()


@pytest.mark.root
def test_fast_stats_match_pyroute2(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    with KernelEnforcer(spec, target) as enf:
        enf.apply(make_plan(spec))
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        idx = [backend.ipr.link_lookup(ifname=n)[0] for n in pair.a_links]
        fast = FastStats(pair.a)

        def slow_packets() -> dict[int, int]:
            out: dict[int, int] = {}
            for i in idx:
                for msg in backend.ipr.get_classes(index=i):
                    basic = msg.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")
                    out[msg["handle"]] = out.get(msg["handle"], 0) + basic["packets"]
            return out

        def slow_tx_bytes() -> int:
            (link,) = backend.ipr.get_links(idx[0])
            return int(link.get_attr("IFLA_STATS64")["tx_bytes"])

        try:
            # Counters only grow, and the fresh veths may carry background packets (IPv6 DAD, router
            # solicitations) at any time: bracket the fast read between two pyroute2 reads.
            before = slow_packets()
            stats = fast.read_classes(idx)
            after = slow_packets()
            assert set(stats) == {k for _, k in backend.read_state().classes} == set(before)
            for handle, counters in stats.items():
                assert before[handle] <= counters.packets <= after[handle]
            tx_before = slow_tx_bytes()
            tx_fast = fast.read_links(idx[:1])[idx[0]].tx_bytes
            assert tx_before <= tx_fast <= slow_tx_bytes()
        finally:
            fast.close()
