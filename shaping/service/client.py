"""Client API servicer: a tenant's rules (CRUD, mode, QoS), its agent's status and its application metrics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar
from dataclasses import replace

import grpc
from google.protobuf import json_format

from shaping.rules.compile import validate_rules
from shaping.rules.model import RuleSet
from shaping.rules.validate import RulesError, check_disjoint_tenants, normalized
from shaping.service._proto.fedshape.v1 import client_pb2, client_pb2_grpc
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.auth import Authenticator, CallError, rpc, scope, still_wanted, stream_rpc
from shaping.service.config import ServiceConfig
from shaping.service.executor import Blocking
from shaping.service.convert import class_from_pb, class_to_pb, entity_from_pb, entity_to_pb, mode_from_pb, \
    qos_from_pb, rules_from_pb, rules_to_pb
from shaping.service.notify import Notifier
from shaping.store import NotFoundError, RulesStore

STATUS_MODES = ("", "static", "adaptive", "mixed")
#: Distinct rejection reasons a model report may count (the gate has five).
MAX_REJECTION_REASONS = 16


def _short(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


_Named = TypeVar("_Named", bound=_HasName)  # an EntityRule or a ClassRule


def _find(items: tuple[_Named, ...], name: str, what: str) -> _Named:
    """The item of that name; NOT_FOUND otherwise."""
    for item in items:
        if item.name == name:
            return item
    raise CallError(grpc.StatusCode.NOT_FOUND, f"{what} {_short(name)} does not exist")


def _added(items: tuple[_Named, ...], new: _Named, what: str) -> tuple[_Named, ...]:
    """The items with `new` appended; ALREADY_EXISTS when one has its name."""
    if any(item.name == new.name for item in items):
        raise CallError(grpc.StatusCode.ALREADY_EXISTS, f"{what} {_short(new.name)} exists already")
    return (*items, new)


def _replaced(items: tuple[_Named, ...], new: _Named, what: str) -> tuple[_Named, ...]:
    """The items with the one of `new`'s name replaced by it; NOT_FOUND when there is none."""
    _find(items, new.name, what)
    return tuple(new if item.name == new.name else item for item in items)


def _removed(items: tuple[_Named, ...], name: str, what: str) -> tuple[_Named, ...]:
    """The items without the one of that name; NOT_FOUND when there is none."""
    _find(items, name, what)
    return tuple(item for item in items if item.name != name)


def _unregistered(tenant: str) -> CallError:
    return CallError(grpc.StatusCode.NOT_FOUND, f"tenant {tenant!r} is not registered; ask the provider")


def agent_status(store: RulesStore, tenant: str, config: ServiceConfig, now: float) -> pb.AgentStatus:
    """The stored status of a tenant's agent, marked stale when too old (never reported: stale, time 0)."""
    found = store.status(tenant)
    if found is None:
        return pb.AgentStatus(tenant=tenant, stale=True)
    status = json_format.ParseDict(found[0], pb.AgentStatus(), ignore_unknown_fields=True)
    status.tenant = tenant
    status.reported_at = found[1]
    status.stale = now - found[1] > config.stale_after_s
    return status


def check_status(status: pb.AgentStatus, config: ServiceConfig) -> None:
    """RulesError unless an agent's report is bounded and finite."""
    limits = config.limits
    if len(status.classes) > limits.max_classes:
        raise RulesError(f"status has {len(status.classes)} classes, at most {limits.max_classes}")
    if status.mode not in STATUS_MODES:
        raise RulesError(f"status mode {_short(status.mode)} is not one of {STATUS_MODES[1:]}")
    if len(status.fallback_reason) > 500:
        raise RulesError("status fallback_reason is longer than 500 characters")
    values = [status.reward, status.sla_ok_fraction]
    for c in status.classes:
        if len(c.name) > limits.max_name_len or len(c.sla_detail) > 500:
            raise RulesError(f"status class name or sla_detail too long (name {_short(c.name)})")
        values += [c.offered_mbps, c.delivered_mbps, c.loss, c.delay_p99_ms, c.app_metric]
    if not all(math.isfinite(v) for v in values):
        raise RulesError("status values must be finite numbers")
    if status.applied_revision < 0 or status.steps < 0:
        raise RulesError("status applied_revision and steps must be >= 0")
    if status.HasField("model"):
        check_model_status(status.model, config)


def check_model_status(model: pb.ModelStatus, config: ServiceConfig) -> None:
    """RulesError unless the model part of an agent's report is bounded, finite and not negative."""
    limits = config.limits
    reasons = [r.reason for r in model.rejections]
    if len(reasons) > MAX_REJECTION_REASONS or len(set(reasons)) < len(reasons):
        raise RulesError(f"status model rejections must name distinct reasons, at most {MAX_REJECTION_REASONS}")
    v = model.last_verdict
    if any(len(r) > limits.max_name_len for r in (*reasons, v.reason)) or len(v.detail) > 500:
        raise RulesError(f"status model reasons must be at most {limits.max_name_len} characters, detail 500")
    counts = [model.version, model.accepted, model.rejected, model.rollbacks, v.candidate_version,
              model.last_rollback.version, model.last_rollback.restored_version, *(r.count for r in model.rejections)]
    times = [model.installed_at, v.decided_at, model.last_rollback.rolled_back_at]
    rates = [getattr(v, f) for f in ("candidate_sla_violation", "in_force_sla_violation", "rules_sla_violation")]
    if min(counts) < 0 or not all(math.isfinite(t) and t >= 0 for t in times) \
            or not all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in rates):
        raise RulesError("status model versions and counts must be >= 0, times finite and >= 0, rates in [0, 1]")


class ServicerBase:
    """What the client and provider servicers hold: store, settings, authenticator, notifier, clock, and how a
    watch tells the server's pool that it blocks (CallExecutor.blocking; a no-op by default)."""

    def __init__(self, store: RulesStore, config: ServiceConfig, auth: Authenticator, notifier: Notifier,
                 clock: Callable[[], float] = time.time,
                 blocking: Blocking = contextlib.nullcontext) -> None:
        self.store = store
        self.config = config
        self.auth = auth
        self.notifier = notifier
        self.clock = clock
        self.blocking = blocking


class ClientServicer(ServicerBase, client_pb2_grpc.ClientServiceServicer):
    """Every call is scoped to the caller's own tenant (the `tenant` field may be empty or must be its name)."""

    def __init__(self, store: RulesStore, config: ServiceConfig, auth: Authenticator, notifier: Notifier,
                 clock: Callable[[], float] = time.time,
                 blocking: Blocking = contextlib.nullcontext) -> None:
        super().__init__(store, config, auth, notifier, clock, blocking)
        self._pb_cache: dict[str, tuple[RuleSet, pb.RuleSet]] = {}

    def _tenant(self, context: grpc.ServicerContext, tenant: str) -> str:
        return scope(self.auth.identity(context), tenant)

    def _watching(self, context: grpc.ServicerContext) -> bool:
        """Whether a watch goes on: its client is there, the service runs, and the certificate is still good.

        Identity is read again (cached parse, one set lookup) so that a revoked certificate's open watches
        end within one poll interval; the RevokedError ends the stream with UNAUTHENTICATED.
        """
        if not context.is_active() or self.notifier.closed:
            return False
        self.auth.identity(context)
        return True

    def _rules(self, tenant: str) -> RuleSet:
        rules = self.store.get(tenant)
        if rules is None:
            raise _unregistered(tenant)
        return rules

    def _write(self, context: grpc.ServicerContext, tenant: str, change: Callable[[RuleSet], RuleSet], what: str,
               expect_revision: int = 0) -> pb.RuleSet:
        def checked(old: RuleSet) -> RuleSet:
            new = normalized(change(old))
            validate_rules(new, self.config.scenario, self.config.limits)
            # Inside the write transaction: two tenants claiming one range at once are serialized here.
            check_disjoint_tenants(new, self.store.tenants())
            # Last thing before the commit: a write queued behind others may run after its caller gave up,
            # who would then retry (or not) believing that nothing was written.
            still_wanted(context)
            return new

        try:
            new = self.store.update(tenant, checked, actor=f"tenant/{tenant}", what=what,
                                    expect_revision=expect_revision or None)
        except NotFoundError:
            raise _unregistered(tenant) from None
        self.notifier.bump(f"rules/{tenant}")
        return rules_to_pb(new)

    # rules

    @rpc
    def GetRules(self, request: pb.TenantRef, context: grpc.ServicerContext) -> pb.RuleSet:
        rules = self._rules(self._tenant(context, request.tenant))
        cached = self._pb_cache.get(rules.tenant)
        if cached is None or cached[0] is not rules:  # the store hands out one object per revision
            cached = (rules, rules_to_pb(rules))
            self._pb_cache[rules.tenant] = cached
        return cached[1]

    @rpc
    def PutRules(self, request: client_pb2.PutRulesRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.rules.tenant)
        given = rules_from_pb(request.rules)
        return self._write(context, tenant, lambda old: replace(old, entities=given.entities, classes=given.classes),
                           "put rules", request.expect_revision)

    @rpc
    def CreateEntity(self, request: client_pb2.EntityRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        entity = entity_from_pb(request.entity)

        def change(old: RuleSet) -> RuleSet:
            return replace(old, entities=_added(old.entities, entity, "entity"))

        return self._write(context, tenant, change, f"create entity {entity.name[:64]}", request.expect_revision)

    @rpc
    def GetEntity(self, request: pb.NameRef, context: grpc.ServicerContext) -> pb.Entity:
        rules = self._rules(self._tenant(context, request.tenant))
        return entity_to_pb(_find(rules.entities, request.name, "entity"))

    @rpc
    def UpdateEntity(self, request: client_pb2.EntityRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        entity = entity_from_pb(request.entity)

        def change(old: RuleSet) -> RuleSet:
            return replace(old, entities=_replaced(old.entities, entity, "entity"))

        return self._write(context, tenant, change, f"update entity {entity.name[:64]}", request.expect_revision)

    @rpc
    def DeleteEntity(self, request: pb.NameRef, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)

        def change(old: RuleSet) -> RuleSet:
            _find(old.entities, request.name, "entity")
            users = [c.name for c in old.classes if c.entity == request.name]
            if users:
                raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"entity {_short(request.name)} still has classes {users}; delete them first")
            return replace(old, entities=_removed(old.entities, request.name, "entity"))

        return self._write(context, tenant, change, f"delete entity {request.name[:64]}")

    @rpc
    def CreateClass(self, request: client_pb2.ClassRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        klass = class_from_pb(getattr(request, "class"))

        def change(old: RuleSet) -> RuleSet:
            return replace(old, classes=_added(old.classes, klass, "class"))

        return self._write(context, tenant, change, f"create class {klass.name[:64]}", request.expect_revision)

    @rpc
    def GetClass(self, request: pb.NameRef, context: grpc.ServicerContext) -> pb.TrafficClass:
        rules = self._rules(self._tenant(context, request.tenant))
        return class_to_pb(_find(rules.classes, request.name, "class"))

    @rpc
    def UpdateClass(self, request: client_pb2.ClassRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        klass = class_from_pb(getattr(request, "class"))

        def change(old: RuleSet) -> RuleSet:
            return replace(old, classes=_replaced(old.classes, klass, "class"))

        return self._write(context, tenant, change, f"update class {klass.name[:64]}", request.expect_revision)

    @rpc
    def DeleteClass(self, request: pb.NameRef, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)

        def change(old: RuleSet) -> RuleSet:
            return replace(old, classes=_removed(old.classes, request.name, "class"))

        return self._write(context, tenant, change, f"delete class {request.name[:64]}")

    @rpc
    def SetMode(self, request: client_pb2.SetModeRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        if request.mode == pb.MODE_UNSPECIFIED:
            raise RulesError("mode must be MODE_STATIC (disable Adaptive Shaping) or MODE_ADAPTIVE (enable it)")
        mode = mode_from_pb(request.mode)

        def change(old: RuleSet) -> RuleSet:
            if request.entity:
                _find(old.entities, request.entity, "entity")
            return replace(old, entities=tuple(replace(e, mode=mode) if request.entity in ("", e.name) else e
                                               for e in old.entities))

        return self._write(context, tenant, change, f"set mode {mode} on {request.entity[:64] or 'every entity'}")

    @rpc
    def SetQoS(self, request: client_pb2.SetQoSRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        tenant = self._tenant(context, request.tenant)
        qos = qos_from_pb(request.qos)

        def change(old: RuleSet) -> RuleSet:
            klass = _find(old.classes, request.class_name, "class")
            return replace(old, classes=_replaced(old.classes, replace(klass, qos=qos), "class"))

        return self._write(context, tenant, change, f"set qos of {request.class_name[:64]}")

    # the agent's side and monitoring

    @stream_rpc
    def WatchRules(self, request: client_pb2.WatchRulesRequest, context: grpc.ServicerContext) -> Iterator[pb.RuleSet]:
        tenant = self._tenant(context, request.tenant)
        key, after = f"rules/{tenant}", request.after_revision
        seen = self.notifier.counter(key)
        if after > self._rules(tenant).revision:
            after = 0  # the watcher saw a history this store does not have (restored backup): resend
        while self._watching(context):
            rules = self._rules(tenant)
            if rules.revision > after:
                after = rules.revision
                yield rules_to_pb(rules)
            seen = self.notifier.wait(key, seen, self.config.watch_poll_s)

    @rpc
    def ReportStatus(self, request: pb.AgentStatus, context: grpc.ServicerContext) -> pb.Ack:
        tenant = self._tenant(context, request.tenant)
        check_status(request, self.config)
        report = json_format.MessageToDict(request, preserving_proto_field_name=True)
        for transient in ("tenant", "reported_at", "stale"):
            report.pop(transient, None)
        self.store.put_status(tenant, report)
        self.notifier.bump(f"status/{tenant}")
        return pb.Ack(revision=request.applied_revision)

    @rpc
    def GetAgentStatus(self, request: pb.TenantRef, context: grpc.ServicerContext) -> pb.AgentStatus:
        tenant = self._tenant(context, request.tenant)
        self._rules(tenant)
        return agent_status(self.store, tenant, self.config, self.clock())

    @stream_rpc
    def WatchAgentStatus(self, request: pb.TenantRef, context: grpc.ServicerContext) -> Iterator[pb.AgentStatus]:
        tenant = self._tenant(context, request.tenant)
        self._rules(tenant)
        key = f"status/{tenant}"
        seen, last = self.notifier.counter(key), None
        while self._watching(context):
            status = agent_status(self.store, tenant, self.config, self.clock())
            if status != last:
                last = status
                yield status
            seen = self.notifier.wait(key, seen, self.config.watch_poll_s)

    @rpc
    def PushAppMetrics(self, request: client_pb2.AppMetricsRequest, context: grpc.ServicerContext) -> pb.Ack:
        tenant = self._tenant(context, request.tenant)
        values: dict[str, float] = {}
        if request.HasField("fps"):
            if not 0.0 <= request.fps <= 1000.0:
                raise RulesError(f"fps must be in [0, 1000], got {request.fps}")
            values["fps"] = request.fps
        if request.HasField("completion_rate"):
            if not 0.0 <= request.completion_rate <= 1.0:
                raise RulesError(f"completion_rate must be in [0, 1], got {request.completion_rate}")
            values["completion_rate"] = request.completion_rate
        if not values:
            raise RulesError("push at least one of fps, completion_rate")
        rules = self._rules(tenant)
        _find(rules.classes, request.class_name, "class")
        self.store.put_app_metrics(tenant, request.class_name, values)
        self.notifier.bump(f"status/{tenant}")
        self.notifier.bump(f"app/{tenant}")
        return pb.Ack(revision=rules.revision)

    @stream_rpc
    def WatchAppMetrics(self, request: pb.TenantRef,
                        context: grpc.ServicerContext) -> Iterator[client_pb2.PushedAppMetric]:
        tenant = self._tenant(context, request.tenant)
        self._rules(tenant)
        key = f"app/{tenant}"
        seen = self.notifier.counter(key)
        sent: dict[tuple[str, str], float] = {}  # (class, name) -> push time of the value last sent
        while self._watching(context):
            now = self.clock()
            for klass, named in self.store.app_metrics(tenant).items():
                for name, (value, at) in named.items():
                    if sent.get((klass, name), -math.inf) < at:
                        sent[(klass, name)] = at
                        yield client_pb2.PushedAppMetric(class_name=klass, name=name, value=value,
                                                         age_s=max(0.0, now - at))
            seen = self.notifier.wait(key, seen, self.config.watch_poll_s)
