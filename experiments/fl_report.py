"""Report of a federated run: per-round reward and SLA violations of each arm, epsilon, targets (md, PNG, JSON).

An arm is a list of rounds, each ``{"round": r, "eval": {tenant: {"reward", "sla_violation_rate"}}}``
(the federated arm's rounds also carry ``epsilon`` and timings, and with DP-SGD each tenant's
``dpsgd_epsilon`` in their ``fit`` records). Rewards can be negative, so the
relative targets are stated on the reward axis: "a >= 95% of b" is ``a >= b - 0.05 |b|`` and
"a is 20% better than b" is ``a >= b + 0.2 |b|``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt

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


def targets(results: dict[str, Any], small: Sequence[str]) -> dict[str, Any]:
    """The federation's accuracy targets (conf/federated_targets.yaml) on the final round (None: not measured)."""
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
        best = min(base, key=lambda b: sum(v["sla_violation_rate"] for v in base[b].values()))
        b_sla = sum(v["sla_violation_rate"] for v in base[best].values()) / len(base[best])
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


def markdown(results: dict[str, Any]) -> str:
    """The report as markdown: per-round means of each arm, epsilon, per-tenant final round, baselines, targets."""
    arms = {k: arm_means(results[k]) for k in ("federated", "local_only", "centralized") if results.get(k)}
    settings = results["settings"]
    sample_dp = bool(settings.get("privacy.dpsgd_noise_multiplier"))
    dpsgd = f" + DP-SGD (z {settings.get('privacy.dpsgd_noise_multiplier')})" if sample_dp else ""
    lines = [f"# Federated run ({settings.get('fl.strategy')}, privacy {settings.get('privacy.mode')}{dpsgd}, "
             f"status {results['status']})", "",
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


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """reward.png, sla.png (per round, each arm, baselines as lines) and epsilon.png (when DP or DP-SGD is on)."""
    paths = []
    for key, fname, label in (("reward", "reward.png", "mean reward"),
                              ("sla_violation_rate", "sla.png", "SLA violation rate")):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm in ("federated", "local_only", "centralized"):
            m = arm_means(results.get(arm, []))
            if m:
                ax.plot([r["round"] for r in m], [r[key] for r in m], marker="o", label=arm)
        for name, per in results.get("baselines", {}).items():
            ax.axhline(_mean(per, key), ls="--", lw=1, label=name)
        if results.get("initial"):
            ax.axhline(_mean(results["initial"], key), ls=":", lw=1.5, color="k", label="initial model")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)
        paths.append(out_dir / fname)
    client = [(r["round"], r["epsilon"]) for r in results["federated"] if r.get("epsilon") is not None]
    sample = [(r["round"], e) for r in results["federated"] if (e := dpsgd_epsilon(r)) is not None]
    if client or sample:
        fig, ax = plt.subplots(figsize=(6, 4))
        curves = ((client, "client-level (server noise)"), (sample, "sample-level (DP-SGD, largest tenant)"))
        for points, label in curves:
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.legend(fontsize=7)
        ax.set_xlabel("round")
        ax.set_ylabel(f"epsilon (delta={results['settings'].get('privacy.delta')})")
        fig.tight_layout()
        fig.savefig(out_dir / "epsilon.png", dpi=100)
        plt.close(fig)
        paths.append(out_dir / "epsilon.png")
    return paths
