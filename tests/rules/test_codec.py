"""Rules survive a round trip through plain dicts; unknown fields are refused."""

from __future__ import annotations

import json

import pytest

from shaping.rules import RulesError
from shaping.rules.codec import rules_from_dict, rules_to_dict


def test_round_trip(rules):
    assert rules_from_dict(json.loads(json.dumps(rules_to_dict(rules)))) == rules


def test_unknown_field_is_named(rules):
    d = rules_to_dict(rules)
    d["classes"][0]["action"]["speed"] = 3
    with pytest.raises(RulesError, match=r"class 'game': action has unknown fields \['speed'\]"):
        rules_from_dict(d)


def test_wrong_type(rules):
    d = rules_to_dict(rules)
    d["entities"][0]["vcpus"] = "many"
    with pytest.raises(RulesError, match="bad or missing field"):
        rules_from_dict(d)


def test_address_space_round_trips_and_is_left_out_when_unset():
    from dataclasses import replace

    from shaping.service.convert import rules_from_pb, rules_to_pb
    from tests.rules.conftest import acme_rules

    assert "address_space" not in rules_to_dict(acme_rules())  # stored documents stay as they were
    spaced = replace(acme_rules(), address_space=("10.0.0.0/16", "fd00::/48"))
    assert rules_from_dict(rules_to_dict(spaced)) == spaced
    assert rules_from_pb(rules_to_pb(spaced)) == spaced
