"""Scheduled events of a scenario as per-step tables: path failures and degradations, flash crowds, tenants
arriving and leaving.

A scenario's `path_events`, `load_events` and each tenant's `arrive_step` / `leave_step` are compiled
once into tables indexed by the control step of the episode (`EventTables`); the simulator reads the
row of each environment's own step, so environments at different points of their episodes (staggered
training starts) each see their own schedule. Steps past the table's end keep its last row: the state
after every scheduled change.

A path whose capacity_factor is 0 is down: it keeps MIN_CAPACITY_FACTOR of its capacity (so the fluid
model's divisions stay finite) and loses everything it carries.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from shaping.config import APPS, ScenarioConfig

#: Capacity a failed path keeps, as a fraction of its own: everything on it is lost anyway.
MIN_CAPACITY_FACTOR = 0.01


class EventError(ValueError):
    """A scheduled event that names something the scenario lacks, or has impossible values."""


class EventTables(NamedTuple):
    """A scenario's schedule, one row per control step of the episode."""

    capacity: torch.Tensor  # (T, P) multiplier of each path's capacity
    delay_ms: torch.Tensor  # (T, P) delay added to each path's base delay
    loss: torch.Tensor  # (T, P) fraction of each path's traffic lost on it
    load: torch.Tensor  # (T, K, C) multiplier of each class's load (flash crowds, tenants absent)
    present: torch.Tensor  # (T, K) bool, the tenant sends traffic

    @property
    def steps(self) -> int:
        """Rows of the tables."""
        return int(self.capacity.shape[0])

    def rows(self, t: torch.Tensor) -> EventTables:
        """Each environment's row for its control step t (B,): tensors (B, ...)."""
        idx = t.clamp(0, self.steps - 1)
        return EventTables(*(x[idx] for x in self))


def _span(where: str, start: int, end: int | None) -> None:
    if start < 0:
        raise EventError(f"{where}: start_step must be >= 0, got {start}")
    if end is not None and end <= start:
        raise EventError(f"{where}: end_step must be > start_step, got {start}..{end}")


def validate_events(scenario: ScenarioConfig) -> None:
    """Raise EventError, naming the event, unless every scheduled event fits the scenario."""
    paths = [p.name for p in scenario.paths]
    tenants = {t.name: t for t in scenario.tenants}
    for i, ev in enumerate(scenario.path_events):
        where = f"path_events[{i}]"
        if ev.path not in paths:
            raise EventError(f"{where}: unknown path {ev.path!r}; the scenario has {paths}")
        _span(where, ev.start_step, ev.end_step)
        if not 0.0 <= ev.capacity_factor <= 1.0:
            raise EventError(f"{where}: capacity_factor must be in [0, 1], got {ev.capacity_factor}")
        if not 0.0 <= ev.loss <= 1.0:
            raise EventError(f"{where}: loss must be in [0, 1], got {ev.loss}")
        if ev.extra_delay_ms < 0:
            raise EventError(f"{where}: extra_delay_ms must be >= 0, got {ev.extra_delay_ms}")
    for i, lev in enumerate(scenario.load_events):
        where = f"load_events[{i}]"
        _span(where, lev.start_step, lev.end_step)
        if lev.factor < 0:
            raise EventError(f"{where}: factor must be >= 0, got {lev.factor}")
        unknown = [t for t in lev.tenants if t not in tenants]
        if unknown:
            raise EventError(f"{where}: unknown tenants {unknown}; the scenario has {list(tenants)}")
        bad_apps = [a for a in lev.apps if a not in APPS]
        if bad_apps:
            raise EventError(f"{where}: unknown applications {bad_apps}; known: {list(APPS)}")
        chosen = [tenants[t] for t in lev.tenants] if lev.tenants else list(tenants.values())
        names = {c.name for t in chosen for c in t.classes}
        missing = [c for c in lev.classes if c not in names]
        if missing:
            raise EventError(f"{where}: classes {missing} are not classes of the chosen tenants")
    for t in scenario.tenants:
        _span(f"tenant {t.name!r} arrive_step/leave_step", t.arrive_step, t.leave_step)
    if scenario.load.diurnal_curve and any(x < 0 for x in scenario.load.diurnal_curve):
        raise EventError("load.diurnal_curve values must be >= 0")


def has_events(scenario: ScenarioConfig) -> bool:
    """Whether anything in the scenario changes on a schedule (paths, load events, tenants coming or going)."""
    moving = any(t.arrive_step > 0 or t.leave_step is not None for t in scenario.tenants)
    return bool(scenario.path_events or scenario.load_events or moving)


def event_kinds(scenario: ScenarioConfig) -> list[str]:
    """The kinds of scheduled change a scenario holds: failure, degradation, flash_crowd, diurnal, arrival,
    departure (a report groups scenarios by them)."""
    kinds: list[str] = []
    if any(e.capacity_factor == 0.0 for e in scenario.path_events):
        kinds.append("failure")
    if any(0.0 < e.capacity_factor < 1.0 or e.extra_delay_ms > 0 or e.loss > 0 for e in scenario.path_events):
        kinds.append("degradation")
    if any(e.factor > 1.0 for e in scenario.load_events):
        kinds.append("flash_crowd")
    if scenario.load.diurnal_curve or scenario.load.diurnal_amplitude > 0:
        kinds.append("diurnal")
    if any(t.arrive_step > 0 for t in scenario.tenants):
        kinds.append("arrival")
    if any(t.leave_step is not None for t in scenario.tenants):
        kinds.append("departure")
    return kinds


def _rows(start: int, end: int | None, steps: int) -> slice:
    return slice(start, steps if end is None else min(end, steps))


def compile_events(scenario: ScenarioConfig, n_classes: int, device: torch.device | str = "cpu") -> EventTables:
    """The scenario's schedule as tables of T rows, T one past the last step anything changes (at least
    the episode's length), classes padded to n_classes.

    Overlapping path events multiply their capacity factors and keep-fractions and add their delays;
    overlapping load events multiply.
    """
    validate_events(scenario)
    bounds = [scenario.episode_steps]
    spans = [(e.start_step, e.end_step) for e in scenario.path_events]
    for start, end in spans + [(e.start_step, e.end_step) for e in scenario.load_events]:
        bounds += [start, end or 0]
    for t in scenario.tenants:
        bounds += [t.arrive_step, t.leave_step or 0]
    steps = max(bounds) + 1
    paths = [p.name for p in scenario.paths]
    k = len(scenario.tenants)
    capacity = torch.ones(steps, len(paths))
    delay = torch.zeros(steps, len(paths))
    keep = torch.ones(steps, len(paths))
    for ev in scenario.path_events:
        rows, p = _rows(ev.start_step, ev.end_step, steps), paths.index(ev.path)
        capacity[rows, p] *= max(ev.capacity_factor, MIN_CAPACITY_FACTOR)
        keep[rows, p] *= 0.0 if ev.capacity_factor == 0.0 else 1.0 - ev.loss
        delay[rows, p] += ev.extra_delay_ms
    load = torch.ones(steps, k, n_classes)
    present = torch.ones(steps, k, dtype=torch.bool)
    for i, t in enumerate(scenario.tenants):
        present[: min(t.arrive_step, steps), i] = False
        if t.leave_step is not None:
            present[min(t.leave_step, steps) :, i] = False
    for lev in scenario.load_events:
        rows = _rows(lev.start_step, lev.end_step, steps)
        for i, t in enumerate(scenario.tenants):
            if lev.tenants and t.name not in lev.tenants:
                continue
            for j, c in enumerate(t.classes):
                if (not lev.apps or c.app in lev.apps) and (not lev.classes or c.name in lev.classes):
                    load[rows, i, j] *= lev.factor
    load = load * present.unsqueeze(-1)
    dev = torch.device(device)
    return EventTables(capacity.to(dev), delay.to(dev), (1.0 - keep).to(dev), load.to(dev), present.to(dev))
