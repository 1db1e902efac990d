"""The benchmark's report: a plain-words verdict, markdown tables and PNG plots (matplotlib, Agg) of results.json.

Every function reads the results document (settings, scenarios, summary; see experiments.benchmark), so a
report can be redrawn from a results.json alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments.report import pct, table
from experiments.yardstick import GROUPS, scenario_groups

Doc = dict[str, Any]

#: How groups read in sentences and headers.
GROUP_WORDS = {
    "all": "all",
    "events": "with events",
    "disruptions": "with disruptions",
    "failure": "failure",
    "degradation": "degradation",
    "flash_crowd": "flash-crowd",
    "diurnal": "diurnal",
    "arrival": "arrival",
    "departure": "departure",
}


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def evaluated(doc: Doc) -> list[str]:
    """Every evaluated reference: the policies, then the yardstick's members not among them."""
    s = doc["settings"]
    return list(dict.fromkeys([*s["policies"], *s["yardstick"]]))


def _groups(doc: Doc) -> list[str]:
    """The groups present in the summary (every policy's summary holds the same ones)."""
    present: set[str] = set()
    for p in doc["summary"].values():
        present.update(p["vs_yardstick"])
    return [g for g in GROUPS if g in present]


def _outcome(c: dict[str, Any]) -> str:
    return f"{c['won']}/{c['tied']}/{c['lost']}"


def _against(ref: str, c: dict[str, Any], what: str) -> str:
    """One sentence: a policy against `what` (its best member on each scenario), over all scenarios; it beats
    it when the geometric-mean ratio is below 1."""
    if not c["scenarios"]:
        return f"`{ref}` has no scenario to compare with {what} on."
    verb = "beats" if c["geomean_ratio"] < 1.0 else "does not beat"
    return (
        f"`{ref}` {verb} {what}: geometric-mean ratio {c['geomean_ratio']:.2f} over {c['scenarios']} "
        f"scenarios, fewer violations on {c['won']} of them ({c['tied']} tied, {c['lost']} lost), worst "
        f"{c['worst_ratio']:.2f} on {c['worst_scenario']}; utilization {c['utilization_ratio']:.2f}x the "
        f"reference's."
    )


def _by_group(c_by_group: dict[str, Any]) -> str:
    parts = [
        f"{GROUP_WORDS[g]} {c['won']} of {c['scenarios']} (ratio {c['geomean_ratio']:.2f})"
        for g, c in c_by_group.items()
        if g not in ("all", "events", "disruptions") and c["scenarios"]
    ]
    return f" Won per kind of event: {'; '.join(parts)}." if parts else ""


def verdict(doc: Doc) -> list[str]:
    """The report's opening: one paragraph per evaluated policy and per adaptive yardstick member, and which
    member of the yardstick is best how often."""
    s, summary = doc["settings"], doc["summary"]
    static = set(s["static"])
    out: list[str] = []
    for ref in s["policies"]:
        p = summary[ref]
        line = _against(ref, p["vs_yardstick"]["all"], "the yardstick") + _by_group(p["vs_yardstick"])
        st = p["vs_static"]["all"]
        if st["scenarios"]:
            line += (f" Against the best static plan alone: ratio {st['geomean_ratio']:.2f}, fewer violations on "
                     f"{st['won']} of {st['scenarios']} scenarios.")  # fmt: skip
        if p["applicable"] < p["scenarios"]:
            line += f" Not applicable on {p['scenarios'] - p['applicable']} of {p['scenarios']} scenarios."
        out += [line, ""]
    for ref in [r for r in s["yardstick"] if r not in static and r not in s["policies"]]:
        p = summary[ref]
        out += [_against(ref, p["vs_static"]["all"], "the best static plan") + _by_group(p["vs_static"]), ""]
    counts: dict[str, int] = {}
    for sc in doc["scenarios"].values():
        if sc.get("best_yardstick"):
            counts[sc["best_yardstick"]] = counts.get(sc["best_yardstick"], 0) + 1
    ranked = ", ".join(f"`{r}` on {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    out += [f"The best yardstick member per scenario: {ranked} (of {len(doc['scenarios'])} scenarios).", ""]
    return out


def sanity_lines(doc: Doc) -> list[str]:
    """The yardstick's own checks in words (results.json's ``sanity``): the adaptive member against the best
    static baseline where a path fails, and the tuned constant plan against every baseline on its scenario."""
    sanity = doc.get("sanity", {})
    out: list[str] = []
    for a in sanity.get("adaptive", []):
        c = a["comparison"]
        if not c["scenarios"]:
            out.append(f"- `{a['policy']}`: no scenario with a {GROUP_WORDS[a['group']]} to check it on.")
            continue
        verb = "beats" if a["holds"] else "does not beat"
        out.append(
            f"- `{a['policy']}` {verb} the best static baseline on the {c['scenarios']} scenarios with a "
            f"{GROUP_WORDS[a['group']]}: geometric-mean ratio {c['geomean_ratio']:.2f}, fewer violations on "
            f"{c['won']} ({c['tied']} tied, {c['lost']} lost), worst {c['worst_ratio']:.2f} on {c['worst_scenario']}."
        )
    for t in sanity.get("tuned", []):
        if not t["scenarios"]:
            continue
        line = (f"- `{t['policy']}` has at most the best static baseline's violations on {t['at_least_as_good']} of "
                f"{t['scenarios']} scenarios (tuned on training seeds, measured here on held-out ones)")  # fmt: skip
        if t["exceptions"]:
            worse = "; ".join(
                f"{e['scenario']} {pct(e[t['policy']])} against `{e['best_baseline']}` {pct(e['baseline_rate'])}"
                for e in t["exceptions"]
            )
            line += f"; more on: {worse}"
        out.append(line + ".")
    return ["## Is the yardstick sound?", "", *out, ""] if out else []


def _role(doc: Doc, ref: str) -> str:
    s = doc["settings"]
    if ref in s["static"]:
        return "yardstick, static"
    return "yardstick" if ref in s["yardstick"] else "policy"


def summarytable(doc: Doc) -> list[str]:
    """Per evaluated policy: ratios to the best yardstick member and to the best static one, outcomes, utilization."""
    rows = []
    for ref in evaluated(doc):
        p = doc["summary"][ref]
        y, st = p["vs_yardstick"]["all"], p["vs_static"]["all"]
        ev = p["vs_yardstick"].get("disruptions", {"geomean_ratio": None})
        worst = "-" if y["worst_ratio"] is None else f"{y['worst_ratio']:.2f} ({y['worst_scenario']})"
        nbr = "-" if y["neighbour_sla_violation_rate"] is None else (
            f"{pct(y['neighbour_sla_violation_rate'])} / {pct(y['reference_neighbour_sla_violation_rate'])}"
        )
        rows.append([
            f"`{ref}`", _role(doc, ref), f"{p['applicable']}/{p['scenarios']}", _num(y["geomean_ratio"]), worst,
            _outcome(y), _num(y["utilization_ratio"]), nbr, _num(st["geomean_ratio"]), _outcome(st),
            _num(ev["geomean_ratio"]),
        ])  # fmt: skip
    header = [
        "policy", "role", "applicable", "ratio to yardstick", "worst (scenario)", "won/tied/lost", "utilization ratio",
        "neighbour SLA viol. (own / ref.)", "ratio to best static", "won/tied/lost (static)", "ratio, disruptions",
    ]  # fmt: skip
    return table(header, rows)


def grouptable(doc: Doc) -> list[str]:
    """Per evaluated policy and group of scenarios: ratio to the best yardstick member and won/tied/lost."""
    groups = _groups(doc)
    counts = {g: sum(1 for sc in doc["scenarios"].values() if g in scenario_groups(sc["events"])) for g in groups}
    header = ["policy", *(f"{GROUP_WORDS[g]} ({counts[g]})" for g in groups)]
    rows = []
    for ref in evaluated(doc):
        cs = doc["summary"][ref]["vs_yardstick"]
        rows.append([f"`{ref}`", *(f"{_num(cs[g]['geomean_ratio'])} ({_outcome(cs[g])})" for g in groups)])
    return table(header, rows)


def scenario_tables(doc: Doc) -> list[str]:
    """Per family, one row per scenario: every policy's SLA violation rate and utilization; the best yardstick
    member in bold."""
    refs = evaluated(doc)
    families: dict[str, list[dict[str, Any]]] = {}
    for sc in doc["scenarios"].values():
        families.setdefault(sc["family"], []).append(sc)
    out: list[str] = []
    for family, scs in families.items():
        rows = []
        for sc in scs:
            cells = []
            for ref in refs:
                r = sc["results"].get(ref, {})
                cell = f"{pct(r['sla_violation_rate'])} · {pct(r['utilization'])}" if r.get("applicable") else "n/a"
                cells.append(f"**{cell}**" if ref == sc.get("best_yardstick") else cell)
            events = ", ".join(sc["events"]) or "none"
            rows.append([sc["name"], events, ", ".join(sc["controlled"]), *cells])
        out += [f"### {family}", ""]
        out += table(["scenario", "events", "controlled", *(f"`{r}`" for r in refs)], rows)
        out.append("")
    return out


def markdown_report(doc: Doc) -> str:
    """results.md: the verdict, then the summary, per-group and per-scenario tables."""
    s = doc["settings"]
    steps = "each scenario's own" if s["steps"] is None else str(s["steps"])
    lines = [
        f"# Benchmark on {s['suite'] or 'the listed scenarios'}: {len(doc['scenarios'])} scenarios",
        "",
        *verdict(doc),
        f"{s['seeds']} seeds (the same for every policy, base seed {s['seed']}) x {steps} steps; every policy "
        "drives each scenario's controlled tenants, the other tenants run their scenario policies. Yardstick: "
        f"{', '.join(f'`{r}`' for r in s['yardstick'])}; static members: {', '.join(f'`{r}`' for r in s['static'])}.",
        "",
        *sanity_lines(doc),
        "## Summary",
        "",
        *summarytable(doc),
        "",
        f"Ratio: per scenario (v + {s['floor']:g}) / (best + {s['floor']:g}) of SLA violation rates v, best being "
        "the yardstick member (other than the policy) with the fewest violations there; the geometric mean over "
        "scenarios. Below 1: fewer violations than the yardstick. Won: strictly fewer violations than the best "
        f"member (by more than {s['tie_tolerance']:g}). Utilization ratio: geometric mean of the policy's "
        "utilization over the best member's. Neighbour SLA violations: mean over scenarios, the policy's rows "
        "and the best members' rows.",
        "",
        "## By kind of event",
        "",
        "Ratio to the best yardstick member (won/tied/lost), over the scenarios holding each kind of scheduled "
        "change (number of scenarios in parentheses); 'with events': a failure, degradation, flash crowd or "
        "diurnal curve; 'with disruptions': a failure, degradation or flash crowd.",
        "",
        *grouptable(doc),
        "",
        "## Per scenario",
        "",
        "SLA violation rate of the controlled tenants · utilization of all paths; the best yardstick member in "
        "bold; n/a: the policy cannot control the scenario's controlled tenants.",
        "",
        *scenario_tables(doc),
    ]
    return "\n".join(lines) + "\n"


def _log_ratio_axis(ax: Any, label: str) -> None:
    """A log y axis for ratios, labelled in plain numbers (0.5, 2, 10), with the line at 1."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel(label)
    ax.grid(axis="y", which="both", alpha=0.3)


def _save(fig: Any, path: Path, top: float = 1.0) -> None:
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ratios(doc: Doc, path: Path) -> None:
    """Per evaluated policy, bars of its ratio to the best yardstick member on each scenario (log scale)."""
    refs, names = evaluated(doc), list(doc["scenarios"])
    families = list(dict.fromkeys(sc["family"] for sc in doc["scenarios"].values()))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = [colors[families.index(doc["scenarios"][n]["family"]) % len(colors)] for n in names]
    fig, axes = plt.subplots(len(refs), 1, figsize=(max(8.0, 0.2 * len(names) + 3.0), 1.9 * len(refs) + 1.2),
                             sharex=True, squeeze=False)  # fmt: skip
    x = np.arange(len(names))
    for ax, ref in zip(axes[:, 0], refs, strict=True):
        ratios = [doc["scenarios"][n]["results"].get(ref, {}).get("ratio") for n in names]
        y = np.array([np.nan if r is None else r for r in ratios])
        ax.bar(x, y - 1.0, bottom=1.0, color=color)  # from 1 up (more violations) or down (fewer)
        _log_ratio_axis(ax, "ratio")
        gm = doc["summary"][ref]["vs_yardstick"]["all"]["geomean_ratio"]
        ax.set_title(f"{ref}: geometric mean {_num(gm)}", fontsize="small", loc="left")
    axes[-1, 0].set_xticks(x, names, rotation=90, fontsize="x-small")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i % len(colors)]) for i in range(len(families))]
    top = 1.0 - 0.75 / fig.get_figheight()  # room for the title and the legend of families, in inches
    fig.legend(handles, families, fontsize="x-small", ncols=min(4, len(families)), loc="upper center",
               bbox_to_anchor=(0.5, 1.0 - 0.35 / fig.get_figheight()))  # fmt: skip
    fig.suptitle(f"SLA violations relative to the best yardstick member (floor {doc['settings']['floor']:g}; "
                 "below 1: fewer)", y=1.0 - 0.05 / fig.get_figheight(), va="top")  # fmt: skip
    _save(fig, path, top)


def plot_sla_utilization(doc: Doc, path: Path) -> None:
    """SLA violation rate against utilization, one point per (scenario, policy), a colour per policy."""
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for ref in evaluated(doc):
        rows = [sc["results"].get(ref, {}) for sc in doc["scenarios"].values()]
        rows = [r for r in rows if r.get("applicable")]
        ax.scatter([100 * r["utilization"] for r in rows], [100 * r["sla_violation_rate"] for r in rows],
                   label=ref, s=18, alpha=0.7)  # fmt: skip
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("utilization of all paths, %")
    ax.set_ylabel("SLA violation rate of the controlled tenants, %")
    ax.set_title("SLA violations against utilization, one point per scenario")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_groups(doc: Doc, path: Path) -> None:
    """Per group of scenarios, grouped bars of each policy's geometric-mean ratio to the best yardstick member."""
    refs, groups = evaluated(doc), _groups(doc)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(groups) + 2.0), 4.5))
    width = 0.8 / max(1, len(refs))
    x = np.arange(len(groups))
    for i, ref in enumerate(refs):
        cs = doc["summary"][ref]["vs_yardstick"]
        y = np.array([np.nan if cs[g]["geomean_ratio"] is None else cs[g]["geomean_ratio"] for g in groups])
        ax.bar(x - 0.4 + width * (i + 0.5), y - 1.0, width, bottom=1.0, label=ref)
    counts = [sum(1 for sc in doc["scenarios"].values() if g in scenario_groups(sc["events"])) for g in groups]
    ax.set_xticks(x, [f"{GROUP_WORDS[g]} ({n})" for g, n in zip(groups, counts, strict=True)])
    _log_ratio_axis(ax, "geometric-mean ratio")
    ax.set_xlabel("scenarios with each kind of event (how many)")
    ax.set_title("SLA violations relative to the best yardstick member, per kind of event (below 1: fewer)")
    ax.legend(fontsize="small", ncols=min(len(refs), 4))
    _save(fig, path)


def write_plots(doc: Doc, out_dir: Path) -> Sequence[Path]:
    """Write ratios.png, sla_utilization.png and event_groups.png; return their paths."""
    paths = [out_dir / "ratios.png", out_dir / "sla_utilization.png", out_dir / "event_groups.png"]
    plot_ratios(doc, paths[0])
    plot_sla_utilization(doc, paths[1])
    plot_groups(doc, paths[2])
    return paths
