"""``python -m shaping.control.supervise`` / ``fedshape-supervise``: run the agent under the supervisor.

Everything after ``--`` is the agent's own arguments (``fedshape-agent --help``); the supervisor reads
them with the agent's parser to build the same static rules on the same interfaces, and starts
``python -m shaping.control`` with them, ``NOTIFY_SOCKET`` naming its own socket.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from shaping.checks import one_line
from shaping.control.notify import NotifySocket, SdNotifier
from shaping.control.supervisor import EXIT_CONFIG, Supervisor, SuperviseConfig
from shaping.spec import ShapingPlan

LOG = logging.getLogger("fedshape.supervise")


def build_parser() -> argparse.ArgumentParser:
    """The supervisor's own arguments (the agent's follow ``--``)."""
    p = argparse.ArgumentParser(
        prog="fedshape-supervise",
        usage="fedshape-supervise [options] -- AGENT-ARGUMENTS...",
        description="Run fedshape-agent as a child; apply the tenant's static rules whenever its heartbeats stop.",
    )
    p.add_argument("--deadline-ms", type=float,
                   help="heartbeat silence before the static rules are restored (default: one control interval)")
    p.add_argument("--kill-after-s", type=float, default=5.0, help="silence before the agent is killed and restarted")
    p.add_argument("--start-timeout-s", type=float, default=120.0, help="time a new agent has for its first heartbeat")
    p.add_argument("--stop-timeout-s", type=float, default=10.0, help="time the agent has to exit after SIGTERM")
    p.add_argument("--notify-socket", help="path of the socket the agent notifies (default: a private temporary one)")
    p.add_argument("--log-level", default="INFO", help="logging level")
    p.add_argument("agent_args", nargs=argparse.REMAINDER, help="the agent's arguments, after --")
    return p


class StaticRules:
    """Applies the tenant's static plan through a KernelEnforcer, after re-reading the kernel the agent changed.

    Args:
        enforcer: a KernelEnforcer on the agent's interfaces (its netlink sockets are opened once, at start).
        plan: the static plan, guarded as the agent's fallback applies it.
    """

    def __init__(self, enforcer: Any, plan: ShapingPlan) -> None:
        self.enforcer = enforcer
        self.plan = plan

    def __call__(self) -> None:
        """Put the static plan in the kernel: the HTB rates at once, then whatever else differs."""
        try:
            # Rates and ceilings first, in one netlink batch without reading anything (about 1 ms);
            # reading the kernel back for the rest (netlink dumps, nft) takes tens of milliseconds.
            self.enforcer.write_rates(self.plan)
        except OSError as err:  # a class the agent never created: the full apply below adds it
            LOG.debug("writing the static rates first failed (%s); applying the whole plan", err)
        self.enforcer.reconcile()
        self.enforcer.apply(self.plan)


def agent_environ(environ: Mapping[str, str], socket_path: str, deadline_s: float) -> dict[str, str]:
    """The agent's environment: notifications to the supervisor, which is the agent's watchdog now."""
    env = {k: v for k, v in environ.items() if k not in ("WATCHDOG_PID", "WATCHDOG_USEC")}
    env["NOTIFY_SOCKET"] = socket_path
    env["WATCHDOG_USEC"] = str(int(deadline_s * 1e6))
    return env


def _upstream_period(environ: Mapping[str, str]) -> float:
    """Half of systemd's watchdog period (WATCHDOG_USEC), or 1 s."""
    usec = environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 1.0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point: parse, apply the static rules, supervise the agent until it ends; 2 on a configuration error."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # argparse keeps the "--" in front of a REMAINDER.
    agent_args = list(args.agent_args[1:] if args.agent_args[:1] == ["--"] else args.agent_args)
    if not agent_args:
        print("fedshape-supervise: error: give the agent's arguments after --", file=sys.stderr)
        return EXIT_CONFIG
    from shaping.control import cli
    from shaping.control.kernel_backend import make_enforcer

    private = None if args.notify_socket else tempfile.mkdtemp(prefix="fedshape-supervise-")
    socket_path = args.notify_socket or os.path.join(str(private), "notify")
    inbox = None
    try:
        agent = cli.build_parser().parse_args(agent_args)
        setup = cli.agent_setup(agent)
        enforcer, _ = make_enforcer(setup.spec, setup.kernel, dry_run=agent.dry_run)
        config = SuperviseConfig(interval_s=setup.interval_s,
                                 deadline_s=args.deadline_ms / 1e3 if args.deadline_ms else None,
                                 kill_after_s=args.kill_after_s, start_timeout_s=args.start_timeout_s,
                                 stop_timeout_s=args.stop_timeout_s)  # fmt: skip
        inbox = NotifySocket(socket_path)
        env = agent_environ(environ, socket_path, config.deadline)
        command = [sys.executable, "-m", "shaping.control", *agent_args]
        sup = Supervisor(lambda: subprocess.Popen(command, env=env), inbox, StaticRules(enforcer, setup.static_plan),
                         config, upstream=SdNotifier.from_environ(environ),
                         upstream_every_s=_upstream_period(environ))  # fmt: skip
        previous = {s: signal.signal(s, lambda *_: sup.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                sup.start()
            except Exception as err:  # the kernel refused the static rules: nothing to supervise
                print(f"fedshape-supervise: error: the static rules could not be applied: {one_line(err)}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_CONFIG
            LOG.info("tenant %s: supervising the agent on %s (netns %s): heartbeat deadline %.0f ms",
                     setup.spec.name, ",".join(setup.kernel.interfaces), setup.kernel.netns or "-",
                     config.deadline * 1e3)  # fmt: skip
            return sup.supervise()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            enforcer.close()
    except (ValueError, FileNotFoundError, LookupError, PermissionError, OSError) as err:
        print(f"fedshape-supervise: error: {one_line(err)}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if inbox is not None:
            inbox.close()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
