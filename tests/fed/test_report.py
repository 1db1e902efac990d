"""The federated run's report: the verdict in words, per-round means, the targets on a reward axis that may be
negative, the privacy columns (client-level epsilon from the server, sample-level epsilon from each tenant's
DP-SGD) and the plots."""

from __future__ import annotations

from typing import Any

import pytest
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator

from experiments.fl_report import (
    arm_means,
    at_least_fraction,
    dpsgd_epsilon,
    figures,
    markdown,
    privacy_cost,
    targets,
    verdict,
    write_plots,
)


def _round(r: int, rewards: dict[str, float], sla: dict[str, float], **extra: Any) -> dict[str, Any]:
    ev = {t: {"reward": rewards[t], "sla_violation_rate": sla[t]} for t in rewards}
    return {"round": r, "eval": ev, **extra}


def _score(reward: float, sla: float) -> dict[str, float]:
    return {"reward": reward, "sla_violation_rate": sla}


def _results(dpsgd: list[float] | None = None, epsilon: float | None = None) -> dict[str, Any]:
    fit: list[dict[str, Any]] = [{"tenant": t, "num_examples": 8} for t in ("big", "small")]
    if dpsgd:
        fit = [{**f, "dpsgd_epsilon": e} for f, e in zip(fit, dpsgd, strict=True)]
    return {
        "status": "completed",
        "settings": {
            "fl.strategy": "fedavg",
            "privacy.mode": "none",
            "privacy.delta": 1e-5,
            "privacy.dpsgd_noise_multiplier": 2.0 if dpsgd else 0.0,
        },
        "federated": [_round(1, {"big": 0.5, "small": -1.0}, {"big": 0.2, "small": 0.4}, fit=fit, epsilon=epsilon)],
        "local_only": [_round(1, {"big": 0.4, "small": -1.5}, {"big": 0.3, "small": 0.5})],
        "centralized": [_round(1, {"big": 0.6, "small": -0.9}, {"big": 0.2, "small": 0.3})],
        "baselines": {
            "static": {"big": _score(0.1, 0.1), "small": _score(0.1, 0.4)},
            "fifo": {"big": _score(0.0, 0.5), "small": _score(0.0, 0.6)},
        },
    }


def test_arm_means_average_all_or_the_named_tenants():
    arm = [_round(1, {"a": 1.0, "b": -1.0}, {"a": 0.0, "b": 0.5})]
    assert arm_means(arm) == [{"round": 1, "reward": 0.0, "sla_violation_rate": 0.25}]
    assert arm_means(arm, ["b"]) == [{"round": 1, "reward": -1.0, "sla_violation_rate": 0.5}]
    assert arm_means(arm, ["nobody"]) == []


def test_relative_targets_hold_on_negative_rewards():
    assert at_least_fraction(0.95, 1.0, 0.95) and not at_least_fraction(0.94, 1.0, 0.95)
    # 95% of -1.0 is -1.05 on a reward axis: a little worse is allowed, not more.
    assert at_least_fraction(-1.04, -1.0, 0.95) and not at_least_fraction(-1.06, -1.0, 0.95)


def test_targets_compare_the_final_round_with_the_arms_and_the_best_baseline():
    out = targets(_results(), small=["small"])
    assert out["final_round"] == 1
    fc = out["federated_vs_centralized"]
    assert fc["federated"] == pytest.approx(-0.25) and fc["centralized"] == pytest.approx(-0.15)
    assert fc["met_95pct"] is False  # -0.25 < -0.15 - 0.05 * 0.15
    sm = out["small_tenants_vs_local"]
    # -1.0 against -1.5: better by a third of |local-only|, more than the 20% asked.
    assert (sm["federated"], sm["local_only"], sm["met_20pct_better"]) == (-1.0, -1.5, True)
    best = out["sla_vs_best_baseline"]
    assert best["baseline"] == "static" and best["baseline_sla"] == pytest.approx(0.25)
    assert best["federated_sla"] == pytest.approx(0.3) and best["beats"] is False
    assert best["epsilon"] is None and best["dpsgd_epsilon"] is None


def test_dpsgd_epsilon_is_the_largest_tenants_and_absent_without_dp_sgd():
    assert dpsgd_epsilon({"fit": [{"dpsgd_epsilon": 2.0}, {"dpsgd_epsilon": 7.5}, {}]}) == 7.5
    assert dpsgd_epsilon({"fit": [{"tenant": "a"}]}) is None
    assert dpsgd_epsilon({}) is None
    out = targets(_results(dpsgd=[3.0, 6.0], epsilon=None), small=["small"])
    assert out["sla_vs_best_baseline"]["dpsgd_epsilon"] == 6.0


def test_markdown_shows_the_sample_level_epsilon_only_with_dp_sgd(tmp_path):
    plain = markdown({**_results(), "targets": {}})
    assert "DP-SGD" not in plain and "| round | federated reward |" in plain
    res = _results(dpsgd=[3.0, 6.0])
    md = markdown({**res, "targets": targets(res, ["small"])})
    assert "+ DP-SGD (z 2.0)" in md and "sample-level epsilon" in md
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "6.000" in row  # the largest tenant's epsilon, not the other's
    names = {p.name for p in write_plots(res, tmp_path)}
    assert names == {"reward.png", "sla.png", "epsilon.png"}
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    assert {p.name for p in write_plots(_results(), plain_dir)} == {"reward.png", "sla.png"}


def _beating(epsilon: float | None = 3.2, target: str = "8.0") -> dict[str, Any]:
    """_results() with a federated policy that beats every baseline on both tenants, under central DP."""
    res = _results(epsilon=epsilon)
    res["federated"] = [_round(2, {"big": 0.5, "small": -1.0}, {"big": 0.05, "small": 0.2}, epsilon=epsilon)]
    res["settings"] |= {"privacy.mode": "central", "privacy.target_epsilon": target}
    return res


def _section(md: str, heading: str) -> str:
    return md.split(heading, 1)[1].split("\n## ", 1)[0]


def test_verdict_says_in_words_that_the_federated_policy_beats_the_best_baseline():
    lines = verdict(_beating())
    # Overall: the mean over the tenants (12.5%) against the best baseline on that mean (static, 25.0%).
    assert lines[0] == (
        "**Overall**, after round 2, the federated policy **beats** the best static baseline, static: on average "
        "over the 2 tenants, 12.5% SLA violations against static's 25.0% (0.50 times as many). "
        "Privacy cost: client-level epsilon 3.20 spent of a budget of 8, at delta 1e-05."
    )
    per_tenant = [line for line in lines if line.startswith("- ")]
    assert per_tenant == [
        "- big: **beats** static: 5.0% SLA violations against static's 10.0% (0.50 times as many).",
        "- small: **beats** static: 20.0% SLA violations against static's 40.0% (0.50 times as many).",
    ]


def test_verdict_says_just_as_plainly_when_the_federated_policy_loses():
    lines = verdict(_results())
    assert lines[0] == (
        "**Overall**, after round 1, the federated policy **does not beat** the best static baseline, static: on "
        "average over the 2 tenants, 30.0% SLA violations against static's 25.0% (1.20 times as many). "
        "Privacy cost: no DP."
    )
    assert "- big: **does not beat** static: 20.0% SLA violations against static's 10.0% (2.00 times as many)." in lines
    assert "- small: **ties with** static: 40.0% SLA violations against static's 40.0% (1.00 times as many)." in lines


def test_verdict_picks_each_tenants_own_best_baseline_and_handles_a_baseline_without_violations():
    res = _results()
    res["baselines"]["fifo"]["small"] = _score(0.0, 0.0)  # fifo: best for small alone, static still best overall
    lines = verdict(res)
    assert "the best static baseline, static:" in lines[0]
    assert "- small: **does not beat** fifo: 40.0% SLA violations against fifo's 0.0% (the baseline has none)." in lines


def test_privacy_cost_names_the_epsilons_spent_or_says_there_is_no_dp():
    assert privacy_cost(_results()) == "no DP"
    clip = _results()
    clip["settings"]["privacy.mode"] = "clip"
    assert privacy_cost(clip) == "no DP (updates are clipped, without noise: no privacy guarantee)"
    both = _beating(target="null")
    both["federated"][-1]["fit"] = [{"dpsgd_epsilon": 1.5}, {"dpsgd_epsilon": 4.25}]
    assert privacy_cost(both) == (
        "client-level epsilon 3.20 and sample-level epsilon 4.25 (DP-SGD, largest tenant) spent, at delta 1e-05"
    )


def test_markdown_opens_with_the_verdict():
    res = _results()
    md = markdown({**res, "targets": targets(res, ["small"])})
    head = md.split("\n## ", 2)
    assert head[1].startswith("Verdict") and "**does not beat**" in head[1]
    assert md.index("## Verdict") < md.index("## Mean over tenants per round")
    assert "Privacy cost: no DP." in _section(md, "## Verdict")
    no_base = markdown({**res, "baselines": {}, "targets": {}})
    assert "No verdict: the run evaluated no static baseline." in _section(no_base, "## Verdict")
    assert verdict({**res, "federated": []}) == ["No verdict: the federated run evaluated no round."]


def test_plots_are_titled_with_every_policy_named_in_its_own_colour_on_integer_rounds():
    res = {**_beating(), "initial": {"big": _score(-1.0, 0.7), "small": _score(-1.0, 0.9)}}
    res["federated"] = [_round(1, {"big": 0.1, "small": -1.2}, {"big": 0.3, "small": 0.5}, epsilon=2.0),
                        *res["federated"]]  # fmt: skip
    figs = figures(res)
    assert set(figs) == {"reward.png", "sla.png", "epsilon.png"}
    for name in ("reward.png", "sla.png"):
        ax = figs[name].axes[0]
        assert ax.get_title().startswith("Mean ") and "per round" in ax.get_title()
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[:3] == ["federated", "local_only", "centralized"]
        assert [label.split(" (")[0] for label in labels[3:]] == ["static", "fifo", "initial model"]
        colours = [to_hex(line.get_color()) for line in ax.get_lines()]
        assert len(set(colours)) == len(colours) == 6
    sla_labels = [t.get_text() for t in figs["sla.png"].axes[0].get_legend().get_texts()]
    assert "static (25.0%)" in sla_labels and "fifo (55.0%)" in sla_labels  # each baseline with its value
    eps = figs["epsilon.png"].axes[0]
    assert eps.get_title().startswith("Privacy spent per round")
    labels = [t.get_text() for t in eps.get_legend().get_texts()]
    assert labels == ["client-level (server noise)", "target epsilon (8)"]
    assert eps.get_lines()[-1].get_ydata()[0] == 8.0  # the budget as a horizontal line


def test_the_epsilon_plot_comes_whenever_privacy_is_accounted_and_never_without():
    assert "epsilon.png" not in figures(_results())
    no_budget = figures(_beating(target="null"))["epsilon.png"].axes[0]
    assert [t.get_text() for t in no_budget.get_legend().get_texts()] == ["client-level (server noise)"]


def _row(sla: float, util: float = 0.5) -> dict[str, Any]:
    return {"applicable": True, "sla_violation_rate": sla, "utilization": util}


def _yardstick(odd: bool = True) -> dict[str, Any]:
    """A comparison of two members on two tenants (a third, `odd`, that the model cannot drive)."""
    tenants = {
        "big@default": {"results": {"federated": _row(0.05), "initial": _row(0.2), "static_priority": _row(0.1),
                                    "tuned_static": _row(0.08)}},
        "small@edge": {"results": {"federated": _row(0.3), "static_priority": _row(0.1),
                                   "tuned_static": {"applicable": False, "reason": "no cached plan"}}},
    }  # fmt: skip
    if odd:
        tenants["odd@edge"] = {"results": {"federated": {"applicable": False, "reason": "too many classes"},
                                           "static_priority": _row(0.1)}}  # fmt: skip
    return {"members": ["static_priority", "tuned_static"], "seeds": 4, "steps": None, "seed": 0, "tenants": tenants}


def test_the_yardstick_verdict_opens_the_report_tenant_by_tenant():
    res = _results(epsilon=1.5)
    res["yardstick"] = _yardstick()
    text = markdown(res)
    assert text.index("against the yardstick") < text.index("against the best static baseline")
    assert "The final global model **beats the yardstick on 1 of 3 tenants**" in text
    assert "client-level epsilon 1.50 spent" in text
    assert "- big@default: **beats** tuned_static: 5.0% SLA violations against tuned_static's 8.0%" in text
    assert "the model it started from had 20.0%" in text
    assert "- small@edge: **does not beat** static_priority: 30.0% SLA violations against static_priority's 10.0%" in (
        text
    )
    assert "- odd@edge: no verdict (too many classes)." in text
    assert "Not run on every tenant: tuned_static" in text


def test_no_yardstick_no_section():
    assert "against the yardstick" not in markdown(_results())
    assert "yardstick.png" not in figures(_results())


def test_the_yardstick_plot_has_a_bar_per_policy_and_tenant_and_outlines_the_best_member():
    res = _results()
    res["yardstick"] = _yardstick(odd=False)
    ax = figures(res)["yardstick.png"].axes[0]
    bars = ax.patches
    assert len(bars) == 6  # 4 on big, 2 on small (no initial model nor tuned_static there)
    outlined = sorted(round(b.get_height(), 3) for b in bars if b.get_linewidth() > 0 and b.get_edgecolor()[3] > 0)
    assert outlined == [0.08, 0.1]  # tuned_static on big, static_priority on small
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["federated", "initial", "static_priority",
                                                                    "tuned_static"]  # fmt: skip
    assert [t.get_text() for t in ax.get_xticklabels()] == ["big@default", "small@edge"]
