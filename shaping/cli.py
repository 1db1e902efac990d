"""`fedshape`: run the rules service, and talk to it as a tenant or as the provider."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import grpc

from shaping.config import ScenarioConfig


def _scenario(path: Path | None) -> ScenarioConfig:
    """Provider paths and action levels from a scenario YAML (conf/scenario/*.yaml); defaults without one."""
    if path is None:
        return ScenarioConfig()
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(ScenarioConfig), OmegaConf.load(path))
    scenario = OmegaConf.to_object(merged)
    assert isinstance(scenario, ScenarioConfig)
    return scenario


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from shaping.pki import check_validity, read_credentials
    from shaping.service import RulesServer, ServerTLS, ServiceConfig
    from shaping.store import RulesStore

    tls = None
    if args.pki is not None:
        creds = read_credentials(args.pki, args.server_name)
        tls = ServerTLS(creds.cert_pem, creds.key_pem, (args.pki / "ca.pem").read_bytes())
        check_validity(tls.cert_pem, str(args.pki / f"{args.server_name}.pem"))
        check_validity(tls.ca_pem, str(args.pki / "ca.pem"))
    metrics = None
    if args.metrics:
        host, _, port = args.metrics.rpartition(":")
        metrics = (host or "127.0.0.1", int(port))
    store = RulesStore(args.db)
    # A long-running server: move the ~190k objects of its imports (torch, protobuf, grpc) out of the
    # collector's reach. A full collection otherwise walks them all (110 ms measured here), a pause that
    # every call in flight waits out.
    gc.freeze()
    pool = {k: v for k, v in (("active_calls", args.workers), ("max_watches", args.max_watches),
                              ("max_watches_per_caller", args.max_watches_per_caller),
                              ("max_calls_per_caller", args.max_calls_per_caller)) if v is not None}
    config = ServiceConfig(scenario=_scenario(args.scenario), **pool)
    server = RulesServer(store, config, address=args.listen, tls=tls, insecure_loopback=args.insecure_loopback,
                         metrics_address=metrics, metrics_remote=args.metrics_remote).start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"fedshape: serving on {host}:{server.port} ({'mTLS' if tls else 'plaintext loopback'})"
          + (f", metrics on :{server.metrics_port}" if metrics else ""), file=out, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(2.0)
    store.close()
    return 0


def _channel(args: argparse.Namespace) -> grpc.Channel:
    from shaping.service.channel import open_channel

    return open_channel(args.target, args.identity, pki=args.pki, server_name=args.server_name_override)


def _tenant_parser(sub: argparse._SubParsersAction) -> None:
    tenant = sub.add_parser("tenant", help="Client API: your rules, mode, QoS, agent status")
    tsub = tenant.add_subparsers(dest="tcmd", required=True)
    rules = tsub.add_parser("rules", help="show your rules")
    rules.add_argument("--json", action="store_true", help="print JSON (the layout `apply` reads)")
    apply = tsub.add_parser("apply", help="replace your entities and classes with those of a YAML/JSON file")
    apply.add_argument("file", type=Path)
    apply.add_argument("--expect-revision", type=int, default=0, help="refuse if the stored revision differs")
    ent = tsub.add_parser("add-entity", help="add a VM, subnet or security group")
    ent.add_argument("name")
    ent.add_argument("--kind", default="vm", choices=["vm", "subnet", "security_group"])
    ent.add_argument("--cidr", action="append", required=True, help="address (repeat)")
    ent.add_argument("--mode", default="static", choices=["static", "adaptive"])
    for what in ("entity", "class"):
        rm = tsub.add_parser(f"delete-{what}", help=f"delete a {what}")
        rm.add_argument("name")
    mode = tsub.add_parser("mode", help="enable (adaptive) or disable (static) Adaptive Shaping")
    mode.add_argument("mode", choices=["adaptive", "static"])
    mode.add_argument("--entity", help="one entity (default: every entity)")
    qos = tsub.add_parser("qos", help="set a class's QoS requirement (unset options: not required)")
    qos.add_argument("klass", metavar="CLASS")
    for opt in ("--max-p99-ms", "--min-mbps", "--max-loss", "--app-floor"):
        qos.add_argument(opt, type=float)
    status = tsub.add_parser("status", help="your agent's metrics, reward, SLA and fallback state")
    status.add_argument("--watch", action="store_true", help="stream updates")
    status.add_argument("--count", type=int, default=0, help="with --watch: stop after N updates")
    push = tsub.add_parser("push", help="push application metrics of a class")
    push.add_argument("klass", metavar="CLASS")
    push.add_argument("--fps", type=float)
    push.add_argument("--completion-rate", type=float)


def _provider_parser(sub: argparse._SubParsersAction) -> None:
    provider = sub.add_parser("provider", help="Provider API: tenants, agents, federation, health")
    psub = provider.add_subparsers(dest="pcmd", required=True)
    psub.add_parser("tenants", help="list tenants with their agents")
    create = psub.add_parser("create", help="register a tenant")
    create.add_argument("name")
    create.add_argument("--cap", type=float, required=True, help="paid egress rate, Mbit/s")
    create.add_argument("--space", action="append", default=[], metavar="CIDR",
                        help="network the tenant's entities must lie in (repeat; default: no bound)")
    space = psub.add_parser("space", help="set the networks a tenant's entities must lie in (none: no bound)")
    space.add_argument("name")
    space.add_argument("cidrs", nargs="*", metavar="CIDR")
    for name, help_ in (("delete", "remove a tenant and its rules"), ("metrics", "a tenant's agent and app metrics")):
        psub.add_parser(name, help=help_).add_argument("name")
    psub.add_parser("federation", help="federated round and privacy spent")
    revoke = psub.add_parser("revoke", help="refuse a client certificate from now on (by serial or by its file)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("serial", nargs="?", help="serial number in hex (as `openssl x509 -noout -serial` prints it)")
    which.add_argument("--cert", type=Path, help="the certificate's PEM file (its serial is read from it)")
    revoke.add_argument("--reason", default="", help="why (kept with the serial)")
    psub.add_parser("revoked", help="list revoked certificate serials")
    psub.add_parser("health", help="service health")


def parser() -> argparse.ArgumentParser:
    """The `fedshape` argument parser."""
    p = argparse.ArgumentParser(prog="fedshape", description=__doc__)
    p.add_argument("--target", default=os.environ.get("FEDSHAPE_TARGET", "127.0.0.1:19120"),
                   help="rules service address (env FEDSHAPE_TARGET)")
    p.add_argument("--pki", type=Path, default=os.environ.get("FEDSHAPE_PKI"),
                   help="directory of `fedshape-pki` files: mTLS (env FEDSHAPE_PKI); without it: plaintext loopback")
    p.add_argument("--as", dest="identity", default=os.environ.get("FEDSHAPE_AS"),
                   help="tenant/NAME or provider/NAME: picks DIR/<role>-<name>.pem (env FEDSHAPE_AS)")
    p.add_argument("--server-name-override", help="name to check the server certificate against")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the rules service")
    serve.add_argument("--db", type=Path, default=Path("fedshape.db"), help="SQLite file")
    serve.add_argument("--listen", default="127.0.0.1:19120", help="host:port (port 0: any free port)")
    serve.add_argument("--insecure-loopback", action="store_true",
                       help="plaintext on a loopback address; callers name themselves with --as")
    # SUPPRESS: given after `serve` it sets --pki, absent it leaves the global option (or FEDSHAPE_PKI) alone.
    serve.add_argument("--pki", type=Path, default=argparse.SUPPRESS, help="mTLS: DIR/ca.pem, DIR/server.pem/.key")
    serve.add_argument("--server-name", default="server", help="stem of the server certificate in --pki")
    serve.add_argument("--metrics", help="[host]:port of the Prometheus endpoint (host defaults to 127.0.0.1)")
    serve.add_argument("--metrics-remote", action="store_true",
                       help="allow --metrics on a non-loopback address (it has no authentication and shows every"
                       " tenant's data)")
    serve.add_argument("--scenario", type=Path, help="scenario YAML with the provider paths and action levels")
    # Defaults live in ServiceConfig (not imported here: it pulls in torch, which slows every command).
    serve.add_argument("--workers", type=int, help="threads that run calls at once (default 4; more threads only"
                       " contend for the GIL)")
    serve.add_argument("--max-watches", type=int, help="streaming watches at once, each on a thread of its own"
                       " while it waits (default 256)")
    serve.add_argument("--max-watches-per-caller", type=int, help="streaming watches one tenant (or the provider)"
                       " may hold open (default 16); more get RESOURCE_EXHAUSTED")
    serve.add_argument("--max-calls-per-caller", type=int, help="unary calls of one caller running at once"
                       " (default 32)")
    _tenant_parser(sub)
    _provider_parser(sub)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run `fedshape`; return the exit status (0 ok, 1 API or input error, 2 usage)."""
    from shaping.pki import PKIError
    from shaping.rules.validate import RulesError
    from shaping.service.channel import client_stub, provider_stub
    from shaping.service.commands import provider_command, tenant_command

    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args, out)
        if not args.identity or args.identity.partition("/")[0] != args.command:
            print(f"fedshape: error: `{args.command}` commands need --as {args.command}/NAME", file=sys.stderr)
            return 2
        with _channel(args) as channel:
            if args.command == "tenant":
                tenant_command(client_stub(channel), args, out)
            else:
                provider_command(provider_stub(channel), args, out)
    except grpc.RpcError as err:
        code = err.code()
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # A refused TLS handshake (a certificate the service does not trust) looks the same from here.
            trust = ", and does it trust your certificate" if args.pki is not None else ""
            hint = f" (is the service running at {args.target}{trust}?)"
        print(f"fedshape: error: {code.name}: {err.details()}{hint}", file=sys.stderr)
        return 1
    except (RulesError, PKIError, OSError, ValueError) as err:
        print(f"fedshape: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
