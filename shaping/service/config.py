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
    active_calls: int = 8
    """Unary calls that run at once (the rest wait on a semaphore); watches are not counted."""
