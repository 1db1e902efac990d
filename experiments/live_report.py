"""The live federation's report: per round and tenant, the model in force, its gate verdict and what the traffic got.

Round 0 is the static rules: the traffic segments before the first global model reached the tenant. Round r
(r >= 1) covers the segments from the publication of round r's model in the tenant's inbox to that of round
r + 1's (or the end). A segment counts for its round only if one model controlled the kernel for all of it
(a swap in the middle of a segment leaves it out). Every number comes from the generators of the segments
(shaping.testbed.measure), the same way for the static rules and for every model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shaping.config import ClassConfig, QoSConfig

#: Version number of the static rules (the policy every agent starts with).
STATIC = 0


def version_at(swaps: Sequence[Mapping[str, Any]], t: float) -> int:
    """The model version controlling at wall-clock time t (0: the static rules), from the agent's swaps."""
    version = STATIC
    for swap in sorted(swaps, key=lambda s: float(s["at"])):
        if float(swap["at"]) <= t:
            version = int(swap["version"])
    return version


def violations(measured: Mapping[str, Any], qos: QoSConfig) -> list[str]:
    """Which requirements of a class one segment missed (one-way p99 delay, loss, application floor, rate)."""
    missed = []
    if qos.max_p99_ms is not None:
        p99 = measured.get("owd_p99_ms")
        if p99 is None or p99 > qos.max_p99_ms:
            missed.append("p99")
    loss = measured.get("loss")
    if qos.max_loss is not None and (loss is None or loss > qos.max_loss):
        missed.append("loss")
    floor = measured.get("completion_rate")
    if qos.app_floor is not None and floor is not None and floor < qos.app_floor:
        missed.append("floor")
    rate = measured.get("throughput_mbps")
    if qos.min_mbps is not None and (rate is None or rate < qos.min_mbps):
        missed.append("rate")
    return missed


def _mean(values: Sequence[float | None]) -> float | None:
    got = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(got) / len(got) if got else None


def _verdict(verdicts: Sequence[Mapping[str, Any]], version: int) -> str:
    for v in verdicts:
        if int(v["version"]) == version:
            return "accepted" if v["accepted"] else f"rejected:{v['reason']}"
    return "not judged"


def round_rows(
    rounds: int,
    segments: Sequence[Mapping[str, Any]],
    published: Mapping[int, float],
    summary: Mapping[str, Any] | None,
    classes: Sequence[ClassConfig],
) -> list[dict[str, Any]]:
    """One row per round (0: the static rules) of one tenant.

    Args:
        rounds: the federation's rounds.
        segments: the tenant's traffic segments (``start``, ``end``, ``classes`` measured by name).
        published: wall-clock time each version appeared in the tenant's inbox.
        summary: the agent's exit summary (its ``model_update`` gives the swaps and verdicts); None if it gave none.
        classes: the tenant's classes with their QoS requirements.
    """
    update = (summary or {}).get("model_update") or {}
    swaps, verdicts = update.get("swaps", []), update.get("verdicts", [])
    sla = {c.name: c.qos for c in classes if any(v is not None for v in vars(c.qos).values())}
    rows = []
    for r in range(rounds + 1):
        lo = -math.inf if r == STATIC else published.get(r, math.inf)
        hi = min([t for v, t in published.items() if v > r] + [math.inf])
        clean = [s for s in segments if lo <= s["start"] and s["end"] <= hi
                 and version_at(swaps, s["start"]) == version_at(swaps, s["end"])]  # fmt: skip
        missed = [(s, name, violations(s["classes"].get(name, {}), q)) for s in clean for name, q in sla.items()]
        took = next((float(s["at"]) for s in swaps if int(s["version"]) == r), None)
        m = lambda cls, key, segs=clean: _mean([s["classes"].get(cls, {}).get(key) for s in segs])  # noqa: E731
        rows.append({
            "round": r,
            "published_at": None if r == STATIC else published.get(r),
            "gate": "static rules" if r == STATIC else _verdict(verdicts, r),
            "control_latency_s": None if took is None or r not in published else took - published[r],
            "in_force": sorted({version_at(swaps, s["start"]) for s in clean}),
            "segments": len(clean),
            "sla_checks": len(missed),
            "sla_violations": sum(1 for *_, miss in missed if miss),
            "sla_violation_rate": (sum(1 for *_, miss in missed if miss) / len(missed)) if missed else None,
            "missed": sorted({f"{name}:{x}" for _, name, miss in missed for x in miss}),
            "gaming_owd_p99_ms": m("gaming", "owd_p99_ms"),
            "gaming_rtt_p99_ms": m("gaming", "rtt_p99_ms"),
            "gaming_loss": m("gaming", "loss"),
            "txn_p99_ms": m("transactions", "rtt_p99_ms"),
            "txn_completion": m("transactions", "completion_rate"),
            "bulk_mbps": m("bulk", "throughput_mbps"),
        })  # fmt: skip
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def markdown_report(results: Mapping[str, Any]) -> str:
    """report.md: the settings line, the per-round table of every tenant, the federation's outcome."""
    fed = results.get("federation", {})
    lines = [
        "# Live federation on the netns testbed", "",
        f"{len(results['tenants'])} tenants, {results['settings']['rounds']} rounds, run "
        f"{fed.get('run_id', '-')} ended `{fed.get('status', '-')}`; wall time {results.get('wall_s', '-')} s; "
        f"load average before/after {results.get('load_before', '-')} / {results.get('load_after', '-')}.", "",
        "Round 0 is the static rules. Version in force: the model that controlled the kernel during the round's "
        "measured segments (0: the static rules). SLA violations: (class, segment) pairs that missed a "
        "requirement, measured by the traffic generators; p99 delays are one-way (gaming) and per transaction.", "",
        "| tenant | round | in force | gate | publish->control s | segments | SLA violations | gaming p99 ms "
        "| txn p99 ms | txn on time | bulk Mbit/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, tenant in results["tenants"].items():
        for row in tenant["rounds"]:
            sla = f"{row['sla_violations']}/{row['sla_checks']}" if row["sla_checks"] else "-"
            lines.append(
                f"| {name} | {row['round']} | {_fmt(row['in_force'])} | {row['gate']} "
                f"| {_fmt(row['control_latency_s'], 2)} | {row['segments']} | {sla} | {_fmt(row['gaming_owd_p99_ms'])} "
                f"| {_fmt(row['txn_p99_ms'])} | {_fmt(row['txn_completion'], 3)} | {_fmt(row['bulk_mbps'])} |"
            )  # fmt: skip
    failed = {name: len(t.get("traffic_errors", [])) for name, t in results["tenants"].items()}
    if any(failed.values()):
        lines += ["", "Traffic segments that failed to run (a generator or the sink did not start or answer in time; "
                      "results.json lists why): " + ", ".join(f"{n} {c}" for n, c in failed.items()) + "."]
    if fed.get("rounds_record"):
        lines += ["", "Federation (ServerApp's record): " + ", ".join(
            f"round {r['round']}: {r.get('fit_clients', '-')} clients" for r in fed["rounds_record"])]  # fmt: skip
    if fed.get("epsilon") is not None:
        lines += ["", f"Privacy spent (server accountant): epsilon {fed['epsilon']:.3g} at delta {fed.get('delta')}."]
    return "\n".join(lines) + "\n"


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per tenant: SLA violation rate and p99 delays per round (round 0: the static rules)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, tenant in results["tenants"].items():
        rows = tenant["rounds"]
        x = [r["round"] for r in rows]
        labels = ["static" if r["round"] == STATIC else f"{r['round']}\n(v{_fmt(r['in_force'])})" for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        rate = [r["sla_violation_rate"] if r["sla_violation_rate"] is not None else float("nan") for r in rows]
        ax1.bar(x, rate, color=["grey"] + ["tab:blue"] * (len(x) - 1))
        ax1.set(title=f"{name}: SLA violations", ylabel="violated (class, segment) fraction", ylim=(0, 1.05))
        for key, label in (("gaming_owd_p99_ms", "gaming p99 one-way"), ("txn_p99_ms", "transactions p99")):
            ax2.plot(x, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
        ax2.set(title=f"{name}: p99 delay", ylabel="ms")
        ax2.legend(fontsize=8)
        for ax in (ax1, ax2):
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_xlabel("round (model version in force)")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
