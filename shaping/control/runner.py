"""PolicyRunner: calls the policy in a worker thread with a deadline, so a stalled policy cannot stall the loop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from shaping.control.backend import Observed
from shaping.control.policy import ControlPolicy, Decision
from shaping.control.watchdog import Outcome


@dataclass(frozen=True)
class CallResult:
    """The result of one deadline-bounded policy call."""

    outcome: Outcome
    decision: Decision | None
    detail: str
    """The error text, or the stall's description."""
    seconds: float
    """Time the loop waited for the call."""


@dataclass
class _Call:
    policy: ControlPolicy
    observed: Observed
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class _Worker:
    """One long-lived daemon thread running calls from its queue (None stops it)."""

    def __init__(self, torch_threads: int) -> None:
        self.jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(torch_threads,), name="fedshape-policy", daemon=True)
        self.thread.start()

    def _run(self, torch_threads: int) -> None:
        # OpenMP's thread count is per calling thread: without this a worker runs torch ops with one
        # OpenMP thread per core, whatever the agent set (torch 2.x, libgomp).
        torch.set_num_threads(torch_threads)
        while (job := self.jobs.get()) is not None:
            try:
                job.result = job.policy.decide(job.observed)
            except BaseException as err:  # reported to the loop, which falls back
                job.error = err
            finally:
                job.done.set()


class PolicyRunner:
    """Runs ``policy.decide`` on a long-lived worker thread; ``call`` waits at most ``deadline_s``.

    The worker is reused from call to call: a fresh thread per call would pay torch's per-thread
    setup (an OpenMP pool) at every step. Python cannot stop a thread: a call that misses its
    deadline keeps running and its result is discarded; while it runs, later calls report a stall
    at once instead of queueing behind it (one call in flight at most), until it finishes or
    ``reset`` abandons the worker for a new one. Daemon threads, so a policy stuck for good never
    keeps the process from exiting.

    Args:
        clock: monotonic clock in seconds (injectable).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._torch_threads = torch.get_num_threads()
        self._worker = _Worker(self._torch_threads)
        self._inflight: _Call | None = None

    def call(self, policy: ControlPolicy, observed: Observed, deadline_s: float) -> CallResult:
        """Run ``policy.decide(observed)`` and wait for it at most ``deadline_s`` seconds."""
        t0 = self.clock()
        if self._inflight is not None:
            if not self._inflight.done.is_set():
                stuck = t0 - self._inflight.started
                return CallResult(Outcome.STALL, None, f"previous call still running after {stuck:.3f} s", 0.0)
            self._inflight = None  # it finished late: its stale result is dropped
        job = _Call(policy, observed, t0)
        self._worker.jobs.put(job)
        if not job.done.wait(timeout=max(deadline_s, 0.0)):
            self._inflight = job
            return CallResult(Outcome.STALL, None, f"no answer within {deadline_s * 1e3:.1f} ms", self.clock() - t0)
        elapsed = self.clock() - t0
        if job.error is not None:
            return CallResult(Outcome.ERROR, None, f"{type(job.error).__name__}: {job.error}", elapsed)
        if not isinstance(job.result, Decision):
            detail = f"decide() returned {type(job.result).__name__}, not Decision"
            return CallResult(Outcome.ERROR, None, detail, elapsed)
        return CallResult(Outcome.OK, job.result, "", elapsed)

    @property
    def busy(self) -> bool:
        """A call that missed its deadline is still running."""
        return self._inflight is not None and not self._inflight.done.is_set()

    def reset(self) -> None:
        """Abandon a stuck call (after a policy swap): later calls run on a new worker at once."""
        if self.busy:
            self._worker.jobs.put(None)  # the old worker exits once its stuck call returns
            self._worker = _Worker(self._torch_threads)
        self._inflight = None

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the worker after its current call, and wait for it (at most ``timeout_s`` when not stuck).

        Waiting matters at exit: a daemon worker still leaving torch's OpenMP pool while the
        interpreter finalizes aborts the process ("terminate called without an active exception",
        seen with torch 2.13 in `python -m shaping.control`).
        """
        self._worker.jobs.put(None)
        if not self.busy:
            self._worker.thread.join(timeout_s)
