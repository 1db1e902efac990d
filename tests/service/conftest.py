"""A rules service on an ephemeral loopback port (plaintext, identities in a header) and helpers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from shaping.service import RulesServer, ServiceConfig
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.store import RulesStore
from tests.rules.conftest import acme_rules, provider_scenario


@dataclass
class Running:
    """A started server with its store and a way to open channels as someone."""

    server: RulesServer
    store: RulesStore
    channels: list[grpc.Channel]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, identity: str) -> grpc.Channel:
        ch = connect(self.target, identity=identity)
        self.channels.append(ch)
        return ch

    def tenant(self, name: str = "acme"):
        return client_stub(self.channel(f"tenant/{name}"))

    def provider(self, name: str = "ops"):
        return provider_stub(self.channel(f"provider/{name}"))


def config() -> ServiceConfig:
    """Provider paths of the rules tests, short staleness and watch poll."""
    return ServiceConfig(scenario=provider_scenario(), stale_after_s=5.0, watch_poll_s=0.2)


@pytest.fixture
def running(tmp_path) -> Iterator[Running]:
    store = RulesStore(tmp_path / "rules.db")
    server = RulesServer(store, config(), insecure_loopback=True).start()
    run = Running(server, store, [])
    try:
        yield run
    finally:
        for ch in run.channels:
            ch.close()
        server.stop(0)
        store.close()


@pytest.fixture
def with_acme(running) -> Running:
    """The service with tenant acme registered and its rules stored."""
    from shaping.service._proto.fedshape.v1 import client_pb2, provider_pb2
    from shaping.service.convert import rules_to_pb

    running.provider().CreateTenant(provider_pb2.CreateTenantRequest(name="acme", cap_mbps=100.0))
    running.tenant().PutRules(client_pb2.PutRulesRequest(rules=rules_to_pb(acme_rules())))
    return running
