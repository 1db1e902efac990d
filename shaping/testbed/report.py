"""Report of a testbed run: a markdown summary of every check and one PNG (gaming p99, simulator vs testbed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _verdict(res: dict[str, Any]) -> str:
    return "PASSED" if res.get("passed", False) else "FAILED"


def _rates(r: dict[str, Any]) -> list[str]:
    rows = ["| class | configured Mbit/s | measured (wire) Mbit/s | error |", "|---|---|---|---|"]
    for k, want in r["configured_mbps"].items():
        rows.append(f"| {k} | {_f(want)} | {_f(r['measured_wire_mbps'][k])} | {100 * r['relative_error'][k]:+.1f}% |")
    return rows


def _dscp(r: dict[str, Any]) -> list[str]:
    rows = ["| dst port | expected DSCP | captured (DSCP: packets) | marked |", "|---|---|---|---|"]
    for port, d in r["expected_dscp"].items():
        cap = ", ".join(f"{k}: {v}" for k, v in r["captured"].get(port, {}).items())
        rows.append(f"| {port} | {d} | {cap} | {100 * r['fraction_marked'][port]:.1f}% |")
    return rows


def _controller(r: dict[str, Any]) -> list[str]:
    p = r["gaming_p99_rtt_ms"]
    b = r["bulk"]
    return [
        f"- gaming p99 RTT: {_f(p['no_shaping'])} ms without shaping, {_f(p['controlled'])} ms with the "
        f"controller: **{_f(r['p99_ratio'], 1)}x** lower (target >= 5x)",
        f"- bulk: {_f(b['bulk_wire_mbps'])} Mbit/s on the wire of the {_f(b['left_mbps'])} Mbit/s the other "
        f"classes leave: **{100 * b['share']:.1f}%** (target >= 80%); without shaping "
        f"{_f(r['bulk_no_shaping_wire_mbps'])} Mbit/s",
        f"- control steps: {r['loop_steps']}, adaptive {100 * r['adaptive_fraction']:.0f}%, guard changes: "
        f"{r['guard_changes'] or 'none'}",
    ]


def _fallback(r: dict[str, Any]) -> list[str]:
    return [
        f"- policy {r['how']} -> static rules in the kernel after {_f(r['fallback_latency_s'], 3)} s "
        f"(interval {r['interval_s']} s, deadline {_f(r['deadline_s'], 3)} s); the first step after the failure "
        f"applied them ({r['steps_until_fallback']} step), {_f(r['latency_within_step_s'], 3)} s into that step",
        f"- root rate read back from the kernel: {_f(r['root_mbps_in_kernel_after'])} Mbit/s "
        f"(static rules: {_f(r['fallback_root_mbps'])}); reason: {r['reason']}",
    ]


def _paths(xs: list[Any] | None, digits: int = 2) -> str:
    return "-" if xs is None else " / ".join(_f(float(x), digits) for x in xs)


def _failover(r: dict[str, Any]) -> list[str]:
    s, sim = r["summary"], r.get("sim_summary", {})
    seen, moved = _f(s.get("seen_after_s"), 3), _f(s.get("rerouted_after_s"), 3)
    lines = [
        f"- policy {r['policy']}, interval {r['interval_s']} s: path 0 down at step {r['fail_step']}, back at "
        f"step {r['recover_step']}",
        f"- testbed: failure seen (probe loss > 0.5) at step {_f(s['detected_step'])} (loss "
        f"{_f(s['loss_at_fail_step'])} at step {r['fail_step']}; {seen} s after the failure, rerouting plan "
        f"applied {moved} s after it), every class on path 1 from step {_f(s['rerouted_step'])}, path 0 seen "
        f"back (loss < 0.1) at step {_f(s.get('recovered_step'))}, classes back from step "
        f"{_f(s.get('returned_step'))}; gaming updates echoed after the reroute: at least "
        f"{_f(s['gaming_echoed_after_reroute_min'])}; false detections: {s['false_detections'] or 'none'}",
    ]
    if sim:
        lines.append(f"- simulator, same event and policy: seen at step {_f(sim['detected_step'])}, rerouted from "
                     f"{_f(sim['rerouted_step'])}, seen back at {_f(sim.get('recovered_step'))}, classes back from "
                     f"{_f(sim.get('returned_step'))}")  # fmt: skip
    changes = "; ".join(f"step {c['step']}: {', '.join(c['ops'])} ({1e3 * c['apply_s']:.1f} ms)"
                        for c in r["path_changes"])  # fmt: skip
    lines += [f"- path changes: {changes}", ""]
    lines += ["| step | t (s) | paths | class paths | probe loss p0 / p1 | probe delay ms p0 / p1 | source | "
              "gaming echoed | mode | sim loss p0 / p1 | sim class paths |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    sim_rows = {x["step"]: x for x in r.get("sim_intervals", [])}
    for row in r["intervals"]:
        sr = sim_rows.get(row["step"], {})
        lines.append(
            f"| {row['step']} | {_f(row['t_s'])} | {' / '.join(row['path_state'])} | "
            f"{''.join(str(p) for p in row['class_path'])} | {_paths(row['probe_loss'])} | "
            f"{_paths(row['probe_delay_ms'], 1)} | {' / '.join(row['path_source'] or [])} | "
            f"{_f(row['gaming_echoed'])} | {row['mode']} | {_paths(sr.get('probe_loss'))} | "
            f"{''.join(str(p) for p in sr.get('class_path', [])) or '-'} |"
        )
    return lines


def _sim(r: dict[str, Any]) -> list[str]:
    rows = ["| case | class | metric | simulator | testbed | gap | relative |", "|---|---|---|---|---|---|---|"]
    for case, classes in r.items():
        if not isinstance(classes, dict) or case == "wall_s":
            continue
        for cls, metrics in classes.items():
            for m, row in metrics.items():
                if row["testbed"] is None:
                    continue
                rel = "-" if row["rel_gap"] is None else f"{100 * row['rel_gap']:+.0f}%"
                rows.append(f"| {case} | {cls} | {m} | {_f(row['sim'], 3)} | {_f(row['testbed'], 3)} | "
                            f"{_f(row['abs_gap'], 3)} | {rel} |")  # fmt: skip
    return rows


def markdown_report(results: dict[str, Any]) -> str:
    """The run as markdown: settings, then one section per check with its numbers and verdict."""
    lines = ["# FedShape testbed", ""]
    s = results.get("settings", {})
    lines.append(f"Bottleneck {s.get('capacity_mbps')} Mbit/s with a {s.get('buffer_ms')} ms buffer, runs of "
                 f"{s.get('duration_s')} s (first {s.get('warmup_s')} s left out), control interval "
                 f"{s.get('interval_s')} s; total {results.get('wall_s')} s.")  # fmt: skip
    lines.append("")
    render = {"rates": _rates, "dscp": _dscp, "controller": _controller, "fallback_kill": _fallback,
              "fallback_stall": _fallback, "failover": _failover, "sim": _sim}  # fmt: skip
    for name, res in results.get("checks", {}).items():
        head = f"## {name}" + ("" if name == "sim" else f": {_verdict(res)}")
        lines += [head, ""]
        if name in render:
            lines += render[name](res)
        else:
            lines += [f"- {k}: {_f(v, 4)}" for k, v in res.items() if k != "passed"]
        lines.append("")
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Gaming p99 RTT with and without the controller, and simulator vs testbed per class and case."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    checks = results.get("checks", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ctl = checks.get("controller")
    if ctl:
        p = ctl["gaming_p99_rtt_ms"]
        axes[0].bar(["no shaping", "controller"], [p["no_shaping"], p["controlled"]], color=["tab:red", "tab:green"])
        axes[0].set_ylabel("gaming p99 RTT (ms)")
        axes[0].set_yscale("log")
        axes[0].set_title(f"gaming p99 RTT: {ctl['p99_ratio']:.1f}x lower")
    sim = checks.get("sim")
    if sim:
        labels, sims, reals = [], [], []
        for case in ("no_shaping", "shaped"):
            for cls, metric in (("gaming", "owd_p99_ms"), ("bulk", "throughput_mbps")):
                row = sim.get(case, {}).get(cls, {}).get(metric)
                if row and row["testbed"] is not None:
                    labels.append(f"{case}\n{cls} {metric.split('_')[0]}")
                    sims.append(row["sim"])
                    reals.append(row["testbed"])
        x = range(len(labels))
        axes[1].bar([i - 0.2 for i in x], sims, 0.4, label="simulator")
        axes[1].bar([i + 0.2 for i in x], reals, 0.4, label="testbed")
        axes[1].set_xticks(list(x), labels, fontsize=7)
        axes[1].set_title("simulator vs testbed (p99 one-way ms, throughput Mbit/s)")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
