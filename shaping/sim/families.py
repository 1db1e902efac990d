"""Scenario families: the ranges and choices the scenario generator (shaping.sim.generator) draws from.

A family stands for one kind of site (a regional cloud site, an edge site behind an LTE uplink, a
datacenter fabric, ...) and one kind of trouble (path failures, degradations, flash crowds, tenants
coming and going). Families come in two splits. Training families cover 10 Mbit/s to 1 Gbit/s paths
with 2-150 ms RTT, up to 3 paths, 6 tenants and 6 classes per tenant, an even mix of applications and
at most one kind of path or load event per scenario. Every held-out family leaves that envelope on at
least one axis (capacity, RTT, counts, application mix, event combinations, repeated outages), which
`heldout_novelty` names and the tests check, so a benchmark over held-out families measures
generalization rather than recall.
"""

from __future__ import annotations

from dataclasses import dataclass

from shaping.config import APPS

#: Splits a family belongs to.
SPLITS: tuple[str, ...] = ("training", "heldout")
#: Kinds of scheduled change a family can put in a scenario.
EVENT_KINDS: tuple[str, ...] = ("failure", "degradation", "flash_crowd", "arrival", "departure", "diurnal_curve")
#: Path and load events: a training scenario holds at most one of these kinds.
DISRUPTIONS: tuple[str, ...] = ("failure", "degradation", "flash_crowd")
#: Baselines a neighbour may run (shaping.baselines).
NEIGHBOUR_POLICIES: tuple[str, ...] = ("static_priority", "fifo", "fair_share", "greedy_premium", "fq_codel")

Range = tuple[float, float]
IntRange = tuple[int, int]
AppMix = tuple[tuple[str, float], ...]

#: Every application equally likely.
EVEN_MIX: AppMix = tuple((app, 0.2) for app in APPS)
#: Video-dominated media tenants.
VIDEO_MIX: AppMix = (("gaming", 0.05), ("transactions", 0.05), ("video", 0.6), ("bulk", 0.15), ("web", 0.15))
#: Interactive tenants only: no bulk transfers, no video.
INTERACTIVE_MIX: AppMix = (("gaming", 0.45), ("transactions", 0.35), ("video", 0.0), ("bulk", 0.0), ("web", 0.2))


@dataclass(frozen=True)
class FamilyConfig:
    """A scenario family: ranges (drawn uniformly, log-uniformly for capacity and RTT) and choices."""

    name: str
    """Family name; generated scenarios are named ``<name>_s<seed>``."""
    split: str
    """training or heldout."""
    description: str
    """What the family stands for, in one or two sentences (written into the suite's files)."""
    paths: IntRange = (1, 3)
    """Number of provider paths."""
    capacity_mbps: Range = (10.0, 1000.0)
    """Capacity of each path, Mbit/s (log-uniform); the largest path is the first, the primary."""
    rtt_ms: Range = (2.0, 150.0)
    """Base round-trip time of each path, ms (log-uniform); a path's base_delay_ms is half of it."""
    buffer_ms: Range = (20.0, 200.0)
    """Buffer of each path's provider queues, ms of its capacity."""
    tenants: IntRange = (2, 6)
    """Number of tenants."""
    classes: IntRange = (1, 6)
    """Number of traffic classes per tenant."""
    mix: AppMix = EVEN_MIX
    """Probability of each application for a class."""
    subscription: Range = (0.5, 1.3)
    """Offered load at peak (every tenant's classes together) as a fraction of the primary path's capacity."""
    diurnal_amplitude: Range = (0.1, 0.5)
    """Relative amplitude of the diurnal sinusoid."""
    burst_prob: Range = (0.0, 0.03)
    """Per step probability that a class starts a random burst."""
    flash_crowd_prob: Range = (0.0, 0.003)
    """Per step probability of a random (unscheduled) flash crowd on a tenant's web and video."""
    random_phase: bool = True
    """Whether every environment starts at a random point of the day."""
    required_events: tuple[str, ...] = ()
    """Event kinds every scenario of the family holds."""
    optional_events: tuple[str, ...] = ()
    """Event kinds a scenario holds with probability optional_event_prob each."""
    optional_event_prob: float = 0.5
    """Probability of each optional event kind."""
    outages: IntRange = (1, 1)
    """Number of separate outages of the failing path (failure events)."""
    flash_factor: Range = (2.0, 4.0)
    """Load multiplier of a scheduled flash crowd."""
    degrade_capacity: Range = (0.2, 0.7)
    """Capacity factor of a degraded path."""
    degrade_loss: Range = (0.005, 0.05)
    """Loss of a lossy degraded path."""
    primary_event_prob: float = 0.75
    """Probability that a path event hits the primary path (the others are backups)."""
    neighbour_policies: tuple[str, ...] = NEIGHBOUR_POLICIES
    """Baselines the neighbours' policies are drawn from."""
    episode_steps: int = 300
    """Control steps per episode; events are scheduled within it."""

    def __post_init__(self) -> None:
        bad = [k for k in (*self.required_events, *self.optional_events) if k not in EVENT_KINDS]
        if self.split not in SPLITS or bad:
            raise ValueError(f"family {self.name!r}: split {self.split!r} or event kinds {bad} unknown")
        ranges = {"paths": self.paths, "tenants": self.tenants, "classes": self.classes, "outages": self.outages}
        if any(lo > hi for lo, hi in [*ranges.values(), self.capacity_mbps, self.rtt_ms, self.subscription]):
            raise ValueError(f"family {self.name!r}: a range has lo > hi")
        if not (1 <= self.paths[1] <= 4 and 2 <= self.tenants[0] and self.tenants[1] <= 8 and self.classes[1] <= 8):
            raise ValueError(f"family {self.name!r}: 1-4 paths, 2-8 tenants and up to 8 classes per tenant")
        if "failure" in (*self.required_events, *self.optional_events) and self.paths[0] < 2:
            raise ValueError(f"family {self.name!r}: a path failure needs at least two paths")
        if {a for a, _ in self.mix} != set(APPS) or sum(w for _, w in self.mix) <= 0:
            raise ValueError(f"family {self.name!r}: mix must weigh every application of {APPS}")

    @property
    def events(self) -> tuple[str, ...]:
        """Every event kind the family can schedule."""
        return (*self.required_events, *self.optional_events)


_TRAINING = [
    FamilyConfig(
        "train_mixed", "training",
        "A regional cloud site: tenants with every application share one to three transit links of "
        "10 Mbit/s to 1 Gbit/s under a daily load cycle; nothing is scheduled beyond, at times, a daily curve.",
        optional_events=("diurnal_curve",), optional_event_prob=0.3,
    ),
    FamilyConfig(
        "train_failover", "training",
        "A multi-homed site whose primary (or a backup) transit fails once for a while and comes back.",
        paths=(2, 3), required_events=("failure",), optional_events=("diurnal_curve",), optional_event_prob=0.3,
    ),
    FamilyConfig(
        "train_degraded", "training",
        "A site whose transit degrades for part of the episode: its capacity drops, delay is added or it loses "
        "packets.",
        required_events=("degradation",), optional_events=("diurnal_curve",), optional_event_prob=0.3,
    ),
    FamilyConfig(
        "train_flash_crowd", "training",
        "A site where a few classes of one tenant see a scheduled flash crowd (a sale, a release, a live event).",
        required_events=("flash_crowd",), optional_events=("diurnal_curve",), optional_event_prob=0.3,
    ),
    FamilyConfig(
        "train_churn", "training",
        "A shared site where neighbours arrive and leave during the episode, at times on a daily load curve.",
        tenants=(3, 6), required_events=("arrival", "departure"), optional_events=("diurnal_curve",),
    ),
]  # fmt: skip

_HELDOUT = [
    FamilyConfig(
        "heldout_lte_edge", "heldout",
        "An edge site behind a congested 1-10 Mbit/s DSL or LTE uplink (and at times a second one) with deep "
        "buffers; no scheduled events.",
        paths=(1, 2), capacity_mbps=(1.0, 10.0), rtt_ms=(20.0, 80.0), buffer_ms=(100.0, 400.0), tenants=(2, 4),
        classes=(1, 4),
    ),
    FamilyConfig(
        "heldout_datacenter", "heldout",
        "A datacenter fabric: two to four 1-10 Gbit/s paths with 0.1-2 ms RTT, shallow buffers, millisecond SLAs "
        "and seven or eight tenants; no scheduled events.",
        paths=(2, 4), capacity_mbps=(1000.0, 10000.0), rtt_ms=(0.1, 2.0), buffer_ms=(1.0, 10.0), tenants=(7, 8),
        classes=(2, 5),
    ),
    FamilyConfig(
        "heldout_wan_failure", "heldout",
        "A multi-homed enterprise WAN site whose transit flaps (two or three outages) while a flash crowd hits: "
        "repeated outages, and failures together with flash crowds, which training never has.",
        paths=(2, 4), tenants=(3, 6), required_events=("failure", "flash_crowd"), outages=(2, 3),
    ),
    FamilyConfig(
        "heldout_lte_backup_failure", "heldout",
        "A branch office whose 1-10 Mbit/s primary uplink fails and comes back, with a smaller LTE backup as the "
        "only way out meanwhile.",
        paths=(2, 2), capacity_mbps=(1.0, 10.0), rtt_ms=(10.0, 100.0), buffer_ms=(100.0, 400.0), tenants=(2, 4),
        classes=(1, 4), required_events=("failure",), primary_event_prob=1.0,
    ),
    FamilyConfig(
        "heldout_satellite_degraded", "heldout",
        "A remote site on long-haul and satellite links of 150-300 ms RTT that degrade (capacity cuts, added delay, "
        "loss) for part of the episode.",
        capacity_mbps=(10.0, 500.0), rtt_ms=(150.0, 300.0), buffer_ms=(100.0, 400.0), tenants=(2, 5),
        classes=(1, 5), required_events=("degradation",),
    ),
    FamilyConfig(
        "heldout_dc_flash_crowd", "heldout",
        "A datacenter of 1-10 Gbit/s paths where a flash crowd hits while a new tenant arrives.",
        paths=(2, 4), capacity_mbps=(1000.0, 10000.0), rtt_ms=(0.1, 2.0), buffer_ms=(1.0, 10.0), tenants=(5, 8),
        classes=(2, 5), required_events=("flash_crowd", "arrival"),
    ),
    FamilyConfig(
        "heldout_video_surge", "heldout",
        "A media hub whose tenants carry video-dominated mixes of seven or eight classes; a transit degrades while "
        "a flash crowd hits.",
        tenants=(2, 3), classes=(7, 8), mix=VIDEO_MIX, required_events=("degradation", "flash_crowd"),
    ),
    FamilyConfig(
        "heldout_interactive_churn", "heldout",
        "Interactive tenants only (gaming, transactions, web; no bulk, no video), seven or eight of them, on a "
        "business-day load curve, with neighbours arriving and leaving while a transit degrades.",
        tenants=(7, 8), classes=(1, 4), mix=INTERACTIVE_MIX, subscription=(0.3, 0.8),
        required_events=("arrival", "departure", "degradation", "diurnal_curve"),
    ),
]  # fmt: skip

#: Every family by name, training families first.
FAMILIES: dict[str, FamilyConfig] = {f.name: f for f in [*_TRAINING, *_HELDOUT]}


def get_family(name: str) -> FamilyConfig:
    """A family by name, with the known names in the error."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown scenario family {name!r}; known: {sorted(FAMILIES)}") from None


def families(split: str) -> list[FamilyConfig]:
    """The families of one split (training or heldout), in table order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    return [f for f in FAMILIES.values() if f.split == split]


def heldout_novelty(family: FamilyConfig, training: list[FamilyConfig] | None = None) -> list[str]:
    """How a family leaves the envelope of the training families: one line per axis (empty: it does not).

    Axes: path capacity, RTT, numbers of paths, tenants and classes, an application's share of the mix,
    the combination of event kinds (not all of them schedulable by one training family), outages per failure.
    """
    train = training if training is not None else families("training")
    out: list[str] = []
    ranges = {
        "capacity_mbps": lambda f: f.capacity_mbps, "rtt_ms": lambda f: f.rtt_ms, "paths": lambda f: f.paths,
        "tenants": lambda f: f.tenants, "classes": lambda f: f.classes, "outages": lambda f: f.outages,
    }  # fmt: skip
    for axis, get in ranges.items():
        lo, hi = min(get(f)[0] for f in train), max(get(f)[1] for f in train)
        if get(family)[0] < lo or get(family)[1] > hi:
            out.append(f"{axis} {get(family)} outside training {lo}-{hi}")
    for app, weight in family.mix:
        shares = [dict(f.mix)[app] / sum(dict(f.mix).values()) for f in train]
        share = weight / sum(w for _, w in family.mix)
        if not min(shares) <= share <= max(shares):
            out.append(f"{app} share {share:.2f} outside training {min(shares):.2f}-{max(shares):.2f}")
    if family.required_events and not any(set(family.required_events) <= set(f.events) for f in train):
        out.append(f"events {list(family.required_events)} together, which no training family schedules")
    return out
