"""Each kind of bad rule is refused with a message that names the field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shaping.rules import ClassRule, EntityRule, Limits, Match, RuleSet, RulesError, StaticAction, validate_rules
from shaping.spec import QoSRequirement


def with_class(rules: RuleSet, i: int, **over) -> RuleSet:
    c = rules.classes[i]
    action = replace(c.action, **over.pop("action", {}))
    match = replace(c.match, **over.pop("match", {}))
    qos = replace(c.qos, **over.pop("qos", {}))
    cls = replace(c, action=action, match=match, qos=qos, **over)
    return replace(rules, classes=tuple(cls if j == i else x for j, x in enumerate(rules.classes)))


def with_entity(rules: RuleSet, i: int, **over) -> RuleSet:
    e = replace(rules.entities[i], **over)
    return replace(rules, entities=tuple(e if j == i else x for j, x in enumerate(rules.entities)))


CASES = [
    ("action dscp", lambda r: with_class(r, 0, action={"dscp": 64}), "DSCP 64 outside 0..63"),
    ("match dscp", lambda r: with_class(r, 0, match={"dscp": -1}), "match_dscp must be in 0..63"),
    ("drop prob", lambda r: with_class(r, 1, action={"drop_prob": 1.5}), "drop probability 1.5 outside [0, 1]"),
    ("max loss", lambda r: with_class(r, 0, qos={"max_loss": 2.0}), "max_loss must be in [0, 1]"),
    ("ceil above cap", lambda r: with_class(r, 1, action={"ceil_mbps": 150.0}), "above tenant cap"),
    ("rate above ceil", lambda r: with_class(r, 2, action={"rate_mbps": 50.0, "ceil_mbps": 40.0}), "rate <= ceil"),
    ("rates above cap", lambda r: with_class(r, 2, action={"rate_mbps": 75.0, "ceil_mbps": 80.0}),
     "sum to 105 Mbit/s, above the tenant's cap 100"),
    ("cap above link", lambda r: replace(r, cap_mbps=500.0), "the largest provider link"),
    ("bad cidr", lambda r: with_entity(r, 0, cidrs=("10.0.0.300/32",)), "invalid address '10.0.0.300/32'"),
    ("bad dst cidr", lambda r: with_class(r, 0, match={"dst_cidrs": ("nonsense",)}), "match.dst_cidrs"),
    ("no cidrs", lambda r: with_entity(r, 1, cidrs=()), "needs 1..32 addresses"),
    ("bad mode", lambda r: with_entity(r, 0, mode="auto"), "mode 'auto' is not one of"),
    ("bad kind", lambda r: with_entity(r, 0, kind="router"), "kind 'router'"),
    ("bad app", lambda r: with_class(r, 0, app="chess"), "app 'chess'"),
    ("bad protocol", lambda r: with_class(r, 0, match={"protocol": "icmp"}), "protocol must be tcp or udp"),
    ("bad port", lambda r: with_class(r, 0, match={"ports": (0,)}), "ports must be in 1..65535"),
    ("dup port", lambda r: with_class(r, 0, match={"ports": (1, 1)}), "duplicate ports"),
    ("unknown path", lambda r: with_class(r, 0, action={"path": "eth9"}), "action.path 'eth9' is not a provider path"),
    ("unknown entity", lambda r: with_class(r, 0, entity="nope"), "unknown entity 'nope'"),
    ("priority", lambda r: with_class(r, 0, action={"priority": 8}), "action.priority must be in 0..7"),
    ("nan rate", lambda r: with_class(r, 0, action={"rate_mbps": float("nan")}), "must be a finite number"),
    ("inf p99", lambda r: with_class(r, 0, qos={"max_p99_ms": float("inf")}), "qos.max_p99_ms must be a finite"),
    ("long name", lambda r: with_entity(r, 1, name="n" * 64), "is not a valid name: 1..63 characters"),
    ("upper name", lambda r: with_class(r, 0, name="Game"), "class 'Game' is not a valid name"),
    ("dup class", lambda r: with_class(r, 2, name="game", match={"ports": (444,)}), "duplicate class names"),
    ("dup entity", lambda r: with_entity(r, 1, name="web-vm"), "duplicate entity names"),
    ("flows", lambda r: with_class(r, 0, flows=0), "flows must be in 1..100000"),
    ("long app", lambda r: with_class(r, 0, app="x" * 3000), "app 'xxxxxxxx"),
    ("negative p99", lambda r: with_class(r, 0, qos={"max_p99_ms": -1.0}), "max_p99_ms must be > 0"),
    ("default route", lambda r: with_entity(r, 0, cidrs=("0.0.0.0/0",)), "'0.0.0.0/0' is every address"),
    ("v6 default route", lambda r: with_entity(r, 1, cidrs=("::/0",)), "'::/0' is every address"),
    ("dst default route", lambda r: with_class(r, 0, match={"dst_cidrs": ("::/0",)}),
     "leave match.dst_cidrs empty to match any"),
    ("scoped", lambda r: with_entity(r, 0, cidrs=("fe80::1%eth0/128",)), "has a scope"),
    ("dst scoped", lambda r: with_class(r, 0, match={"dst_cidrs": ("fe80::1%eth0/128",)}), "has a scope"),
    ("link-local", lambda r: with_entity(r, 0, cidrs=("fe80::1/128",)), "'fe80::1/128' is link-local"),
    ("v4 link-local", lambda r: with_entity(r, 0, cidrs=("169.254.0.0/16",)), "is link-local"),
    ("loopback", lambda r: with_entity(r, 0, cidrs=("127.0.0.1/32",)), "is loopback"),
    ("multicast", lambda r: with_entity(r, 0, cidrs=("224.0.0.0/4",)), "is multicast"),
    ("denormal rate", lambda r: with_class(r, 0, action={"rate_mbps": 1e-320}),
     "class 'game': action.rate_mbps must be at least 0.001 Mbit/s"),
    ("tiny ceil", lambda r: with_class(r, 2, action={"rate_mbps": 1e-9, "ceil_mbps": 1e-9}), "action.rate_mbps"),
    ("tiny load", lambda r: with_class(r, 0, mbps=1e-12), "class 'game': mbps must be at least 0.001"),
    ("tiny p99", lambda r: with_class(r, 0, qos={"max_p99_ms": 1e-300}), "qos.max_p99_ms must be at least"),
    ("min above cap", lambda r: with_class(r, 1, qos={"min_mbps": 1e9}),
     "class 'backup': qos.min_mbps 1e+09 is above the tenant's cap 100"),
]


@pytest.mark.parametrize(("label", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_rules_are_refused_with_a_clear_message(rules, scenario, label, mutate, message):
    validate_rules(rules, scenario)
    with pytest.raises(RulesError) as err:
        validate_rules(mutate(rules), scenario)
    assert message in str(err.value), f"{label}: {err.value}"
    assert len(str(err.value)) < 400, "messages quote bounded text only"


def test_counts_are_bounded(rules, scenario):
    limits = Limits(max_classes=2)
    with pytest.raises(RulesError, match="at most 64 entities and 2 classes"):
        validate_rules(rules, scenario, limits)
    many = tuple(EntityRule(name=f"e{i}", cidrs=(f"10.1.{i}.0/24",)) for i in range(65))
    with pytest.raises(RulesError, match="at most 64 entities"):
        validate_rules(replace(rules, entities=many, classes=()), scenario)


def test_per_path_capacity(scenario):
    ents = (EntityRule(name="a", cidrs=("10.0.0.0/24",)),)
    classes = tuple(
        ClassRule(name=f"c{i}", entity="a", match=Match(ports=(1000 + i,)),
                  action=StaticAction(rate_mbps=60, ceil_mbps=60, path="eth1"))
        for i in range(2)
    )
    rules = RuleSet(tenant="t", cap_mbps=200.0, entities=ents, classes=classes)
    with pytest.raises(RulesError, match="path 'eth1' sum to 120 Mbit/s, above its capacity 100"):
        validate_rules(rules, scenario)


OVERLAP = [
    # (match a, entity a cidr, match b, entity b cidr, overlap?)
    (Match(ports=(80,)), "10.0.0.0/24", Match(ports=(80,)), "10.0.0.5/32", True),
    (Match(ports=(80,)), "10.0.0.0/24", Match(ports=(81,)), "10.0.0.5/32", False),
    (Match(ports=()), "10.0.0.0/24", Match(ports=(81,)), "10.0.0.5/32", True),
    (Match(ports=(80,)), "10.0.0.0/24", Match(ports=(80,)), "10.0.1.0/24", False),
    (Match(protocol="udp", ports=(80,)), "10.0.0.0/24", Match(ports=(80,)), "10.0.0.0/24", False),
    (Match(ports=(80,), dscp=46), "10.0.0.0/24", Match(ports=(80,), dscp=0), "10.0.0.0/24", False),
    (Match(ports=(80,), dscp=46), "10.0.0.0/24", Match(ports=(80,)), "10.0.0.0/24", True),
    (Match(ports=(80,), dst_cidrs=("192.0.2.0/25",)), "10.0.0.0/24",
     Match(ports=(80,), dst_cidrs=("192.0.2.128/25",)), "10.0.0.0/24", False),
    (Match(ports=(80,), dst_cidrs=("192.0.2.0/24",)), "10.0.0.0/24",
     Match(ports=(80,), dst_cidrs=("192.0.2.128/25",)), "10.0.0.0/24", True),
    (Match(ports=(80,)), "10.0.0.0/24", Match(ports=(80,)), "fd00::/64", False),
]


@pytest.mark.parametrize(("ma", "ca", "mb", "cb", "overlap"), OVERLAP)
def test_overlapping_matches(scenario, ma, ca, mb, cb, overlap):
    rules = RuleSet(
        tenant="t", cap_mbps=100.0,
        entities=(EntityRule(name="a", cidrs=(ca,)), EntityRule(name="b", kind="subnet", cidrs=(cb,))),
        classes=(ClassRule(name="x", entity="a", match=ma, action=StaticAction(rate_mbps=1, ceil_mbps=10)),
                 ClassRule(name="y", entity="b", match=mb, action=StaticAction(rate_mbps=1, ceil_mbps=10),
                           qos=QoSRequirement())),
    )
    if overlap:
        with pytest.raises(RulesError, match="classes 'x' and 'y' overlap"):
            validate_rules(rules, scenario)
    else:
        validate_rules(rules, scenario)


def test_overlap_check_is_fast_at_the_limits(scenario):
    import time

    ents = tuple(EntityRule(name=f"e{i}", kind="subnet", cidrs=tuple(f"10.{i}.{j}.0/24" for j in range(32)))
                 for i in range(64))
    classes = tuple(ClassRule(name=f"c{i}", entity=f"e{i % 64}", match=Match(ports=(1000 + i,)),
                              action=StaticAction(rate_mbps=0.5, ceil_mbps=1)) for i in range(128))
    rules = RuleSet(tenant="t", cap_mbps=100.0, entities=ents, classes=classes)
    t0 = time.perf_counter()
    validate_rules(rules, scenario)
    assert time.perf_counter() - t0 < 2.0


def test_addresses_are_stored_as_their_networks():
    from shaping.rules.validate import normalized

    rules = RuleSet(tenant="t", cap_mbps=10.0,
                    entities=(EntityRule(name="a", cidrs=("10.0.0.1/24", "2001:DB8::1/64", "bad")),),
                    classes=(ClassRule(name="x", entity="a", match=Match(dst_cidrs=("192.0.2.77/25",))),))
    out = normalized(rules)
    assert out.entities[0].cidrs == ("10.0.0.0/24", "2001:db8::/64", "bad")  # "bad" is left for validation
    assert out.classes[0].match.dst_cidrs == ("192.0.2.0/25",)


def test_tenants_may_not_claim_each_others_addresses():
    from shaping.rules.validate import check_disjoint_tenants

    def tenant(name: str, *cidrs: str) -> RuleSet:
        return RuleSet(tenant=name, cap_mbps=10.0, entities=(EntityRule(name="e", cidrs=cidrs),))

    others = [tenant("acme", "10.0.0.0/24", "10.0.2.0/24", "fd00::/64"), tenant("zeta", "10.9.0.0/16")]
    check_disjoint_tenants(tenant("beta", "10.0.1.0/24", "10.0.3.0/24", "fd00:0:0:1::/64"), others)
    check_disjoint_tenants(tenant("acme", "10.0.0.0/24"), others)  # its own ranges are its own
    for claim in ("10.0.0.77/32", "10.0.0.0/16", "10.0.2.255/32", "fd00::1/128", "10.9.200.0/24", "0.0.0.0/1"):
        with pytest.raises(RulesError, match="overlaps another tenant's addresses") as err:
            check_disjoint_tenants(tenant("beta", "192.0.2.0/24", claim), others)
        assert "acme" not in str(err.value) and "zeta" not in str(err.value)


def test_entities_must_lie_in_the_address_space(rules, scenario):
    spaced = replace(rules, address_space=("10.0.0.0/23",))
    validate_rules(spaced, scenario)  # acme's 10.0.0.10/32 and 10.0.1.0/24 lie inside
    with pytest.raises(RulesError, match=r"entity 'net': address '10.0.1.0/24' is outside the tenant's address"):
        validate_rules(replace(rules, address_space=("10.0.0.0/24", "fd00::/64")), scenario)
    with pytest.raises(RulesError, match=r"address_space: address '0\.0\.0\.0/0' is every address"):
        validate_rules(replace(rules, address_space=("0.0.0.0/0",)), scenario)


def test_address_spaces_are_exclusive():
    from shaping.rules.validate import check_disjoint_tenants

    acme = RuleSet(tenant="acme", cap_mbps=10.0, address_space=("10.0.0.0/16",))
    beta_inside = RuleSet(tenant="beta", cap_mbps=10.0, entities=(EntityRule(name="e", cidrs=("10.0.9.0/24",)),))
    with pytest.raises(RulesError, match=r"entity 'e': address '10\.0\.9\.0/24' overlaps another tenant's"):
        check_disjoint_tenants(beta_inside, [acme])
    with pytest.raises(RulesError, match=r"address_space: address '10\.0\.0\.0/8' overlaps"):
        check_disjoint_tenants(RuleSet(tenant="beta", cap_mbps=10.0, address_space=("10.0.0.0/8",)), [acme])
    check_disjoint_tenants(RuleSet(tenant="beta", cap_mbps=10.0, address_space=("10.1.0.0/16",)), [acme])
