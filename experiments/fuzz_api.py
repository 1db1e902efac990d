"""Hypothesis-driven fuzzing of every RPC of the rules service over a loopback channel.

Each generated example is a batch of requests (random messages, or valid ones with random fields
merged in) sent as the tenant or the provider. Every answer must be OK or a fitting error code with a
message; a refused request must leave the store exactly as it was; the tenant agent (recording
backend) must only ever install revisions that an accepted write produced. Prints one JSON object.

    python -m experiments.fuzz_api                    # 50,000 requests
    python -m experiments.fuzz_api --requests 200000 --seed 3
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from shaping.config import PathConfig, ScenarioConfig
from shaping.rules import ClassRule, EntityRule, Match, RuleSet, StaticAction
from shaping.service import RulesServer, ServiceConfig
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.agent import TenantAgent, build_loop
from shaping.service.channel import client_stub, connect, provider_stub
from shaping.service.convert import class_to_pb, entity_to_pb, rules_to_pb
from shaping.service.recording import RecordingBackend
from shaping.spec import QoSRequirement
from shaping.store import RulesStore

#: Codes a request may end with; INTERNAL or UNKNOWN mean the service failed.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.ABORTED}
STREAMS = {"WatchRules", "WatchAgentStatus", "WatchAppMetrics"}
#: Watches that send nothing while there is nothing new: a quiet deadline is their success.
QUIET_WATCHES = {"WatchRules", "WatchAppMetrics"}

SCALAR = {
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.sampled_from(["", "acme", "beta", "game", "web-vm", "net", "eth0", "eth1", "vm", "subnet", "tcp", "udp",
                         "gaming", "web", "10.0.0.0/8", "10.0.0.10/32", "::1/128", "static", "adaptive", "mixed"]),
        st.text(max_size=20), st.text(alphabet="ab-_.0Z/", max_size=8), st.integers(60, 3000).map(lambda n: "x" * n),
    ),
    FieldDescriptor.TYPE_INT32: st.one_of(st.integers(-3, 70), st.integers(-(2**31), 2**31 - 1),
                                          st.sampled_from([443, 27015, 65535, 65536])),
    FieldDescriptor.TYPE_INT64: st.one_of(st.integers(-3, 12), st.integers(-(2**63), 2**63 - 1)),
    FieldDescriptor.TYPE_DOUBLE: st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                           st.sampled_from([0.0, -1.0, 0.5, 1.0, 1.5, 10.0, 100.0, 1e9, 63.0])),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_ENUM: st.integers(-2, 4),
}


def _set(msg: Message, f: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if f.is_repeated:
        target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def message_strategy(desc: Descriptor, cls: Callable[[], Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of a type with any subset of fields set to arbitrary (mostly bad) values."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            sub = f.message_type
            one = message_strategy(sub, functools.partial(_cls, sub), depth + 1)
        else:
            one = SCALAR[f.type]
        fields[f.name] = st.lists(one, max_size=4) if f.is_repeated else one
    by_name = {f.name: f for f in desc.fields}

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            _set(msg, by_name[name], value)
        return msg

    return st.fixed_dictionaries({}, optional=fields).map(build)


_CLASSES: dict[str, Any] = {d.full_name: getattr(m, name) for m in (pb, cpb, ppb)
                            for name, d in m.DESCRIPTOR.message_types_by_name.items()}


def _cls(desc: Descriptor) -> Message:
    out: Message = _CLASSES[desc.full_name]()
    return out


def baseline_rules(tenant: str = "acme") -> RuleSet:
    """A valid rule set to start each example from (and to merge random fields into)."""
    return RuleSet(
        tenant=tenant, cap_mbps=100.0,
        entities=(EntityRule(name="web-vm", cidrs=("10.0.0.10/32",), mode="adaptive"),
                  EntityRule(name="net", kind="subnet", cidrs=("10.0.1.0/24",))),
        classes=(ClassRule(name="game", entity="web-vm", app="gaming", match=Match(protocol="udp", ports=(27015,)),
                           action=StaticAction(rate_mbps=10, ceil_mbps=20, dscp=46),
                           qos=QoSRequirement(max_p99_ms=40.0)),
                 ClassRule(name="backup", entity="net", app="bulk", match=Match(ports=(873,)),
                           action=StaticAction(rate_mbps=20, ceil_mbps=100, priority=3, path="eth1"))),
    )


def valid_requests() -> dict[str, tuple[str, Message]]:
    """For every RPC: (role, a valid request)."""
    r = baseline_rules()
    game = class_to_pb(r.classes[0])
    new_class = class_to_pb(replace(r.classes[0], name="chat", match=Match(protocol="tcp", ports=(5222,))))
    return {
        "GetRules": ("tenant", pb.TenantRef()),
        "PutRules": ("tenant", cpb.PutRulesRequest(rules=rules_to_pb(r))),
        "CreateEntity": ("tenant", cpb.EntityRequest(entity=pb.Entity(name="db", kind="vm", cidrs=["10.0.2.1/32"]))),
        "GetEntity": ("tenant", pb.NameRef(name="net")),
        "UpdateEntity": ("tenant", cpb.EntityRequest(entity=entity_to_pb(r.entities[1]))),
        "DeleteEntity": ("tenant", pb.NameRef(name="net")),
        "CreateClass": ("tenant", cpb.ClassRequest(**{"class": new_class})),
        "GetClass": ("tenant", pb.NameRef(name="game")),
        "UpdateClass": ("tenant", cpb.ClassRequest(**{"class": game})),
        "DeleteClass": ("tenant", pb.NameRef(name="backup")),
        "SetMode": ("tenant", cpb.SetModeRequest(entity="net", mode=pb.MODE_ADAPTIVE)),
        "SetQoS": ("tenant", cpb.SetQoSRequest(class_name="game", qos=pb.QoS(max_loss=0.01))),
        "GetAgentStatus": ("tenant", pb.TenantRef()),
        "WatchAgentStatus": ("tenant", pb.TenantRef()),
        "PushAppMetrics": ("tenant", cpb.AppMetricsRequest(class_name="game", fps=60.0)),
        "WatchRules": ("tenant", cpb.WatchRulesRequest()),
        "WatchAppMetrics": ("tenant", pb.TenantRef()),
        "ReportStatus": ("tenant", pb.AgentStatus(reward=1.0, classes=[pb.ClassStatus(name="game")])),
        "CreateTenant": ("provider", ppb.CreateTenantRequest(name="beta", cap_mbps=50.0)),
        "DeleteTenant": ("provider", pb.TenantRef(tenant="beta")),
        "ListTenants": ("provider", ppb.ListTenantsRequest()),
        "GetTenantMetrics": ("provider", pb.TenantRef(tenant="acme")),
        "GetFederationStatus": ("provider", ppb.GetFederationStatusRequest()),
        "ReportFederationStatus": ("provider", ppb.FederationStatus(round=3, epsilon_spent=1.0, delta=1e-5)),
        "GetHealth": ("provider", ppb.HealthRequest()),
        "RevokeCertificate": ("provider", ppb.RevokeCertificateRequest(serial="1f", reason="fuzz")),
        "ListRevoked": ("provider", ppb.ListRevokedRequest()),
        "SetAddressSpace": ("provider", ppb.SetAddressSpaceRequest(tenant="acme", address_space=["10.0.0.0/16"])),
    }


ROLES = {name: role for name, (role, _) in valid_requests().items()}


def request_strategy() -> st.SearchStrategy[tuple[str, Message]]:
    """(rpc name, request): a random message, or a valid request with random fields merged in."""
    valid = valid_requests()
    options = []
    for name, (_, base) in sorted(valid.items()):
        rand = message_strategy(base.DESCRIPTOR, type(base))

        def merged(m: Message, base: Message = base, keep_tenant: bool = True) -> Message:
            out = type(base)()
            out.CopyFrom(base)
            out.MergeFrom(m)
            return out

        options.append(st.tuples(st.just(name), st.one_of(rand, rand.map(merged), st.just(base))))
    return st.one_of(options)


@dataclass
class FuzzResult:
    """What a fuzzing run saw."""

    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    per_rpc: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    accepted_revisions: set[int] = field(default_factory=set)


class Reconciler:
    """A minimal tenant-side reconciler: follows WatchRules and applies each compiled plan to a recording backend.

    Cheaper than the full TenantAgent (no control loop), so CI can afford it next to 10,000 requests.
    """

    def __init__(self, stub: Any, scenario: ScenarioConfig) -> None:
        self.stub, self.scenario = stub, scenario
        self.installed: list[tuple[int, float]] = []
        self.plans: list[Any] = []
        self._stream = stub.WatchRules(cpb.WatchRulesRequest())
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from shaping.rules import RulesError, compile_rules
        from shaping.service.convert import rules_from_pb

        try:
            for message in self._stream:
                try:
                    compiled = compile_rules(rules_from_pb(message), self.scenario)
                except RulesError:
                    continue  # no classes yet: nothing to enforce
                backend = RecordingBackend(compiled.spec)
                backend.apply(compiled.plan)
                self.plans.append(compiled.plan)
                self.installed.append((compiled.revision, time.monotonic()))
        except grpc.RpcError:
            return

    def stop(self) -> None:
        """End the watch."""
        self._stream.cancel()
        self._thread.join(5)


class Harness:
    """A service on a loopback port, stubs for the tenant and the provider, and a tenant agent watching."""

    def __init__(self, directory: Path, agent: bool = True) -> None:
        """`agent`: watch with the full TenantAgent (control loop); otherwise with the light Reconciler."""
        scenario = ScenarioConfig(name="fuzz", paths=[PathConfig(name="eth0", capacity_mbps=200.0),
                                                      PathConfig(name="eth1", capacity_mbps=100.0)])
        self.scenario = scenario
        self.store = RulesStore(directory / "fuzz.db")
        self.server = RulesServer(self.store, ServiceConfig(scenario=scenario, watch_poll_s=0.2),
                                  insecure_loopback=True).start()
        target = f"127.0.0.1:{self.server.port}"
        self.channels = [connect(target, identity="tenant/acme"), connect(target, identity="provider/ops")]
        self.stubs = {"tenant": client_stub(self.channels[0]), "provider": provider_stub(self.channels[1])}
        self.result = FuzzResult()
        self.store.create_tenant("acme", 100.0)
        self.reset()
        self.backends: list[RecordingBackend] = []
        self.agent: TenantAgent | Reconciler | None = None
        if not agent:
            self.agent = Reconciler(self.stubs["tenant"], scenario)
        else:
            def factory(compiled: Any) -> Any:
                backend = RecordingBackend(compiled.spec)
                self.backends.append(backend)
                return build_loop(compiled, backend, None)

            self.agent = TenantAgent(self.stubs["tenant"], "acme", scenario, factory, report_every_s=1e9).start()

    def reset(self) -> None:
        """Back to the baseline rules (re-creating the tenant if a fuzzed call deleted it)."""
        if self.store.get("acme") is None:
            self.store.create_tenant("acme", 100.0)
        base = baseline_rules()
        new = self.store.update("acme", lambda r: replace(r, entities=base.entities, classes=base.classes),
                                actor="fuzz", what="reset")
        self.result.accepted_revisions.add(new.revision)
        # A stored value makes WatchAppMetrics answer at once instead of waiting out its deadline.
        tenant_stub: Any = self.stubs["tenant"]
        tenant_stub.PushAppMetrics(cpb.AppMetricsRequest(class_name="game", fps=60.0), timeout=10.0)

    def call(self, name: str, request: Message) -> None:
        """Send one request and check the answer and the store."""
        stub = self.stubs[ROLES[name]]
        before = self.store.snapshot()
        try:
            out = getattr(stub, name)(request, timeout=1.0 if name in STREAMS else 10.0)
            if name in STREAMS:
                next(out)
                out.cancel()
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if name in QUIET_WATCHES and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                code = grpc.StatusCode.OK  # a watch that is up to date sends nothing until the next change
        r = self.result
        r.requests += 1
        r.codes[code.name] += 1
        r.per_rpc[name] += 1
        if code not in ALLOWED:
            r.failures.append(f"{name}: {code.name}: {details[:200]} for {str(request)[:300]!r}")
        elif code != grpc.StatusCode.OK:
            if not details or len(details) > 2000:
                r.failures.append(f"{name}: {code.name} without a short message ({len(details)} chars)")
            if self._tables(self.store.snapshot()) != self._tables(before):
                r.failures.append(f"{name}: refused with {code.name} but the store changed")
        else:
            rules = self.store.get("acme")
            if rules is not None:
                r.accepted_revisions.add(rules.revision)

    def _tables(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        # The full agent reports its own status in the background: that table is its, not the fuzzer's.
        return {k: v for k, v in snapshot.items() if k != "agent_status" or isinstance(self.agent, Reconciler)}

    def check_agent(self) -> None:
        """Every revision the agent installed came from an accepted write."""
        if self.agent is None:
            return
        stray = {rev for rev, _ in self.agent.installed} - self.result.accepted_revisions
        if stray:
            self.result.failures.append(f"agent installed revisions {sorted(stray)} no accepted write produced")

    def close(self) -> None:
        """Stop the agent and the service."""
        if self.agent is not None:
            self.agent.stop()
        for ch in self.channels:
            ch.close()
        self.server.stop(0)
        self.store.close()


def run(harness: Harness, examples: int, batch: int, rng_seed: int = 0, deadline_ms: int | None = 10_000) -> FuzzResult:
    """Run `examples` hypothesis examples of `batch` requests each against the harness."""

    @seed(rng_seed)
    # No shrinking: failures are collected (not raised) with the request that caused them.
    @settings(max_examples=examples, deadline=deadline_ms, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=list(HealthCheck))
    @given(st.lists(request_strategy(), min_size=batch, max_size=batch))
    def one(requests: list[tuple[str, Message]]) -> None:
        for name, request in requests:
            harness.call(name, request)
        rules = harness.store.get("acme")
        if rules is None or rules.entities != baseline_rules().entities or rules.classes != baseline_rules().classes:
            harness.reset()

    one()
    harness.check_agent()
    return harness.result


def main(argv: list[str] | None = None) -> int:
    """Fuzz every RPC; print a JSON summary; exit 1 on any failure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp))
        t0 = time.perf_counter()
        try:
            result = run(harness, max(1, args.requests // args.batch), args.batch, args.seed)
        finally:
            harness.close()
    summary = {"requests": result.requests, "seconds": round(time.perf_counter() - t0, 1),
               "codes": dict(result.codes), "per_rpc": dict(result.per_rpc), "failures": result.failures[:20],
               "agent_revisions_ok": not any("agent installed" in f for f in result.failures)}
    print(json.dumps(summary, indent=2))
    return 1 if result.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
