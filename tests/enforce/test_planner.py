"""Golden and diff tests of the pure planner through the recording backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shaping.enforce import (
    EnforceConfig,
    EnforceTarget,
    HtbClass,
    HtbQdisc,
    KernelEnforcer,
    NftRule,
    Operation,
    PolicyRule,
    RecordingBackend,
    plan_operations,
    target_from_spec,
    teardown_operations,
)
from shaping.enforce.kinds import NftChain
from shaping.enforce.kinds.nft import nft_commands
from shaping.spec import ShapingPlan, SpecError, TenantSpec
from tests.enforce.conftest import make_plan, make_spec, with_class

GOLDEN = Path(__file__).parent / "golden" / "initial_plan.txt"


def recorded(spec: TenantSpec, target: EnforceTarget) -> KernelEnforcer:
    return KernelEnforcer(spec, target, backend=RecordingBackend(target), fast_path=False)


def test_initial_plan_matches_golden(spec: TenantSpec, target: EnforceTarget) -> None:
    text = "\n".join(op.describe() for op in plan_operations(spec, make_plan(spec), target)) + "\n"
    if os.environ.get("FEDSHAPE_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "planner output changed; review, then FEDSHAPE_REGEN_GOLDEN=1"


def test_initial_plan_shape(spec: TenantSpec, target: EnforceTarget) -> None:
    ops = plan_operations(spec, make_plan(spec), target)
    qdiscs = [o for o in ops if isinstance(o, HtbQdisc)]
    classes = [o for o in ops if isinstance(o, HtbClass)]
    assert [q.interface for q in qdiscs] == ["eth-p0", "eth-p1"]
    # root + default + one per traffic class, on each interface
    assert len(classes) == 2 * (2 + len(spec.classes))
    game = next(c for c in classes if c.interface == "eth-p0" and c.classid == 0x10010)
    assert (game.rate, game.ceil, game.prio, game.parent) == (1_250_000, 6_250_000, 0, 0x10001)
    rules = [o for o in ops if isinstance(o, PolicyRule)]
    assert {(r.priority, r.fwmark, r.table) for r in rules} == {(20000 + i, 0x4600 + i + 1, 100) for i in range(3)}
    # Kinds in registry order: htb, then nft, then routing.
    kinds = [o.kind for o in ops]
    assert kinds == sorted(kinds, key=["htb", "nft", "routing"].index)


def test_same_plan_twice_is_no_op(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    assert enf.apply(make_plan(spec)).ops
    assert enf.apply(make_plan(spec)).ops == ()
    assert plan_operations(spec, make_plan(spec), target, enf.backend.read_state()) == []


def test_rate_change_touches_only_that_class(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    plan = make_plan(spec)
    enf.apply(plan)
    ops = enf.apply(with_class(plan, 2, rate_mbps=20.0, burst_bytes=25_000)).ops
    assert {type(o) for o in ops} == {HtbClass}
    assert {(o.interface, o.classid, o.verb) for o in ops if isinstance(o, HtbClass)} == {
        ("eth-p0", 0x10012, "change"),
        ("eth-p1", 0x10012, "change"),
    }


def test_dscp_change_replaces_only_that_class_rules(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    plan = make_plan(spec)
    enf.apply(plan)
    ops = enf.apply(with_class(plan, 1, dscp=46)).ops
    assert all(isinstance(o, NftRule) and o.verb == "replace" for o in ops)
    assert {o.rule.key for o in ops if isinstance(o, NftRule)} == {"c1.ip.dport", "c1.ip.sport"}


def _egress(enf: KernelEnforcer) -> list[tuple[str, int]]:
    return [(r.key, r.handle) for r in enf.state.nft_rules if r.chain == "egress"]


def test_drop_changes_insert_replace_or_delete_one_rule_by_handle(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    enf.apply(make_plan(spec))
    before = dict(_egress(enf))
    assert list(before) == ["p0", "p1", "p2"]
    plan = with_class(make_plan(spec), 2, drop_prob=0.1)
    ops = enf.apply(plan).ops
    # The new drop rule goes before class 2's priority rule, by that rule's handle; nothing else is touched.
    assert [(o.verb, o.rule.key, o.handle) for o in ops if isinstance(o, NftRule)] == [("insert", "d2", before["p2"])]
    assert len(ops) == 1
    (cmd,) = nft_commands(ops[0])
    rule = cmd["insert"]["rule"]
    assert (rule["chain"], rule["handle"], rule["comment"].split("|")[0]) == ("egress", before["p2"], "d2")
    assert {"drop": None} in rule["expr"]
    assert [k for k, _ in _egress(enf)] == ["p0", "p1", "d2", "p2"]
    assert dict(_egress(enf))["p2"] == before["p2"]  # the neighbours keep their handles

    ops = enf.apply(with_class(plan, 2, drop_prob=0.25)).ops
    assert [(type(o).__name__, o.verb) for o in ops] == [("NftRule", "replace")]

    d2 = dict(_egress(enf))["d2"]
    ops = enf.apply(make_plan(spec)).ops
    assert [(o.verb, o.handle) for o in ops if isinstance(o, NftRule)] == [("delete", d2)] and len(ops) == 1
    assert nft_commands(ops[0]) == [
        {"delete": {"rule": {"family": "inet", "table": target.nft_table, "chain": "egress", "handle": d2}}}
    ]
    assert _egress(enf) == list(before.items())
    assert plan_operations(spec, make_plan(spec), target, enf.backend.read_state()) == []


def test_several_drop_rules_appear_in_chain_order(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    enf.apply(make_plan(spec))
    handles = dict(_egress(enf))
    plan = with_class(with_class(make_plan(spec), 0, drop_prob=0.1), 2, drop_prob=0.2)
    ops = enf.apply(plan).ops
    assert [(o.verb, o.rule.key, o.handle) for o in ops if isinstance(o, NftRule)] == [
        ("insert", "d0", handles["p0"]), ("insert", "d2", handles["p2"])]  # fmt: skip
    assert [k for k, _ in _egress(enf)] == ["d0", "p0", "p1", "d2", "p2"]
    assert plan_operations(spec, plan, target, enf.backend.read_state()) == []


def test_a_chain_with_a_foreign_rule_is_rebuilt(spec: TenantSpec, target: EnforceTarget) -> None:
    from shaping.enforce.ops import NftRuleState

    enf = recorded(spec, target)
    enf.apply(make_plan(spec))
    state = enf.backend.read_state()
    state.nft_rules.append(NftRuleState("egress", "", "", 999))  # someone else's rule, without our comment
    ops = plan_operations(spec, with_class(make_plan(spec), 2, drop_prob=0.1), target, state)
    egress = [o for o in ops if (isinstance(o, NftChain) and o.chain.name == "egress")
              or (isinstance(o, NftRule) and o.rule.chain == "egress")]  # fmt: skip
    assert isinstance(egress[0], NftChain) and egress[0].verb == "change" and egress[0].chain.name == "egress"
    assert [o.rule.key for o in egress[1:] if isinstance(o, NftRule)] == ["p0", "p1", "d2", "p2"]


def test_path_change_moves_one_rule(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    enf.apply(make_plan(spec))
    ops = enf.apply(with_class(make_plan(spec), 1, path=1)).ops
    assert [(o.verb, o.table) for o in ops if isinstance(o, PolicyRule)] == [("delete", 100), ("add", 101)]
    assert len(ops) == 2


def test_teardown_empties_state(spec: TenantSpec, target: EnforceTarget) -> None:
    enf = recorded(spec, target)
    enf.apply(make_plan(spec))
    removed = enf.teardown()
    assert removed and enf.backend.read_state().empty()
    assert teardown_operations(target, enf.backend.read_state()) == []


def test_fewer_classes_delete_stale(target: EnforceTarget) -> None:
    big = make_spec(4)
    enf = recorded(big, target)
    enf.apply(make_plan(big))
    small = make_spec(2)
    state = enf.backend.read_state()
    ops = plan_operations(small, make_plan(small), target, state)
    deleted = {(o.interface, o.classid) for o in ops if isinstance(o, HtbClass) and o.verb == "delete"}
    assert deleted == {(i, 0x10010 + k) for i in ("eth-p0", "eth-p1") for k in (2, 3)}


def test_kinds_filter(spec: TenantSpec, target: EnforceTarget) -> None:
    ops = plan_operations(spec, make_plan(spec), target, kinds=("htb",))
    assert ops and all(o.kind == "htb" for o in ops)
    with pytest.raises(ValueError, match="unknown operation kinds"):
        plan_operations(spec, make_plan(spec), target, kinds=("tbf",))


def test_refuses_foreign_interface(spec: TenantSpec, target: EnforceTarget) -> None:
    backend = RecordingBackend(target)
    with pytest.raises(PermissionError, match="not named in the enforcement target"):
        backend.apply([HtbQdisc("add", "eth9", 0x10000, 2)])
    assert backend.log == []


def test_plan_must_fit_spec(spec: TenantSpec, target: EnforceTarget) -> None:
    other = make_spec(2)
    with pytest.raises(SpecError, match="classes"):
        plan_operations(spec, make_plan(other), target)
    with pytest.raises(SpecError, match="interfaces"):
        target_from_spec(spec, EnforceConfig(interfaces=("eth0",)))


def test_single_path_has_no_policy_routing() -> None:
    spec = make_spec()
    spec = type(spec)(**{**spec.__dict__, "paths": ("p0",)})
    target = target_from_spec(spec, EnforceConfig(interfaces=("eth0",)))
    ops = plan_operations(spec, make_plan(spec), target)
    assert not [o for o in ops if o.kind == "routing"]
    assert target.nft_table == "fedshape_acme"


def test_ipv6_entity_gets_ip6_rules() -> None:
    spec = make_spec(2, cidrs=("10.200.10.1/32", "fd00:200::/64"))
    target = target_from_spec(spec, EnforceConfig(interfaces=("a", "b")))
    keys = [o.rule.key for o in plan_operations(spec, make_plan(spec), target) if isinstance(o, NftRule)]
    assert "c0.ip6.dport" in keys and "c0.ip.dport" in keys


def test_destination_match_narrows_the_class_per_family() -> None:
    spec = make_spec(2, cidrs=("10.200.10.1/32", "fd00:200::/64"), game_dst=("10.200.11.0/24", "10.200.12.7"))
    target = target_from_spec(spec, EnforceConfig(interfaces=("a", "b")))
    rules = {o.rule.key: o.rule for o in plan_operations(spec, make_plan(spec), target) if isinstance(o, NftRule)}
    # Only IPv4 destinations: the class has no IPv6 rule; its IPv4 rules match both destinations.
    assert "c0.ip.dport" in rules and "c0.ip6.dport" not in rules and "c1.ip6.dport" in rules
    daddr = [e["match"]["right"] for e in rules["c0.ip.dport"].json("t")["expr"]
             if "match" in e and e["match"]["left"] == {"payload": {"protocol": "ip", "field": "daddr"}}]
    assert daddr == [{"set": [{"prefix": {"addr": "10.200.11.0", "len": 24}},
                              {"prefix": {"addr": "10.200.12.7", "len": 32}}]}]
    assert not any("daddr" in str(e) for e in rules["c1.ip.dport"].json("t")["expr"])


def test_destination_match_rejects_a_bad_address() -> None:
    with pytest.raises(SpecError, match=r"dst_cidrs has an invalid address '10\.200\.300\.0/24'"):
        make_spec(2, game_dst=("10.200.300.0/24",))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (EnforceConfig(interfaces=("eth/0", "eth1")), "not a valid interface name"),
        (EnforceConfig(interfaces=("a", "b"), table_base=253), "reserved"),
        (EnforceConfig(interfaces=("a", "b"), fwmark_base=0x4601), "low byte"),
        (EnforceConfig(interfaces=("a", "b"), handle_major=0), "handle_major"),
        (EnforceConfig(interfaces=("a", "lo")), "'lo' is the loopback interface"),
    ],
)
def test_target_validation(spec: TenantSpec, cfg: EnforceConfig, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        target_from_spec(spec, cfg)


def test_unchanged_plan_returns_without_planning(spec: TenantSpec, target: EnforceTarget) -> None:
    """The repeated plan skips planning; reconcile(), a new plan or a restarted enforcer plan again."""
    enf = recorded(spec, target)
    calls: list[ShapingPlan] = []
    planner = enf.plan

    def counting(p: ShapingPlan) -> list[Operation]:
        calls.append(p)
        return planner(p)

    enf.plan = counting  # type: ignore[method-assign,assignment]
    plan = make_plan(spec)
    enf.apply(plan)
    enf.apply(make_plan(spec))  # nft rule handles were read back: this one still plans (no ops)
    n = len(calls)
    for _ in range(3):
        result = enf.apply(make_plan(spec))  # equal, not identical
        assert result.ops == () and not result.fast
    assert len(calls) == n
    # Someone else changes the kernel: only an explicit reconcile() notices, and the next apply repairs it.
    backend = enf.backend
    assert isinstance(backend, RecordingBackend)
    backend.state = teardown_state = type(backend.state)()
    assert enf.apply(plan).ops == ()
    enf.reconcile()
    repaired = enf.apply(plan).ops
    assert repaired and len(calls) == n + 1 and teardown_state is backend.state
    # A different plan plans again; a restarted enforcer over the same kernel plans once and changes nothing.
    assert enf.apply(with_class(plan, 2, rate_mbps=20.0, burst_bytes=25_000)).ops
    assert len(calls) == n + 2
    restarted = recorded(spec, target)
    restarted.backend = backend
    assert restarted.apply(with_class(plan, 2, rate_mbps=20.0, burst_bytes=25_000)).ops == ()
