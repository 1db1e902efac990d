"""Provider API servicer: tenants, their agents' metrics, federation status and health."""

from __future__ import annotations

import math
from dataclasses import replace

import grpc
from google.protobuf import json_format

from shaping.pki import PKIError, serial_hex
from shaping.rules.model import RuleSet
from shaping.rules.validate import RulesError, check_address_space, check_disjoint_tenants, check_name, normalized
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import provider_pb2_grpc
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.auth import CallError, require_provider, rpc, still_wanted
from shaping.service.client import ServicerBase, agent_status
from shaping.service.convert import rules_to_pb
from shaping.store import NotFoundError


class ProviderServicer(ServicerBase, provider_pb2_grpc.ProviderServiceServicer):
    """Every call needs the provider role."""

    def _provider(self, context: grpc.ServicerContext) -> str:
        ident = self.auth.identity(context)
        require_provider(ident)
        return f"provider/{ident.name}"

    @rpc
    def CreateTenant(self, request: ppb.CreateTenantRequest, context: grpc.ServicerContext) -> ppb.TenantSummary:
        actor = self._provider(context)
        check_name("tenant", request.name, self.config.limits)
        capacity = max(p.capacity_mbps for p in self.config.scenario.paths)
        if not (math.isfinite(request.cap_mbps) and 0 < request.cap_mbps <= capacity):
            raise RulesError(f"cap_mbps {request.cap_mbps} must be in (0, {capacity}] (the largest provider link)")
        space = normalized(RuleSet(tenant=request.name, cap_mbps=request.cap_mbps,
                                   address_space=tuple(request.address_space))).address_space
        rules = self.store.create_tenant(request.name, request.cap_mbps, actor=actor, address_space=space,
                                         check=self._check_space)
        self.notifier.bump(f"rules/{request.name}")
        return ppb.TenantSummary(name=rules.tenant, cap_mbps=rules.cap_mbps, revision=rules.revision,
                                 agent=agent_status(self.store, rules.tenant, self.config, self.clock()))

    def _check_space(self, rules: RuleSet) -> None:
        """Inside the write: the address space is well formed, holds the entities, and is nobody else's."""
        check_address_space(rules, self.config.limits)
        check_disjoint_tenants(rules, self.store.tenants())

    @rpc
    def SetAddressSpace(self, request: ppb.SetAddressSpaceRequest, context: grpc.ServicerContext) -> pb.RuleSet:
        actor = self._provider(context)

        def change(old: RuleSet) -> RuleSet:
            new = normalized(replace(old, address_space=tuple(request.address_space)))
            self._check_space(new)
            still_wanted(context)
            return new

        try:
            rules = self.store.update(request.tenant, change, actor=actor,
                                      what=f"set address space {list(request.address_space)[:4]}")
        except NotFoundError:
            raise CallError(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant[:64]!r} does not exist") from None
        self.notifier.bump(f"rules/{request.tenant}")
        return rules_to_pb(rules)

    @rpc
    def DeleteTenant(self, request: pb.TenantRef, context: grpc.ServicerContext) -> pb.Ack:
        self.store.delete_tenant(request.tenant, actor=self._provider(context))
        self.notifier.bump(f"rules/{request.tenant}")
        self.notifier.bump(f"status/{request.tenant}")
        return pb.Ack()

    @rpc
    def ListTenants(self, request: ppb.ListTenantsRequest, context: grpc.ServicerContext) -> ppb.ListTenantsResponse:
        self._provider(context)
        now = self.clock()
        return ppb.ListTenantsResponse(tenants=[
            ppb.TenantSummary(
                name=r.tenant, cap_mbps=r.cap_mbps, revision=r.revision, entities=len(r.entities),
                classes=len(r.classes), adaptive_entities=sum(e.mode == "adaptive" for e in r.entities),
                agent=agent_status(self.store, r.tenant, self.config, now),
            )
            for r in self.store.tenants()
        ])

    @rpc
    def GetTenantMetrics(self, request: pb.TenantRef, context: grpc.ServicerContext) -> ppb.TenantMetrics:
        self._provider(context)
        if self.store.get(request.tenant) is None:
            raise CallError(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant[:64]!r} does not exist")
        metrics = [ppb.AppMetric(class_name=k, name=n, value=v, updated_at=at)
                   for k, named in self.store.app_metrics(request.tenant).items() for n, (v, at) in named.items()]
        return ppb.TenantMetrics(agent=agent_status(self.store, request.tenant, self.config, self.clock()),
                                 app_metrics=metrics)

    @rpc
    def GetFederationStatus(self, request: ppb.GetFederationStatusRequest,
                            context: grpc.ServicerContext) -> ppb.FederationStatus:
        self._provider(context)
        found = self.store.federation()
        if found is None:
            return ppb.FederationStatus()
        status = json_format.ParseDict(found[0], ppb.FederationStatus(), ignore_unknown_fields=True)
        status.updated_at = found[1]
        return status

    @rpc
    def ReportFederationStatus(self, request: ppb.FederationStatus, context: grpc.ServicerContext) -> pb.Ack:
        self._provider(context)
        values = (request.epsilon_spent, request.delta, request.target_epsilon)
        if not all(math.isfinite(v) and v >= 0 for v in values) or request.round < 0 or request.clients < 0:
            raise RulesError("federation status needs round, clients >= 0 and finite epsilon, delta >= 0")
        if request.delta > 1 or len(request.strategy) > 200:
            raise RulesError("federation delta must be in [0, 1] and strategy at most 200 characters")
        self._check_tenant_privacy(request)
        report = json_format.MessageToDict(request, preserving_proto_field_name=True)
        report.pop("updated_at", None)
        self.store.put_federation(report)
        return pb.Ack(revision=request.round)

    def _check_tenant_privacy(self, request: ppb.FederationStatus) -> None:
        """RulesError or NOT_FOUND unless each per-tenant entry names a distinct registered tenant with sane values."""
        seen: set[str] = set()
        for entry in request.tenants:
            check_name("federation tenants[].tenant", entry.tenant, self.config.limits)
            if entry.tenant in seen:
                raise RulesError(f"federation tenants: {entry.tenant!r} appears twice")
            seen.add(entry.tenant)
            if not (math.isfinite(entry.epsilon_spent) and entry.epsilon_spent >= 0 and 0 <= entry.delta <= 1):
                raise RulesError(f"federation tenants[{entry.tenant!r}]: epsilon_spent must be finite and >= 0,"
                                 " delta in [0, 1]")
            if self.store.get(entry.tenant) is None:
                raise CallError(grpc.StatusCode.NOT_FOUND,
                                f"federation tenants: tenant {entry.tenant!r} does not exist")

    @rpc
    def RevokeCertificate(self, request: ppb.RevokeCertificateRequest, context: grpc.ServicerContext) -> pb.Ack:
        actor = self._provider(context)
        try:
            serial = serial_hex(request.serial)
        except PKIError as err:
            raise RulesError(str(err)) from None
        if len(request.reason) > 200:
            raise RulesError("reason must be at most 200 characters")
        self.store.revoke(serial, request.reason, actor=actor)
        return pb.Ack()

    @rpc
    def ListRevoked(self, request: ppb.ListRevokedRequest,
                    context: grpc.ServicerContext) -> ppb.ListRevokedResponse:
        self._provider(context)
        return ppb.ListRevokedResponse(certificates=[
            ppb.RevokedCertificate(serial=serial, reason=reason, actor=actor, revoked_at=at)
            for serial, reason, actor, at in self.store.revoked()])

    @rpc
    def GetHealth(self, request: ppb.HealthRequest, context: grpc.ServicerContext) -> ppb.Health:
        self._provider(context)
        now = self.clock()
        tenants = self.store.tenants()
        agents = [agent_status(self.store, r.tenant, self.config, now) for r in tenants]
        return ppb.Health(
            serving=True, tenants=len(tenants), agents_reporting=sum(a.reported_at > 0 and not a.stale for a in agents),
            agents_stale=sum(a.stale for a in agents), agents_in_fallback=sum(a.fallback for a in agents),
            schema_version=self.store.schema_version,
        )
