"""Seeded scenario generator: a ScenarioConfig drawn from a family (shaping.sim.families) and a seed.

`generate_scenario(family, seed)` is a pure function of its arguments: it draws every value from a numpy
Generator seeded with the seed and a crc32 of the family's name (never Python's salted hash nor global
random state), so the same pair gives the same scenario on every machine and in every run.

What a scenario gets, in the order it is drawn:
- the load's variation: diurnal sinusoid or drawn daily curve, random bursts and flash crowds;
- paths: capacity and RTT log-uniform in the family's ranges, sorted so the first path, the primary,
  is the largest (static baselines send everything there);
- tenants: entities (VMs, subnets, security groups, each in a /24 of its own inside the tenant's /20 of
  10.200.0.0/16, so no two overlap) and classes drawn from the family's application mix;
- loads: each class gets a typical weight of its application times a log-normal factor, and all of them
  are scaled together so the peak offered load is the drawn fraction of the primary path's capacity;
  each tenant's cap covers its open-loop classes at the day's peak in a burst;
- SLAs from the application, measured against the primary path: gaming a tight p99 delay, loss and
  frame-rate floor; transactions a p99 and completion floor; video a QoE floor; bulk a minimum rate;
  web a p99. A p99 bound is the primary's base delay plus a queueing budget (a fraction of its buffer,
  at least three full-size packets' transmission), so no bound is below the smallest base delay;
- the controlled tenants, which never arrive late or leave, and the neighbours' baselines;
- the family's events: path failures and recoveries, degradations, scheduled flash crowds, neighbours
  arriving and leaving, a daily load curve.
"""

from __future__ import annotations

import zlib

import numpy as np

from shaping.config import (
    ENTITY_KINDS,
    ClassConfig,
    EntityConfig,
    LoadConfig,
    LoadEventConfig,
    PathConfig,
    PathEventConfig,
    QoSConfig,
    ScenarioConfig,
    TenantConfig,
)
from shaping.sim.families import FamilyConfig, get_family

#: Typical peak load of one class of each application, relative to the others (before scaling).
APP_LOAD: dict[str, float] = {"gaming": 0.05, "transactions": 0.05, "video": 0.5, "bulk": 1.0, "web": 0.25}
#: Rate of one flow (player, stream, connection) of each application, Mbit/s: flows = load / rate.
FLOW_MBPS: dict[str, tuple[float, float]] = {
    "gaming": (0.03, 0.1), "transactions": (0.01, 0.1), "video": (2.0, 8.0), "bulk": (1.0, 10.0),
    "web": (0.05, 0.5),
}  # fmt: skip
#: Destination ports of each application (the first free one in the tenant is taken).
PORTS: dict[str, tuple[int, ...]] = {
    "gaming": (27015, 3478, 7777, 5060), "transactions": (9000, 8080, 5432, 9443, 6379),
    "video": (443, 8443, 1935, 8801), "bulk": (873, 22, 445, 7000, 9092), "web": (443, 80, 8000, 8443),
}  # fmt: skip
#: Tenant names; a scenario draws distinct ones.
TENANT_NAMES: tuple[str, ...] = (
    "gameco", "bank", "streamer", "saas", "retail", "media", "analytics", "hosting",
    "iot", "office", "cdn", "payments", "telco", "health", "campus", "logistics",
)  # fmt: skip
#: Queueing budget of a p99 bound per application, as a fraction of the primary path's buffer.
P99_BUDGET: dict[str, tuple[float, float]] = {"gaming": (0.1, 0.4), "transactions": (0.2, 0.6), "web": (0.5, 1.5)}
#: Bulk minimum rates together stay below this fraction of the primary's capacity (else no policy meets them).
MAX_GUARANTEED = 0.5
#: Applications whose sources follow TCP's window (they take what they are given).
ELASTIC: tuple[str, ...] = ("bulk", "video")
#: A tenant's cap is at least this multiple of its open-loop classes' load at the day's peak in a burst.
CAP_HEADROOM = 1.2
#: Probability that a bulk class carries a minimum-rate SLA (the others are best effort).
BULK_SLA_PROB = 0.75


def _sig(x: float, digits: int = 3) -> float:
    """x rounded to a few significant digits, so the suite's YAML stays readable."""
    return float(f"{x:.{digits}g}")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _paths(fam: FamilyConfig, rng: np.random.Generator) -> list[PathConfig]:
    n = int(rng.integers(fam.paths[0], fam.paths[1] + 1))
    caps = sorted((_loguniform(rng, *fam.capacity_mbps) for _ in range(n)), reverse=True)
    out = []
    for i, cap in enumerate(caps):
        rtt = _loguniform(rng, *fam.rtt_ms)
        out.append(PathConfig(
            name=f"path{i}", capacity_mbps=_sig(cap), base_delay_ms=_sig(rtt / 2.0),
            buffer_ms=_sig(rng.uniform(*fam.buffer_ms)), ef_cap=round(float(rng.uniform(0.2, 0.35)), 2),
        ))  # fmt: skip
    return out


def _entities(rng: np.random.Generator, tenant: int, n: int) -> list[EntityConfig]:
    """n entities of tenant number `tenant`; entity j owns 10.200.(16 tenant + j).0/24."""
    out = []
    for j in range(n):
        kind = ENTITY_KINDS[int(rng.integers(len(ENTITY_KINDS)))]
        third = 16 * tenant + j
        if kind == "vm":
            vcpus = int(rng.choice([2, 4, 8, 16, 32]))
            out.append(EntityConfig(f"vm{j}", kind, [f"10.200.{third}.{int(rng.integers(2, 255))}/32"], vcpus,
                                    float(vcpus * int(rng.choice([2, 4])))))  # fmt: skip
            continue
        prefix = int(rng.integers(24, 28)) if kind == "subnet" else int(rng.integers(26, 30))
        size = 2 ** (32 - prefix)
        start = int(rng.integers(0, 256 // size)) * size
        name = f"{'net' if kind == 'subnet' else 'sg'}{j}"
        out.append(EntityConfig(name, kind, [f"10.200.{third}.{start}/{prefix}"]))
    return out


def _classes(fam: FamilyConfig, rng: np.random.Generator, entities: list[EntityConfig]) -> list[ClassConfig]:
    """Classes with their application, entity, ports and a relative load in mbps (scaled later)."""
    n = int(rng.integers(fam.classes[0], fam.classes[1] + 1))
    apps = [a for a, _ in fam.mix]
    weights = np.array([w for _, w in fam.mix], dtype=float)
    used: set[tuple[str, int]] = set()
    count: dict[str, int] = {}
    out: list[ClassConfig] = []
    for _ in range(n):
        app = apps[int(rng.choice(len(apps), p=weights / weights.sum()))]
        protocol = "udp" if app == "gaming" else "tcp"
        port = next((p for p in PORTS[app] if (protocol, p) not in used), 20000 + len(out))
        used.add((protocol, port))
        j = count[app] = count.get(app, -1) + 1
        out.append(ClassConfig(
            name=f"{app}{j}", app=app, entity=entities[int(rng.integers(len(entities)))].name,
            mbps=APP_LOAD[app] * float(rng.lognormal(0.0, 0.5)), protocol=protocol, ports=[port],
        ))  # fmt: skip
    return out


def _qos(app: str, mbps: float, ref: PathConfig, rng: np.random.Generator) -> QoSConfig:
    """The SLA of a class of `app`, feasible on the reference (primary) path."""
    if app == "video":
        return QoSConfig(app_floor=round(float(rng.uniform(0.4, 0.7)), 2))
    if app == "bulk":
        keep = rng.random() < BULK_SLA_PROB
        share = float(rng.uniform(0.05, 0.25))
        return QoSConfig(min_mbps=_sig(share * mbps)) if keep else QoSConfig()
    # Three full-size packets' transmission on the path: below it a bound is met by no queue at all.
    serial_ms = 3 * 1500 * 8 / (ref.capacity_mbps * 1000.0)
    budget = max(serial_ms, ref.buffer_ms * float(rng.uniform(*P99_BUDGET[app])))
    p99 = _sig(ref.base_delay_ms + budget)
    if app == "gaming":
        loss, floor = round(float(rng.uniform(0.005, 0.02)), 3), round(float(rng.uniform(0.85, 0.95)), 2)
        return QoSConfig(max_p99_ms=p99, max_loss=loss, app_floor=floor)
    if app == "transactions":
        return QoSConfig(max_p99_ms=p99, app_floor=round(float(rng.uniform(0.85, 0.97)), 2))
    return QoSConfig(max_p99_ms=p99)


def _tenants(
    fam: FamilyConfig, rng: np.random.Generator, paths: list[PathConfig], load: LoadConfig
) -> list[TenantConfig]:
    """Tenants with entities and classes, loads scaled to the drawn subscription, SLAs and caps."""
    day_peak = max(load.diurnal_curve) if load.diurnal_curve else 1.0 + load.diurnal_amplitude
    surge = day_peak * load.burst_factor
    k = int(rng.integers(fam.tenants[0], fam.tenants[1] + 1))
    names = [TENANT_NAMES[int(i)] for i in rng.permutation(len(TENANT_NAMES))[:k]]
    tenants = []
    for i, name in enumerate(names):
        entities = _entities(rng, i, int(rng.integers(1, 5)))
        classes = _classes(fam, rng, entities)
        tenants.append(TenantConfig(name=name, entities=entities, classes=classes))
    # Operators size the primary path for the load and keep the others for failover and overflow, so the
    # subscription is relative to the primary (static baselines send everything there).
    capacity = paths[0].capacity_mbps
    scale = float(rng.uniform(*fam.subscription)) * capacity / sum(c.mbps for t in tenants for c in t.classes)
    for t in tenants:
        for c in t.classes:
            c.mbps = max(_sig(c.mbps * scale), 0.01)
            fewest = 2 if c.app in ELASTIC else 1  # a single Reno flow on a long path ramps up for minutes
            c.flows = int(min(max(round(c.mbps / rng.uniform(*FLOW_MBPS[c.app])), fewest), 100_000))
            c.qos = _qos(c.app, c.mbps, paths[0], rng)
        # What a tenant pays for covers its open-loop classes at the day's peak in a burst, with headroom
        # (below that its own HTB root queues them without bound, whatever it does); elastic bulk and video
        # may be capped below their peak.
        open_loop = sum(c.mbps for c in t.classes if c.app not in ELASTIC) * surge
        t.cap_mbps = _sig(max(sum(c.mbps for c in t.classes) * float(rng.uniform(0.8, 1.5)), CAP_HEADROOM * open_loop))
    guaranteed = sum(c.qos.min_mbps or 0.0 for t in tenants for c in t.classes)
    if guaranteed > MAX_GUARANTEED * capacity:
        for t in tenants:
            for c in t.classes:
                if c.qos.min_mbps is not None:
                    c.qos.min_mbps = _sig(c.qos.min_mbps * MAX_GUARANTEED * capacity / guaranteed)
    return tenants


def _window(rng: np.random.Generator, steps: int, length: tuple[float, float], lo: float = 0.15,
            hi: float = 0.85) -> tuple[int, int]:  # fmt: skip
    """A [start, end) span of steps of the drawn length (fraction of the episode) inside [lo, hi)."""
    n = max(int(steps * rng.uniform(*length)), 1)
    start = int(rng.integers(int(lo * steps), max(int(hi * steps) - n, int(lo * steps)) + 1))
    return start, start + n


def _event_path(fam: FamilyConfig, rng: np.random.Generator, paths: list[PathConfig]) -> PathConfig:
    if len(paths) == 1 or rng.random() < fam.primary_event_prob:
        return paths[0]
    return paths[int(rng.integers(1, len(paths)))]


def _failures(fam: FamilyConfig, rng: np.random.Generator, paths: list[PathConfig]) -> list[PathEventConfig]:
    """Outages of one path, each followed by its recovery, spread over separate parts of the episode."""
    path = _event_path(fam, rng, paths).name
    n = int(rng.integers(fam.outages[0], fam.outages[1] + 1))
    down = float(rng.uniform(0.1, 0.3)) / n  # each outage's share of the episode
    slot = 0.7 / n
    out = []
    for i in range(n):
        start, end = _window(rng, fam.episode_steps, (down, down), 0.15 + i * slot, 0.15 + (i + 1) * slot)
        out.append(PathEventConfig(path=path, start_step=start, end_step=end, capacity_factor=0.0))
    return out


def _degradation(fam: FamilyConfig, rng: np.random.Generator, paths: list[PathConfig]) -> PathEventConfig:
    """A capacity cut, added delay or loss (at least one of them) on one path for a while."""
    path = _event_path(fam, rng, paths)
    start, end = _window(rng, fam.episode_steps, (0.2, 0.5))
    parts = rng.random(3) < 0.6
    parts[0] = parts[0] or not parts.any()
    delay = float(rng.uniform(0.5, 2.0)) * max(path.base_delay_ms, 0.2 * path.buffer_ms)
    return PathEventConfig(
        path=path.name, start_step=start, end_step=end,
        capacity_factor=round(float(rng.uniform(*fam.degrade_capacity)), 2) if parts[0] else 1.0,
        extra_delay_ms=_sig(delay) if parts[1] else 0.0,
        loss=round(float(rng.uniform(*fam.degrade_loss)), 3) if parts[2] else 0.0,
    )  # fmt: skip


def _flash_crowd(fam: FamilyConfig, rng: np.random.Generator, tenants: list[TenantConfig]) -> LoadEventConfig:
    """A flash crowd on one to three classes (web and video most likely) of one tenant present from the start."""
    present = [t for t in tenants if t.arrive_step == 0]
    t = present[int(rng.integers(len(present)))]
    w = np.array([3.0 if c.app in ("web", "video") else 1.0 for c in t.classes])
    k = int(rng.integers(1, min(3, len(t.classes)) + 1))
    chosen = sorted(int(j) for j in rng.choice(len(t.classes), size=k, replace=False, p=w / w.sum()))
    start, end = _window(rng, fam.episode_steps, (0.1, 0.3))
    factor = round(float(rng.uniform(*fam.flash_factor)), 1)
    return LoadEventConfig(start_step=start, end_step=end, factor=factor, tenants=[t.name],
                           classes=[t.classes[j].name for j in chosen])  # fmt: skip


def _churn(kinds: list[str], rng: np.random.Generator, steps: int, neighbours: list[TenantConfig]) -> None:
    """One neighbour arrives late and (another, where there is one) leaves early, as the kinds ask."""
    order = [neighbours[int(i)] for i in rng.permutation(len(neighbours))]
    if "arrival" in kinds:
        order[0].arrive_step = int(rng.integers(int(0.15 * steps), int(0.6 * steps)))
    if "departure" in kinds:
        t = order[-1]
        lo = max(int(0.4 * steps), t.arrive_step + int(0.15 * steps))
        t.leave_step = int(rng.integers(lo, max(int(0.9 * steps), lo + 1)))


def _diurnal_curve(rng: np.random.Generator) -> list[float]:
    """A day of 6-12 points: a random walk around 1 with a swing of 30-60%."""
    walk = np.cumsum(rng.normal(0.0, 1.0, int(rng.integers(6, 13))))
    walk -= walk.mean()
    walk /= max(float(np.abs(walk).max()), 1e-9)
    swing = float(rng.uniform(0.3, 0.6))
    return [round(max(float(1.0 + swing * x), 0.05), 2) for x in walk]


def _load(fam: FamilyConfig, rng: np.random.Generator, kinds: list[str]) -> LoadConfig:
    curve = _diurnal_curve(rng) if "diurnal_curve" in kinds else []
    steps = fam.episode_steps
    return LoadConfig(
        diurnal_amplitude=round(float(rng.uniform(*fam.diurnal_amplitude)), 2),
        # A drawn curve is one day per episode; the sinusoid's day lasts one to four episodes.
        diurnal_period_steps=steps if curve else int(rng.integers(steps, 4 * steps)),
        burst_prob=round(float(rng.uniform(*fam.burst_prob)), 3),
        flash_crowd_prob=round(float(rng.uniform(*fam.flash_crowd_prob)), 4),
        diurnal_curve=curve,
        diurnal_random_phase=fam.random_phase,
    )  # fmt: skip


def generate_scenario(family: FamilyConfig | str, seed: int) -> ScenarioConfig:
    """Draw the scenario of a family and a seed (the same pair always gives the same scenario).

    Args:
        family: a FamilyConfig, or the name of one in shaping.sim.families.FAMILIES.
        seed: any non-negative integer.
    Returns:
        A scenario named ``<family>_s<seed>`` with `family` set and 1 to 3 controlled tenants.
    """
    fam = get_family(family) if isinstance(family, str) else family
    rng = np.random.default_rng([seed, zlib.crc32(fam.name.encode())])
    kinds = [*fam.required_events, *(k for k in fam.optional_events if rng.random() < fam.optional_event_prob)]
    load = _load(fam, rng, kinds)
    paths = _paths(fam, rng)
    tenants = _tenants(fam, rng, paths, load)
    # Controlled tenants never come or go, so churn needs at least one neighbour.
    churn = "arrival" in kinds or "departure" in kinds
    m = int(rng.integers(1, min(3, len(tenants) - int(churn)) + 1))
    controlled = {int(i) for i in rng.choice(len(tenants), size=m, replace=False)}
    for i, t in enumerate(tenants):
        t.policy = "static_priority" if i in controlled else fam.neighbour_policies[
            int(rng.integers(len(fam.neighbour_policies)))]  # fmt: skip
    if churn:
        _churn(kinds, rng, fam.episode_steps, [t for i, t in enumerate(tenants) if i not in controlled])
    path_events: list[PathEventConfig] = []
    if "failure" in kinds:
        path_events += _failures(fam, rng, paths)
    if "degradation" in kinds:
        path_events.append(_degradation(fam, rng, paths))
    load_events = [_flash_crowd(fam, rng, tenants)] if "flash_crowd" in kinds else []
    return ScenarioConfig(
        name=f"{fam.name}_s{seed}", paths=paths, tenants=tenants, load=load,
        episode_steps=fam.episode_steps, path_events=path_events, load_events=load_events,
        controlled=[t.name for i, t in enumerate(tenants) if i in controlled], family=fam.name,
    )  # fmt: skip
