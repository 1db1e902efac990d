"""Prometheus metrics of one tenant agent, registered in a registry handed in (never the global one).

Names and units follow Prometheus's conventions and the rules service's exposition (shaping.service.exposition):
base units (bytes per second, seconds, ratios) and a ``class`` label, so one query reads both.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shaping.units import BYTES_PER_S_PER_MBPS, S_PER_MS

#: Buckets of the step and policy latencies, seconds (control intervals are ~100 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Buckets of the safety gate's time, seconds (a few short simulated episodes).
GATE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControlMetrics:
    """The agent's metrics, labelled by tenant (and class where per class).

    Args:
        tenant: tenant name (label value).
        classes: class names of the tenant (label values).
        registry: where the metrics live; a new private registry when None.
    """

    def __init__(self, tenant: str, classes: Sequence[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.tenant = tenant
        self.classes = tuple(classes)
        r, t = self.registry, ["tenant"]
        self.mode = Gauge("fedshape_agent_fallback", "1 while the tenant runs its static rules, 0 when adaptive",
                          t, registry=r)  # fmt: skip
        self.fallbacks = Counter("fedshape_agent_fallbacks", "Switches to the static rules, by reason",
                                 [*t, "reason"], registry=r)  # fmt: skip
        self.recoveries = Counter("fedshape_agent_recoveries", "Returns to adaptive shaping", t, registry=r)
        self.steps = Counter("fedshape_agent_steps", "Control intervals, by mode", [*t, "mode"], registry=r)
        self.policy_outcomes = Counter("fedshape_agent_policy_calls", "Policy calls, by outcome (ok, error, stall)",
                                       [*t, "outcome"], registry=r)  # fmt: skip
        self.explored = Counter("fedshape_agent_explored", "Intervals that applied an exploration action", t,
                                registry=r)  # fmt: skip
        self.clamped = Counter("fedshape_agent_guard_clamps", "Plans the guard had to change", t, registry=r)
        self.apply_errors = Counter("fedshape_agent_apply_errors", "Plans the backend failed to apply", t, registry=r)
        self.swaps = Counter("fedshape_agent_policy_swaps", "Policy hot swaps taken", t, registry=r)
        self.overruns = Counter("fedshape_agent_overruns", "Intervals whose work exceeded the interval", t,
                                registry=r)  # fmt: skip
        self.reward = Gauge("fedshape_agent_reward", "Reward of the last interval", t, registry=r)
        self.sla_rate = Gauge("fedshape_agent_sla_violation_ratio",
                              "Fraction of SLA classes violating their SLA last interval", t, registry=r)  # fmt: skip
        self.step_seconds = Histogram("fedshape_agent_step_seconds", "Time of one control step (observe to apply)",
                                      t, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.policy_seconds = Histogram("fedshape_agent_policy_seconds", "Time the loop waited for the policy",
                                        t, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.model_version = Gauge("fedshape_agent_model_version",
                                   "Hand-over version of the model in force (0: the policy the agent started with)",
                                   t, registry=r)  # fmt: skip
        self.gate_verdicts = Counter("fedshape_agent_gate_verdicts",
                                     "Safety gate verdicts on new models, by verdict (accepted, rejected) and reason",
                                     [*t, "verdict", "reason"], registry=r)  # fmt: skip
        self.gate_seconds = Histogram("fedshape_agent_gate_seconds", "Time of one safety gate (load and twin)", t,
                                      buckets=GATE_BUCKETS, registry=r)  # fmt: skip
        self.gate_sla_rate = Gauge("fedshape_agent_gate_sla_violation_ratio",
                                   "SLA violation ratio on the simulator twin at the last gate, by policy "
                                   "(candidate, in_force, rules)", [*t, "policy"], registry=r)  # fmt: skip
        self.rollbacks = Counter("fedshape_agent_rollbacks", "Swapped-in models rolled back after the SLAs degraded",
                                 t, registry=r)  # fmt: skip
        c = [*t, "class"]
        self.delivered = Gauge("fedshape_class_delivered_bytes_per_second", "Delivered rate per class", c,
                               registry=r)  # fmt: skip
        self.p99 = Gauge("fedshape_class_delay_p99_seconds", "p99 one-way delay estimate per class", c, registry=r)
        self.loss = Gauge("fedshape_class_loss_ratio", "Lost fraction of offered bytes per class", c, registry=r)
        self.mode.labels(tenant).set(0)

    def classes_observed(self, delivered_mbps: Sequence[float], p99_ms: Sequence[float],
                         loss: Sequence[float]) -> None:  # fmt: skip
        """Set the per-class gauges from one interval's measurements (in the spec's Mbit/s and ms)."""
        for name, d, p, lo in zip(self.classes, delivered_mbps, p99_ms, loss, strict=True):
            self.delivered.labels(self.tenant, name).set(d * BYTES_PER_S_PER_MBPS)
            self.p99.labels(self.tenant, name).set(p * S_PER_MS)
            self.loss.labels(self.tenant, name).set(lo)

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of a sample (tests, reports): e.g. ``value('fedshape_agent_fallback', tenant='a')``."""
        return self.registry.get_sample_value(name, labels)
