"""Root-only tests on real namespaces: apply, read back, idempotence, increments, restart, teardown, scope."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from pyroute2 import IPRoute

from shaping.enforce import (
    Capabilities,
    HtbQdisc,
    KernelEnforcer,
    NetlinkBackend,
    RecordingBackend,
    probe_capabilities,
)
from shaping.enforce.testing import NetnsPair
from shaping.spec import TenantSpec
from tests.enforce.conftest import make_plan, pair_target, with_class

pytestmark = pytest.mark.root


def nft_tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"], capture_output=True, check=True)
    return [i["table"]["name"] for i in json.loads(out.stdout)["nftables"] if "table" in i]


def test_apply_read_back_and_idempotent(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    plan = with_class(make_plan(spec), 0, rate_mbps=20.0, dscp=46)
    with KernelEnforcer(spec, target) as enf:
        first = enf.apply(plan)
        assert first.ops and not first.fast
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        kernel = backend.read_state()
        assert kernel == enf.reconcile()
        assert kernel.classes[(pair.a_links[0], 0x10010)].rate == 2_500_000
        assert kernel.classes[(pair.a_links[1], 0x10012)].prio == 2
        assert {r.key for r in kernel.nft_rules} >= {"c0.ip.dport", "c2.ip.sport", "p0", "jump"}
        assert kernel.rules[20000].table == 100 and kernel.routes[101].interface == pair.a_links[1]
        applied = backend.ops_applied
        again = enf.apply(plan)
        assert again.ops == () and backend.ops_applied == applied


def test_model_follows_nft_changes_without_reading_back(spec: TenantSpec, pair: NetnsPair) -> None:
    """Marks, drops and paths changing at once: the handles nft echoes keep the model equal to the kernel."""
    target = pair_target(spec, pair)
    plans = [make_plan(spec), with_class(make_plan(spec), 0, drop_prob=0.05, dscp=46, path=1),
             with_class(make_plan(spec, rate=12.0), 2, drop_prob=0.01, dscp=10),
             with_class(make_plan(spec), 0, dscp=18, path=1), make_plan(spec)]  # fmt: skip
    with KernelEnforcer(spec, target) as enf:
        backend = enf.backend
        assert isinstance(backend, NetlinkBackend)
        for plan in plans:
            res = enf.apply(plan)
            assert enf._state is not None  # recorded, not dropped for a read-back
            assert enf.state == backend.read_state(), [o.describe() for o in res.ops]
        assert enf.apply(plans[-1]).ops == ()


def test_incremental_fast_rate_change(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    with KernelEnforcer(spec, target) as enf:
        enf.apply(make_plan(spec))
        res = enf.apply(with_class(make_plan(spec), 1, rate_mbps=33.0, ceil_mbps=44.0, burst_bytes=41_250, priority=5))
        assert res.fast and len(res.ops) == 2  # class 1 on both interfaces, nothing else
        assert isinstance(enf.backend, NetlinkBackend)
        kernel = enf.backend.read_state()
        got = kernel.classes[(pair.a_links[1], 0x10011)]
        assert (got.rate, got.ceil, got.prio) == (4_125_000, 5_500_000, 5)
        assert kernel.classes == enf.state.classes  # the model after a fast apply is what the kernel holds


def test_restart_reconciles_and_teardown_leaves_nothing(spec: TenantSpec, pair: NetnsPair) -> None:
    target = pair_target(spec, pair)
    plan = with_class(make_plan(spec), 2, drop_prob=0.1, path=1)
    with KernelEnforcer(spec, target) as enf:
        enf.apply(plan)
    with KernelEnforcer(spec, target) as restarted:
        assert restarted.plan(plan) == []
        ops = restarted.apply(with_class(plan, 2, dscp=18)).ops
        assert [o.kind for o in ops] == ["nft", "nft"]  # the class's two classify rules, replaced
        assert restarted.teardown()
        assert restarted.reconcile().empty()
    with IPRoute(netns=pair.a, flags=0) as ipr:
        for link in pair.a_links:
            idx = ipr.link_lookup(ifname=link)[0]
            assert not [q for q in ipr.get_qdiscs(index=idx) if q.get_attr("TCA_KIND") == "htb"]
        prios = [r.get_attr("FRA_PRIORITY") for r in ipr.get_rules(family=socket.AF_INET)]
        assert not [p for p in prios if p and 20000 <= p < 20256]
        for table in (100, 101):
            assert not [
                r for r in ipr.get_routes(family=socket.AF_INET, table=table) if r.get_attr("RTA_TABLE") == table
            ]
    assert "fedshape_acme" not in nft_tables(pair.a)


def test_refuses_interfaces_outside_target(spec: TenantSpec, pair: NetnsPair) -> None:
    backend = NetlinkBackend(pair_target(spec, pair))
    try:
        with pytest.raises(PermissionError, match="not named"):
            backend.apply([HtbQdisc("add", "lo", 0x10000, 2)])
        idx = backend.ipr.link_lookup(ifname="lo")[0]
        assert not [q for q in backend.ipr.get_qdiscs(index=idx) if q.get_attr("TCA_KIND") == "htb"]
    finally:
        backend.close()


def test_probe_in_namespace(pair: NetnsPair) -> None:
    caps = probe_capabilities(pair.a)
    assert caps.cap_net_admin and caps.nftables and caps.policy_routing
    assert caps.complete == caps.htb
    assert "enforcement" in caps.summary()


def test_recording_model_matches_kernel(spec: TenantSpec, pair: NetnsPair) -> None:
    """The recording backend's model is what the kernel reports after the same plans (nft handles aside)."""
    target = pair_target(spec, pair)
    plans = [
        make_plan(spec),
        with_class(make_plan(spec), 1, rate_mbps=25.0, priority=6, dscp=34),
        with_class(make_plan(spec), 2, drop_prob=0.05, path=1),
    ]
    model = KernelEnforcer(spec, target, backend=RecordingBackend(target), fast_path=False)
    with KernelEnforcer(spec, target) as real:
        for plan in plans:
            model.apply(plan)
            real.apply(plan)
            kernel, modelled = real.reconcile(), model.backend.read_state()
            assert kernel.qdiscs == modelled.qdiscs and kernel.classes == modelled.classes
            assert kernel.rules == modelled.rules and kernel.routes == modelled.routes
            keys = [(r.chain, r.key, r.sig) for r in kernel.nft_rules]
            assert keys == [(r.chain, r.key, r.sig) for r in modelled.nft_rules]
        real.teardown()


def test_degraded_without_nftables_shapes_the_aggregate_only(spec: TenantSpec, pair: NetnsPair) -> None:
    caps = Capabilities(cap_net_admin=True, htb=True, nftables=False, policy_routing=True, notes=("no nftables",))
    with KernelEnforcer(spec, pair_target(spec, pair), capabilities=caps) as enf:
        ops = enf.apply(make_plan(spec)).ops
        assert {o.kind for o in ops} == {"htb"}
        assert enf.apply(make_plan(spec)).ops == ()
        assert "fedshape_acme" not in nft_tables(pair.a)
        assert enf.teardown() and enf.reconcile().empty()
