"""The simulator's sub-steps as one C++ kernel for the CPU (`Simulator(..., cpu_kernel=True)`).

`shaping.sim.simulator.substep` stays the model's definition (and the GPU path); the kernel in
`kernel_source.SUBSTEPS_CPP` mirrors it operation by operation and runs all sub-steps of an interval for
blocks of 8 environments whose state stays in cache, which torch.compile's loop nests over the
whole batch cannot do (docs/simulator.md, section 13). tests/sim/test_cpu_kernel.py checks the
two against each other.

The kernel is built on first use by `shaping.sim.native` (a C++ compiler is needed; the build takes a
few seconds and is cached under ~/.cache/fedshape/native) and called through ctypes, so it needs no
Python bindings and runs without the GIL. Its source is a Python string (shaping.sim.kernel_source says
why); where it cannot be built the simulator logs one warning per process and runs the torch sub-step.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import torch

from shaping.checks import one_line
from shaping.sim import native, network
from shaping.sim import simulator as sim
from shaping.sim.kernel_source import SUBSTEPS_CPP
from shaping.traffic import apps as A

log = logging.getLogger(__name__)
# -ffp-contract=off: no fused multiply-adds, so each operation rounds as torch's does and the kernel
# agrees with the torch sub-step to the last bit or two (exp aside). FEDSHAPE_LIBMVEC: glibc's
# vector expf (-lmvec).
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
_FLAGS += ["-DFEDSHAPE_LIBMVEC"]

#: Interval fields the kernel reads, in the order of its Input enum (the priority comes apart, as
#: int64, and the kernel tells EF classes by their queue).
_INPUTS = (
    "app_rate", "is_tcp", "rate_kbit", "ceil_kbit", "path_kbit_c", "base_delay", "drop", "codel", "pkt",
    "cs2", "tx_tenant", "tx_path", "leaf_limit", "deadline", "flows", "bitrate", "cap_kbit",
)  # fmt: skip
#: Carry fields in the order of the kernel's State enum: the state it reads and writes to new
#: tensors (the simulator still reads the old ones after the sub-steps), then the interval's
#: accumulators, which it computes from zero into the carry's tensors.
_STATES = ("q_t", "q_p", "win", "rtt", "buf", "above", "drop_count")
_ACCUMULATORS = ("offered", "delivered", "lost", "delay_vol", "on_time", "p99", "rebuffer", "admitted", "path_dropped")
#: Interval fields of shape (P, B), in the order of the kernel's PathInput enum.
_PATH_INPUTS = ("path_kbit", "ef_limit_kbit", "path_loss")


class KernelUnavailable(RuntimeError):
    """The C++ kernel could not be built here (no compiler, or a build error)."""


@functools.cache
def _library() -> ctypes.CDLL:
    """Build (once per machine and source version) and load the kernel."""
    try:
        source = native.source_file("fedshape_substeps", SUBSTEPS_CPP)
        path = native.build_library("fedshape_substeps", source, _FLAGS, ["-fopenmp", "-lmvec"])
    except (native.BuildError, OSError) as err:
        raise KernelUnavailable(
            f"the simulator's CPU kernel could not be built: {err}\n"
            "It needs a C++ compiler (Debian: apt-get install g++). Simulator(cpu_kernel=False) runs the "
            "torch sub-step instead."
        ) from err
    lib = ctypes.CDLL(str(path))
    fn = lib.fedshape_substeps
    p = ctypes.c_void_p
    fn.argtypes = [p] * 12 + [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


def ensure_built() -> None:
    """Build the kernel now (raises KernelUnavailable with the reason where it cannot be built)."""
    _library()


@functools.cache
def available() -> bool:
    """Whether the kernel builds here; where it does not, log one warning (per process) with the reason.

    A log record rather than warnings.warn: a Flower ClientApp's or a Ray worker's warnings are easily lost,
    and a silent fallback costs a deployment about 50 times the simulator's time.
    """
    try:
        _library()
    except KernelUnavailable as err:
        log.warning("%s The simulator falls back to the torch sub-step (about 17x slower).",
                    one_line(err))  # fmt: skip
        return False
    return True


def _broadcast(x: torch.Tensor, k: int, c: int, b: int, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, ...]]:
    """An interval field as `dtype`, and the strides of its (K, C, B) broadcast view (0 where it broadcasts)."""
    x = x.to(dtype)
    return x, x.expand(k, c, b).stride()


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def run_substeps(carry: sim.Carry, iv: sim.Interval, dt: float, substeps: int) -> sim.Carry:
    """Run `substeps` sub-steps of every environment in the C++ kernel; the same as repeating `substep`.

    Works on CPU tensors, with torch's intra-op thread count. The state comes back in new tensors.
    The accumulators (offered ... path_served) are an interval's sums: the kernel starts them at zero
    (as the simulator's _prepare does) and writes them into the carry's tensors, whatever they held.
    """
    lib = _library()
    k, c, b = carry.q_t.shape
    p = iv.path_kbit.shape[0]
    if carry.q_t.device.type != "cpu":
        raise ValueError("the C++ sub-step kernel runs on the CPU; use the torch sub-step on other devices")
    inputs, strides = zip(*(_broadcast(getattr(iv, f), k, c, b, torch.float32) for f in _INPUTS), strict=True)
    priority, priority_strides = _broadcast(iv.priority, k, c, b, torch.int64)
    state_in = [_dense(getattr(carry, f)) for f in _STATES]
    accumulators = [_dense(getattr(carry, f)) for f in _ACCUMULATORS]
    state_out = [torch.empty_like(x) for x in state_in]
    path_served = _dense(carry.path_served)
    queue = iv.queue.to(torch.int64).contiguous()
    path = iv.path.to(torch.int64).contiguous()
    path_inputs = [getattr(iv, f).float().expand(p, b).contiguous() for f in _PATH_INPUTS]
    buffer = iv.buffer_kbit.float().contiguous()
    af = iv.af_weights.float().contiguous()
    params = torch.tensor(
        [
            dt,
            iv.codel_keep,
            sim.CODEL_TARGET_MS,
            sim.CODEL_INTERVAL_MS,
            A.MSS_BYTES * 8.0 / 1000.0,
            A.LN100,
            2.0 * A.VIDEO_TARGET_BUFFER_S,
            network.EPS,
            network.RHO_MAX,
            network.MAX_DELAY_MS,
        ],
        dtype=torch.float32,
    )
    all_strides = torch.tensor([*strides, priority_strides], dtype=torch.int64).flatten()
    rc = lib.fedshape_substeps(
        _pointers(list(inputs)),
        all_strides.data_ptr(),
        priority.data_ptr(),
        _pointers(state_in),
        _pointers(state_out + accumulators),
        path_served.data_ptr(),
        queue.data_ptr(),
        path.data_ptr(),
        _pointers(path_inputs),
        buffer.data_ptr(),
        af.data_ptr(),
        params.data_ptr(),
        k,
        c,
        p,
        b,
        substeps,
        torch.get_num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"the C++ sub-step kernel failed with code {rc}")
    fields = dict(zip(_STATES + _ACCUMULATORS, state_out + accumulators, strict=True))
    return sim.Carry(**fields, path_served=path_served)
