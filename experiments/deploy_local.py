"""Run a Flower app on a loopback deployment: SuperLink + SuperNodes with TLS and SuperNode authentication."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from experiments.processes import ProcessGroup
from shaping import pki
from shaping.checks import one_line

ConfigValue = str | int | float | bool
#: Turns a process's argv into the argv that starts it (by the process's name: "superlink", a node's name, "flwr").
Launcher = Callable[[str, Sequence[str]], list[str]]
CONNECTION = "fedshape-local"
# Flower 1.42: `flwr run` would `uv sync` the app's dependencies on the SuperLink side unless this is set.
NO_RUNTIME_INSTALL = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0"}
FINISHED = "finished:"


class DeploymentError(RuntimeError):
    """A Flower process failed to start, a CLI call failed, or a run did not finish in time."""


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its key name, its node config, and whether the provider registers its public key."""

    name: str
    node_config: Mapping[str, ConfigValue] = field(default_factory=dict)
    registered: bool = True


@dataclass(frozen=True)
class RunOutcome:
    """What a deployment run did, as the CLI reports it."""

    run_id: int
    status: str
    registered_node_ids: dict[str, int]
    nodes: list[dict[str, Any]]
    refused: dict[str, int | None]
    run: dict[str, Any]
    logs: dict[str, str]


def _write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_bytes(tomli_w.dumps(dict(data)).encode())
    return path


class LocalDeployment:
    """Start, drive and stop a SuperLink and SuperNodes on loopback (a context manager that stops everything).

    Args:
        workdir: where certificates, Flower homes and logs go (created).
        host: loopback address for the SuperLink's HTTPS API (Fleet, Control and Runtime share it in 1.42).
        port: the SuperLink's port; SuperNode i listens on port + 1 + i for its local runtime API.
        bin_dir: where flower-superlink, flower-supernode and flwr live (default: this interpreter's).
        cli_timeout: seconds allowed to one `flwr` CLI call.
        clock, sleep: the clock, for tests.
        proc_root: /proc, to find the processes Flower spawns (SuperExec, ServerApp, ClientApp).
        launcher: wraps each process's argv, by name ("superlink", a node's name, "flwr"): e.g. to start it
            in a network namespace (shaping.testbed.fednet.in_namespace); default: as is.
        connect: opens the TCP connection of the SuperLink's readiness check (socket.create_connection's
            signature); e.g. from inside the SuperLink's namespace (shaping.testbed.fednet.connector).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 19100,
        bin_dir: Path | None = None,
        cli_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        proc_root: Path = Path("/proc"),
        launcher: Launcher | None = None,
        connect: Callable[[tuple[str, int], float], socket.socket] = socket.create_connection,
    ) -> None:
        self.workdir = workdir.resolve()
        self._launch: Launcher = launcher or (lambda _name, argv: list(argv))
        self._connect = connect
        self.host, self.port = host, port
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.cli_timeout = cli_timeout
        self._clock, self._sleep = clock, sleep
        self.pki_dir = self.workdir / "pki"
        self.cli_home = self.workdir / "flwr-cli"
        self.procs = ProcessGroup(self.workdir, clock=clock, sleep=sleep, proc_root=proc_root)

    # ---- PKI and configuration -----------------------------------------------------------------------------

    def make_pki(self, nodes: Sequence[NodeSpec]) -> None:
        """Make the CA, the SuperLink's server certificate and one auth key pair per node with `fedshape-pki`."""
        d = str(self.pki_dir)
        commands = [["init", d, "--cn", "FedShape local CA"], ["server", d, "--host", self.host, "--host", "localhost"]]
        commands += [["node-key", str(self.pki_dir / "nodes"), node.name] for node in nodes]
        for argv in commands:
            with contextlib.redirect_stdout(io.StringIO()):  # it lists the files it wrote
                if pki.main(argv) != 0:
                    raise DeploymentError(f"`fedshape-pki {' '.join(argv)}` failed")
        self.cli_home.mkdir(parents=True, exist_ok=True)
        # Flower 1.42 keeps SuperLink connections in $FLWR_HOME/config.toml (it replaced [tool.flwr.federations]).
        conn = {"address": f"{self.host}:{self.port}", "root-certificates": str(self.pki_dir / "ca.pem")}
        _write_toml(self.cli_home / "config.toml", {"superlink": {"default": CONNECTION, CONNECTION: conn}})

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **NO_RUNTIME_INSTALL, "FLWR_HOME": str(home), "PATH": path}

    # ---- processes -----------------------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], home: Path) -> None:
        """Start a process with FLWR_HOME=home, logging to WORKDIR/NAME.log; stop() ends it and its children."""
        self.procs.spawn(name, self._launch(name, argv), self._env(home), cwd=self.workdir)

    def log(self, name: str) -> str:
        """The log of a started process so far."""
        return self.procs.log(name)

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink with TLS and `--enable-supernode-auth`; return once it answers TLS handshakes."""
        d = self.pki_dir
        argv = [
            str(self.bin_dir / "flower-superlink"),
            "--ssl-ca-certfile", str(d / "ca.pem"), "--ssl-certfile", str(d / "server.pem"),
            "--ssl-keyfile", str(d / "server.key"), "--enable-supernode-auth",
            "--host", self.host, "--port", str(self.port), "--disable-runtime-dependency-installation",
        ]
        self.spawn("superlink", argv, self.workdir / "flwr-superlink")
        context = ssl.create_default_context(cafile=str(d / "ca.pem"))
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            if (code := self.procs.poll("superlink")) is not None:
                raise DeploymentError(f"SuperLink exited with {code}:\n{self.log('superlink')[-2000:]}")
            with contextlib.suppress(OSError):
                with self._connect((self.host, self.port), 2.0) as sock:
                    with context.wrap_socket(sock, server_hostname=self.host):
                        return
            self._sleep(0.5)
        raise DeploymentError(f"SuperLink not reachable over TLS on {self.host}:{self.port} after {timeout} s")

    def flwr(self, *args: str) -> dict[str, Any]:
        """Run `flwr ARGS --format json` against this deployment's SuperLink and return its JSON answer."""
        return self.flwr_many(list(args))[0]

    def flwr_many(self, *calls: Sequence[str]) -> list[dict[str, Any]]:
        """Run several `flwr` commands at once (each one spends seconds importing Flower) and return their answers."""
        env = self._env(self.cli_home)
        running = [
            (call, subprocess.Popen(
                self._launch("flwr", [str(self.bin_dir / "flwr"), *call, "--format", "json"]), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=env, cwd=self.workdir,
            ))
            for call in calls
        ]
        answers = []
        for call, popen in running:
            command = f"`flwr {' '.join(call)}`"
            try:
                out, err = popen.communicate(timeout=self.cli_timeout)
            except subprocess.TimeoutExpired as exc:
                popen.kill()
                popen.communicate()
                raise DeploymentError(f"{command} took more than {self.cli_timeout} s") from exc
            try:
                answer: dict[str, Any] = json.loads(out[out.index("{"):])
            except ValueError as exc:
                raise DeploymentError(f"{command} gave no JSON (rc {popen.returncode}): {out}{err}") from exc
            if popen.returncode != 0 or not answer.get("success", False):
                raise DeploymentError(f"{command} failed (rc {popen.returncode}): {answer}")
            answers.append(answer)
        return answers

    def register(self, nodes: Sequence[NodeSpec]) -> dict[str, int]:
        """Register the nodes' public keys with the SuperLink (`flwr supernode register`); return their node ids."""
        calls = [["supernode", "register", str(self.pki_dir / "nodes" / f"{n.name}.pub"), CONNECTION] for n in nodes]
        return {n.name: int(a["node-id"]) for n, a in zip(nodes, self.flwr_many(*calls), strict=True)}

    def start_supernode(self, index: int, node: NodeSpec) -> None:
        """Start a SuperNode that trusts our CA and signs its requests with its node key."""
        home = self.workdir / f"flwr-{node.name}"
        node_config = _write_toml(home.parent / f"{node.name}-node-config.toml", node.node_config)
        argv = [
            str(self.bin_dir / "flower-supernode"),
            "--root-certificates", str(self.pki_dir / "ca.pem"), "--superlink", f"{self.host}:{self.port}",
            "--auth-supernode-private-key", str(self.pki_dir / "nodes" / node.name),
            "--node-config", str(node_config), "--port", str(self.port + 1 + index),
        ]
        self.spawn(node.name, argv, home)

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for a process to exit; its exit status, or None if it still runs."""
        return self.procs.wait(name, timeout)

    def wait_online(self, node_names: Sequence[str], timeout: float) -> None:
        """Wait until each named SuperNode logs the node id the SuperLink activated it with."""
        deadline = self._clock() + timeout
        while waiting := [n for n in node_names if "SuperNode ID:" not in self.log(n)]:
            if dead := [n for n in waiting if self.procs.poll(n) is not None]:
                raise DeploymentError(f"SuperNode {dead[0]} exited:\n{self.log(dead[0])[-2000:]}")
            if self._clock() > deadline:
                raise DeploymentError(f"SuperNodes {waiting} did not connect within {timeout} s")
            self._sleep(0.5)

    def stage_app(self, app_dir: Path, app_config: Mapping[str, ConfigValue] | None = None) -> Path:
        """Copy the files Flower would bundle from ``app_dir`` into WORKDIR/app and return the copy.

        Flower 1.42's `flwr run APP` rewrites APP/pyproject.toml when it still has [tool.flwr.federations]
        (it comments the section out, "migrating" it to $FLWR_HOME/config.toml), so we never point `flwr` at
        the original. ``app_config`` sets (or adds) [tool.flwr.app.config] keys of the copy: 1.42 refuses
        `--run-config` keys that the app does not declare.
        """
        src = app_dir.resolve()
        if not (src / "pyproject.toml").is_file():
            raise DeploymentError(f"{src} is not a Flower app: no pyproject.toml")
        from flwr.cli.build import build_fab_from_disk  # Flower's own file selection (.gitignore, patterns)

        try:
            bundle = build_fab_from_disk(src)
        except ValueError as err:
            raise DeploymentError(f"Flower cannot bundle {src}: {err}") from err
        dest = self.workdir / "app" / src.name  # 1.42 checks the directory name, so keep it
        with zipfile.ZipFile(io.BytesIO(bundle)) as fab:
            members = [m for m in fab.namelist() if not m.startswith(".info/")]  # the FAB's own manifest
            fab.extractall(dest, members)
        pyproject = tomllib.loads((dest / "pyproject.toml").read_text())
        config = pyproject["tool"]["flwr"]["app"].setdefault("config", {})
        for key, value in (app_config or {}).items():
            *parents, leaf = key.split(".")
            table = config
            for part in parents:
                table = table.setdefault(part, {})
            table[leaf] = value
        _write_toml(dest / "pyproject.toml", pyproject)
        return dest

    def run_args(self, app_dir: Path, run_config: Mapping[str, ConfigValue]) -> list[str]:
        """The `flwr run` arguments that start the (staged) app at ``app_dir`` on this deployment."""
        args = ["run", str(app_dir.resolve()), CONNECTION]
        if run_config:
            args += ["--run-config", str(_write_toml(self.workdir / "run-config.toml", run_config))]
        return args

    def run_app(self, app_dir: Path, run_config: Mapping[str, ConfigValue]) -> int:
        """Start a run of the app at ``app_dir`` (`flwr run`); return the run id."""
        return int(self.flwr(*self.run_args(app_dir, run_config))["run-id"])

    def wait_run(self, run_id: int, timeout: float, poll: float = 1.0) -> dict[str, Any]:
        """Poll `flwr ls --run-id` until the run finishes (1.42's `flwr run` exits 0 even when a run fails)."""
        deadline = self._clock() + timeout
        while True:
            run: dict[str, Any] = self.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"][0]
            if str(run["status"]).startswith(FINISHED):
                return run
            if self._clock() > deadline:
                raise DeploymentError(f"run {run_id} still {run['status']} after {timeout} s")
            self._sleep(poll)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this deployment started; the SuperLink last, so that SuperNodes can deactivate."""
        self.procs.stop(grace, last="superlink")

    def __enter__(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- one complete run ------------------------------------------------------------------------------------------


def deploy(
    workdir: Path,
    app_dir: Path,
    nodes: Sequence[NodeSpec],
    run_config: Mapping[str, ConfigValue] | None = None,
    *,
    app_config: Mapping[str, ConfigValue] | None = None,
    port: int = 19100,
    timeout: float = 300.0,
) -> RunOutcome:
    """Make the PKI, start the SuperLink, register the registered nodes, start all nodes, run the app, stop all.

    ``run_config`` goes to `flwr run --run-config` (keys the app declares); ``app_config`` is written into the
    staged copy's [tool.flwr.app.config] (any keys). Unregistered nodes must be refused: their SuperNode exits
    before the run starts; ``refused`` maps their names to the exit status (None if one still ran after the
    registered nodes came online).
    """
    registered = [n for n in nodes if n.registered]
    with LocalDeployment(workdir, port=port) as dep:
        dep.make_pki(nodes)
        staged = dep.stage_app(app_dir, app_config)
        dep.start_superlink(timeout=min(60.0, timeout))
        # Unregistered nodes start first: their refusal overlaps the registration of the others.
        for i, node in enumerate(nodes):
            if not node.registered:
                dep.start_supernode(i, node)
        node_ids = dep.register(registered)
        for i, node in enumerate(nodes):
            if node.registered:
                dep.start_supernode(i, node)
        dep.wait_online([n.name for n in registered], timeout=min(120.0, timeout))
        refused = {n.name: dep.wait_exit(n.name, timeout=30.0) for n in nodes if not n.registered}
        started, listing = dep.flwr_many(dep.run_args(staged, run_config or {}), ["supernode", "ls", CONNECTION])
        run = dep.wait_run(int(started["run-id"]), timeout)
        dep.stop()
        logs = {p.stem: p.read_text(errors="replace") for p in sorted(workdir.glob("*.log"))}
    return RunOutcome(int(started["run-id"]), str(run["status"]), node_ids, listing["nodes"], refused, run, logs)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_run_config(
    app_dir: Path, run_config: Mapping[str, ConfigValue], app_config: Mapping[str, ConfigValue] | None = None
) -> None:
    """Refuse impossible settings of FedShape's own apps before any process starts.

    The ServerApp would refuse them too, but only once the SuperLink, the nodes and the run are up, as a
    failed run. Other apps (tests/deploy/tiny_app) are not checked: their settings are their own.

    Raises:
        ValueError: the first value out of range, naming its run-config key (shaping.fed_settings.RunSettings).
    """
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return  # deploy() says so, as a DeploymentError
    app = tomllib.loads(path.read_text()).get("tool", {}).get("flwr", {}).get("app", {})
    if not str(app.get("components", {}).get("serverapp", "")).startswith("fed_server."):
        return
    from shaping.fed_settings import RunSettings  # torch: only for FedShape's apps

    RunSettings.from_config({**_flatten(app.get("config", {})), **(app_config or {}), **run_config})


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.deploy_local",
        description="Run a Flower app on loopback with TLS and SuperNode authentication, then stop everything.",
    )
    p.add_argument("--app", type=Path, default=Path("."), help="Flower app directory (default: this repo)")
    p.add_argument("--workdir", type=Path, required=True, help="certificates, Flower homes and logs go here")
    p.add_argument("--nodes", type=int, default=2, help="registered SuperNodes (partition-id 0..N-1)")
    p.add_argument(
        "--tenant", action="append", default=[], metavar="TENANT@SCENARIO",
        help="a registered SuperNode that declares this tenant in its node config, as a deployed tenant does "
        "(repeat; replaces --nodes)",
    )
    p.add_argument("--unregistered", type=int, default=0, help="extra SuperNodes whose keys are NOT registered")
    p.add_argument("--port", type=int, default=19100, help="SuperLink port; SuperNodes use the next ports")
    p.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE", help="run config (repeat)")
    p.add_argument(
        "--app-config", action="append", default=[], metavar="KEY=VALUE",
        help="set in the staged app's [tool.flwr.app.config] (repeat; for keys the app does not declare)",
    )
    p.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE", help="for every node (repeat)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the run to finish")
    p.add_argument("--summary", type=Path, help="write the outcome as JSON here")
    return p.parse_args(argv)


def _config_value(text: str) -> ConfigValue:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def _pairs(items: Sequence[str]) -> dict[str, ConfigValue]:
    return {k: _config_value(v) for k, _, v in (item.partition("=") for item in items)}


def node_specs(count: int, tenants: Sequence[str], extra: Mapping[str, ConfigValue]) -> list[NodeSpec]:
    """The registered nodes: one per ``TENANT@SCENARIO`` with those in its node config (a deployment's
    nodes), else `count` nodes told their partition-id (what the simulation gives a ClientApp)."""
    if tenants:
        pairs = [name.partition("@") for name in tenants]
        return [NodeSpec(f"node-{i}", {"tenant": tenant, "scenario": scenario or "default", **extra})
                for i, (tenant, _, scenario) in enumerate(pairs)]  # fmt: skip
    return [NodeSpec(f"node-{i}", {"partition-id": i, "num-partitions": count, **extra}) for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 when the run finished completed and every unregistered node was refused; 1 otherwise
    (with a line on stderr saying why), 2 for settings FedShape's apps refuse (before anything starts)."""
    args = _parse_args(argv)
    extra = _pairs(args.node_config)
    nodes = node_specs(args.nodes, args.tenant, extra) + [
        NodeSpec(f"intruder-{i}", {"partition-id": 0, "num-partitions": args.nodes, **extra}, registered=False)
        for i in range(args.unregistered)
    ]
    try:
        check_run_config(args.app, _pairs(args.run_config), _pairs(args.app_config))
    except (ValueError, TypeError) as err:
        print(f"deploy_local: {one_line(err)}", file=sys.stderr)
        return 2
    try:
        outcome = deploy(
            args.workdir, args.app, nodes, _pairs(args.run_config), app_config=_pairs(args.app_config),
            port=args.port, timeout=args.timeout,
        )
    except DeploymentError as err:
        print(f"deploy_local: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in asdict(outcome).items() if k != "logs"}
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    # `flwr run` exits 0 whatever becomes of the run (flwr 1.42): the run's final status decides.
    if outcome.status != "finished:completed":
        print(f"deploy_local: run {outcome.run_id} ended {outcome.status} (logs in {args.workdir})", file=sys.stderr)
        return 1
    not_refused = [name for name, code in outcome.refused.items() if code in (None, 0)]
    if not_refused:
        print(f"deploy_local: unregistered nodes not refused: {not_refused}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
