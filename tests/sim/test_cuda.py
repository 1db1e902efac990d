"""The simulator and the vector env on CUDA agree with the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from shaping.baselines import get_baseline
from shaping.config import LoadConfig
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import SimState, Simulator
from shaping.spec import PlanBatch, stack_plans
from shaping.traffic.load import LoadState

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _to(state: SimState, device: str) -> SimState:
    fields = {f: getattr(state, f).to(device) for f in SimState._fields if f != "load"}
    return SimState(**fields, load=LoadState(*(x.to(device) for x in state.load)))


@pytest.mark.parametrize("baseline", ["static_priority", "fq_codel"])
def test_cuda_matches_cpu_without_randomness(baseline: str):
    """With load variation off, the only randomness is the initial state: copy it and compare."""
    cfg = load_scenario("default")
    cfg.load = LoadConfig(diurnal_amplitude=0.0, burst_prob=0.0, flash_crowd_prob=0.0, web_pareto=False)
    b = 32
    cpu = Simulator(cfg, batch_size=b, seed=1)
    gpu = Simulator(cfg, batch_size=b, seed=1, device="cuda")
    gpu.state = _to(cpu.state, "cuda")
    base = get_baseline(baseline)
    st = cpu.tensors
    one = stack_plans([[base.plan(s) for s in st.specs]], st.n_classes)
    plan = PlanBatch(*(x.expand(b, *x.shape[1:]).contiguous() for x in one))
    aqm = torch.tensor([base.aqm] * st.n_tenants)
    for _ in range(5):
        a = cpu.step(plan, aqm)
        g = gpu.step(PlanBatch(*(x.cuda() for x in plan)), aqm.cuda())
    for name in a.metrics._fields:
        torch.testing.assert_close(getattr(g.metrics, name).cpu(), getattr(a.metrics, name), rtol=2e-3, atol=2e-3)


def test_vector_env_runs_on_cuda():
    from shaping.sim.vector_env import ShapingVectorEnv

    env = ShapingVectorEnv(num_envs=64, device="cuda")
    obs = env.reset_torch(seed=0)
    assert obs.device.type == "cuda"
    nvec = torch.as_tensor(env.single_action_space.nvec, device="cuda")
    for _ in range(3):
        actions = (torch.rand(64, nvec.numel(), device="cuda") * nvec).long()
        out = env.step_torch(actions)
    assert out.obs.device.type == "cuda" and torch.isfinite(out.reward).all()
