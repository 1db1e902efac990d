"""The PPO training loop on a tiny budget: logs, checkpoints, and the checkpoint as a comparison policy."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from shaping.agents import load_checkpoint
from shaping.agents.policy import AgentPolicy
from shaping.agents.ppo import Rollout
from shaping.agents.train import CSV_FIELDS, ReturnScaler, TrainResult, train_ppo
from shaping.config import PPOConfig, TrainConfig
from shaping.evaluation import evaluate_policies
from shaping.policies import PolicyInput, baseline_policy, make_policy
from shaping.sim.scenarios import load_scenario
from shaping.sim.simulator import Simulator
from shaping.spec import scenario_specs

TINY_PPO = PPOConfig(total_timesteps=3 * 4 * 8, num_steps=8, num_minibatches=2, update_epochs=1, hidden_sizes=[16])
TINY_TRAIN = TrainConfig(num_envs=4, eval_every=2, eval_envs=2, eval_steps=4, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainResult, object]:
    out = tmp_path_factory.mktemp("train")
    return train_ppo([load_scenario("small_congested")], TINY_PPO, TINY_TRAIN, tenant=1, out_dir=out), out


def test_loop_runs_logs_and_checkpoints(trained):
    result, out = trained
    assert result.iterations == 3 and result.env_steps == 96
    rows = list(csv.DictReader((out / "train.csv").read_text().splitlines()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert tuple(rows[0]) == CSV_FIELDS
    # evaluated at iteration 2 (eval_every) and after the last one
    assert [bool(r["eval_reward"]) for r in rows] == [False, True, True]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("rollout_reward", "value_loss", "reward_scale"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert result.best_eval is not None and math.isfinite(result.best_eval.reward)
    assert 0.0 <= result.best_eval.sla_violation_rate <= 1.0
    assert result.best_path == out / "best.pt" and result.last_path == out / "last.pt"


def test_checkpoint_loads_for_the_trained_tenant(trained):
    result, out = trained
    specs = scenario_specs(load_scenario("small_congested"))
    ckpt = load_checkpoint(out / "last.pt", specs[1])
    obs = torch.rand(5, result.agent.obs_dim)
    assert torch.equal(ckpt.model.act(obs), result.agent.act(obs))  # type: ignore[operator]
    assert ckpt.meta["extra"]["scenarios"] == ["small_congested"]
    assert ckpt.meta["extra"]["scenario_policies"][specs[0].name] == "static_priority"


def test_agent_policy_drives_its_tenant_and_leaves_the_others_on_their_baseline(trained):
    _, out = trained
    sc = load_scenario("small_congested")
    policy = make_policy(f"ppo:{out / 'best.pt'}")
    assert isinstance(policy, AgentPolicy) and not policy.aqm
    sim = Simulator(sc, batch_size=3, seed=5)
    sim.reset(seed=5)
    base = baseline_policy("static_priority")
    inp = PolicyInput(0, sim.tensors, sim.state, None)
    first, ref = policy(inp), base(inp)
    assert all(torch.equal(a, b) for a, b in zip(first, ref, strict=True))  # warm-up: the baseline plan
    last = sim.step(first, torch.zeros(sim.tensors.n_tenants, dtype=torch.bool))
    plans, ref = policy(inp._replace(step=1, last=last)), base(inp)
    for a, b in zip(plans, ref, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a[:, 0], b[:, 0])  # tenant 0 is not the checkpoint's


def test_agent_policy_in_the_comparison_evaluation(trained):
    _, out = trained
    sc = load_scenario("small_congested")
    results = evaluate_policies(sc, [baseline_policy("fq_codel"), AgentPolicy(out / "best.pt", name="ppo")],
                                seeds=2, steps=4)  # fmt: skip
    r = results["ppo"]
    assert 0.0 <= r.sla_violation_rate <= 1.0 and math.isfinite(r.mean_reward) and r.utilization > 0


def test_agent_policy_errors(tmp_path, trained):
    _, out = trained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_policy(f"ppo:{tmp_path / 'missing.pt'}")
    other = load_scenario("default")  # no tenant of small_congested's names
    sim = Simulator(other, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="is for tenant"):
        AgentPolicy(out / "best.pt")(PolicyInput(0, sim.tensors, sim.state, None))


def test_scenarios_with_different_tenant_specs_are_refused():
    with pytest.raises(ValueError, match="different specs"):
        train_ppo([load_scenario("small_congested"), load_scenario("default")], TINY_PPO, TINY_TRAIN, tenant=0)


def test_return_scaler_divides_by_the_std_of_discounted_returns():
    rewards = torch.tensor([[1.0, 2.0], [3.0, 0.0], [1.0, 4.0]])
    f = torch.zeros(3, 2, dtype=torch.bool)
    done = f.clone()
    done[1, 0] = True  # env 0's episode ends at step 1: its return restarts at step 2
    ro = Rollout(torch.zeros(3, 2, 1), torch.zeros(3, 2, 1, dtype=torch.long), *(torch.zeros(3, 2),) * 1,
                 rewards, *(torch.zeros(3, 2),) * 2, f, done, ~f)  # fmt: skip
    scaler = ReturnScaler(2, gamma=0.5)
    scaled = scaler(ro).rewards
    # returns: env 0: 1, 3.5, 1 (restarted); env 1: 2, 1, 4.5
    returns = torch.tensor([1.0, 3.5, 1.0, 2.0, 1.0, 4.5], dtype=torch.float64)
    std = float(returns.var(correction=0).sqrt())
    assert scaler.scale == pytest.approx(std, rel=1e-3)
    assert torch.allclose(scaled, rewards / std, rtol=1e-3)
