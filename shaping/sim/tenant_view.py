"""One tenant's view of the batched simulator, and a simulator whose tenants are agents or policies.

`TenantView` (one tenant's observation, action and reward on simulator output) and `MultiTenantSim`
(a Simulator whose tenants are agent-controlled or policy-driven) are shared by the Gymnasium, vector
and PettingZoo environments, so every interface builds observations and rewards the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from shaping.baselines import get_baseline
from shaping.config import RewardConfig, ScenarioConfig
from shaping.sim.layout import ScenarioTensors
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator, StepOutput
from shaping.spec import (
    ActionLayout,
    ClassMetrics,
    HostMetrics,
    ObservationLayout,
    PathMetrics,
    PlanBatch,
    QoSTensors,
    RewardTerms,
    ShapingPlan,
    compute_reward,
    decode_batch,
    stack_plans,
)
from shaping.spec.observation import LOAD_CLIP, RTT_CLIP

#: A tenant policy: a baseline name, or a callable from the tenant's observation to its action.
Policy = str | Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class TenantView:
    """One tenant's slice of the simulator: its observation, action and reward (batched over B)."""

    index: int
    observation: ObservationLayout
    action: ActionLayout
    nvec: torch.Tensor  # (C_k * fields,) MultiDiscrete sizes, on the simulator's device
    vm_index: torch.Tensor  # (V,) positions of the tenant's VMs among the padded entities
    qos: QoSTensors  # (C_k,)
    cap_mbps: torch.Tensor  # () the tenant's cap
    low: torch.Tensor  # (obs,) observation bounds
    high: torch.Tensor

    @classmethod
    def of(cls, tensors: ScenarioTensors, k: int) -> TenantView:
        """The view of tenant k of a compiled scenario."""
        spec = tensors.specs[k]
        n = len(spec.classes)
        layout = ObservationLayout(spec)
        # Delivered rates can exceed the cap while provider queues drain, but never the paths' total capacity.
        util = max(1.0, float(tensors.path_mbps.sum()) / spec.cap_mbps)
        block_high = {
            "entity_util": util, "entity_loss": 1.0, "class_rtt": RTT_CLIP, "class_app": 1.0,
            "class_offered": LOAD_CLIP, "class_delivered": util, "vm_cpu": 1.0, "vm_memory": 1.0,
            "path_delay": RTT_CLIP,
        }
        # Every other block (path loss, utilization and share, the plan in force) is a fraction.
        high = [block_high.get(block, 1.0) for block, labels in layout.blocks for _ in labels]
        dev = tensors.device
        action = ActionLayout(spec)
        return cls(
            index=k,
            observation=layout,
            action=action,
            nvec=torch.as_tensor(action.nvec, device=dev),
            vm_index=torch.nonzero(tensors.entity_is_vm[k]).flatten(),
            qos=QoSTensors(*(x[k, :n] for x in tensors.qos)),
            cap_mbps=tensors.cap_mbps[k],
            low=torch.zeros(len(high), device=dev),
            high=torch.tensor(high, dtype=torch.float32, device=dev),
        )

    @property
    def n_classes(self) -> int:
        """Number of traffic classes of the tenant."""
        return len(self.observation.spec.classes)

    def observation_space(self) -> spaces.Box:
        """Box of one observation."""
        return spaces.Box(self.low.cpu().numpy(), self.high.cpu().numpy(), dtype=np.float32)

    def action_space(self) -> spaces.MultiDiscrete:
        """MultiDiscrete of one action."""
        return spaces.MultiDiscrete(self.action.nvec)

    def metrics(self, out: StepOutput) -> tuple[ClassMetrics, HostMetrics]:
        """The tenant's class metrics (B, C_k) and VM metrics (B, V) from a simulator step."""
        n, k = self.n_classes, self.index
        m = ClassMetrics(*(x[:, k, :n] for x in out.metrics))
        return m, HostMetrics(out.host.cpu[:, k, self.vm_index], out.host.memory[:, k, self.vm_index])

    def paths(self, out: StepOutput) -> PathMetrics:
        """The tenant's path metrics (B, P) from a simulator step."""
        return PathMetrics(out.path_delay_ms, out.path_loss, out.path_delivered_mbps[:, self.index])

    def plan(self, out: StepOutput) -> PlanBatch:
        """The tenant's plan in force during the step, fields (B, C_k)."""
        n, k = self.n_classes, self.index
        return PlanBatch(*(x[:, k, :n] for x in out.plan))

    def observe(self, out: StepOutput, metrics: tuple[ClassMetrics, HostMetrics] | None = None) -> torch.Tensor:
        """(B, obs) observations, clipped to the declared bounds (a no-op up to float rounding).

        `metrics`: self.metrics(out) when the caller has it already (every slice is a torch call).
        """
        obs = self.observation.build(*(metrics or self.metrics(out)), self.paths(out), self.plan(out))
        return torch.clamp(obs, self.low, self.high)

    def reward(self, out: StepOutput, weights: RewardConfig, m: ClassMetrics | None = None) -> RewardTerms:
        """(B,) reward and its terms; `m`: self.metrics(out)[0] when the caller has it already."""
        return compute_reward(m if m is not None else self.metrics(out)[0], self.qos, self.cap_mbps, weights)

    def info(
        self, out: StepOutput, terms: RewardTerms, env: int = 0, m: ClassMetrics | None = None
    ) -> dict[str, Any]:
        """Reward terms, SLA violations and per-class delivered rate, p99 delay and loss of one environment;
        `m`: self.metrics(out)[0] when the caller has it already."""
        m = m if m is not None else self.metrics(out)[0]
        names = [c.name for c in self.observation.spec.classes]

        def per_class(x: torch.Tensor) -> dict[str, float]:
            return dict(zip(names, x[env].tolist(), strict=True))

        return {
            "throughput": float(terms.throughput[env]),
            "latency": float(terms.latency[env]),
            "efficiency": float(terms.efficiency[env]),
            "sla_violations": int(terms.violations[env]),
            "delivered_mbps": per_class(m.delivered_mbps),
            "p99_ms": per_class(m.delay_p99_ms),
            "loss": per_class(m.loss),
        }


class MultiTenantSim:
    """A batched Simulator whose tenants are agent-controlled or driven by a policy.

    Args:
        scenario: the scenario to simulate.
        batch_size: number of environments B.
        device: torch device of the simulator.
        controlled: indices of the agent-controlled tenants.
        other_policies: tenant name -> baseline name or callable, for tenants not controlled;
            the others follow their scenario `policy`.
        batched_callables: callables get (B, obs) observations and return (B, n) actions;
            otherwise they are called on one environment's observation (B must be 1).
    """

    def __init__(
        self,
        scenario: ScenarioConfig,
        batch_size: int,
        device: torch.device | str,
        controlled: Sequence[int],
        other_policies: Mapping[str, Policy] | None = None,
        batched_callables: bool = False,
    ) -> None:
        self.sim = Simulator(scenario, batch_size, device)
        st = self.sim.tensors
        self.views = [TenantView.of(st, k) for k in range(st.n_tenants)]
        self.controlled = tuple(controlled)
        names = [s.name for s in st.specs]
        given = dict(other_policies or {})
        bad = [n for n in given if n not in names or names.index(n) in self.controlled]
        if bad:
            raise ValueError(f"other_policies names {bad}, which are not uncontrolled tenants of {names}")
        if not batched_callables and batch_size != 1 and any(callable(p) for p in given.values()):
            raise ValueError("per-environment callables need batch_size 1")
        self.batched_callables = batched_callables
        self.callables: dict[int, Callable[[np.ndarray], Any]] = {}
        plans: list[ShapingPlan] = []
        aqm = []
        for k, (spec, cfg) in enumerate(zip(st.specs, scenario.tenants, strict=True)):
            policy = given.get(spec.name, cfg.policy)
            if callable(policy):
                self.callables[k] = policy
                policy = cfg.policy  # its plan serves the warm-up interval only
            base = get_baseline(policy)
            plans.append(base.plan(spec))
            # An action cannot switch CoDel, so agent-driven tenants start without it (see set_aqm).
            aqm.append(base.aqm and k not in self.controlled and k not in self.callables)
        one = stack_plans([plans], st.n_classes, self.sim.device)
        #: Plan of every tenant when no action is given (warm-up, and tenants driven by a baseline).
        self.default_plan = PlanBatch(*(x.expand(batch_size, -1, -1).clone() for x in one))
        self.aqm = torch.tensor(aqm, dtype=torch.bool, device=self.sim.device)
        self.last: StepOutput | None = None

    @property
    def batch_size(self) -> int:
        """Number of environments B."""
        return self.sim.batch_size

    def set_aqm(self, k: int, on: bool) -> None:
        """Run CoDel on tenant k's leaf queues from the next step on, or stop (in every environment: the
        simulator's switch is per tenant); e.g. an evaluator running fq_codel for a controlled tenant."""
        self.aqm[k] = on

    def decode(self, k: int, actions: torch.Tensor) -> PlanBatch:
        """Decode (B, C_k * fields) integer actions of tenant k into a (B, 1, C_k) PlanBatch."""
        view = self.views[k]
        nvec = view.nvec
        expected = (self.batch_size, nvec.numel())
        if tuple(actions.shape) != expected:
            raise ValueError(f"tenant {k}: actions of shape {tuple(actions.shape)}, expected {expected}")
        if bool(((actions < 0) | (actions >= nvec)).any()):
            raise ValueError(f"tenant {k}: actions outside the MultiDiscrete sizes {view.action.nvec.tolist()}")
        flat = actions.long().view(self.batch_size, 1, -1)
        return decode_batch(flat, view.n_classes, self.sim.tensors.cap_mbps[k : k + 1], self.sim.tensors.levels)

    def _callable_actions(self, k: int, f: Callable[[np.ndarray], Any]) -> torch.Tensor:
        assert self.last is not None
        obs = self.views[k].observe(self.last).cpu().numpy()
        act = f(obs) if self.batched_callables else f(obs[0])
        return torch.as_tensor(np.asarray(act, dtype=np.int64), device=self.sim.device).view(self.batch_size, -1)

    def step(self, actions: Mapping[int, torch.Tensor], reset: torch.Tensor | None = None) -> StepOutput:
        """Advance every environment one interval.

        Args:
            actions: tenant index -> (B, C_k * fields) actions; a controlled tenant without an
                action follows its default plan this interval.
            reset: (B,) bool, environments reset first; they run their warm-up interval under
                every tenant's default plan while the others step under their actions.
        """
        if reset is not None:
            self.sim.reset(mask=reset)
        all_actions = dict(actions)
        if self.last is not None:
            all_actions.update({k: self._callable_actions(k, f) for k, f in self.callables.items()})
        fields = [x.clone() for x in self.default_plan]
        for k, act in all_actions.items():
            n = self.views[k].n_classes
            for field, dec in zip(fields, self.decode(k, act.to(self.sim.device)), strict=True):
                field[:, k, :n] = dec[:, 0]
        plan = PlanBatch(*fields)
        if reset is not None:
            w = reset.to(self.sim.device).view(-1, 1, 1)
            plan = PlanBatch(*(torch.where(w, d, p) for d, p in zip(self.default_plan, plan, strict=True)))
        self.last = self.sim.step(plan, self.aqm)
        return self.last

    def reset(self, seed: int | None = None) -> StepOutput:
        """Reset every environment and run its warm-up interval under every tenant's default plan."""
        self.sim.reset(seed=seed)
        self.last = None  # callables have no observation yet; the warm-up runs default plans
        return self.step({})


def resolve_scenario(scenario: str | ScenarioConfig) -> ScenarioConfig:
    """A scenario by name or path, or the given config unchanged."""
    return load_scenario(scenario) if isinstance(scenario, str) else scenario


def episode_length(scenario: ScenarioConfig, max_episode_steps: int | None) -> int:
    """Truncation length: the given one, else the scenario's episode_steps."""
    steps = scenario.episode_steps if max_episode_steps is None else max_episode_steps
    if steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {steps}")
    return steps


def tenant_index(scenario: ScenarioConfig, tenant: int | str) -> int:
    """Index of a tenant given by index or name."""
    names = [t.name for t in scenario.tenants]
    if isinstance(tenant, str):
        if tenant not in names:
            raise ValueError(f"unknown tenant {tenant!r}; scenario has {names}")
        return names.index(tenant)
    if not 0 <= tenant < len(names):
        raise ValueError(f"tenant index {tenant} out of range (scenario has {len(names)})")
    return tenant
