"""Batched multi-tenant network simulator: B environments of K tenants sharing P provider paths.

Every control step runs `substeps` fluid sub-steps of the tenant HTB stage and the provider DSCP
stage (shaping.sim.network) with all environments, tenants and classes as tensor dimensions; the
only Python loop is over sub-steps. The simulator is a backend: it takes a PlanBatch and returns
the ClassMetrics and HostMetrics the spec turns into observations and rewards.

Internally the batch is the last dimension (class tensors (K, C, B)), so every operation runs over
contiguous vectors of environments; plans come in and metrics go out as (B, K, C) like everywhere
else. `compile=True` fuses the sub-step, and the preparation and accounting around it, with torch.compile.
On the CPU the sub-steps run by default in the C++ kernel of shaping.sim.cpu_kernel, which mirrors
`substep` (the definition of the model, and what runs on other devices).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from shaping.config import ScenarioConfig
from shaping.sim import network
from shaping.sim.events import EventTables, compile_events
from shaping.sim.layout import N_QUEUES, ScenarioTensors, compile_scenario
from shaping.spec import ClassMetrics, HostMetrics, PlanBatch
from shaping.traffic import apps as A
from shaping.traffic.load import LoadNoise, LoadState, apply_load, draw_load_noise, initial_load_state, reset_where

#: CoDel target sojourn and interval (RFC 8289 defaults), used by tenants running fq_codel.
CODEL_TARGET_MS = 5.0
CODEL_INTERVAL_MS = 100.0
#: Intervals over which CoDel remembers its drop count after leaving the dropping state: RFC 8289
#: resumes from the last episode's count when dropping restarts within 16 intervals.
CODEL_MEMORY_INTERVALS = 16.0


class SimState(NamedTuple):
    """Dynamic state of every environment; class tensors are batch-last (K, C, B)."""

    t: torch.Tensor  # (B,) control step
    q_tenant: torch.Tensor  # (K, C, B) kbit in the tenant leaf queue
    q_provider: torch.Tensor  # (K, C, B) kbit in the provider queue
    tcp_window: torch.Tensor  # (K, C, B) kbit in flight (bulk)
    rtt_ms: torch.Tensor  # (K, C, B) last round-trip time
    video_buffer_s: torch.Tensor  # (K, C, B)
    video_level: torch.Tensor  # (K, C, B) int64 ladder rung
    video_tput: torch.Tensor  # (K, C, B) throughput estimate, Mbit/s
    codel_above_ms: torch.Tensor  # (K, C, B) time the sojourn has stayed above target
    codel_count: torch.Tensor  # (K, C, B) CoDel drop count
    cpu: torch.Tensor  # (K, E, B)
    memory: torch.Tensor  # (K, E, B)
    load: LoadState  # (B, ...) load processes


class StepOutput(NamedTuple):
    """What one control step measured, and the plans and schedule it ran under."""

    metrics: ClassMetrics  # (B, K, C)
    host: HostMetrics  # (B, K, E)
    path_utilization: torch.Tensor  # (B, P) served / nominal capacity of each path
    backlog_kbit: torch.Tensor  # (B, K, C) tenant + provider backlog at the end of the step
    path_delay_ms: torch.Tensor  # (B, P) one-way delay of a probe: base + added delay + the path's queued work
    path_loss: torch.Tensor  # (B, P) fraction of the traffic entering the path that it lost
    path_delivered_mbps: torch.Tensor  # (B, K, P) each tenant's traffic delivered over each path
    plan: PlanBatch  # (B, K, C) the plans in force during the step
    present: torch.Tensor  # (B, K) bool, the tenant was sending (arrived, not yet left)


class Interval(NamedTuple):
    """Quantities constant over one control interval, batch-last."""

    demand: torch.Tensor  # (K, C, B) what the applications want, Mbit/s
    app_rate: torch.Tensor  # (K, C, B) what the application sends, or lets TCP send at most
    is_tcp: torch.Tensor  # (K, C, 1) window-limited classes (bulk, video)
    rate_kbit: torch.Tensor  # (K, C, B)
    ceil_kbit: torch.Tensor  # (K, C, B)
    cap_kbit: torch.Tensor  # (K, 1, B) the root's volume per sub-step
    priority: torch.Tensor  # (K, C, B) HTB priority
    queue: torch.Tensor  # (K*C, B) flat provider queue, path * N_QUEUES + queue
    path: torch.Tensor  # (K*C, B) path of each class
    is_ef: torch.Tensor  # (K, C, B)
    path_kbit: torch.Tensor  # (P, B) volume each path serves per sub-step (scheduled events included)
    path_kbit_c: torch.Tensor  # (K, C, B)
    ef_limit_kbit: torch.Tensor  # (P, B)
    buffer_kbit: torch.Tensor  # (P,)
    path_loss: torch.Tensor  # (P, B) fraction of what each path delivers that is lost on it
    path_delay: torch.Tensor  # (P, B) each path's base delay plus its scheduled added delay, ms
    af_weights: torch.Tensor  # (P, 3)
    base_delay: torch.Tensor  # (K, C, B)
    drop: torch.Tensor  # (K, C, B)
    codel: torch.Tensor  # (K, 1, 1) bool
    codel_keep: float
    pkt: torch.Tensor  # (K, C, 1)
    cs2: torch.Tensor  # (K, C, 1)
    tx_tenant: torch.Tensor  # (K, C, B) transmission time at the root rate, ms
    tx_path: torch.Tensor  # (K, C, B)
    leaf_limit: torch.Tensor  # (K, C, 1)
    deadline: torch.Tensor  # (K, C, 1)
    flows: torch.Tensor  # (K, C, 1)
    bitrate: torch.Tensor  # (K, C, B)


class Carry(NamedTuple):
    """State and accumulators carried from one sub-step to the next, batch-last."""

    q_t: torch.Tensor
    q_p: torch.Tensor
    win: torch.Tensor
    rtt: torch.Tensor
    buf: torch.Tensor
    above: torch.Tensor
    drop_count: torch.Tensor
    offered: torch.Tensor
    delivered: torch.Tensor
    lost: torch.Tensor
    delay_vol: torch.Tensor
    on_time: torch.Tensor
    p99: torch.Tensor
    rebuffer: torch.Tensor
    admitted: torch.Tensor  # volume the provider's queues admitted (the EF policer passed it)
    path_dropped: torch.Tensor  # of it, volume the path lost: overflowed its buffer or lost on the link
    path_served: torch.Tensor  # (P*N_QUEUES, B)


def substep(s: Carry, iv: Interval, dt: float) -> Carry:
    """One fluid sub-step of every environment, tenant and class."""
    k, c, b = s.q_t.shape
    zero = torch.zeros_like(s.q_t)
    n_paths = iv.path_kbit.shape[0]
    higher, same = network.priority_masks(iv.priority)
    rate = torch.where(iv.is_tcp, torch.minimum(s.win / s.rtt, iv.app_rate), iv.app_rate)
    offered = rate * dt
    nft = offered * iv.drop
    ten = network.htb_stage(
        s.q_t, offered - nft, iv.rate_kbit, iv.ceil_kbit, iv.cap_kbit, higher, same, iv.leaf_limit, dt
    )
    # CoDel control law (RFC 8289): once the sojourn stays above target for an interval, drop at
    # interval / sqrt(count) spacing until it falls below target. Outside the dropping state the
    # count fades over CODEL_MEMORY_INTERVALS, so a new episode starts near the drop rate that
    # last controlled the queue (forgetting it within one interval let 16 Reno flows hold 15 ms).
    above = torch.where(ten.fluid_delay_ms > CODEL_TARGET_MS, s.above + dt, zero)
    dropping = (above >= CODEL_INTERVAL_MS) & iv.codel
    n_drop = dt * torch.sqrt(s.drop_count + 1.0) / CODEL_INTERVAL_MS
    codel_drop = torch.where(dropping, torch.minimum(ten.backlog, n_drop * iv.pkt), zero)
    drop_count = torch.where(dropping, s.drop_count + n_drop, s.drop_count * iv.codel_keep)
    q_t = ten.backlog - codel_drop

    prov = network.provider_stage(
        s.q_p.view(k * c, b),
        ten.served.view(k * c, b),
        iv.queue,
        iv.path_kbit,
        iv.ef_limit_kbit,
        iv.buffer_kbit,
        iv.af_weights,
        dt,
    )
    # A path's own loss (a scheduled event) takes its share of what the queues served.
    path_lost = prov.delivered.view(k, c, b) * network.from_queues(iv.path_loss, iv.path).view(k, c, b)
    delivered = prov.delivered.view(k, c, b) - path_lost
    q_p = prov.backlog.view(k, c, b)

    # Packet-scale waiting on top of the fluid backlog (M/G/1 with priorities).
    fluid_t = iv.pkt * 4.0 / (4.0 * iv.pkt + q_t)  # fades the wait where the leaf has a fluid backlog
    rw_t = network.residual_work(ten.served, iv.pkt, iv.cs2, iv.cap_kbit)
    # A leaf's own fluid backlog is served round robin with its siblings, not as an M/G/1 load in front
    # of them: fading rho by fluid_t keeps a saturated leaf from pushing its level to rho ~ 1.
    rho_t = ten.served * fluid_t / iv.cap_kbit
    before_t = network.over_classes(rho_t, higher)
    through_t = before_t + network.over_classes(rho_t, same)
    wait_t = network.priority_wait_ms(rw_t.sum(-2, keepdim=True), before_t, through_t, dt)
    # A class also queues at its own ceil (HTB's ceil token bucket serves it at most at ceil):
    # an M/G/1 wait at that rate. Taking the larger of the two keeps a lone class whose ceil is
    # the root from being counted twice; without it a class shaped to just above its load
    # showed no queueing at all (web at 95% of a 50 Mbit/s ceil: 0.15 ms instead of 3.2 ms).
    ceil_kbit = iv.ceil_kbit.clamp_min(1e-9)
    rw_ceil = network.residual_work(ten.served, iv.pkt, iv.cs2, ceil_kbit)
    wait_ceil = network.priority_wait_ms(rw_ceil, zero, ten.served / ceil_kbit, dt)
    wait_t = torch.maximum(wait_t, wait_ceil) + iv.tx_tenant
    # Tandem smoothing: a tenant's traffic leaves its HTB root at most at the root rate R, so on a
    # path of capacity C >= R its packets are spaced at least by their service time and do not
    # queue behind each other; only the other tenants' residual work counts in full. The tenant's
    # own share is weighted by 1 - (C / R)^2 for R > C (0 at R = C, -> 1 for a fast root).
    # Counting it in full (Kleinrock independence) gave the testbed's shaped transactions a 14.5 ms
    # p99 for a measured 2.7 ms.
    rw_p = network.residual_work(delivered, iv.pkt, iv.cs2, iv.path_kbit_c)
    path = iv.path.view(k, c, b)
    w0_path = network.to_queues(rw_p.view(k * c, b), iv.path, n_paths)  # (P, B)
    own_c = network.from_queues(network.to_queues(rw_p, path, n_paths), path)  # each tenant's own, (K, C, B)
    smooth = 1.0 - ((iv.path_kbit_c / iv.cap_kbit).clamp(max=1.0)) ** 2
    util_q = prov.queue_util.view(-1, N_QUEUES, b)
    rho_ef = util_q[:, 0]
    rho_all = util_q.sum(1)
    w0_c = (network.from_queues(w0_path, iv.path).view(k, c, b) - own_c * (1.0 - smooth)).clamp_min(0.0)
    ef_c = network.from_queues(rho_ef, iv.path).view(k, c, b)
    all_c = network.from_queues(rho_all, iv.path).view(k, c, b)
    wait_p = (
        network.priority_wait_ms(w0_c, torch.where(iv.is_ef, 0.0, ef_c), torch.where(iv.is_ef, ef_c, all_c), dt)
        + iv.tx_path
    )
    # Where a queue holds a fluid backlog its fluid delay describes it, so the packet-scale wait is
    # faded out by 1 / (1 + backlog / 4 packets). The provider queue is one FIFO shared by its
    # classes: its backlog, not the class's own share of it, decides (the light classes of a
    # bufferbloated FIFO kept a 5 ms Cobham wait on top of the shared sojourn that bulk did not).
    q_queue = network.from_queues(prov.queue_backlog, iv.queue).view(k, c, b)
    micro = wait_t * fluid_t + wait_p / (1.0 + q_queue / (4.0 * iv.pkt))
    fixed = iv.base_delay + ten.fluid_delay_ms + prov.fluid_delay_ms.view(k, c, b)
    # What the path itself drops, as a probe would see it; policing only hits EF beyond its admission cap.
    path_dropped = prov.overflow.view(k, c, b) + path_lost
    lost = nft + ten.overflow + codel_drop + (prov.policed.view(k, c, b) + path_dropped)

    # Sources react: TCP to loss and delay, the video player to what arrived.
    rtt = iv.base_delay + fixed + micro
    loss_p = lost / offered.clamp_min(1e-9)
    win = A.tcp_window_update(s.win, iv.flows, rtt, loss_p, dt, iv.app_rate * rtt)
    got_s = delivered / (iv.bitrate * dt).clamp_min(1e-9) * dt / 1000.0
    playing = (s.buf > 0).to(s.buf.dtype)
    buf = (s.buf + got_s - playing * dt / 1000.0).clamp(0.0, 2.0 * A.VIDEO_TARGET_BUFFER_S)
    return Carry(
        q_t=q_t,
        q_p=q_p,
        win=win,
        rtt=rtt,
        buf=buf,
        above=above,
        drop_count=drop_count,
        offered=s.offered + offered,
        delivered=s.delivered + delivered,
        lost=s.lost + lost,
        delay_vol=s.delay_vol + (fixed + micro) * delivered,
        on_time=s.on_time + A.on_time_prob(iv.deadline, fixed, micro) * offered,
        p99=torch.maximum(s.p99, fixed + A.LN100 * micro),
        rebuffer=s.rebuffer + (1.0 - playing) * dt,
        admitted=s.admitted + prov.admitted.view(k, c, b),
        path_dropped=s.path_dropped + path_dropped,
        path_served=s.path_served + prov.queue_util,
    )


def _tile(x: torch.Tensor, replicas: int) -> torch.Tensor:
    """Repeat a batch-first tensor `replicas` times along the batch (the identity for one)."""
    return x if replicas == 1 else x.repeat(replicas, *([1] * (x.dim() - 1)))


def _batch_last(x: torch.Tensor) -> torch.Tensor:
    """(B, K, C) -> contiguous (K, C, B)."""
    return x.permute(1, 2, 0).contiguous()


def _batch_first(x: torch.Tensor) -> torch.Tensor:
    """(K, C, B) -> contiguous (B, K, C)."""
    return x.permute(2, 0, 1).contiguous()


class Simulator:
    """Batched simulator of one scenario.

    Args:
        scenario: the scenario to simulate.
        batch_size: number of independent environments B.
        device: torch device ("cpu", "cuda").
        seed: seed of the simulator's random generator (None: a random seed).
        compile: fuse the sub-step with torch.compile: a compile of tens of seconds to minutes
            on first use, several times faster at large batch sizes.
        cpu_kernel: run the sub-steps in the C++ kernel of shaping.sim.cpu_kernel (built on first
            use; it agrees with the torch sub-step to an ulp or two and is 10-20 times faster at
            training batch sizes). None (default): on the CPU where the kernel builds, with a
            warning and the torch sub-step where it does not; True: on the CPU or raise; False: never.
        replicas: the batch holds this many copies of batch_size // replicas environments that draw the
            same randomness: environment i starts and loads like environment i % (batch_size // replicas)
            of a Simulator of that batch size and seed, so plans compared side by side (candidates of a
            search) see common random numbers. The arithmetic agrees to an ulp or so, not bit for bit:
            torch's vectorised and scalar loops round some functions differently, and which elements
            take which loop depends on the batch size.
    """

    def __init__(
        self,
        scenario: ScenarioConfig,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        compile: bool = False,
        cpu_kernel: bool | None = None,
        replicas: int = 1,
    ) -> None:
        if replicas < 1 or batch_size % replicas:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of replicas {replicas}")
        on_cpu = torch.device(device).type == "cpu"
        if cpu_kernel and not on_cpu:
            raise ValueError(f"cpu_kernel=True runs the sub-steps on the CPU, not on {device}")
        self.cfg = scenario
        self.tensors: ScenarioTensors = compile_scenario(scenario, device)
        self.events: EventTables = compile_events(scenario, self.tensors.n_classes, device)
        self.batch_size = batch_size
        self.replicas = replicas
        self.device = torch.device(device)
        self.dt_ms = scenario.control_interval_ms / scenario.substeps
        self.gen = torch.Generator(device=self.device)
        if seed is None:
            self.gen.seed()
        else:
            self.gen.manual_seed(seed)
        self.ladder = torch.tensor(A.VIDEO_LADDER_MBPS, device=self.device)
        st = self.tensors
        # Static per-class constants, batch-last (K, C, 1).
        self._pkt = st.apps.pkt_kbit.unsqueeze(-1)
        self._cs2 = st.apps.size_cs2.unsqueeze(-1)
        self._deadline = st.apps.deadline_ms.unsqueeze(-1)
        self._flows = st.flows.unsqueeze(-1)
        self._leaf = st.leaf_limit_kbit.unsqueeze(-1)
        self._is_tcp = ((st.apps.app == A.BULK) | (st.apps.app == A.VIDEO)).unsqueeze(-1)
        self._is_video = (st.apps.app == A.VIDEO).unsqueeze(-1)
        self._valid = st.class_valid.unsqueeze(-1).float()
        self._top_rung = A.video_level(st.mbps / 0.9, st.flows, self.ladder).unsqueeze(-1)
        # Compiled, the sub-step is one fused kernel (or a few) and so are the per-interval
        # preparation and accounting around it: eager, each of their ~170 operations is a pass
        # over the batch in memory, a sixth of a step's time on the GPU.
        self._substep: Callable[[Carry, Interval, float], Carry] = substep
        self._prepare_fn = self._prepare
        self._finish_fn = self._finish
        if compile:
            self._substep = torch.compile(substep, dynamic=False)
            self._prepare_fn = torch.compile(self._prepare, dynamic=False)
            self._finish_fn = torch.compile(self._finish, dynamic=False)
        # The sub-steps' runner, chosen once: the C++ kernel, or None for the torch sub-step loop.
        self._kernel: Callable[[Carry, Interval, float, int], Carry] | None = None
        if on_cpu and cpu_kernel is not False:
            from shaping.sim import cpu_kernel as kernel  # it imports this module

            if cpu_kernel:
                kernel.ensure_built()
            if cpu_kernel or kernel.available():
                self._kernel = kernel.run_substeps
        self.state = self._fresh_state()

    @property
    def uses_cpu_kernel(self) -> bool:
        """Whether the sub-steps run in the C++ kernel (see the cpu_kernel argument)."""
        return self._kernel is not None

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> SimState:
        st, b, dev = self.tensors, self.batch_size, self.device
        k, c, e = st.n_tenants, st.n_classes, st.n_entities
        shape = (k, c, b)
        mss = A.MSS_BYTES * 8.0 / 1000.0
        n = b // self.replicas
        u = torch.rand((k, c, n), generator=self.gen, device=dev).repeat(1, 1, self.replicas)
        load = initial_load_state(n, k, c, self.cfg.load, self.gen, dev)
        return SimState(
            t=torch.zeros(b, dtype=torch.long, device=dev),
            q_tenant=torch.zeros(shape, device=dev),
            q_provider=torch.zeros(shape, device=dev),
            tcp_window=self._flows * mss * 10.0 * (0.5 + u),
            rtt_ms=torch.full(shape, 2.0 * float(st.path_delay_ms[0]), device=dev),
            video_buffer_s=0.5 * A.VIDEO_TARGET_BUFFER_S * (0.5 + u),
            video_level=torch.zeros(shape, dtype=torch.long, device=dev),
            video_tput=(st.mbps.unsqueeze(-1) * 0.5).expand(shape).contiguous(),
            codel_above_ms=torch.zeros(shape, device=dev),
            codel_count=torch.zeros(shape, device=dev),
            cpu=torch.full((k, e, b), 0.05, device=dev),
            memory=torch.full((k, e, b), 0.15, device=dev),
            load=LoadState(*(_tile(x, self.replicas) for x in load)),
        )

    def reset(self, seed: int | None = None, mask: torch.Tensor | None = None) -> None:
        """Reset every environment, or those where mask (B,) is True."""
        if seed is not None:
            self.gen.manual_seed(seed)
        fresh = self._fresh_state()
        if mask is None:
            self.state = fresh
            return
        m = mask.to(self.device)

        def pick(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return torch.where(m, new, old)  # the batch is the last dimension

        tensors = {f: pick(getattr(fresh, f), getattr(self.state, f)) for f in SimState._fields if f != "load"}
        self.state = SimState(**tensors, load=reset_where(self.state.load, fresh.load, m))

    # ------------------------------------------------------------------- step
    def _interval(self, plan: PlanBatch, aqm: torch.Tensor | None, mult: torch.Tensor, ev: EventTables) -> Interval:
        """Plan-derived quantities, constant over the interval (batch-last); mult is the load multiplier and
        ev each environment's row of the scheduled events."""
        st, dt, s = self.tensors, self.dt_ms, self.state
        demand = st.mbps.unsqueeze(-1) * mult * self._valid  # (K, C, B) Mbit/s
        k, c, b = s.q_tenant.shape
        rate, ceil, pr, dscp, drop, path, root = (_batch_last(x) for x in plan)
        # The tenant's HTB root serves at its plan's root rate, never above what it pays for.
        root_mbps = torch.minimum(st.cap_mbps.view(k, 1, 1), root[:, :1])
        queue = st.dscp_queue[dscp]
        codel = torch.zeros(k, dtype=torch.bool, device=self.device) if aqm is None else aqm.to(self.device)
        path_mbps = st.path_mbps.unsqueeze(-1) * ev.capacity.t()  # (P, B)
        path_kbit = path_mbps * dt
        flat_path = path.reshape(k * c, b)
        path_delay = st.path_delay_ms.unsqueeze(-1) + ev.delay_ms.t()  # (P, B)
        filling = s.video_buffer_s < A.VIDEO_TARGET_BUFFER_S
        bitrate = self.ladder[s.video_level] * self._flows * mult
        # The player fetches segments as fast as TCP allows while its buffer is below target and
        # paces at the playback bitrate once full (the usual on-off pattern of DASH players).
        video_rate = torch.where(filling, demand, torch.minimum(bitrate, demand))
        return Interval(
            demand=demand,
            app_rate=torch.where(self._is_video, video_rate, demand),
            is_tcp=self._is_tcp,
            rate_kbit=rate * dt,
            ceil_kbit=ceil * dt,
            cap_kbit=root_mbps * dt,
            priority=pr,
            queue=(path * N_QUEUES + queue).view(k * c, b),
            path=flat_path,
            is_ef=queue == 0,
            path_kbit=path_kbit,
            path_kbit_c=network.from_queues(path_kbit, flat_path).view(k, c, b),
            ef_limit_kbit=path_kbit * st.ef_cap.unsqueeze(-1),
            buffer_kbit=st.path_buffer_kbit,
            path_loss=ev.loss.t().contiguous(),
            path_delay=path_delay,
            af_weights=st.af_weights,
            base_delay=network.from_queues(path_delay, flat_path).view(k, c, b),
            drop=drop,
            codel=codel.view(k, 1, 1),
            codel_keep=math.exp(-dt / (CODEL_MEMORY_INTERVALS * CODEL_INTERVAL_MS)),
            pkt=self._pkt,
            cs2=self._cs2,
            tx_tenant=self._pkt / root_mbps,
            tx_path=self._pkt / network.from_queues(path_mbps, flat_path).view(k, c, b),
            leaf_limit=self._leaf,
            deadline=self._deadline,
            flows=self._flows,
            bitrate=bitrate,
        )

    def step(self, plan: PlanBatch, aqm: torch.Tensor | None = None) -> StepOutput:
        """Advance every environment by one control interval under the given plans.

        Args:
            plan: the plans of every tenant, tensors of shape (B, K, C).
            aqm: optional (K,) bool, tenants whose leaf queues run CoDel (the fq_codel baseline).
        """
        k, c, b = self.state.q_tenant.shape
        noise = draw_load_noise(b // self.replicas, k, c, self.gen, self.device)
        noise = LoadNoise(*(_tile(x, self.replicas) for x in noise))
        ev = self.events.rows(self.state.t)
        carry, iv, load, mult = self._prepare_fn(plan, aqm, noise, ev)
        if self._kernel is not None:
            carry = self._kernel(carry, iv, self.dt_ms, self.cfg.substeps)
        else:
            for _ in range(self.cfg.substeps):
                carry = self._substep(carry, iv, self.dt_ms)
        self.state, out = self._finish_fn(carry, iv, load, mult)
        return out._replace(plan=plan, present=ev.present)

    def _prepare(
        self, plan: PlanBatch, aqm: torch.Tensor | None, noise: LoadNoise, ev: EventTables
    ) -> tuple[Carry, Interval, LoadState, torch.Tensor]:
        """Advance the load, derive the interval's constants and zero its accumulators."""
        st, s = self.tensors, self.state
        k, c, b = s.q_tenant.shape
        load, mult = apply_load(s.load, s.t, st.apps.app, self.cfg.load, noise)
        mult = _batch_last(mult * ev.load)
        iv = self._interval(plan, aqm, mult, ev)
        # The C++ kernel starts the accumulators at zero itself: its path skips the memset.
        fresh = torch.empty if self._kernel is not None else torch.zeros
        acc = fresh(9, k, c, b, device=self.device)
        carry = Carry(
            q_t=s.q_tenant,
            q_p=s.q_provider,
            win=s.tcp_window,
            rtt=s.rtt_ms,
            buf=s.video_buffer_s,
            above=s.codel_above_ms,
            drop_count=s.codel_count,
            offered=acc[0],
            delivered=acc[1],
            lost=acc[2],
            delay_vol=acc[3],
            on_time=acc[4],
            p99=acc[5],
            rebuffer=acc[6],
            admitted=acc[7],
            path_dropped=acc[8],
            path_served=fresh(st.n_paths * N_QUEUES, b, device=self.device),
        )
        return carry, iv, load, mult

    def _finish(self, r: Carry, iv: Interval, load: LoadState, mult: torch.Tensor) -> tuple[SimState, StepOutput]:
        """Turn the interval's accumulators into metrics and the next state; adapt the video players."""
        st, s = self.tensors, self.state
        b = s.q_tenant.shape[-1]
        interval = self.cfg.control_interval_ms
        offered_mbps = r.offered / interval
        delivered_mbps = r.delivered / interval
        loss = (r.lost / r.offered.clamp_min(1e-9)).clamp(0.0, 1.0)
        mean_delay = torch.where(r.delivered > 1e-9, r.delay_vol / r.delivered.clamp_min(1e-9), r.p99 / A.LN100)
        on_time = r.on_time / r.offered.clamp_min(1e-9)
        app = st.apps.app.unsqueeze(-1)
        metric = A.per_step_metric(app, on_time, loss, delivered_mbps / iv.demand.clamp_min(1e-9))
        # Quality relative to the best rung the stream can use (its per-stream peak demand).
        quality = (self.ladder[s.video_level] / self.ladder[self._top_rung]).clamp(max=1.0)
        metric = torch.where(self._is_video, quality * (1.0 - r.rebuffer / interval), metric) * self._valid

        # The video player adapts its rung to what it measured (throughput EWMA, buffer guard).
        # Throughput is only measured while fetching at full speed: paced playback reveals nothing
        # about the available bandwidth (and would walk the player down the ladder).
        filling = s.video_buffer_s < A.VIDEO_TARGET_BUFFER_S
        tput = torch.where(filling, 0.7 * s.video_tput + 0.3 * delivered_mbps, s.video_tput)
        streams = (self._flows * mult).clamp_min(1e-6)
        level = A.video_level(tput, streams, self.ladder)
        level = torch.where(r.buf < 2.0, (level - 1).clamp_min(0), level)

        cpu, memory = self._host(offered_mbps)
        state = SimState(
            t=s.t + 1,
            q_tenant=r.q_t,
            q_provider=r.q_p,
            tcp_window=r.win,
            rtt_ms=r.rtt,
            video_buffer_s=r.buf,
            video_level=level,
            video_tput=tput,
            codel_above_ms=r.above,
            codel_count=r.drop_count,
            cpu=cpu,
            memory=memory,
            load=load,
        )
        metrics = ClassMetrics(
            offered_mbps=_batch_first(offered_mbps),
            delivered_mbps=_batch_first(delivered_mbps),
            demand_mbps=_batch_first(iv.demand),
            loss=_batch_first(loss),
            delay_mean_ms=_batch_first(mean_delay),
            delay_p99_ms=_batch_first(r.p99),
            base_delay_ms=_batch_first(iv.base_delay),
            app_metric=_batch_first(metric),
        )
        util = (r.path_served / self.cfg.substeps).view(-1, N_QUEUES, b).sum(1)
        host = HostMetrics(cpu=_batch_first(cpu), memory=_batch_first(memory))
        probe_delay, path_loss, path_delivered = self._path_metrics(r, iv, util, delivered_mbps)
        # The nominal capacity is the denominator, so a degraded path shows as a less utilized one.
        util_nominal = util * iv.path_kbit / (st.path_mbps.unsqueeze(-1) * self.dt_ms)
        out = StepOutput(
            metrics, host, util_nominal.t().contiguous(), _batch_first(r.q_t + r.q_p), probe_delay, path_loss,
            path_delivered, plan=PlanBatch(*([torch.empty(0)] * 7)), present=torch.empty(0),
        )  # fmt: skip
        return state, out

    def _path_metrics(
        self, r: Carry, iv: Interval, util: torch.Tensor, delivered_mbps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a tenant can measure per path, batch-first: a probe's one-way delay (base delay, scheduled
        added delay and the time to serve the volume queued on the path), the fraction of a probe's packets
        lost on the path, and each tenant's delivered rate over it."""
        st = self.tensors
        k, c, b = r.q_p.shape
        n_paths = st.n_paths
        per_ms = iv.path_kbit / self.dt_ms  # (P, B) kbit served per ms
        queued = network.to_queues(r.q_p.view(k * c, b), iv.path, n_paths)
        delay = (iv.path_delay + queued / per_ms.clamp_min(network.EPS)).clamp(max=network.MAX_DELAY_MS)
        admitted = network.to_queues(r.admitted.view(k * c, b), iv.path, n_paths)
        lost = network.to_queues(r.path_dropped.view(k * c, b), iv.path, n_paths)
        # A probe (best effort, never policed as EF) suffers the path's own loss (a failed path loses all of
        # it) and, beyond it, what the path's queues drop: measured on the traffic they admitted, since what
        # still waits in a queue is not lost yet. EF policing is not the path's loss: a class that marks
        # beyond the admission cap sees it in its own loss.
        loss = torch.maximum((lost / admitted.clamp_min(1e-9)).clamp(0.0, 1.0), iv.path_loss)
        path_of = iv.path.view(k, c, b)
        own = torch.zeros(k, n_paths, b, device=self.device).scatter_add_(1, path_of, delivered_mbps)
        return delay.t().contiguous(), loss.t().contiguous(), own.permute(2, 0, 1).contiguous()


    def _host(self, offered_mbps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU and memory of each entity (K, E, B): driven by its classes' load, smoothed (EWMA 0.5)."""
        st, s = self.tensors, self.state
        cpu_load = torch.einsum("kcb,kce->keb", offered_mbps * st.apps.cpu_per_mbps.unsqueeze(-1), st.class_entity)
        cpu_target = (0.05 + cpu_load / st.vcpus.unsqueeze(-1)).clamp(0.0, 1.0)
        active = (offered_mbps > 0).to(offered_mbps.dtype)
        per_flow = (st.flows * st.apps.mem_per_flow_gib).unsqueeze(-1)
        flows_gib = torch.einsum("kcb,kce->keb", per_flow * active, st.class_entity)
        mem_target = (0.15 + flows_gib / st.memory_gib.unsqueeze(-1) + 0.2 * cpu_target).clamp(0.0, 1.0)
        return 0.5 * s.cpu + 0.5 * cpu_target, 0.5 * s.memory + 0.5 * mem_target
