"""The real testbed on real traffic: ``python -m experiments.testbed [overrides]`` (root only).

Builds the namespaced testbed (tenant host, router with a bottleneck and a second link, sink),
runs the checks of shaping.testbed with real generators and writes results.json, report.md and
testbed.png into Hydra's run directory; prints the JSON. Without root it says why and does nothing.

    python -m experiments.testbed
    python -m experiments.testbed duration_s=30 checks=[controller,sim]
    python -m experiments.testbed capacity_mbps=50 buffer_ms=200
    python -m experiments.testbed checks=[failover] fail_step=15 recover_step=30 failover_steps=45
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.config import CONF_PATH, exits_2_on_config_error, to_typed
from shaping.testbed.report import markdown_report, write_plot

log = logging.getLogger(__name__)

#: Checks the entry point knows, in the order they run.
CHECKS = ("rates", "dscp", "drop", "path", "controller", "fallback_kill", "fallback_stall", "failover", "sim")


@dataclass
class TestbedConfig:
    """Primary config of experiments.testbed."""

    __test__ = False  # not a pytest test class, despite its name

    prefix: str = "fst"
    """Prefix of the namespaces and links the testbed creates."""
    subnet_base: int = 50
    """Third octet of the first of the five 10.200.x.0/24 subnets used."""
    capacity_mbps: float = 30.0
    """Bottleneck (path 0) capacity; small enough that a loaded 2-core host saturates it."""
    buffer_ms: float = 150.0
    """Bottleneck buffer in milliseconds of capacity (deep)."""
    second_capacity_mbps: float = 30.0
    """Capacity of the second path."""
    duration_s: float = 15.0
    """Length of each traffic run of the rates, controller and sim checks."""
    warmup_s: float = 3.0
    """Start of each run left out of the measurements."""
    interval_s: float = 0.2
    """Control interval of the control loop."""
    gaming_players: int = 4
    txn_rate_hz: float = 50.0
    bulk_flows: int = 2
    drop_prob: float = 0.1
    """Drop probability of the drop check's UDP class."""
    drop_packets: int = 5000
    """Packets of the drop check."""
    sim_steps: int = 200
    """Simulated control steps of the sim comparison (after its warmup)."""
    sim_seeds: int = 4
    failover_steps: int = 45
    """Control steps of the failover check (interval_s each)."""
    fail_step: int = 15
    """Control step at which the failover check takes path 0 down (its first failed interval)."""
    recover_step: int | None = 30
    """Control step from which path 0 is back; null: it stays down."""
    failover_policy: str = "reroute"
    """Policy of the failover check (shaping.testbed.failover.FAILOVER_POLICIES)."""
    checks: list[str] = field(default_factory=lambda: list(CHECKS))
    """Which checks to run (a subset of CHECKS)."""
    output_dir: str | None = None
    """Where the results go; None: Hydra's run directory."""
    plots: bool = True

    def __post_init__(self) -> None:
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {list(CHECKS)}")
        if self.duration_s <= self.warmup_s or self.warmup_s < 0:
            raise ValueError("need 0 <= warmup_s < duration_s")
        end = self.failover_steps if self.recover_step is None else self.recover_step
        if not 1 <= self.fail_step < end <= self.failover_steps:
            raise ValueError(f"need 1 <= fail_step < recover_step <= failover_steps, got {self.fail_step}, "
                             f"{self.recover_step}, {self.failover_steps}")  # fmt: skip


def _checks(cfg: TestbedConfig) -> dict[str, Callable[[Any], dict[str, Any]]]:
    from shaping.testbed import checks as C
    from shaping.testbed import control_checks as K
    from shaping.testbed import failover as F
    from shaping.testbed import simcompare as SC

    d, w = cfg.duration_s, cfg.warmup_s

    def failover(b: Any) -> dict[str, Any]:
        return F.check_failover(b, interval_s=cfg.interval_s, steps=cfg.failover_steps, fail_step=cfg.fail_step,
                                recover_step=cfg.recover_step, policy=cfg.failover_policy)  # fmt: skip

    return {
        "rates": lambda b: C.check_rates(b, d, w),
        "dscp": lambda b: C.check_dscp(b, min(d, 6.0)),
        "drop": lambda b: C.check_drop(b, cfg.drop_prob, cfg.drop_packets),
        "path": lambda b: C.check_path_change(b, min(d, 8.0)),
        "controller": lambda b: K.check_controller(b, d, w, cfg.interval_s),
        "fallback_kill": lambda b: K.check_fallback(b, "kill", cfg.interval_s),
        "fallback_stall": lambda b: K.check_fallback(b, "stall", cfg.interval_s),
        "failover": failover,
        "sim": lambda b: SC.compare_scenario(b, d, w, cfg.sim_steps, cfg.sim_seeds),
    }


def run_testbed(cfg: TestbedConfig, out_dir: Path) -> dict[str, Any]:
    """Run the configured checks on a fresh testbed (always torn down) and write the results.

    Returns:
        ``{"skipped": reason}`` without root or tools, else the settings and each check's result.
    """
    from shaping.testbed import scenario as S
    from shaping.testbed.checks import Bench
    from shaping.testbed.topology import PathLink, TopologyConfig, describe, root_skip_reason, testbed

    reason = root_skip_reason(("ip", "tc", "nft", "ethtool", "tcpdump"))
    if reason is not None:
        return {"skipped": reason}
    out_dir.mkdir(parents=True, exist_ok=True)
    topo = TopologyConfig(
        prefix=cfg.prefix, subnet_base=cfg.subnet_base,
        paths=(PathLink(cfg.capacity_mbps, cfg.buffer_ms), PathLink(cfg.second_capacity_mbps, cfg.buffer_ms)),
    )  # fmt: skip
    work = S.Workload(gaming_players=cfg.gaming_players, txn_rate_hz=cfg.txn_rate_hz, bulk_flows=cfg.bulk_flows)
    results: dict[str, Any] = {"settings": OmegaConf.to_container(OmegaConf.structured(cfg)), "checks": {}}
    start = time.monotonic()
    with testbed(topo) as tb:
        results["topology"] = describe(tb)
        bench = Bench.open(tb, work)
        table = _checks(cfg)
        for name in [c for c in CHECKS if c in cfg.checks]:
            t0 = time.monotonic()
            log.info("check %s ...", name)
            res = table[name](bench)
            res["wall_s"] = round(time.monotonic() - t0, 1)
            results["checks"][name] = res
            log.info("check %s: %s (%.1f s)", name, "passed" if res.get("passed", True) else "FAILED", res["wall_s"])
    results["wall_s"] = round(time.monotonic() - start, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "report.md").write_text(markdown_report(results))
    if cfg.plots:
        write_plot(results, out_dir / "testbed.png")
    return results


def register() -> None:
    """Store this entry point's schema in Hydra's ConfigStore."""
    ConfigStore.instance().store(name="testbed_schema", node=TestbedConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="testbed")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, print the JSON."""
    conf = to_typed(cfg, TestbedConfig)
    out = Path(conf.output_dir) if conf.output_dir else Path(HydraConfig.get().runtime.output_dir)
    results = run_testbed(conf, out)
    if "skipped" in results:
        log.warning("testbed skipped: %s", results["skipped"])
    print(json.dumps(results, indent=2, default=str), flush=True)


if __name__ == "__main__":
    register()
    main()
