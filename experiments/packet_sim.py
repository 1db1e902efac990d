"""Packet-level reference queues in numpy, independent of the fluid simulator they validate.

- `lindley_fifo`: a single FIFO server fed by Poisson arrivals, by the Lindley recursion
  W_{n+1} = max(0, W_n + S_n - A_{n+1}), vectorized as W_n = R_n - min(0, min_{k<=n} R_k) with
  R_n the random walk of S - A (the reflected walk is the Lindley recursion unrolled).
- `priority_fifo`: a non-preemptive priority server with Poisson classes, event by event.

Service times are deterministic (cs2 = 0), exponential (cs2 = 1) or gamma with the given
squared coefficient of variation, so the M/D/1, M/M/1 and M/G/1 cases of the simulator's
Pollaczek-Khinchine and Cobham formulas all have a reference.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np


class QueueSample(NamedTuple):
    """Waiting times (in queue, before service) and sojourn times (wait + service) of served packets."""

    wait: np.ndarray
    sojourn: np.ndarray


def service_times(rng: np.random.Generator, mean: float, cs2: float, size: tuple[int, ...]) -> np.ndarray:
    """Service times with the given mean and squared coefficient of variation (0: deterministic)."""
    if cs2 <= 0.0:
        return np.full(size, mean)
    if cs2 == 1.0:
        return rng.exponential(mean, size=size)
    return rng.gamma(1.0 / cs2, mean * cs2, size=size)


def lindley_fifo(
    rho: float,
    service_mean: float,
    cs2: float,
    packets: int,
    reps: int,
    rng: np.random.Generator,
    warmup: int = 0,
) -> QueueSample:
    """Waits and sojourns of a FIFO M/G/1 queue at utilization rho.

    Args:
        rho: utilization (arrival rate x mean service time), below 1.
        service_mean: mean service time (the unit of the results).
        cs2: squared coefficient of variation of the service time.
        packets: packets per replication.
        reps: independent replications, each starting empty.
        rng: numpy random generator.
        warmup: packets dropped from the start of each replication (the empty start biases low).
    Returns:
        Arrays of shape (reps, packets - warmup).
    """
    gaps = rng.exponential(service_mean / rho, size=(reps, packets))
    service = service_times(rng, service_mean, cs2, (reps, packets))
    walk = np.concatenate([np.zeros((reps, 1)), np.cumsum(service[:, :-1] - gaps[:, 1:], axis=1)], axis=1)
    wait = walk - np.minimum.accumulate(np.minimum(walk, 0.0), axis=1)
    return QueueSample(wait[:, warmup:], (wait + service)[:, warmup:])


def priority_fifo(
    rates: list[float],
    service_means: list[float],
    cs2: list[float],
    packets: int,
    rng: np.random.Generator,
    warmup_frac: float = 0.05,
) -> list[QueueSample]:
    """Waits and sojourns per class of a non-preemptive priority server (class 0 served first).

    Within a class packets are served in arrival order; a packet in service is never interrupted.

    Args:
        rates: Poisson arrival rate of each class (per unit time).
        service_means: mean service time of each class.
        cs2: squared coefficient of variation of each class's service time.
        packets: total packets simulated over all classes.
        rng: numpy random generator.
        warmup_frac: fraction of the horizon whose arrivals are left out of the results.
    Returns:
        One QueueSample per class, in class order.
    """
    horizon = packets / sum(rates)
    times, cls, serv = [], [], []
    for c, (lam, mean, v) in enumerate(zip(rates, service_means, cs2, strict=True)):
        n = rng.poisson(lam * horizon)
        times.append(np.sort(rng.uniform(0.0, horizon, n)))
        cls.append(np.full(n, c))
        serv.append(service_times(rng, mean, v, (n,)))
    t_arr = np.concatenate(times)
    order = np.argsort(t_arr, kind="stable")
    t_arr, c_arr, s_arr = t_arr[order], np.concatenate(cls)[order], np.concatenate(serv)[order]
    start = np.empty_like(t_arr)
    queues: list[deque[int]] = [deque() for _ in rates]
    now, nxt, total = 0.0, 0, len(t_arr)
    for _ in range(total):
        while nxt < total and t_arr[nxt] <= now:
            queues[c_arr[nxt]].append(nxt)
            nxt += 1
        if not any(queues):
            # Idle server: jump to the next arrival, which is served at once.
            now = t_arr[nxt]
            queues[c_arr[nxt]].append(nxt)
            nxt += 1
        j = next(q for q in queues if q).popleft()
        start[j] = now
        now += s_arr[j]
    keep = t_arr >= warmup_frac * horizon
    out = []
    for c in range(len(rates)):
        sel = keep & (c_arr == c)
        wait = start[sel] - t_arr[sel]
        out.append(QueueSample(wait, wait + s_arr[sel]))
    return out
