"""Report of a federated run: the verdict, per-round reward and SLA violations of each arm, epsilon, targets.

results.md opens with the verdict in words (verdict): does the federated policy beat the best static
baseline on the final round's SLA violation rate, overall and per tenant, by what ratio, at what privacy
cost. figures() builds the plots as matplotlib Figures (titled, every policy named in its own colour,
integer rounds); write_plots() saves them as PNG.

An arm is a list of rounds, each ``{"round": r, "eval": {tenant: {"reward", "sla_violation_rate"}}}``
(the federated arm's rounds also carry ``epsilon`` and timings, and with DP-SGD each tenant's
``dpsgd_epsilon`` in their ``fit`` records). Rewards can be negative, so the
relative targets are stated on the reward axis: "a >= 95% of b" is ``a >= b - 0.05 |b|`` and
"a is 20% better than b" is ``a >= b + 0.2 |b|``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.figure import Figure  # built without pyplot: no display, no global figure state
from matplotlib.ticker import MaxNLocator, PercentFormatter
from experiments.yardstick import best_member

Arm = list[dict[str, Any]]


def arm_means(arm: Arm, tenants: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Per round: mean reward and SLA violation rate over the tenants (all, or the named ones)."""
    out = []
    for rec in arm:
        ev = {k: v for k, v in rec.get("eval", {}).items() if tenants is None or k in tenants}
        if not ev:
            continue
        n = len(ev)
        out.append({"round": rec["round"], "reward": sum(float(v["reward"]) for v in ev.values()) / n,
                    "sla_violation_rate": sum(float(v["sla_violation_rate"]) for v in ev.values()) / n})  # fmt: skip
    return out


def dpsgd_epsilon(round_record: dict[str, Any]) -> float | None:
    """The largest sample-level (DP-SGD) epsilon any tenant reported in a round; None without DP-SGD.

    Each tenant runs its own accountant, so the federation's sample-level guarantee is the weakest
    tenant's (they differ when tenants take different numbers of local steps).
    """
    eps = [float(f["dpsgd_epsilon"]) for f in round_record.get("fit", []) if f.get("dpsgd_epsilon") is not None]
    return max(eps) if eps else None


def at_least_fraction(a: float, b: float, fraction: float) -> bool:
    """a >= fraction of b on a reward axis that may be negative: a >= b - (1 - fraction) |b|."""
    return a >= b - (1.0 - fraction) * abs(b)


def best_baseline(baselines: dict[str, dict[str, dict[str, float]]], tenant: str | None = None) -> str:
    """The static baseline with the fewest SLA violations: on average over the tenants, or for one tenant."""
    if tenant is None:
        return min(baselines, key=lambda b: _mean(baselines[b], "sla_violation_rate"))
    return min(baselines, key=lambda b: baselines[b][tenant]["sla_violation_rate"])


def target_epsilon(settings: dict[str, Any]) -> float | None:
    """The run's privacy budget (privacy.target_epsilon of the flat run config); None: no budget."""
    value = settings.get("privacy.target_epsilon")
    if isinstance(value, str):
        value = json.loads(value)
    return None if value is None else float(value)


def targets(results: dict[str, Any], small: Sequence[str]) -> dict[str, Any]:
    """The federation's targets (conf/experiment/federated_targets.yaml) on the final round (None: not measured)."""
    fed = arm_means(results["federated"])
    cen = arm_means(results.get("centralized", []))
    loc_small = arm_means(results.get("local_only", []), small)
    fed_small = arm_means(results["federated"], small)
    out: dict[str, Any] = {"final_round": fed[-1]["round"] if fed else None}
    if fed and cen:
        f, c = fed[-1]["reward"], cen[-1]["reward"]
        out["federated_vs_centralized"] = {"federated": f, "centralized": c, "met_95pct": at_least_fraction(f, c, 0.95)}
    if fed_small and loc_small:
        f, loc = fed_small[-1]["reward"], loc_small[-1]["reward"]
        out["small_tenants_vs_local"] = {"tenants": list(small), "federated": f, "local_only": loc,
                                         "met_20pct_better": f >= loc + 0.2 * abs(loc)}  # fmt: skip
    base = results.get("baselines", {})
    if fed and base:
        best = best_baseline(base)
        b_sla = _mean(base[best], "sla_violation_rate")
        last = results["federated"][-1]
        f_sla = fed[-1]["sla_violation_rate"]
        out["sla_vs_best_baseline"] = {"baseline": best, "baseline_sla": b_sla, "federated_sla": f_sla,
                                       "beats": f_sla < b_sla, "epsilon": last.get("epsilon"),
                                       "dpsgd_epsilon": dpsgd_epsilon(last)}  # fmt: skip
    return out


def _mean(per_tenant: dict[str, dict[str, float]], key: str) -> float:
    return sum(v[key] for v in per_tenant.values()) / len(per_tenant)


def _f(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def privacy_cost(results: dict[str, Any]) -> str:
    """The privacy the federated policy spent, in words: its epsilons at the final round, or "no DP"."""
    settings = results["settings"]
    last = results["federated"][-1] if results["federated"] else {}
    spent = []
    if last.get("epsilon") is not None:
        spent.append(f"client-level epsilon {last['epsilon']:.2f}")
    if (sample := dpsgd_epsilon(last)) is not None:
        spent.append(f"sample-level epsilon {sample:.2f} (DP-SGD, largest tenant)")
    if not spent:
        if settings.get("privacy.mode") == "clip":
            return "no DP (updates are clipped, without noise: no privacy guarantee)"
        return "no DP"
    budget = target_epsilon(settings)
    of = f" of a budget of {budget:g}" if budget is not None else ""
    return f"{' and '.join(spent)} spent{of}, at delta {settings.get('privacy.delta')}"


def _compare(fed: float, base: float, baseline: str) -> tuple[str, str]:
    """("beats" / "ties with" / "does not beat", both SLA violation rates and their ratio in words)."""
    rates = f"{_f(fed, True)} SLA violations against {baseline}'s {_f(base, True)}"
    if base > 0:
        rates += f" ({fed / base:.2f} times as many)"
    elif fed > 0:
        rates += " (the baseline has none)"
    verb = "beats" if fed < base else ("ties with" if fed == base else "does not beat")
    return verb, rates


def verdict(results: dict[str, Any]) -> list[str]:
    """Whether the federated policy beats the best static baseline, in words: overall (the mean over the
    tenants, against the baseline best on that mean) and per tenant (against that tenant's best baseline),
    on the final round's SLA violation rate (lower is better), with the privacy it spent. Markdown lines."""
    base = results.get("baselines") or {}
    fed_rounds = results["federated"]
    if not fed_rounds or not fed_rounds[-1].get("eval"):
        return ["No verdict: the federated run evaluated no round."]
    if not base:
        return ["No verdict: the run evaluated no static baseline."]
    final = fed_rounds[-1]
    ev = final["eval"]
    best = best_baseline(base)
    verb, rates = _compare(_mean(ev, "sla_violation_rate"), _mean(base[best], "sla_violation_rate"), best)
    stopped = " (stopped at the privacy budget)" if results["status"] == "stopped_at_privacy_budget" else ""
    lines = [f"**Overall**, after round {final['round']}{stopped}, the federated policy **{verb}** the best static "
             f"baseline, {best}: on average over the {len(ev)} tenants, {rates}. "
             f"Privacy cost: {privacy_cost(results)}.", "",
             "Per tenant, against its own best static baseline:", ""]  # fmt: skip
    for tenant, score in ev.items():
        if not all(tenant in per for per in base.values()):
            lines.append(f"- {tenant}: no verdict (not every baseline was evaluated on it).")
            continue
        own = best_baseline(base, tenant)
        verb, rates = _compare(score["sla_violation_rate"], base[own][tenant]["sla_violation_rate"], own)
        lines.append(f"- {tenant}: **{verb}** {own}: {rates}.")
    return lines


def yardstick_verdict(results: dict[str, Any]) -> list[str]:
    """Whether the final global model beats the best yardstick member on each listed tenant's own scenario, in
    words (experiments.fl_yardstick's rows; the SLA violation rate of the tenant, lower is better), with the
    initial model's rate and the privacy the run spent. Markdown lines; [] when the run has no comparison."""
    yard = results.get("yardstick")
    if not yard:
        return []
    members, recs = yard["members"], yard["tenants"]
    steps = "each scenario's steps" if yard["steps"] is None else f"{yard['steps']} steps"
    lines, won = [], 0
    for tenant, rec in recs.items():
        rows = rec["results"]
        fed = rows.get("federated", {})
        best = best_member(rows, members)
        if not fed.get("applicable") or best is None:
            lines.append(f"- {tenant}: no verdict ({fed.get('reason') or 'no yardstick member ran'}).")
            continue
        verb, rates = _compare(fed["sla_violation_rate"], rows[best]["sla_violation_rate"], best)
        won += verb == "beats"
        init = rows.get("initial", {})
        start = (
            f"; the model it started from had {_f(init['sla_violation_rate'], True)}" if init.get("applicable") else ""
        )
        lines.append(f"- {tenant}: **{verb}** {best}: {rates}{start}.")
    skipped = sorted({m for rec in recs.values() for m, r in rec["results"].items()
                      if m in members and not r.get("applicable")})  # fmt: skip
    head = (f"The final global model **beats the yardstick on {won} of {len(recs)} tenants**. Each tenant alone is "
            f"driven by each policy on its own scenario ({yard['seeds']} seeds x {steps}, seed {yard['seed']}, "
            f"neighbours on their scenario policies), against the best of {', '.join(members)}. "
            f"Privacy cost: {privacy_cost(results)}.")  # fmt: skip
    tail = ["", f"Not run on every tenant: {', '.join(skipped)} (see results.json, `yardstick`)."] if skipped else []
    return [head, "", *lines, *tail]


def markdown(results: dict[str, Any]) -> str:
    """The report as markdown: the verdict, per-round means of each arm, epsilon, per-tenant final round,
    baselines, targets."""
    arms = {k: arm_means(results[k]) for k in ("federated", "local_only", "centralized") if results.get(k)}
    settings = results["settings"]
    sample_dp = bool(settings.get("privacy.dpsgd_noise_multiplier"))
    dpsgd = f" + DP-SGD (z {settings.get('privacy.dpsgd_noise_multiplier')})" if sample_dp else ""
    lines = [f"# Federated run ({settings.get('fl.strategy')}, privacy {settings.get('privacy.mode')}{dpsgd}, "
             f"status {results['status']})", "",
             *(["## Verdict: the federated policy against the yardstick (each tenant on its own scenario)", "",
                *yard, ""] if (yard := yardstick_verdict(results)) else []),
             "## Verdict: federated policy against the best static baseline (SLA violations, final round)", "",
             *verdict(results), "",
             "## Mean over tenants per round (reward / SLA violation rate)", ""]  # fmt: skip
    header = ["round", *[f"{a} reward" for a in arms], *[f"{a} SLA viol." for a in arms], "epsilon",
              *(["sample-level epsilon (DP-SGD, largest tenant)"] if sample_dp else []), "round s"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    eps = {r["round"]: r for r in results["federated"]}
    for i, rec in enumerate(arms.get("federated", [])):
        row = [str(rec["round"])]
        row += [_f(arms[a][i]["reward"]) if i < len(arms[a]) else "-" for a in arms]
        row += [_f(arms[a][i]["sla_violation_rate"], True) if i < len(arms[a]) else "-" for a in arms]
        fr = eps.get(rec["round"], {})
        row += [_f(fr.get("epsilon")), *([_f(dpsgd_epsilon(fr))] if sample_dp else []), _f(fr.get("round_s"))]
        lines.append("| " + " | ".join(row) + " |")
    init = results.get("initial")
    if init:
        start = results["settings"].get("init.weights") or "the seeded random initialization"
        lines += ["", f"Every arm starts from {start}: mean reward {_f(_mean(init, 'reward'))}, SLA violations "
                      f"{_f(_mean(init, 'sla_violation_rate'), True)} before round 1."]  # fmt: skip
    lines += ["", "## Final round per tenant (reward / SLA violation rate)", ""]
    tenants = list(results["federated"][-1]["eval"]) if results["federated"] else []
    fixed = {**({"initial": results["initial"]} if results.get("initial") else {}), **results.get("baselines", {})}
    cols = [*arms, *fixed]
    lines += ["| tenant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for t in tenants:
        cells = []
        for c in cols:
            v = (results[c][-1]["eval"].get(t) if c in arms else fixed[c].get(t)) or {}
            cells.append(f"{_f(v.get('reward'))} / {_f(v.get('sla_violation_rate'), True)}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (final round)", "", "```json", json.dumps(results.get("targets", {}), indent=1)]
    lines += ["```", ""]
    return "\n".join(lines)


ARMS = ("federated", "local_only", "centralized")
#: Line styles of the static baselines, so that baselines with the same value still show as several lines.
BASELINE_STYLES = ("--", "-.", (0, (1, 1)), (0, (5, 2, 1, 2, 1, 2)), (0, (8, 2)))


def _axes(fig: Figure, title: str, ylabel: str) -> Axes:
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def metric_figure(results: dict[str, Any], key: str) -> Figure:
    """Mean `key` ("reward" or "sla_violation_rate") over the tenants per round: each arm a line, each static
    baseline and the initial model a horizontal line, every one in its own colour and named (with its value)
    in the legend."""
    settings = results["settings"]
    n = len(results["federated"][-1]["eval"]) if results["federated"] else 0
    sla = key == "sla_violation_rate"
    what, better = ("SLA violation rate", "lower") if sla else ("reward", "higher")
    fig = Figure(figsize=(8, 4))
    ax = _axes(fig, f"Mean {what} over {n} tenants per round ({better} is better)\n"
                    f"{settings.get('fl.strategy')}, privacy {settings.get('privacy.mode')}",
               "SLA violation rate" if sla else "mean reward")  # fmt: skip
    colours = itertools.cycle(matplotlib.color_sequences["tab10"])  # an arm keeps its colour in every plot
    for arm in ARMS:
        m = arm_means(results.get(arm) or [])
        colour = next(colours)
        if m:
            ax.plot([r["round"] for r in m], [r[key] for r in m], marker="o", color=colour, label=arm)
    for i, (name, per) in enumerate(results.get("baselines", {}).items()):
        value = _mean(per, key)
        ax.axhline(value, ls=BASELINE_STYLES[i % len(BASELINE_STYLES)], lw=1.5, color=next(colours),
                   label=f"{name} ({_f(value, sla)})")  # fmt: skip
    if results.get("initial"):
        value = _mean(results["initial"], key)
        ax.axhline(value, ls=":", lw=1.5, color="k", label=f"initial model ({_f(value, sla)})")
    if sla:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def epsilon_figure(results: dict[str, Any]) -> Figure | None:
    """Epsilon spent per round (client-level from the server's accountant, sample-level from the tenants'
    DP-SGD), with the target budget as a horizontal line; None when the run accounted no privacy."""
    client = [(r["round"], r["epsilon"]) for r in results["federated"] if r.get("epsilon") is not None]
    sample = [(r["round"], e) for r in results["federated"] if (e := dpsgd_epsilon(r)) is not None]
    if not client and not sample:
        return None
    settings = results["settings"]
    fig = Figure(figsize=(8, 4))
    ax = _axes(fig, f"Privacy spent per round (delta={settings.get('privacy.delta')})\n"
                    f"{settings.get('fl.strategy')}, privacy {settings.get('privacy.mode')}", "epsilon")  # fmt: skip
    curves = ((client, "client-level (server noise)"), (sample, "sample-level (DP-SGD, largest tenant)"))
    for points, label in curves:
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if (budget := target_epsilon(settings)) is not None:
        ax.axhline(budget, ls="--", color="tab:red", label=f"target epsilon ({budget:g})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def yardstick_figure(results: dict[str, Any]) -> Figure | None:
    """Per tenant, the SLA violation rate of the final global model, of the model it started from and of every
    yardstick member, as grouped bars (the best member outlined); None when the run has no comparison."""
    yard = results.get("yardstick")
    if not yard or not yard["tenants"]:
        return None
    rows = ["federated", "initial", *yard["members"]]
    tenants = list(yard["tenants"])
    fig = Figure(figsize=(max(8.0, 2.2 * len(tenants)), 4.5))
    ax = _axes(fig, "The final global model against the yardstick, each tenant on its own scenario\n"
                    "SLA violation rate (lower is better); outlined: the best yardstick member", "SLA violation rate")
    width = 0.8 / len(rows)
    colours = matplotlib.color_sequences["tab10"]
    for i, row in enumerate(rows):
        xs, ys, edges = [], [], []
        for t, tenant in enumerate(tenants):
            cell = yard["tenants"][tenant]["results"].get(row, {})
            if cell.get("applicable"):
                xs.append(t + (i - (len(rows) - 1) / 2) * width)
                ys.append(cell["sla_violation_rate"])
                edges.append("k" if row == best_member(yard["tenants"][tenant]["results"], yard["members"]) else "none")
        if xs:
            ax.bar(xs, ys, width, color=colours[i % len(colours)], edgecolor=edges, linewidth=1.5)
    ax.set_xticks(range(len(tenants)), tenants, fontsize=8)
    ax.set_xlabel("tenant")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    # Legend patches of their own: a bar's outline marks the best member on one tenant, not in the legend.
    handles = [Patch(facecolor=colours[i % len(colours)], label=row) for i, row in enumerate(rows)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def figures(results: dict[str, Any]) -> dict[str, Figure]:
    """file name -> figure: reward.png, sla.png; epsilon.png when the run accounted privacy; yardstick.png when
    it compared the final model with the yardstick."""
    out = {"reward.png": metric_figure(results, "reward"), "sla.png": metric_figure(results, "sla_violation_rate")}
    if (eps := epsilon_figure(results)) is not None:
        out["epsilon.png"] = eps
    if (yard := yardstick_figure(results)) is not None:
        out["yardstick.png"] = yard
    return out


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write figures(results) into out_dir as PNG; returns their paths."""
    paths = []
    for name, fig in figures(results).items():
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        paths.append(out_dir / name)
    return paths
