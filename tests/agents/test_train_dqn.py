"""The DQN training loop on a tiny budget: logs, checkpoints of kind dqn, and the checkpoint as a ``dqn:`` policy."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from shaping.agents import BranchingQNetwork, load_checkpoint
from shaping.agents.policy import AgentPolicy
from shaping.agents.train import TrainResult
from shaping.agents.train_dqn import DQN_CSV_FIELDS, steps_per_iteration, train_dqn
from shaping.config import DQNConfig, TrainConfig
from shaping.evaluation import evaluate_policies
from shaping.policies import baseline_policy, make_policy
from shaping.sim.scenarios import load_scenario
from shaping.spec import scenario_specs

# 4 environments x 2 steps (target_network_frequency 8) = 8 transitions per iteration, 4 iterations.
TINY_DQN = DQNConfig(total_timesteps=32, learning_starts=16, batch_size=8, buffer_size=64,
                     target_network_frequency=8, train_frequency=4, hidden_sizes=[16])  # fmt: skip
TINY_TRAIN = TrainConfig(num_envs=4, eval_every=2, eval_envs=2, eval_steps=4, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainResult, object]:
    out = tmp_path_factory.mktemp("dqn")
    return train_dqn([load_scenario("small_congested")], TINY_DQN, TINY_TRAIN, tenant=1, out_dir=out), out


def test_iterations_cover_one_target_period():
    assert steps_per_iteration(TINY_DQN, 4) == 2
    assert steps_per_iteration(DQNConfig(target_network_frequency=1000), 64) == 16
    assert steps_per_iteration(DQNConfig(target_network_frequency=1), 64) == 1


def test_loop_runs_logs_learns_and_checkpoints(trained):
    result, out = trained
    assert isinstance(result.agent, BranchingQNetwork)
    assert result.iterations == 4 and result.env_steps == 32
    rows = list(csv.DictReader((out / "train.csv").read_text().splitlines()))
    assert tuple(rows[0]) == DQN_CSV_FIELDS
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    # learning starts once 16 transitions are stored (after iteration 2): 8 / train_frequency updates each
    assert [r["updates"] for r in rows] == ["", "2.0", "2.0", "2.0"]
    assert all(math.isfinite(float(r["td_loss"])) for r in rows[1:])
    # epsilon decays from start_e over exploration_fraction * total_timesteps steps
    eps = [float(r["epsilon"]) for r in rows]
    assert eps[0] == 1.0 and eps == sorted(eps, reverse=True) and eps[-1] < 1.0
    assert [bool(r["eval_reward"]) for r in rows] == [False, True, False, True]
    assert result.best_eval is not None and 0.0 <= result.best_eval.sla_violation_rate <= 1.0
    assert result.best_path == out / "best.pt" and (out / "last.pt").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_is_a_dqn_model_for_its_tenant(trained):
    result, out = trained
    spec = scenario_specs(load_scenario("small_congested"))[1]
    ckpt = load_checkpoint(out / "last.pt", spec)
    assert ckpt.kind == "dqn" and isinstance(ckpt.model, BranchingQNetwork)
    obs = torch.rand(5, result.agent.obs_dim)
    assert torch.equal(ckpt.model.act(obs), result.agent.act(obs))  # type: ignore[operator]
    assert ckpt.config["buffer_size"] == 64


def test_dqn_policy_in_the_comparison(trained):
    _, out = trained
    ref = f"dqn:{out / 'best.pt'}"
    policy = make_policy(ref)
    assert isinstance(policy, AgentPolicy) and policy.name == ref
    sc = load_scenario("small_congested")
    results = evaluate_policies(sc, [baseline_policy("fq_codel"), policy], seeds=2, steps=4)
    r = results[ref]
    assert 0.0 <= r.sla_violation_rate <= 1.0 and math.isfinite(r.mean_reward)
