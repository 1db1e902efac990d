"""SimBackend: one tenant of the multi-tenant simulator behind the Backend verbs; the others run their baselines."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from shaping.config import ScenarioConfig
from shaping.control.backend import Observed, build_observed
from shaping.sim.simulator import StepOutput
from shaping.sim.tenant_view import MultiTenantSim, resolve_scenario, tenant_index
from shaping.spec import PlanBatch, ShapingPlan, TenantSpec, stack_plans


class SimBackend:
    """A simulated tenant: ``apply`` sets its plan, ``observe`` simulates one control interval under it.

    One environment (B=1) of MultiTenantSim; the tenant is controlled, every other tenant follows its
    scenario policy or the baseline named in ``other_policies``. The first ``observe`` resets the
    simulator and returns its warm-up interval (every tenant on its baseline plan), as the training
    environments do. Plans are applied as given (a guard-clamped plan need not sit on the action grid).

    Args:
        scenario: scenario config, name or YAML path.
        tenant: the controlled tenant, by index or name.
        seed: seed of the simulator's load processes.
        device: torch device of the simulator.
        other_policies: tenant name -> baseline name, for the tenants not controlled.
        episode_steps: intervals per episode; the interval that ends one is ``done`` and the next
            ``observe`` starts a new episode (None: one endless episode, like a real tenant).
    """

    def __init__(
        self,
        scenario: ScenarioConfig | str,
        tenant: int | str,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        other_policies: Mapping[str, str] | None = None,
        episode_steps: int | None = None,
    ) -> None:
        self.scenario = resolve_scenario(scenario)
        self.index = tenant_index(self.scenario, tenant)
        if episode_steps is not None and episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1 or None, got {episode_steps}")
        self.mts = MultiTenantSim(self.scenario, 1, device, [self.index], other_policies=dict(other_policies or {}))
        self.view = self.mts.views[self.index]
        self.seed = seed
        self.episode_steps = episode_steps
        self.interval_s = self.scenario.control_interval_ms / 1e3
        self.plan: ShapingPlan | None = None
        self.applied: list[ShapingPlan] = []
        """Every plan applied, in order (tests and reports read it)."""
        self.steps = 0
        """Intervals simulated since construction (warm-ups included)."""
        self._episode_step: int | None = None  # None: the next observe resets

    @property
    def spec(self) -> TenantSpec:
        """The controlled tenant's spec."""
        return self.view.observation.spec

    def _plan_batch(self) -> PlanBatch:
        fields = [x.clone() for x in self.mts.default_plan]
        if self.plan is not None:
            n = self.view.n_classes
            mine = stack_plans([[self.plan]], n, self.mts.sim.device)
            for f, p in zip(fields, mine, strict=True):
                f[:, self.index, :n] = p[:, 0]
        return PlanBatch(*fields)

    def observe(self) -> Observed:
        """Simulate the next interval under the applied plan (a reset's warm-up at the start of an episode)."""
        if self._episode_step is None:
            out: StepOutput = self.mts.reset(seed=self.seed)
            self.seed += 1  # the next episode sees new load
            self._episode_step = 0
        else:
            out = self.mts.sim.step(self._plan_batch(), self.mts.aqm)
            self.mts.last = out
            self._episode_step += 1
        self.steps += 1
        m, host = self.view.metrics(out)
        m, host = type(m)(*(x[0] for x in m)), type(host)(*(x[0] for x in host))
        paths = self.view.paths(out)
        paths = type(paths)(*(x[0] for x in paths))
        plan = PlanBatch(*(x[0] for x in self.view.plan(out)))
        done = self.episode_steps is not None and self._episode_step >= self.episode_steps
        if done:
            self._episode_step = None
        info = {"backlog_kbit": out.backlog_kbit[0, self.index, : self.view.n_classes].tolist()}
        return build_observed(self.view.observation, m, host, self.steps * self.interval_s, self.interval_s,
                              paths=paths, plan=plan, done=done, info=info)  # fmt: skip

    def apply(self, plan: ShapingPlan) -> None:
        """Use ``plan`` for the tenant from the next simulated interval on."""
        plan.validate(self.spec)
        self.plan = plan
        self.applied.append(plan)

    def close(self) -> None:
        """Nothing to release."""
