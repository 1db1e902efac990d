"""adaptive_heuristic as a ControlPolicy: the shaping.heuristic controller for one tenant (B = 1) in the loop.

The first decision is the tenant's static rules (nothing measured yet under a plan of the controller's);
every later one steps the controller with the interval the backend observed. An interval that ends a
simulated episode (``Observed.done``) makes the next decision start over from the static rules, as the
backend resets. The plan goes through the loop's guard like any policy's; the Decision's action is the
plan's nearest point of the action grid (ActionLayout.encode), for the experience record.
"""

from __future__ import annotations

import torch

from shaping import heuristic
from shaping.control.backend import Observed
from shaping.control.policy import Decision
from shaping.heuristic import HeuristicSettings, HeuristicState, TenantRules
from shaping.heuristic_policy import NAME
from shaping.spec import ActionLayout, ClassMetrics, PathMetrics, ShapingPlan, TenantSpec
from shaping.spec.plan import ClassShaping, burst_bytes


class HeuristicControlPolicy:
    """The adaptive heuristic driving one tenant through the control loop.

    Args:
        spec: the tenant.
        settings: the controller's thresholds.
        name: name in logs and metrics.
    """

    def __init__(self, spec: TenantSpec, settings: HeuristicSettings | None = None, name: str = NAME) -> None:
        self.spec = spec
        self.settings = settings or HeuristicSettings()
        self.rules = TenantRules.of(spec, self.settings)
        self.layout = ActionLayout(spec)
        self._name = name
        self.state: HeuristicState | None = None
        """The controller's state (B = 1); None until the first decision and after an episode's end."""

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return self._name

    def decide(self, observed: Observed) -> Decision:
        """The controller's plan for the next interval, from the interval just observed."""
        if self.state is None:
            self.state = heuristic.initial_state(self.rules, self.settings, 1)
        else:
            m = ClassMetrics(*(_row(x) for x in observed.metrics))
            paths = PathMetrics(*(_row(x) for x in observed.paths))
            self.state = heuristic.step(self.rules, self.settings, self.state, m, paths)
        plan = self._plan(self.state)
        if observed.done:
            self.state = None  # the backend starts a new episode: start over from the static rules
        return Decision(plan, self.layout.encode(plan))

    def _plan(self, state: HeuristicState) -> ShapingPlan:
        batch = heuristic.plan(self.rules, state)
        cols = [x[0].tolist() for x in batch[:-1]]
        return ShapingPlan(
            tenant=self.spec.name,
            root_mbps=float(batch.root_mbps[0, 0]),
            classes=tuple(
                ClassShaping(float(r), float(c), burst_bytes(float(r)), int(p), int(d), float(x), int(pa))
                for r, c, p, d, x, pa in zip(*cols, strict=True)
            ),
        )


def _row(x: torch.Tensor) -> torch.Tensor:
    """A (C,) or (P,) measurement as the controller's batch of one, (1, C) float32 on the CPU."""
    return x.detach().to("cpu", torch.float32).view(1, -1)
