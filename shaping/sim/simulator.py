"""Batched multi-tenant network simulator: B environments of K tenants sharing P provider paths.

Every control step runs `substeps` fluid sub-steps of the tenant HTB stage and the provider DSCP
stage (shaping.sim.network) with all environments, tenants and classes as tensor dimensions; the
only Python loop is over sub-steps. The simulator is a backend: it takes a PlanBatch and returns
the ClassMetrics and HostMetrics the spec turns into observations and rewards.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from shaping.config import ScenarioConfig
from shaping.sim import network
from shaping.sim.layout import N_QUEUES, ScenarioTensors, compile_scenario
from shaping.spec import ClassMetrics, HostMetrics, PlanBatch
from shaping.traffic import apps as A
from shaping.traffic.load import LoadState, advance_load, initial_load_state, reset_where

#: CoDel target sojourn and interval (RFC 8289 defaults), used by tenants running fq_codel.
CODEL_TARGET_MS = 5.0
CODEL_INTERVAL_MS = 100.0
#: Intervals over which CoDel remembers its drop count after leaving the dropping state: RFC 8289
#: resumes from the last episode's count when dropping restarts within 16 intervals.
CODEL_MEMORY_INTERVALS = 16.0


class SimState(NamedTuple):
    """Dynamic state of every environment."""

    t: torch.Tensor  # (B,) control step
    q_tenant: torch.Tensor  # (B, K, C) kbit in the tenant leaf queue
    q_provider: torch.Tensor  # (B, K, C) kbit in the provider queue
    tcp_window: torch.Tensor  # (B, K, C) kbit in flight (bulk)
    rtt_ms: torch.Tensor  # (B, K, C) last round-trip time
    video_buffer_s: torch.Tensor  # (B, K, C)
    video_level: torch.Tensor  # (B, K, C) int64 ladder rung
    video_tput: torch.Tensor  # (B, K, C) throughput estimate, Mbit/s
    codel_above_ms: torch.Tensor  # (B, K, C) time the sojourn has stayed above target
    codel_count: torch.Tensor  # (B, K, C) CoDel drop count
    cpu: torch.Tensor  # (B, K, E)
    memory: torch.Tensor  # (B, K, E)
    load: LoadState


class StepOutput(NamedTuple):
    """What one control step measured."""

    metrics: ClassMetrics  # (B, K, C)
    host: HostMetrics  # (B, K, E)
    path_utilization: torch.Tensor  # (B, P) delivered / capacity of each path
    backlog_kbit: torch.Tensor  # (B, K, C) tenant + provider backlog at the end of the step


class Simulator:
    """Batched simulator of one scenario.

    Args:
        scenario: the scenario to simulate.
        batch_size: number of independent environments B.
        device: torch device ("cpu", "cuda").
        seed: seed of the simulator's random generator.
    """

    def __init__(
        self,
        scenario: ScenarioConfig,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ) -> None:
        self.cfg = scenario
        self.tensors: ScenarioTensors = compile_scenario(scenario, device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dt_ms = scenario.control_interval_ms / scenario.substeps
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed if seed is not None else 0)
        self.ladder = torch.tensor(A.VIDEO_LADDER_MBPS, device=self.device)
        self.state = self._fresh_state()

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> SimState:
        st, b, dev = self.tensors, self.batch_size, self.device
        k, c, e = st.n_tenants, st.n_classes, st.n_entities
        shape = (b, k, c)
        mss = A.MSS_BYTES * 8.0 / 1000.0
        u = torch.rand(shape, generator=self.gen, device=dev)
        return SimState(
            t=torch.zeros(b, dtype=torch.long, device=dev),
            q_tenant=torch.zeros(shape, device=dev),
            q_provider=torch.zeros(shape, device=dev),
            tcp_window=(st.flows * mss * 10.0).expand(shape) * (0.5 + u),
            rtt_ms=(2.0 * st.path_delay_ms[0]).expand(shape).clone(),
            video_buffer_s=torch.full(shape, 0.5 * A.VIDEO_TARGET_BUFFER_S, device=dev) * (0.5 + u),
            video_level=torch.zeros(shape, dtype=torch.long, device=dev),
            video_tput=st.mbps.expand(shape) * 0.5,
            codel_above_ms=torch.zeros(shape, device=dev),
            codel_count=torch.zeros(shape, device=dev),
            cpu=torch.full((b, k, e), 0.05, device=dev),
            memory=torch.full((b, k, e), 0.15, device=dev),
            load=initial_load_state(b, k, c, self.cfg.load, self.gen, dev),
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
            return torch.where(m.view(-1, *([1] * (old.dim() - 1))), new, old)

        tensors = {f: pick(getattr(fresh, f), getattr(self.state, f)) for f in SimState._fields if f != "load"}
        self.state = SimState(**tensors, load=reset_where(self.state.load, fresh.load, m))

    # ------------------------------------------------------------------- step
    def step(self, plan: PlanBatch, aqm: torch.Tensor | None = None) -> StepOutput:
        """Advance every environment by one control interval under the given plans.

        Args:
            plan: the plans of every tenant, tensors of shape (B, K, C).
            aqm: optional (K,) bool, tenants whose leaf queues run CoDel (the fq_codel baseline).
        """
        st, s, dt = self.tensors, self.state, self.dt_ms
        b, k, c = s.q_tenant.shape
        apps = st.apps
        load, mult = advance_load(s.load, s.t, apps.app, self.cfg.load, self.gen)
        valid = st.class_valid.to(mult.dtype)
        demand = st.mbps * mult * valid  # (B, K, C) Mbit/s
        is_bulk = apps.app == A.BULK
        is_video = apps.app == A.VIDEO
        streams = st.flows * mult
        bitrate = self.ladder[s.video_level] * streams
        # The player fetches segments as fast as TCP allows while its buffer is below target and
        # paces at the playback bitrate once full (the usual on-off pattern of DASH players).
        filling = s.video_buffer_s < A.VIDEO_TARGET_BUFFER_S
        video_rate = torch.where(filling, demand, torch.minimum(bitrate, demand))
        open_rate = torch.where(is_video, video_rate, demand)

        # Plan-derived quantities, constant over the interval.
        rate_kbit = plan.rate_mbps * dt
        ceil_kbit = plan.ceil_mbps * dt
        # The tenant's HTB root serves at its plan's root rate, never above what it pays for.
        root_mbps = torch.minimum(st.cap_mbps.view(k, 1), plan.root_mbps[..., :1])
        cap_kbit = root_mbps * dt
        pr = plan.priority
        higher = (pr.unsqueeze(-1) < pr.unsqueeze(-2)).to(mult.dtype)
        same = (pr.unsqueeze(-1) == pr.unsqueeze(-2)).to(mult.dtype)
        queue = st.dscp_queue[plan.dscp]
        queue_index = (plan.path * N_QUEUES + queue).view(b, -1)
        is_ef = queue == 0
        path_kbit = st.path_mbps * dt
        path_kbit_c = path_kbit[plan.path]
        base_delay = st.path_delay_ms[plan.path]
        drop = plan.drop_prob
        codel = torch.zeros(k, dtype=torch.bool, device=self.device) if aqm is None else aqm.to(self.device)
        codel_c = codel.view(1, k, 1)
        codel_keep = math.exp(-dt / (CODEL_MEMORY_INTERVALS * CODEL_INTERVAL_MS))
        pkt, cs2 = apps.pkt_kbit, apps.size_cs2
        tx_tenant = pkt / root_mbps
        tx_path = pkt / st.path_mbps[plan.path]

        acc = {
            n: torch.zeros(b, k, c, device=self.device)
            for n in ("offered", "delivered", "lost", "delay_vol", "on_time")
        }
        p99 = torch.zeros(b, k, c, device=self.device)
        rebuffer = torch.zeros(b, k, c, device=self.device)
        path_served = torch.zeros(b, st.n_paths * N_QUEUES, device=self.device)
        q_t, q_p, win, rtt = s.q_tenant, s.q_provider, s.tcp_window, s.rtt_ms
        buf, above, count = s.video_buffer_s, s.codel_above_ms, s.codel_count

        for _ in range(self.cfg.substeps):
            rate = torch.where(is_bulk, torch.minimum(win / rtt, demand), open_rate)
            offered = rate * dt
            nft = offered * drop
            ten = network.htb_stage(
                q_t, offered - nft, rate_kbit, ceil_kbit, cap_kbit, higher, same, st.leaf_limit_kbit, dt
            )
            # CoDel control law (RFC 8289): once the sojourn stays above target for an
            # interval, drop at interval / sqrt(count) spacing until it falls below target.
            above = torch.where(ten.fluid_delay_ms > CODEL_TARGET_MS, above + dt, torch.zeros_like(above))
            dropping = (above >= CODEL_INTERVAL_MS) & codel_c
            n_drop = dt * torch.sqrt(count + 1.0) / CODEL_INTERVAL_MS
            codel_drop = torch.where(dropping, torch.minimum(ten.backlog, n_drop * pkt), torch.zeros_like(above))
            # Outside the dropping state the count fades over CODEL_MEMORY_INTERVALS, so a new episode
            # starts near the drop rate that last controlled the queue (halving it every sub-step
            # forgot that rate within one interval and let 16 Reno flows hold 15 ms instead of ~5 ms).
            count = torch.where(dropping, count + n_drop, count * codel_keep)
            q_t = ten.backlog - codel_drop

            prov = network.provider_stage(
                q_p, ten.served, queue_index, path_kbit, path_kbit * st.ef_cap, st.path_buffer_kbit, st.af_weights, dt
            )
            q_p = prov.backlog
            path_served = path_served + prov.queue_util

            # Packet-scale waiting on top of the fluid backlog (M/G/1 with priorities).
            rw_t = network.residual_work(ten.served, pkt, cs2, cap_kbit)
            rho_t = ten.served / cap_kbit
            rho_row = rho_t.unsqueeze(-2)
            before_t = (rho_row @ higher).squeeze(-2)
            through_t = before_t + (rho_row @ same).squeeze(-2)
            wait_t = network.priority_wait_ms(rw_t.sum(-1, keepdim=True), before_t, through_t, dt)
            # A class also queues at its own ceil (HTB's ceil token bucket serves it at most at ceil):
            # an M/G/1 wait at that rate. Taking the larger of the two keeps a lone class whose ceil is
            # the root from being counted twice; without it a class shaped to just above its load
            # showed no queueing at all (web at 95% of a 50 Mbit/s ceil: 0.15 ms instead of 3.2 ms).
            rho_ceil = ten.served / ceil_kbit.clamp_min(1e-9)
            rw_ceil = network.residual_work(ten.served, pkt, cs2, ceil_kbit)
            wait_ceil = network.priority_wait_ms(rw_ceil, torch.zeros_like(rho_ceil), rho_ceil, dt)
            wait_t = torch.maximum(wait_t, wait_ceil) + tx_tenant
            rw_p = network.residual_work(prov.delivered, pkt, cs2, path_kbit_c).view(b, -1)
            w0_q = torch.zeros_like(path_served).scatter_add_(1, queue_index, rw_p)
            w0_path = w0_q.view(b, -1, N_QUEUES).sum(-1)
            util_q = prov.queue_util.view(b, -1, N_QUEUES)
            rho_ef = util_q[..., 0]
            rho_all = util_q.sum(-1)
            path_idx = plan.path.view(b, -1)
            w0_c = w0_path.gather(1, path_idx).view(b, k, c)
            ef_c = rho_ef.gather(1, path_idx).view(b, k, c)
            all_c = rho_all.gather(1, path_idx).view(b, k, c)
            wait_p = network.priority_wait_ms(
                w0_c, torch.where(is_ef, 0.0, ef_c), torch.where(is_ef, ef_c, all_c), dt
            ) + tx_path
            micro = wait_t / (1.0 + q_t / (4.0 * pkt)) + wait_p / (1.0 + q_p / (4.0 * pkt))
            fixed = base_delay + ten.fluid_delay_ms + prov.fluid_delay_ms
            lost = nft + ten.overflow + codel_drop + prov.policed + prov.overflow

            acc["offered"] += offered
            acc["delivered"] += prov.delivered
            acc["lost"] += lost
            acc["delay_vol"] += (fixed + micro) * prov.delivered
            acc["on_time"] += A.on_time_prob(apps.deadline_ms, fixed, micro) * offered
            p99 = torch.maximum(p99, fixed + A.LN100 * micro)

            # Sources react: TCP to loss and delay, the video player to what arrived.
            rtt = base_delay + fixed + micro
            loss_p = lost / offered.clamp_min(1e-9)
            win = A.tcp_window_update(win, st.flows, rtt, loss_p, dt, demand * rtt)
            got_s = prov.delivered / (bitrate * dt).clamp_min(1e-9) * dt / 1000.0
            playing = buf > 0
            rebuffer = rebuffer + (~playing).to(buf.dtype) * dt
            buf = (buf + got_s - playing.to(buf.dtype) * dt / 1000.0).clamp(0.0, 2.0 * A.VIDEO_TARGET_BUFFER_S)

        interval = self.cfg.control_interval_ms
        offered_mbps = acc["offered"] / interval
        delivered_mbps = acc["delivered"] / interval
        loss = (acc["lost"] / acc["offered"].clamp_min(1e-9)).clamp(0.0, 1.0)
        mean_delay = torch.where(
            acc["delivered"] > 1e-9, acc["delay_vol"] / acc["delivered"].clamp_min(1e-9), p99 / A.LN100
        )
        on_time = acc["on_time"] / acc["offered"].clamp_min(1e-9)
        metric = A.per_step_metric(apps.app, on_time, loss, delivered_mbps / demand.clamp_min(1e-9))
        # Quality relative to the best rung the stream can use (its per-stream peak demand).
        top = A.video_level(st.mbps / 0.9, st.flows, self.ladder)
        quality = (self.ladder[s.video_level] / self.ladder[top]).clamp(max=1.0)
        metric = torch.where(is_video, quality * (1.0 - rebuffer / interval), metric) * valid

        # The video player adapts its rung to what it measured (throughput EWMA, buffer guard).
        # Throughput is only measured while fetching at full speed: paced playback reveals nothing
        # about the available bandwidth (and would walk the player down the ladder).
        tput = torch.where(filling, 0.7 * s.video_tput + 0.3 * delivered_mbps, s.video_tput)
        level = A.video_level(tput, streams.clamp_min(1e-6), self.ladder)
        level = torch.where(buf < 2.0, (level - 1).clamp_min(0), level)

        host = self._host(offered_mbps)
        self.state = SimState(
            t=s.t + 1,
            q_tenant=q_t,
            q_provider=q_p,
            tcp_window=win,
            rtt_ms=rtt,
            video_buffer_s=buf,
            video_level=level,
            video_tput=tput,
            codel_above_ms=above,
            codel_count=count,
            cpu=host.cpu,
            memory=host.memory,
            load=load,
        )
        metrics = ClassMetrics(
            offered_mbps=offered_mbps,
            delivered_mbps=delivered_mbps,
            demand_mbps=demand,
            loss=loss,
            delay_mean_ms=mean_delay,
            delay_p99_ms=p99,
            base_delay_ms=base_delay,
            app_metric=metric,
        )
        util = (path_served / self.cfg.substeps).view(b, -1, N_QUEUES).sum(-1)
        return StepOutput(metrics, host, util, q_t + q_p)

    def _host(self, offered_mbps: torch.Tensor) -> HostMetrics:
        """CPU and memory of each entity: driven by the load of its classes, smoothed (EWMA 0.5)."""
        st, s = self.tensors, self.state
        cpu_load = torch.einsum("bkc,kce->bke", offered_mbps * st.apps.cpu_per_mbps, st.class_entity)
        cpu_target = (0.05 + cpu_load / st.vcpus).clamp(0.0, 1.0)
        flows_gib = torch.einsum(
            "bkc,kce->bke", st.flows * st.apps.mem_per_flow_gib * (offered_mbps > 0), st.class_entity
        )
        mem_target = (0.15 + flows_gib / st.memory_gib + 0.2 * cpu_target).clamp(0.0, 1.0)
        return HostMetrics(cpu=0.5 * s.cpu + 0.5 * cpu_target, memory=0.5 * s.memory + 0.5 * mem_target)
