"""Reports of a policy comparison: markdown tables, results.json and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np

from shaping.config import ScenarioConfig
from shaping.evaluation import PolicyResult

Results = dict[str, PolicyResult]


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100.0 * x:.1f}%"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "---:") -> list[str]:
    """A markdown table's lines: the first column left-aligned, the others by `align`."""
    return [_row(header), _row(["---", *[align] * (len(header) - 1)]), *(_row(r) for r in rows)]


def _bold_best(cells: list[str], values: list[float], lower: bool) -> list[str]:
    """Bold the cells whose value is the best one (all of them when tied); none when all are equal."""
    best = min(values) if lower else max(values)
    tol = 1e-6 * max(1.0, abs(best))
    hits = [abs(v - best) <= tol for v in values]
    if all(hits):
        return cells
    return [f"**{c}**" if hit else c for c, hit in zip(cells, hits, strict=True)]


def scenario_summary(scenario: ScenarioConfig) -> str:
    """One line describing the scenario's tenants and paths."""
    paths = ", ".join(
        f"{p.name} {p.capacity_mbps:g} Mbit/s {p.base_delay_ms:g} ms" for p in scenario.paths
    )
    caps = sum(t.cap_mbps for t in scenario.tenants)
    classes = sum(len(t.classes) for t in scenario.tenants)
    return (
        f"{len(scenario.tenants)} tenants ({classes} classes, caps {caps:g} Mbit/s in total) on "
        f"{len(scenario.paths)} path(s): {paths}"
    )


def control_summary(scenario: ScenarioConfig, controlled: Sequence[str]) -> str:
    """One line naming the tenants every row's policy drives and the neighbours with their scenario policies."""
    neighbours = [f"{t.name} (`{t.policy}`)" for t in scenario.tenants if t.name not in controlled]
    line = f"Every policy drives {', '.join(controlled)}"
    if not neighbours:
        return line + " (every tenant)."
    return line + f"; the neighbours run their scenario policies in every row: {', '.join(neighbours)}."


def markdown_report(results: Results, scenario: ScenarioConfig, settings: dict[str, Any]) -> str:
    """The comparison as markdown: summary, latency, application metric and per-tenant tables."""
    first = next(iter(results.values()))
    lines = [
        f"# Policy comparison on scenario `{scenario.name}`",
        "",
        scenario_summary(scenario) + ".",
        control_summary(scenario, first.controlled),
        f"{first.seeds} seeds x {first.episodes} episode(s) x {first.steps} steps of "
        f"{scenario.control_interval_ms:g} ms; reward weights {settings.get('reward', {})}.",
        "",
    ]
    rs = list(results.values())
    sla = _bold_best(
        [f"{pct(r.sla_violation_rate)} ± {100 * r.sla_violation_rate_std:.1f}" for r in rs],
        [round(r.sla_violation_rate, 3) for r in rs],
        lower=True,
    )
    util = _bold_best([pct(r.utilization) for r in rs], [round(r.utilization, 3) for r in rs], lower=False)
    rew = _bold_best(
        [f"{r.mean_reward:.3f} ± {r.mean_reward_std:.3f}" for r in rs],
        [round(r.mean_reward, 3) for r in rs],
        lower=False,
    )
    nbr = _bold_best(
        [pct(r.neighbour_sla_violation_rate) for r in rs], [round(r.neighbour_sla_violation_rate, 3) for r in rs],
        lower=True,
    )  # fmt: skip
    rows = [
        [f"`{name}`", sla[i], nbr[i], util[i], rew[i], f"{r.jain_throughput:.3f}", pct(r.loss), f"{r.wall_s:.1f}"]
        for i, (name, r) in enumerate(results.items())
    ]
    header = [
        "policy", "SLA violations", "neighbours' SLA violations", "utilization", "mean reward", "Jain (throughput)",
        "loss", "wall s",
    ]  # fmt: skip
    lines += table(header, rows)
    lines += [
        "",
        "SLA violations: share of (class, step) pairs, over the controlled tenants' classes with an SLA, that break "
        "it (± std over seeds); neighbours' SLA violations: the same over the other tenants' classes.",
        "Utilization: delivered / capacity of all paths. Best value per column in bold (unless all tie).",
        "",
    ]
    apps = list(first.apps)
    lines += ["## Latency per application, ms", "", "p50 / p99 over intervals of the mean one-way delay.", ""]
    lines += table(
        ["policy", *apps],
        [[f"`{n}`", *(f"{r.apps[a].p50_ms:.1f} / {r.apps[a].p99_ms:.1f}" for a in apps)] for n, r in results.items()],
    )
    lines += ["", "## Application metric and SLA violations per application", ""]
    lines += table(
        ["policy", *apps],
        [
            [f"`{n}`", *(f"{r.apps[a].app_metric:.2f} ({pct(r.apps[a].sla_violation_rate)})" for a in apps)]
            for n, r in results.items()
        ],
    )
    tenants = list(first.tenants)
    lines += ["", "## Reward per tenant (throughput, Mbit/s)", "", "Controlled tenants marked *.", ""]
    lines += table(
        ["policy", *(f"{t}*" if t in first.controlled else t for t in tenants)],
        [
            [f"`{n}`", *(f"{r.tenants[t].reward:.3f} ({r.tenants[t].throughput_mbps:.1f})" for t in tenants)]
            for n, r in results.items()
        ],
    )
    return "\n".join(lines) + "\n"


def write_json(path: Path, results: Results, settings: dict[str, Any]) -> None:
    """results.json: the settings and, per policy, every aggregate and time series (each row names the tenants
    it controlled, `controlled`)."""
    doc = {"settings": settings, "policies": {name: r.to_dict() for name, r in results.items()}}
    path.write_text(json.dumps(doc, indent=2, allow_nan=False))


def _smooth(x: Sequence[float], window: int) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if window <= 1 or len(a) < window:
        return a
    kernel = np.ones(window) / window
    # 'valid' mode would shorten the series; pad with edge values so the curve keeps its length.
    padded = np.pad(a, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def plot_latency(results: Results, path: Path) -> None:
    """Grouped bars per application: p50 (bar) and p99 (whisker) of each policy, log scale."""
    names = list(results)
    apps = list(next(iter(results.values())).apps)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(apps) + 2.0), 4.5))
    width = 0.8 / len(names)
    x = np.arange(len(apps))
    for i, name in enumerate(names):
        r = results[name]
        p50 = np.array([r.apps[a].p50_ms for a in apps])
        p99 = np.array([r.apps[a].p99_ms for a in apps])
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, p50, width, label=name)
        ax.errorbar(pos, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(x, apps)
    ax.set_yscale("log")
    ax.set_ylabel("one-way delay, ms (bar p50, whisker p99)")
    ax.set_title("Latency per application")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(names), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_summary(results: Results, path: Path) -> None:
    """Bars per policy: SLA violation rate, utilization, mean reward (± std over seeds)."""
    names = list(results)
    rs = [results[n] for n in names]
    panels = [
        ("SLA violation rate, %", [100 * r.sla_violation_rate for r in rs],
         [100 * r.sla_violation_rate_std for r in rs]),
        ("Utilization, %", [100 * r.utilization for r in rs], [100 * r.utilization_std for r in rs]),
        ("Mean reward per tenant and step", [r.mean_reward for r in rs], [r.mean_reward_std for r in rs]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(max(10.0, 1.2 * len(names) * 3), 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, values, std) in zip(axes, panels, strict=True):
        ax.bar(names, values, yerr=std, capsize=4, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0.0, color="black", lw=0.8)
    axes[0].set_ylim(0.0, 105.0)
    axes[1].set_ylim(0.0, 105.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeseries(results: Results, path: Path, interval_ms: float) -> None:
    """Reward, SLA violation rate and utilization over time per policy (moving average)."""
    steps = next(iter(results.values())).steps
    window = max(1, steps // 30)
    fig, axes = plt.subplots(3, 1, figsize=(9.0, 8.0), sharex=True)
    for name, r in results.items():
        t = np.arange(len(r.series.reward)) * interval_ms / 1000.0
        axes[0].plot(t, _smooth(r.series.reward, window), label=name)
        axes[1].plot(t, 100 * _smooth(r.series.sla_violation_rate, window), label=name)
        axes[2].plot(t, 100 * _smooth(r.series.utilization, window), label=name)
    for ax, title in zip(axes, ("Mean reward", "SLA violation rate, %", "Utilization, %"), strict=True):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes[1:]:
        ax.set_ylim(0.0, 105.0)
    axes[0].legend(fontsize="small", ncols=min(len(results), 4))
    smoothing = f"moving average over {window} steps, " if window > 1 else ""
    axes[0].set_title(f"Over time ({smoothing}mean over seeds)")
    axes[-1].set_xlabel("simulated time, s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: Results, out_dir: Path, interval_ms: float) -> list[Path]:
    """Write latency.png, summary.png and timeseries.png; return their paths."""
    paths = [out_dir / "latency.png", out_dir / "summary.png", out_dir / "timeseries.png"]
    plot_latency(results, paths[0])
    plot_summary(results, paths[1])
    plot_timeseries(results, paths[2], interval_ms)
    return paths

