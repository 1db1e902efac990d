"""The whole federated loop, live: ``python -m experiments.live_federation [overrides]`` (root only).

Builds one namespaced testbed per tenant (each with its gaming, transactions and bulk generators), starts each
tenant's agent (``python -m shaping.control``: static rules, experience recorded, a model inbox) inside its
namespace on real traffic, then a SuperLink in a namespace of its own and one SuperNode per tenant inside the
tenant's namespace (TLS, SuperNode authentication: experiments.deploy_local), and runs FedShape's Flower apps
with SecAgg+ and DP for the configured rounds. Each round the clients train on their agent's recorded
experience, the server aggregates, and each client publishes the new global model to its agent, which gates it
on its simulator twin and swaps it in (or not). The traffic runs all along as back-to-back measured segments;
results.json, report.md and one PNG per tenant go to Hydra's run directory (experiments.live_report).
Everything started is stopped and every namespace removed at the end, also after a failure or Ctrl-C.

    python -m experiments.live_federation
    python -m experiments.live_federation rounds=5 segment_s=15
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.config import CONF_PATH, exits_2_on_config_error, to_typed
from shaping.checks import one_line

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
#: The provider's pretrained universal model the federation starts from (as conf/federated.yaml's runs do).
INIT_WEIGHTS = REPO / "conf" / "models" / "universal.npz"


@dataclass
class LiveTenant:
    """One tenant of the live federation and its workload on the testbed's generators."""

    name: str = "tenant"
    """The tenant's name (its identity in the federation and the report)."""
    gaming_players: int = 4
    """60 Hz UDP game streams."""
    txn_rate_hz: float = 50.0
    """Transactions per second."""
    bulk_flows: int = 2
    """Bulk TCP (cubic) connections."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"tenant name {self.name!r} must be a plain identifier")
        if self.gaming_players < 1 or self.txn_rate_hz <= 0 or self.bulk_flows < 1:
            raise ValueError(f"tenant {self.name}: every class must send (gaming_players >= 1, txn_rate_hz > 0, "
                             f"bulk_flows >= 1)")  # fmt: skip


def _default_tenants() -> list[LiveTenant]:
    return [LiveTenant("arena", 8, 20.0, 1), LiveTenant("shop", 2, 80.0, 1), LiveTenant("backup", 2, 20.0, 3)]


@dataclass
class LiveFederationConfig:
    """Primary config of experiments.live_federation."""

    prefix: str = "lf"
    """Prefix of every namespace and link (tenant i's testbed is PREFIX{i}-*, the SuperLink's PREFIX-fl)."""
    subnet_base: int = 100
    """Third octet of the first of the 10.200.x.0/24 subnets used (5 per tenant, then the federation's)."""
    capacity_mbps: float = 30.0
    """Each tenant's bottleneck capacity (and its second path's)."""
    buffer_ms: float = 150.0
    """Bottleneck buffer, milliseconds of capacity."""
    tenants: list[LiveTenant] = field(default_factory=_default_tenants)
    """The tenants (at least three)."""
    rounds: int = 3
    """Federated rounds."""
    segment_s: float = 10.0
    """Length of each measured traffic segment."""
    warmup_s: float = 1.0
    """Start of each segment left out of its measurements."""
    static_s: float = 30.0
    """Traffic under the static rules before the federation starts (the agents' first experience)."""
    after_s: float = 30.0
    """Traffic after the run finished, under the last model the agents took."""
    interval_ms: float = 200.0
    """The agents' control interval."""
    experience_segment: int = 25
    """Transitions per experience segment file: the clients see a step once its segment is written."""
    gate_seeds: int = 2
    """Environments of the agents' gate twin."""
    gate_steps: int = 30
    """Intervals of the gate twin's episode."""
    rollback_intervals: int = 20
    """Intervals after a swap compared with as many before it."""
    noise_multiplier: float = 0.05
    """Distributed DP: noise std of the sum, in clipping norms (each client adds its share)."""
    clipping_norm: float = 1.0
    """Clipping norm of each client's update."""
    update_epochs: int = 2
    """PPO epochs of each client's update on its experience."""
    eval_steps: int = 5
    """Steps of each client's held-out evaluation on its simulator (1 environment)."""
    port: int = 19130
    """SuperLink port (in its namespace); SuperNode i uses port + 1 + i in its tenant's namespace."""
    timeout_s: float = 900.0
    """Bound on the federated run and on each start-up wait (SuperLink, SuperNodes); the traffic and the agents
    are bounded by it too."""
    output_dir: str | None = None
    """Where the results go; None: Hydra's run directory."""
    plots: bool = True

    def __post_init__(self) -> None:
        if len(self.tenants) < 3:
            raise ValueError(f"tenants: the live federation needs at least 3, got {len(self.tenants)}")
        if len({t.name for t in self.tenants}) != len(self.tenants):
            raise ValueError(f"tenants: names must be unique, got {[t.name for t in self.tenants]}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 <= self.warmup_s < self.segment_s:
            raise ValueError(f"need 0 <= warmup_s < segment_s, got {self.warmup_s}, {self.segment_s}")
        if min(self.static_s, self.after_s) < self.segment_s:
            raise ValueError(f"static_s and after_s must be >= segment_s ({self.segment_s}), got {self.static_s}, "
                             f"{self.after_s}")  # fmt: skip
        if self.subnet_base < 0 or self.subnet_base + 5 * len(self.tenants) + 9 > 255:
            raise ValueError(f"subnet_base {self.subnet_base}: {len(self.tenants)} tenants leave 10.200.0.0/16")
        if len(self.prefix) > 5 or not self.prefix.isalnum():
            raise ValueError(f"prefix {self.prefix!r}: at most 5 letters or digits (15-character link names)")
        if self.interval_ms <= 0 or self.experience_segment < 1 or self.noise_multiplier <= 0:
            raise ValueError("interval_ms, experience_segment and noise_multiplier must be > 0")
        if not 1024 <= self.port <= 65535 - len(self.tenants) - 1:
            raise ValueError(f"port {self.port} out of range")


def run_config(cfg: LiveFederationConfig) -> dict[str, Any]:
    """The Flower run config: SecAgg+ with distributed DP, every tenant in every round, the pretrained start."""
    n = len(cfg.tenants)
    return {
        "fl.rounds": cfg.rounds, "fl.min_fit_clients": n, "fl.min_available_clients": n, "fl.fraction_fit": 1.0,
        "privacy.mode": "distributed", "privacy.secure_aggregation": True,
        "privacy.noise_multiplier": cfg.noise_multiplier, "privacy.clipping_norm": cfg.clipping_norm,
        "privacy.target_epsilon": "null", "train.update_epochs": cfg.update_epochs, "train.local_iterations": 1,
        "evaluation.envs": 1, "evaluation.steps": cfg.eval_steps, "init.weights": str(INIT_WEIGHTS),
        "train.hidden_sizes": "[64, 64]",
    }  # fmt: skip


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the same finally blocks tear everything down.

    Only in this process: pyroute2 forks helpers (NetNS) that inherit the handler and are ended with SIGTERM;
    unwinding there would run this process's teardown in a copy of it, so a fork dies as SIGTERM says.
    """
    owner = os.getpid()

    def interrupt(*_: object) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_live(cfg: LiveFederationConfig, out_dir: Path) -> dict[str, Any]:
    """Build, run and tear down the live federation; write results.json, report.md and the plots.

    Returns:
        ``{"skipped": reason}`` without root or tools, else the settings, the federation's outcome and each
        tenant's rows (experiments.live_report.round_rows).
    """
    from shaping.testbed.topology import root_skip_reason

    reason = root_skip_reason(("ip", "tc", "nft", "ethtool"))
    if reason is not None:
        return {"skipped": reason}
    from experiments.live_run import LiveRun

    out_dir.mkdir(parents=True, exist_ok=True)
    start, load_before = time.monotonic(), os.getloadavg()[0]
    with _sigterm_as_interrupt(), LiveRun(cfg, out_dir / "work", run_config(cfg)) as live:
        results = live.run()
    results["settings"] = OmegaConf.to_container(OmegaConf.structured(cfg))
    results["wall_s"] = round(time.monotonic() - start, 1)
    results["load_before"], results["load_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    from experiments.live_report import markdown_report, write_plots

    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    (out_dir / "report.md").write_text(markdown_report(results))
    if cfg.plots:
        write_plots(results, out_dir)
    return results


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def register() -> None:
    """Store this entry point's schema in Hydra's ConfigStore."""
    ConfigStore.instance().store(name="live_federation_schema", node=LiveFederationConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="live_federation")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run; exits 2 with one line without root."""
    conf = to_typed(cfg, LiveFederationConfig)
    out = Path(conf.output_dir) if conf.output_dir else Path(HydraConfig.get().runtime.output_dir)
    from experiments.deploy_local import DeploymentError
    from shaping.testbed.topology import TestbedError

    try:
        results = run_live(conf, out)
    except KeyboardInterrupt:
        print("live_federation: interrupted; every process and namespace it started is gone", flush=True)
        raise SystemExit(130) from None
    except (DeploymentError, TestbedError) as err:
        print(f"live_federation: {one_line(err)[:400]} (logs under {out / 'work'}); everything torn down", flush=True)
        raise SystemExit(1) from None
    if "skipped" in results:
        print(f"live_federation: {results['skipped']}", flush=True)
        raise SystemExit(2)
    print(json.dumps({k: results[k] for k in ("federation", "wall_s")}, default=str), flush=True)
    print(f"live_federation: report in {out / 'report.md'}", flush=True)


if __name__ == "__main__":
    register()
    main()
