"""The tenant agent's control loop: backends (simulator, kernel), policies, guard, watchdog, experience.

Typical use::

    backend = SimBackend("default", "gameco")                 # or KernelBackend(spec, monitor, enforcer)
    rules = static_priority_plan(backend.spec)                # the tenant's static rules (fallback)
    policy = ModelPolicy.from_checkpoint("best.pt", backend.spec, epsilon=0.05)
    loop = ControlLoop(backend, policy, rules, store=ExperienceStore("exp/", backend.spec))
    loop.run(steps=600)                                       # observe -> policy -> guard -> apply
    loop.swap_policy(new_policy)                              # from any thread; next step uses it
"""

from shaping.control.backend import Backend, Observed, build_observed
from shaping.control.experience import (
    MODE_EXPLORE,
    MODE_FALLBACK,
    MODE_POLICY,
    ExperienceBatch,
    ExperienceStore,
    Transition,
)
from shaping.control.guard import Guard, GuardResult
from shaping.control.heuristic import HeuristicControlPolicy
from shaping.control.kernel_backend import Enforcer, KernelBackend, KernelSetup, make_enforcer
from shaping.control.loop import ControlLoop, LoopConfig, StepRecord
from shaping.control.metrics import ControlMetrics
from shaping.control.policy import ControlPolicy, Decision, ModelPolicy, ScriptedPolicy, StaticPolicy
from shaping.control.runner import CallResult, PolicyRunner
from shaping.control.sim_backend import SimBackend
from shaping.control.watchdog import Mode, Outcome, Verdict, Watchdog, WatchdogConfig

__all__ = [
    "MODE_EXPLORE",
    "MODE_FALLBACK",
    "MODE_POLICY",
    "Backend",
    "CallResult",
    "ControlLoop",
    "ControlMetrics",
    "ControlPolicy",
    "Decision",
    "Enforcer",
    "ExperienceBatch",
    "ExperienceStore",
    "Guard",
    "GuardResult",
    "HeuristicControlPolicy",
    "KernelBackend",
    "KernelSetup",
    "LoopConfig",
    "Mode",
    "ModelPolicy",
    "Observed",
    "Outcome",
    "PolicyRunner",
    "ScriptedPolicy",
    "SimBackend",
    "StaticPolicy",
    "StepRecord",
    "Transition",
    "Verdict",
    "Watchdog",
    "WatchdogConfig",
    "build_observed",
    "make_enforcer",
]
