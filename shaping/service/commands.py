"""Bodies of the `fedshape` tenant and provider commands: one API call each, printed as a table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from shaping.pki import certificate_serial, serial_hex
from shaping.rules.codec import rules_from_dict, rules_to_dict
from shaping.rules.validate import RulesError
from shaping.service._proto.fedshape.v1 import client_pb2 as cpb
from shaping.service._proto.fedshape.v1 import provider_pb2 as ppb
from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.convert import rules_from_pb, rules_to_pb


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in header], *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def show_rules(rules: pb.RuleSet, out: TextIO) -> None:
    """Print a tenant's entities and classes."""
    r = rules_from_pb(rules)
    space = f"  address space {','.join(r.address_space)}" if r.address_space else ""
    print(f"tenant {r.tenant}  cap {r.cap_mbps:g} Mbit/s  revision {r.revision}{space}", file=out)
    print(table([(e.name, e.kind, e.mode, ",".join(e.cidrs)) for e in r.entities],
                ("ENTITY", "KIND", "MODE", "CIDRS")), file=out)
    rows = []
    for c in r.classes:
        m, a, q = c.match, c.action, c.qos
        sla = " ".join(f"{k}{_num(v)}" for k, v in (("p99<=", q.max_p99_ms), ("mbps>=", q.min_mbps),
                                                      ("loss<=", q.max_loss), ("app>=", q.app_floor)) if v is not None)
        rows.append((c.name, c.entity, c.app, f"{m.protocol}/{','.join(map(str, m.ports)) or '*'}",
                     f"{a.rate_mbps:g}/{a.ceil_mbps:g}", a.priority, a.dscp, f"{a.drop_prob:g}", a.path or "-",
                     sla or "-"))
    print(table(rows, ("CLASS", "ENTITY", "APP", "MATCH", "RATE/CEIL", "PRIO", "DSCP", "DROP", "PATH", "SLA")),
          file=out)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def last_verdict(s: pb.AgentStatus) -> str:
    """The last gate verdict in a few words (``-``: none, or an agent without model hand-over)."""
    if not s.model.HasField("last_verdict"):
        return "-"
    v = s.model.last_verdict
    return f"v{v.candidate_version} {'accepted' if v.accepted else 'rejected'} ({v.reason})"


def show_model(s: pb.AgentStatus, out: TextIO) -> None:
    """Print the model hand-over part of a status report (nothing for an agent without one)."""
    if not s.HasField("model"):
        return
    m = s.model
    if m.version:
        in_force = f"version {m.version}" + (f" since {_when(m.installed_at)}" if m.installed_at else "")
    else:
        in_force = "the starting policy"
    print(f"model {in_force}  last verdict {last_verdict(s)}  accepted {m.accepted}  rejected {m.rejected}"
          f"  rollbacks {m.rollbacks}", file=out)
    if m.HasField("last_rollback"):
        r = m.last_rollback
        print(f"last rollback: version {r.version} -> {r.restored_version or 'the starting policy'}"
              f" at {_when(r.rolled_back_at)}", file=out)


def show_status(s: pb.AgentStatus, out: TextIO) -> None:
    """Print an agent status report."""
    when = "never" if s.reported_at == 0 else _when(s.reported_at)
    print(f"tenant {s.tenant}  mode {s.mode or '-'}  revision {s.applied_revision}  reward {s.reward:.3f}"
          f"  fallback {'yes (' + s.fallback_reason + ')' if s.fallback else 'no'}"
          f"  reported {when}{' (stale)' if s.stale else ''}", file=out)
    print(table([(c.name, f"{c.delivered_mbps:.2f}", f"{c.delay_p99_ms:.1f}", f"{c.loss:.4f}", f"{c.app_metric:.2f}",
                  "ok" if c.sla_ok else f"VIOLATED {c.sla_detail}") for c in s.classes],
                ("CLASS", "DELIVERED_MBPS", "P99_MS", "LOSS", "APP", "SLA")), file=out)
    show_model(s, out)


def load_rules_file(path: Path, tenant: str) -> pb.RuleSet:
    """Rules from a YAML or JSON file (the `fedshape tenant rules --json` layout; tenant defaults to ours).

    Raises RulesError, in one line with the file's name and the place, when the file is not valid YAML.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RulesError(f"{path}:{where}: not valid YAML or JSON: {problem}") from None
    if isinstance(data, dict):
        data.setdefault("tenant", tenant)
    return rules_to_pb(rules_from_dict(data))


def _some(**values: float | None) -> dict[str, float]:
    return {k: v for k, v in values.items() if v is not None}


def tenant_command(stub: Any, args: Any, out: TextIO) -> None:
    """Run one `fedshape tenant ...` command."""
    cmd: str = args.tcmd
    if cmd == "rules":
        rules = stub.GetRules(pb.TenantRef())
        if args.json:
            print(json.dumps(rules_to_dict(rules_from_pb(rules)), indent=2), file=out)
        else:
            show_rules(rules, out)
    elif cmd == "apply":
        request = cpb.PutRulesRequest(rules=load_rules_file(args.file, ""), expect_revision=args.expect_revision)
        show_rules(stub.PutRules(request), out)
    elif cmd == "add-entity":
        mode = pb.MODE_ADAPTIVE if args.mode == "adaptive" else pb.MODE_STATIC
        entity = pb.Entity(name=args.name, kind=args.kind, cidrs=args.cidr, mode=mode)
        show_rules(stub.CreateEntity(cpb.EntityRequest(entity=entity)), out)
    elif cmd == "mode":
        mode = pb.MODE_ADAPTIVE if args.mode == "adaptive" else pb.MODE_STATIC
        show_rules(stub.SetMode(cpb.SetModeRequest(entity=args.entity or "", mode=mode)), out)
    elif cmd == "qos":
        qos = pb.QoS(**_some(max_p99_ms=args.max_p99_ms, min_mbps=args.min_mbps, max_loss=args.max_loss,
                             app_floor=args.app_floor))
        show_rules(stub.SetQoS(cpb.SetQoSRequest(class_name=args.klass, qos=qos)), out)
    elif cmd == "status":
        _status(stub, args, out)
    elif cmd == "push":
        values = _some(fps=args.fps, completion_rate=args.completion_rate)
        request = cpb.AppMetricsRequest(class_name=args.klass)
        for key, value in values.items():
            setattr(request, key, value)
        ack = stub.PushAppMetrics(request)
        print(f"pushed {values} for class {args.klass} (rules revision {ack.revision})", file=out)
    elif cmd == "delete-entity":
        show_rules(stub.DeleteEntity(pb.NameRef(name=args.name)), out)
    elif cmd == "delete-class":
        show_rules(stub.DeleteClass(pb.NameRef(name=args.name)), out)


def _status(stub: Any, args: Any, out: TextIO) -> None:
    if not args.watch:
        show_status(stub.GetAgentStatus(pb.TenantRef()), out)
        return
    stream = stub.WatchAgentStatus(pb.TenantRef())
    try:
        for i, status in enumerate(stream):
            show_status(status, out)
            out.flush()
            if args.count and i + 1 >= args.count:
                break
    finally:
        stream.cancel()


def provider_command(stub: Any, args: Any, out: TextIO) -> None:
    """Run one `fedshape provider ...` command."""
    cmd: str = args.pcmd
    if cmd == "tenants":
        rows = [(t.name, f"{t.cap_mbps:g}", t.revision, t.entities, t.classes, t.adaptive_entities,
                 "stale" if t.agent.stale else "ok", "yes" if t.agent.fallback else "no", f"{t.agent.reward:.3f}",
                 t.agent.model.version if t.agent.HasField("model") else "-", last_verdict(t.agent),
                 t.agent.model.rollbacks if t.agent.HasField("model") else "-")
                for t in stub.ListTenants(ppb.ListTenantsRequest()).tenants]
        print(table(rows, ("TENANT", "CAP_MBPS", "REV", "ENTITIES", "CLASSES", "ADAPTIVE", "AGENT", "FALLBACK",
                           "REWARD", "MODEL", "LAST_VERDICT", "ROLLBACKS")), file=out)
    elif cmd == "create":
        t = stub.CreateTenant(ppb.CreateTenantRequest(name=args.name, cap_mbps=args.cap, address_space=args.space))
        print(f"created tenant {t.name} (cap {t.cap_mbps:g} Mbit/s)", file=out)
    elif cmd == "space":
        rules = stub.SetAddressSpace(ppb.SetAddressSpaceRequest(tenant=args.name, address_space=args.cidrs))
        print(f"tenant {rules.tenant} address space {', '.join(rules.address_space) or 'unbounded'}"
              f" (revision {rules.revision})", file=out)
    elif cmd == "delete":
        stub.DeleteTenant(pb.TenantRef(tenant=args.name))
        print(f"deleted tenant {args.name}", file=out)
    elif cmd == "metrics":
        m = stub.GetTenantMetrics(pb.TenantRef(tenant=args.name))
        show_status(m.agent, out)
        print(table([(a.class_name, a.name, f"{a.value:g}") for a in m.app_metrics], ("CLASS", "APP_METRIC", "VALUE")),
              file=out)
    elif cmd == "federation":
        f = stub.GetFederationStatus(ppb.GetFederationStatusRequest())
        row = (f.round, f"{f.epsilon_spent:g}", f"{f.delta:g}", f"{f.target_epsilon:g}", f.clients, f.strategy or "-")
        print(table([row], ("ROUND", "EPSILON_SPENT", "DELTA", "TARGET_EPSILON", "CLIENTS", "STRATEGY")), file=out)
        if f.tenants:
            print(table([(t.tenant, f"{t.epsilon_spent:g}", f"{t.delta:g}") for t in f.tenants],
                        ("TENANT", "EPSILON_SPENT", "DELTA")), file=out)
    elif cmd == "revoke":
        serial = certificate_serial(args.cert.read_bytes()) if args.cert is not None else serial_hex(args.serial)
        stub.RevokeCertificate(ppb.RevokeCertificateRequest(serial=serial, reason=args.reason))
        print(f"revoked certificate serial {serial}", file=out)
    elif cmd == "revoked":
        revoked = [(c.serial, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.revoked_at)), c.actor,
                    c.reason or "-") for c in stub.ListRevoked(ppb.ListRevokedRequest()).certificates]
        print(table(revoked, ("SERIAL", "REVOKED_UTC", "BY", "REASON")), file=out)
    elif cmd == "health":
        h = stub.GetHealth(ppb.HealthRequest())
        print(table([("yes" if h.serving else "no", h.tenants, h.agents_reporting, h.agents_stale,
                      h.agents_in_fallback, h.schema_version)],
                    ("SERVING", "TENANTS", "REPORTING", "STALE", "FALLBACK", "SCHEMA")), file=out)
