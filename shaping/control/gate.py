"""The safety gate: a new model replaces the policy in force only if it does no worse on the tenant's simulator twin.

The twin is the tenant's own scenario (the one the agent loads from --tenant-config) at the scenario's own
offered load, not rescaled to what the agent measured lately: the scenario's class rates are peak means under
its diurnal and burst processes, and matching them to a few measured intervals would need a calibration run
per gate. The tenant is controlled, its neighbours run their scenario policies, and ``seeds`` environments run
one short episode of ``steps`` intervals (shaping.evaluation.evaluate_policy); every contender sees the same
load, so their SLA violation rates compare like for like.

Three contenders run there: the candidate, the policy in force and the static rules. A model (a global model,
already projected onto the tenant by ModelPolicy.from_checkpoint, or a checkpoint) runs greedily through its
envelope (ModelTwin); static rules and the rules-based heuristic run as their simulator policies. The twin
applies no guard, so it judges the model's own plans. Verdict: accept when the candidate's rate is at most
``margin`` above the policy in force's and at most ``margin`` above the static rules'.

There is no off-policy estimate on the agent's recorded experience: a deployed agent acts greedily, so the
log-probabilities it records are not the density of a behaviour policy and importance weights against them
would be biased.

Results of the static rules and of every policy evaluated are cached (the twin's load is fixed), so a gate
after the first evaluates the candidate only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from shaping.agents.policy import PerTenantModelPolicy, TenantActor, baseline_plans
from shaping.config import ScenarioConfig
from shaping.control.heuristic import HeuristicControlPolicy
from shaping.control.policy import ControlPolicy, ModelPolicy, StaticPolicy
from shaping.evaluation import evaluate_policy
from shaping.policies import Policy, PolicyInput, make_policy
from shaping.sim.layout import ScenarioTensors
from shaping.spec import PlanBatch, ShapingPlan, stack_plans

LOG = logging.getLogger("fedshape.gate")
#: Reason of an accepted verdict (the metric's label value).
ACCEPTED = "ok"


@dataclass(frozen=True)
class GateConfig:
    """Settings of the safety gate."""

    margin: float = 0.02
    """Largest increase of the SLA violation rate (a fraction of SLA class-intervals) the candidate may show
    over the policy in force and over the static rules."""
    seeds: int = 4
    """Environments of the twin (different load draws), simulated together."""
    steps: int = 60
    """Control intervals of the twin's episode."""
    seed: int = 0
    """Base seed of the twin's load."""

    def __post_init__(self) -> None:
        if self.margin < 0 or self.seeds < 1 or self.steps < 1:
            raise ValueError(f"gate needs margin >= 0, seeds >= 1, steps >= 1; got {self.margin}, {self.seeds}, "
                             f"{self.steps}")  # fmt: skip


@dataclass(frozen=True)
class GateVerdict:
    """What the gate decided about one candidate."""

    accepted: bool
    reason: str
    """``ok``, or why it was rejected: ``worse_than_policy``, ``worse_than_rules``, ``load_error``, ``eval_error``."""
    candidate: float | None
    """The candidate's SLA violation rate on the twin (None when it could not be evaluated)."""
    in_force: float | None
    """The policy in force's (None: not evaluable on the twin, e.g. a scripted policy)."""
    rules: float | None
    """The static rules'."""
    seconds: float
    """Wall time of the gate."""
    detail: str = ""
    """The error of a load_error or eval_error."""

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) dict."""
        return {"accepted": self.accepted, "reason": self.reason, "candidate": self.candidate,
                "in_force": self.in_force, "rules": self.rules, "seconds": round(self.seconds, 3),
                "detail": self.detail}  # fmt: skip


class ModelTwin(PerTenantModelPolicy):
    """A control loop's model (ActorCritic or BranchingQNetwork of the tenant, its envelope set) driving the tenant
    greedily in the batched simulator.

    Args:
        model: the tenant's model, as ModelPolicy holds it (read only: it may be serving the loop meanwhile).
        tenant: the tenant's name in the scenario.
        name: name in reports.
    """

    def __init__(self, model: torch.nn.Module, tenant: str, name: str) -> None:
        self.model = model
        self._name = name
        self._tenants = (tenant,)
        self._drivers = []

    def _actors(self, st: ScenarioTensors, controlled: tuple[int, ...]) -> list[TenantActor]:
        act: Any = self.model.act  # both model kinds: act(obs, deterministic=True) on raw observations
        return [lambda obs: act(obs, deterministic=True) for _ in controlled]


class PlanTwin:
    """One fixed plan of the tenant (its static rules) in the batched simulator; the others keep a baseline.

    Args:
        plan: the tenant's plan.
        tenant: the tenant's name in the scenario.
        name: name in reports.
    """

    def __init__(self, plan: ShapingPlan, tenant: str, name: str) -> None:
        self.plan, self.tenant, self._name = plan, tenant, name
        self._key: tuple[ScenarioTensors, int] | None = None
        self._plans: PlanBatch | None = None

    @property
    def name(self) -> str:
        """Name used in reports."""
        return self._name

    @property
    def aqm(self) -> bool:
        """No CoDel: the loop's plans do not switch it on."""
        return False

    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """The plan in the tenant's row of every environment."""
        b = int(inp.state.t.shape[0])
        if self._plans is None or self._key is None or self._key[0] is not inp.tensors or self._key[1] != b:
            st = inp.tensors
            k = [s.name for s in st.specs].index(self.tenant)
            fields = list(baseline_plans(st, {}, "static_priority"))
            mine = stack_plans([[self.plan]], len(st.specs[k].classes), st.device)
            for f, p in zip(fields, mine, strict=True):
                f[:, k, : p.shape[-1]] = p[:, 0]
            self._plans = PlanBatch(*(x.expand(b, *x.shape[1:]).contiguous() for x in fields))
            self._key = (st, b)
        return self._plans


def twin_policy(policy: ControlPolicy, tenant: str) -> Policy | None:
    """The simulator policy that acts like a control policy for the tenant; None when there is none (a scripted
    policy, say: the gate then compares the candidate with the static rules only)."""
    if isinstance(policy, ModelPolicy):
        return ModelTwin(policy.model, tenant, policy.name)
    if isinstance(policy, StaticPolicy):
        return PlanTwin(policy.plan, tenant, policy.name)
    if isinstance(policy, HeuristicControlPolicy):
        return make_policy("adaptive_heuristic")
    return None


class SafetyGate:
    """Judges candidate policies against the policy in force and the static rules on the tenant's twin.

    Args:
        scenario: the tenant's scenario (the twin).
        tenant: the tenant's name in it.
        rules: the static rules as the loop applies them (guarded).
        config: margin, seeds, steps.
        logger: where verdicts are logged.
    """

    def __init__(self, scenario: ScenarioConfig, tenant: str, rules: ShapingPlan, config: GateConfig | None = None,
                 logger: logging.Logger = LOG) -> None:  # fmt: skip
        self.scenario, self.tenant = scenario, tenant
        self.config = config or GateConfig()
        self.log = logger
        self._rules = PlanTwin(rules, tenant, "static-rules")
        self._rules_rate: float | None = None
        # id -> (policy, rate): the policy is kept so that its id is not reused while cached.
        self._cache: dict[int, tuple[ControlPolicy, float]] = {}

    def rate(self, twin: Policy) -> float:
        """The SLA violation rate of a simulator policy controlling the tenant on the twin."""
        c = self.config
        return evaluate_policy(self.scenario, twin, seeds=c.seeds, steps=c.steps, seed=c.seed,
                               controlled=[self.tenant]).sla_violation_rate  # fmt: skip

    def rules_rate(self) -> float:
        """The static rules' rate (computed once)."""
        if self._rules_rate is None:
            self._rules_rate = self.rate(self._rules)
        return self._rules_rate

    def policy_rate(self, policy: ControlPolicy) -> float | None:
        """A control policy's rate on the twin (cached per policy object); None when it has no twin."""
        hit = self._cache.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        twin = twin_policy(policy, self.tenant)
        if twin is None:
            return None
        rate = self.rate(twin)
        if len(self._cache) >= 4:  # the policies that can come back: in force, previous, candidate
            self._cache.pop(next(iter(self._cache)))
        self._cache[id(policy)] = (policy, rate)
        return rate

    def check(self, candidate: ControlPolicy, in_force: ControlPolicy) -> GateVerdict:
        """Evaluate the candidate (and, unless cached, the policy in force and the rules) and decide.

        An evaluation error rejects the candidate (reason ``eval_error``); it never raises.
        """
        t0 = time.perf_counter()
        m = self.config.margin
        try:
            rules, current = self.rules_rate(), self.policy_rate(in_force)
            cand = self.policy_rate(candidate)
            if cand is None:
                raise ValueError(f"policy {candidate.name!r} cannot run on the simulator twin")
        except Exception as err:  # a model the twin cannot run is rejected, never the agent's end
            detail = f"{type(err).__name__}: {err}".splitlines()[0]
            return GateVerdict(False, "eval_error", None, None, self._rules_rate, time.perf_counter() - t0, detail)
        if current is not None and cand > current + m:
            reason = "worse_than_policy"
        elif cand > rules + m:
            reason = "worse_than_rules"
        else:
            reason = ACCEPTED
        verdict = GateVerdict(reason == ACCEPTED, reason, cand, current, rules, time.perf_counter() - t0)
        self.log.info("tenant %s: gate %s %s (%s): SLA violation rate %.4f, in force %s, rules %.4f, margin %.3f",
                      self.tenant, "accepts" if verdict.accepted else "rejects", candidate.name, reason, cand,
                      "n/a" if current is None else f"{current:.4f}", rules, m)  # fmt: skip
        return verdict
