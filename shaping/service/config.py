"""Settings of the rules service."""

from __future__ import annotations

from dataclasses import dataclass, field

from shaping.config import ScenarioConfig
from shaping.rules.model import Limits


@dataclass
class ServiceConfig:
    """What the provider fixes for every tenant."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """Provider paths (names, capacities) and the agents' action levels; its tenants are ignored."""
    limits: Limits = field(default_factory=Limits)
    """Bounds on rule counts and name lengths."""
    stale_after_s: float = 10.0
    """An agent that has not reported for this long is shown as stale."""
    watch_poll_s: float = 0.5
    """How often a streaming watch checks that its client is still there."""
    active_calls: int = 4
    """Threads that run calls at once (shaping.service.executor.CallExecutor); the GIL serializes their
    Python code anyway, and fewer runnable threads switch less."""
    max_watches: int = 256
    """Streaming watches served at once, all callers together, each on a thread of its own next to the
    `active_calls` threads; one more is refused with RESOURCE_EXHAUSTED (shaping.service.limits)."""
    max_watches_per_caller: int = 16
    """Streaming watches one identity (a tenant, the provider; a peer address when there is none) may hold
    open; an agent needs three. Keeps one tenant from taking every watch thread."""
    max_calls_per_caller: int = 32
    """Unary calls of one identity running at once; more are refused with RESOURCE_EXHAUSTED."""
