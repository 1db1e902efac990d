"""The C++ sub-step kernel computes what the torch sub-step computes (shaping.sim.cpu_kernel)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from shaping.sim import cpu_kernel
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import SimState, Simulator
from shaping.spec import PlanBatch

SCENARIOS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "scenario").glob("*.yaml"))

try:
    cpu_kernel.ensure_built()
    _UNAVAILABLE = ""
except cpu_kernel.KernelUnavailable as err:  # pragma: no cover - depends on the machine
    _UNAVAILABLE = str(err)

needs_kernel = pytest.mark.skipif(bool(_UNAVAILABLE), reason=f"C++ kernel unavailable: {_UNAVAILABLE[:200]}")


def random_plans(sim: Simulator, gen: torch.Generator) -> PlanBatch:
    """Plans drawn over everything a plan can say: rates, ceils, priorities, DSCP, drops, paths, roots."""
    st, b = sim.tensors, sim.batch_size
    k, c, p = st.n_tenants, st.n_classes, st.n_paths
    shape = (b, k, c)
    cap = st.cap_mbps.view(1, k, 1)
    rate = cap * (0.01 + 0.6 * torch.rand(shape, generator=gen))
    ceil = torch.minimum(rate * (1.0 + 3.0 * torch.rand(shape, generator=gen)), cap)
    drop = torch.where(torch.rand(shape, generator=gen) < 0.7, 0.0, 0.3 * torch.rand(shape, generator=gen))
    root = cap * (0.3 + 0.9 * torch.rand((b, k, 1), generator=gen))
    return PlanBatch(
        rate_mbps=rate,
        ceil_mbps=ceil,
        priority=torch.randint(0, 4, shape, generator=gen),
        dscp=torch.randint(0, 64, shape, generator=gen),
        drop_prob=drop,
        path=torch.randint(0, p, shape, generator=gen),
        root_mbps=root.expand(shape).contiguous(),
    )


def _copy(state: SimState) -> SimState:
    fields = {f: getattr(state, f).clone() for f in SimState._fields if f != "load"}
    return SimState(**fields, load=type(state.load)(*(x.clone() for x in state.load)))


def _assert_same_step(scenario: str, batch: int, steps: int, seed: int) -> None:
    """From the same state, with the same plans and load draws, both paths give the same step."""
    cfg = load_scenario(scenario)
    ref = Simulator(cfg, batch_size=batch, seed=seed, cpu_kernel=False)
    fast = Simulator(cfg, batch_size=batch, seed=seed, cpu_kernel=True)
    gen = torch.Generator().manual_seed(seed)
    aqm = torch.arange(ref.tensors.n_tenants) % 2 == 1  # CoDel leaves for every other tenant
    for _ in range(steps):
        fast.state = _copy(ref.state)  # compare one step at a time: no drift from rounding
        plan = random_plans(ref, gen)
        a, b = ref.step(plan, aqm), fast.step(plan, aqm)
        for name in a.metrics._fields:
            torch.testing.assert_close(getattr(b.metrics, name), getattr(a.metrics, name), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.path_utilization, a.path_utilization, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.backlog_kbit, a.backlog_kbit, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.host, a.host, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fast.state, ref.state, rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kernel_matches_torch_substep_on_every_scenario(scenario: str):
    _assert_same_step(scenario, batch=24, steps=12, seed=3)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 7, 8, 65, 200])
def test_kernel_handles_batches_that_do_not_fill_its_blocks(batch: int):
    """The kernel works on blocks of 8 and tiles of 64 environments; the rest must come out right."""
    _assert_same_step("default", batch=batch, steps=4, seed=11)


@needs_kernel
def test_kernel_trajectory_stays_with_torch_and_is_deterministic_across_threads():
    """Over an episode the two paths stay together (only float rounding differs), and the kernel's
    result does not depend on how many threads share the batch."""
    cfg = load_scenario("default")
    b = 96
    ref = Simulator(cfg, batch_size=b, seed=7, cpu_kernel=False)
    fast = Simulator(cfg, batch_size=b, seed=7, cpu_kernel=True)
    gen = torch.Generator().manual_seed(7)
    plan = random_plans(ref, gen)
    threads = torch.get_num_threads()
    try:
        for t in range(30):
            a = ref.step(plan)
            before = _copy(fast.state)
            gen_state = fast.gen.get_state()
            torch.set_num_threads(1)
            one = fast.step(plan)
            fast.state = before
            fast.gen.set_state(gen_state)
            torch.set_num_threads(2)
            two = fast.step(plan)
            assert torch.equal(one.metrics.delivered_mbps, two.metrics.delivered_mbps), t
            assert torch.equal(one.metrics.delay_p99_ms, two.metrics.delay_p99_ms), t
    finally:
        torch.set_num_threads(threads)
    for name in ("delivered_mbps", "loss", "delay_mean_ms", "app_metric"):
        torch.testing.assert_close(getattr(two.metrics, name), getattr(a.metrics, name), rtol=1e-3, atol=1e-3)


def test_kernel_refuses_other_devices():
    with pytest.raises(ValueError, match="CPU"):
        Simulator(load_scenario("default"), batch_size=2, device="meta", cpu_kernel=True)


def test_unavailable_kernel_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Without a compiler the error names what to install and the fallback, before any step runs."""
    from shaping.sim import native

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise native.BuildError("no C++ compiler found")

    monkeypatch.setattr(native, "build_library", no_compiler)
    cpu_kernel._library.cache_clear()
    cpu_kernel.available.cache_clear()
    try:
        expected = r"(?s)no C\+\+ compiler.*apt-get install g\+\+.*cpu_kernel=False"
        with pytest.raises(cpu_kernel.KernelUnavailable, match=expected):
            Simulator(load_scenario("default"), batch_size=2, cpu_kernel=True)
        # By default the simulator falls back to the torch sub-step, and logs it: once per process, in one line.
        with caplog.at_level(logging.WARNING, logger="shaping.sim.cpu_kernel"):
            sim = Simulator(load_scenario("default"), batch_size=2)
            again = Simulator(load_scenario("default"), batch_size=2)
        assert not sim.uses_cpu_kernel and not again.uses_cpu_kernel
        fallbacks = [r for r in caplog.records if "falls back to the torch sub-step" in r.getMessage()]
        assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
        assert "no C++ compiler" in fallbacks[0].getMessage() and "\n" not in fallbacks[0].getMessage()
    finally:
        cpu_kernel._library.cache_clear()
        cpu_kernel.available.cache_clear()


@needs_kernel
def test_kernel_is_the_default_on_the_cpu_only():
    assert Simulator(load_scenario("default"), batch_size=2).uses_cpu_kernel
    assert not Simulator(load_scenario("default"), batch_size=2, cpu_kernel=False).uses_cpu_kernel
