"""Fixtures of the testbed tests: one namespaced testbed per session, built only as root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shaping.testbed.checks import Bench
from shaping.testbed.topology import Testbed, TopologyConfig, root_skip_reason, testbed

#: The tests' own names and subnets (10.200.60-64.0/24), apart from `python -m experiments.testbed`'s.
TEST_TOPOLOGY = TopologyConfig(prefix="fstt", subnet_base=60)


@pytest.fixture(scope="session")
def tb() -> Iterator[Testbed]:
    """The built testbed (skipped with the reason when not root or a tool is missing); always torn down."""
    reason = root_skip_reason(("ip", "tc", "nft", "ethtool", "tcpdump"))
    if reason is not None:
        pytest.skip(reason)
    with testbed(TEST_TOPOLOGY) as built:
        yield built


@pytest.fixture
def bench(tb: Testbed) -> Bench:
    """The testbed with the default workload and the tenant's spec."""
    return Bench.open(tb)
