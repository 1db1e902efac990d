"""Prometheus exposition of what the Provider API shows, per tenant, in the service's own registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shaping.service._proto.fedshape.v1 import rules_pb2 as pb
from shaping.service.client import agent_status
from shaping.service.config import ServiceConfig
from shaping.store import RulesStore
from shaping.units import BYTES_PER_S_PER_MBPS, S_PER_MS

_Family = GaugeMetricFamily | CounterMetricFamily


class ServiceCollector(Collector):
    """Reads the store at scrape time, so the metrics never disagree with the API."""

    def __init__(self, store: RulesStore, config: ServiceConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        """One family per metric, labelled by tenant (and class, and metric name), in base units."""
        t = ["tenant"]
        fam: dict[str, _Family] = {
            "cap": GaugeMetricFamily("fedshape_tenant_cap_bytes_per_second", "Tenant's paid egress rate",
                                     labels=t),
            "rev": GaugeMetricFamily("fedshape_rules_revision", "Revision of the tenant's rules", labels=t),
            "adaptive": GaugeMetricFamily("fedshape_adaptive_entities", "Entities in Adaptive Shaping mode", labels=t),
            "applied": GaugeMetricFamily("fedshape_agent_applied_revision", "Rules revision the agent enforces",
                                         labels=t),
            "reward": GaugeMetricFamily("fedshape_agent_reward", "Agent's latest reward", labels=t),
            "fallback": GaugeMetricFamily("fedshape_agent_fallback", "1 while the agent enforces its fallback plan",
                                          labels=t),
            "stale": GaugeMetricFamily("fedshape_agent_stale", "1 when the agent has not reported recently", labels=t),
            "sla": GaugeMetricFamily("fedshape_agent_sla_ok_ratio", "Fraction of classes meeting their SLA",
                                     labels=t),
            "delivered": GaugeMetricFamily("fedshape_class_delivered_bytes_per_second", "Delivered rate",
                                           labels=[*t, "class"]),
            "p99": GaugeMetricFamily("fedshape_class_delay_p99_seconds", "p99 delay", labels=[*t, "class"]),
            "loss": GaugeMetricFamily("fedshape_class_loss_ratio", "Fraction of packets lost", labels=[*t, "class"]),
            "class_sla": GaugeMetricFamily("fedshape_class_sla_ok", "1 when the class meets its SLA",
                                           labels=[*t, "class"]),
            "app": GaugeMetricFamily("fedshape_app_metric", "Application metric pushed by the tenant",
                                     labels=[*t, "class", "name"]),
            "model": GaugeMetricFamily("fedshape_agent_model_version",
                                       "Hand-over version of the model in force (0: the policy the agent started with)",
                                       labels=t),
            "verdicts": CounterMetricFamily("fedshape_agent_gate_verdicts",
                                            "Safety gate verdicts on new models, by verdict and reason",
                                            labels=[*t, "verdict", "reason"]),
            "rollbacks": CounterMetricFamily("fedshape_agent_rollbacks",
                                             "Swapped-in models rolled back after the SLAs degraded", labels=t),
            "epsilon": GaugeMetricFamily("fedshape_tenant_privacy_epsilon",
                                         "Privacy budget spent on the tenant's data (epsilon)", labels=t),
        }
        now = self.clock()
        for r in self.store.tenants():
            n = r.tenant
            fam["cap"].add_metric([n], r.cap_mbps * BYTES_PER_S_PER_MBPS)
            fam["rev"].add_metric([n], r.revision)
            fam["adaptive"].add_metric([n], sum(e.mode == "adaptive" for e in r.entities))
            a = agent_status(self.store, n, self.config, now)
            fam["stale"].add_metric([n], float(a.stale))
            if a.reported_at > 0:
                fam["applied"].add_metric([n], a.applied_revision)
                fam["reward"].add_metric([n], a.reward)
                fam["fallback"].add_metric([n], float(a.fallback))
                fam["sla"].add_metric([n], a.sla_ok_fraction)
                for c in a.classes:
                    fam["delivered"].add_metric([n, c.name], c.delivered_mbps * BYTES_PER_S_PER_MBPS)
                    fam["p99"].add_metric([n, c.name], c.delay_p99_ms * S_PER_MS)
                    fam["loss"].add_metric([n, c.name], c.loss)
                    fam["class_sla"].add_metric([n, c.name], float(c.sla_ok))
                if a.HasField("model"):
                    _model_metrics(fam, n, a.model)
            for klass, named in self.store.app_metrics(n).items():
                for name, (value, _) in named.items():
                    fam["app"].add_metric([n, klass, name], value)
        fed = self.store.federation()
        if fed is not None:
            for entry in fed[0].get("tenants", []):
                fam["epsilon"].add_metric([str(entry.get("tenant", ""))], float(entry.get("epsilon_spent", 0.0)))
        yield from fam.values()
        if fed is not None:
            yield GaugeMetricFamily("fedshape_federation_round", "Latest federated round",
                                    value=float(fed[0].get("round", 0)))
            yield GaugeMetricFamily("fedshape_federation_epsilon", "Privacy budget spent by the global model (epsilon)",
                                    value=float(fed[0].get("epsilon_spent", 0.0)))


def _model_metrics(fam: dict[str, _Family], tenant: str, m: pb.ModelStatus) -> None:
    """The model hand-over part of an agent's report, under the agent's own metric names and labels."""
    fam["model"].add_metric([tenant], m.version)
    fam["verdicts"].add_metric([tenant, "accepted", "ok"], m.accepted)
    for r in m.rejections:
        fam["verdicts"].add_metric([tenant, "rejected", r.reason], r.count)
    fam["rollbacks"].add_metric([tenant], m.rollbacks)


def service_registry(store: RulesStore, config: ServiceConfig, registry: CollectorRegistry | None = None,
                     clock: Callable[[], float] = time.time) -> CollectorRegistry:
    """A registry (new unless given) holding the service's collector."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(ServiceCollector(store, config, clock))
    return registry
