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
