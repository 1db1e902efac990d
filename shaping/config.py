"""Typed configuration of a FedShape scenario: paths, tenants, entities, classes, QoS, reward.

These dataclasses are plain Python (no Hydra import) so the core can be used without Hydra;
`experiments/config.py` registers them in Hydra's ConfigStore as the schemas of `conf/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shaping.checks import above, at_least, within

#: Applications the traffic models know; a class's `app` must be one of them.
APPS: tuple[str, ...] = ("gaming", "transactions", "video", "bulk", "web")
#: Entity kinds of a tenant.
ENTITY_KINDS: tuple[str, ...] = ("vm", "subnet", "security_group")


def _check_sizes(section: str, sizes: list[int]) -> None:
    if not sizes or any(not n >= 1 for n in sizes):
        raise ValueError(f"{section}.hidden_sizes must be a non-empty list of sizes >= 1, got {sizes}")


@dataclass
class QoSConfig:
    """QoS requirement (SLA) of one traffic class; a field left at None is not required."""

    max_p99_ms: float | None = None
    """Maximum 99th-percentile one-way delay through the network, milliseconds."""
    min_mbps: float | None = None
    """Minimum delivered throughput, Mbit/s (only owed while the application offers it)."""
    max_loss: float | None = None
    """Maximum packet loss fraction in [0, 1]."""
    app_floor: float | None = None
    """Minimum application metric in [0, 1] (FPS/60 for gaming, completion rate, ...)."""


@dataclass
class ClassConfig:
    """One application's traffic of an entity (a traffic class)."""

    name: str = "class"
    """Unique name within the tenant."""
    app: str = "web"
    """Application model: one of gaming, transactions, video, bulk, web."""
    entity: str = "vm0"
    """Name of the entity (VM, subnet, security group) the traffic comes from."""
    mbps: float = 10.0
    """Mean offered load at peak, Mbit/s; for bulk and video the application's maximum rate."""
    flows: int = 1
    """Concurrent flows, players or streams carrying the class."""
    protocol: str = "tcp"
    """Transport protocol used for classification: tcp or udp."""
    ports: list[int] = field(default_factory=list)
    """Destination ports used for classification (empty: any)."""
    dst_cidrs: list[str] = field(default_factory=list)
    """Destination (remote) addresses used for classification, as CIDRs (empty: any)."""
    match_dscp: int | None = None
    """DSCP value used for classification (None: not matched on DSCP)."""
    qos: QoSConfig = field(default_factory=QoSConfig)
    """The class's QoS requirement."""


@dataclass
class EntityConfig:
    """A VM, subnet or security group of a tenant, matched by addresses."""

    name: str = "vm0"
    """Unique name within the tenant."""
    kind: str = "vm"
    """One of vm, subnet, security_group."""
    cidrs: list[str] = field(default_factory=lambda: ["10.200.1.0/32"])
    """Addresses of the entity."""
    vcpus: int = 2
    """VM size, used by the CPU model (ignored for subnets and security groups)."""
    memory_gib: float = 4.0
    """VM memory, used by the memory model (ignored for subnets and security groups)."""


@dataclass
class TenantConfig:
    """A tenant: what it pays for and the traffic of its entities."""

    name: str = "tenant0"
    """Unique tenant name."""
    cap_mbps: float = 100.0
    """Egress rate the tenant pays for (root of its HTB tree), Mbit/s."""
    entities: list[EntityConfig] = field(default_factory=lambda: [EntityConfig()])
    """The tenant's entities."""
    classes: list[ClassConfig] = field(default_factory=list)
    """The tenant's traffic classes."""
    policy: str = "static_priority"
    """Baseline policy that drives this tenant when no agent controls it."""
    arrive_step: int = 0
    """Control step at which the tenant starts sending (before it, all its classes are silent)."""
    leave_step: int | None = None
    """Control step from which the tenant sends nothing; None: it never leaves."""


@dataclass
class PathConfig:
    """One provider path (an interface in deployment) shared by every tenant."""

    name: str = "eth0"
    """Path name; the interface name in deployment."""
    capacity_mbps: float = 200.0
    """Bottleneck capacity, Mbit/s."""
    base_delay_ms: float = 10.0
    """One-way propagation and processing delay without queueing, milliseconds."""
    buffer_ms: float = 100.0
    """Buffer of each provider queue on the path, in milliseconds of capacity."""
    ef_cap: float = 0.3
    """Admission cap of the EF queue, fraction of capacity; EF above it is policed (dropped)."""
    af_weights: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0])
    """WFQ weights of the AF4x, AF2x and best-effort queues served after EF."""


@dataclass
class LoadConfig:
    """Time variation of the offered load."""

    diurnal_amplitude: float = 0.4
    """Relative amplitude of the diurnal cycle (load = 1 + a*sin)."""
    diurnal_period_steps: int = 600
    """Length of one simulated day in control steps."""
    burst_prob: float = 0.02
    """Per step probability that a class starts a burst."""
    burst_factor: float = 2.0
    """Load multiplier during a burst."""
    burst_steps: int = 10
    """Mean burst length in control steps."""
    flash_crowd_prob: float = 0.002
    """Per step probability of a flash crowd on web and video classes of a tenant."""
    flash_crowd_factor: float = 3.0
    """Load multiplier during a flash crowd."""
    flash_crowd_steps: int = 50
    """Mean flash crowd length in control steps."""
    web_pareto: bool = True
    """Whether web classes carry the heavy-tailed Pareto load multiplier per control step (off gives
    web a constant mean load, which validation against queueing theory needs)."""
    diurnal_curve: list[float] = field(default_factory=list)
    """Relative load at evenly spaced points of one simulated day, interpolated linearly (and
    wrapping around); empty: the sinusoid of diurnal_amplitude."""
    diurnal_random_phase: bool = True
    """Start every environment at a random point of the day (False: every episode starts at its
    beginning, so scheduled events meet the same part of the day)."""


@dataclass
class PathEventConfig:
    """A scheduled change of one provider path: a failure, a degradation, a recovery.

    From start_step up to (not including) end_step the path's capacity is multiplied by
    capacity_factor, extra_delay_ms is added to its delay and a fraction `loss` of what it carries
    is lost. A capacity_factor of 0 is a failure: the path carries nothing and loses everything.
    """

    path: str = "eth0"
    """Name of the path (one of the scenario's paths)."""
    start_step: int = 0
    """First control step of the change (steps count from the episode's start)."""
    end_step: int | None = None
    """First control step back to normal; None: until the episode ends."""
    capacity_factor: float = 1.0
    """Multiplier of the path's capacity in [0, 1]; 0: the path is down."""
    extra_delay_ms: float = 0.0
    """One-way delay added to the path's base delay, milliseconds."""
    loss: float = 0.0
    """Fraction in [0, 1] of the traffic the path carries that is lost on it."""


@dataclass
class LoadEventConfig:
    """A scheduled change of offered load on chosen classes: a flash crowd (factor > 1) or a lull."""

    start_step: int = 0
    """First control step of the change."""
    end_step: int | None = None
    """First control step back to normal; None: until the episode ends."""
    factor: float = 3.0
    """Multiplier of the chosen classes' offered load (>= 0)."""
    tenants: list[str] = field(default_factory=list)
    """Tenants concerned, by name; empty: every tenant."""
    apps: list[str] = field(default_factory=list)
    """Applications concerned; empty: every application."""
    classes: list[str] = field(default_factory=list)
    """Class names concerned; empty: every class of the chosen tenants and applications."""


@dataclass
class ScenarioConfig:
    """A complete simulated scenario: provider paths, tenants and their traffic."""

    name: str = "default"
    """Scenario name, used in reports."""
    paths: list[PathConfig] = field(default_factory=lambda: [PathConfig()])
    """Provider paths shared by all tenants."""
    tenants: list[TenantConfig] = field(default_factory=list)
    """Tenants sharing the paths."""
    load: LoadConfig = field(default_factory=LoadConfig)
    """Time variation of the offered load."""
    control_interval_ms: float = 100.0
    """Control interval of the agent, milliseconds."""
    substeps: int = 10
    """Fluid sub-steps per control interval."""
    episode_steps: int = 600
    """Control steps per episode (truncation)."""
    dscp_set: list[int] = field(default_factory=lambda: [0, 18, 34, 46])
    """DSCP values an agent may mark (BE, AF21, AF41, EF by default)."""
    rate_levels: list[float] = field(
        default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0]
    )
    """Guaranteed rate choices, fractions of the tenant's cap."""
    ceil_levels: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 1.0])
    """Ceiling choices, fractions of the tenant's cap (ceil is at least the rate)."""
    root_levels: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    """Aggregate (HTB root) rate choices, fractions of the tenant's cap: shaping the aggregate below
    the provider's share moves the tenant's queue into its own HTB, where its priorities apply."""
    drop_levels: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.05, 0.1, 0.25])
    """Drop probability choices for a class."""
    priority_levels: int = 4
    """Number of HTB priorities (0 is served first)."""
    path_events: list[PathEventConfig] = field(default_factory=list)
    """Scheduled path failures, degradations and recoveries."""
    load_events: list[LoadEventConfig] = field(default_factory=list)
    """Scheduled flash crowds (or lulls) on chosen classes."""
    controlled: list[str] = field(default_factory=list)
    """Tenants a policy under test controls in comparisons and benchmarks (the others, its neighbours,
    keep their `policy`); empty: every tenant."""
    family: str = ""
    """Scenario family of the generator (shaping.sim.generator) that drew it; '' for hand-written ones."""


@dataclass
class RewardConfig:
    """Weights of the reward terms."""

    throughput: float = 1.0
    """Weight of the mean delivered/demanded throughput ratio of the classes."""
    latency: float = 1.0
    """Weight of the latency score (base delay / p99 delay, mean over classes)."""
    efficiency: float = 0.5
    """Weight of bandwidth efficiency (delivered / usable bandwidth)."""
    sla_penalty: float = 1.0
    """Penalty per class violating its SLA in a step."""

    def __post_init__(self) -> None:
        at_least("reward", self, 0.0, "throughput", "latency", "efficiency", "sla_penalty")


@dataclass
class PPOConfig:
    """PPO hyperparameters (CleanRL names); consumed by shaping.agents (train_ppo, the Flower client)."""

    name: str = "ppo"
    """Agent kind; shaping.agents dispatches on it."""
    total_timesteps: int = 1_000_000
    """Environment steps of training, summed over the batch."""
    learning_rate: float = 2.5e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training."""
    num_steps: int = 128
    """Rollout length per environment between updates."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per update epoch."""
    update_epochs: int = 4
    """Passes over each rollout."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    clip_coef: float = 0.2
    """Surrogate clipping coefficient."""
    clip_vloss: bool = True
    """Clip the value loss like the policy loss."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    target_kl: float | None = None
    """Stop an update early once the approximate KL exceeds this; None: never."""
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """Widths of the hidden layers of the actor and critic MLPs."""

    def __post_init__(self) -> None:
        at_least("agent", self, 1, "total_timesteps", "num_steps", "num_minibatches", "update_epochs")
        above("agent", self, 0.0, "learning_rate", "clip_coef", "max_grad_norm", "target_kl")
        within("agent", self, 0.0, 1.0, "gamma", "gae_lambda")
        at_least("agent", self, 0.0, "ent_coef", "vf_coef")
        _check_sizes("agent", self.hidden_sizes)


@dataclass
class DQNConfig:
    """DQN hyperparameters (CleanRL names); consumed by the DQN agent (shaping.agents)."""

    name: str = "dqn"
    """Agent kind; shaping.agents dispatches on it."""
    total_timesteps: int = 500_000
    """Environment steps of training, summed over the batch."""
    learning_rate: float = 1e-4
    """Adam learning rate."""
    buffer_size: int = 100_000
    """Replay buffer capacity, transitions."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 1.0
    """Target network update rate (1.0: hard copy)."""
    target_network_frequency: int = 1000
    """Steps between target network updates."""
    batch_size: int = 128
    """Replay minibatch size."""
    start_e: float = 1.0
    """Initial epsilon of epsilon-greedy exploration."""
    end_e: float = 0.05
    """Final epsilon."""
    exploration_fraction: float = 0.5
    """Fraction of training over which epsilon decays linearly."""
    learning_starts: int = 10_000
    """Steps collected before learning starts."""
    train_frequency: int = 10
    """Steps between gradient updates."""
    double_q: bool = True
    """Use double Q-learning targets."""
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """Widths of the hidden layers of the Q network."""

    def __post_init__(self) -> None:
        at_least("agent", self, 1, "total_timesteps", "buffer_size", "target_network_frequency", "batch_size",
                 "train_frequency")  # fmt: skip
        at_least("agent", self, 0, "learning_starts")
        above("agent", self, 0.0, "learning_rate", "tau", "exploration_fraction")
        within("agent", self, 0.0, 1.0, "gamma", "tau", "start_e", "end_e", "exploration_fraction")
        _check_sizes("agent", self.hidden_sizes)


@dataclass
class TrainConfig:
    """The training loop around the agent's updates (shaping.agents.train.train_ppo)."""

    num_envs: int = 64
    """Environments simulated together (the batch of the ShapingVectorEnv)."""
    device: str = "cpu"
    """Torch device of the simulator and the agent."""
    seed: int = 0
    """Seed of the environments' generator, the network initialisation and the action sampling."""
    episode_steps: int | None = None
    """Control steps per training episode; None: the scenario's episode_steps."""
    stagger_episodes: bool = True
    """Start the environments at random points of their first episode, so truncations are spread over time."""
    norm_reward: bool = True
    """Scale rewards by a running standard deviation of the discounted return (as SB3's VecNormalize)."""
    eval_every: int = 10
    """Iterations between deterministic evaluations (0: only after the last iteration)."""
    eval_envs: int = 8
    """Environments of each evaluation, on held-out seeds."""
    eval_steps: int = 200
    """Control steps of each evaluation episode."""
    eval_seed: int = 10_000
    """Seed of the evaluation environments (the same for every evaluation, unlike the training seeds)."""
    progress: bool = True
    """Show a tqdm progress bar over iterations."""
    tensorboard: bool = True
    """Write TensorBoard event files (needs the tensorboard package)."""
    max_wall_s: float | None = None
    """Stop after the iteration that crosses this wall-clock budget, seconds; None: run every iteration."""

    def __post_init__(self) -> None:
        if self.num_envs < 1 or self.eval_envs < 1 or self.eval_steps < 1 or self.eval_every < 0:
            raise ValueError("train needs num_envs, eval_envs, eval_steps >= 1 and eval_every >= 0")
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError(f"train.episode_steps must be >= 1 or null, got {self.episode_steps}")
        above("train", self, 0.0, "max_wall_s")
        at_least("train", self, 0, "seed", "eval_seed")
