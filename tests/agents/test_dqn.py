"""DQN: learns a tiny environment with a known optimum, stays inside the envelope, replays, checkpoints."""

from __future__ import annotations

import math
import time

import pytest
import torch

from experiments.config import DQNConfig
from shaping.agents import Envelope, TorchVecEnv, build_envelope, load_checkpoint, save_checkpoint
from shaping.agents.dqn import (
    BranchingQNetwork,
    collect_transitions,
    dqn_update,
    linear_schedule,
    make_target,
    td_targets,
    update_target,
)
from shaping.agents.replay import ReplayBatch, ReplayBuffer
from shaping.sim import ShapingVectorEnv
from shaping.sim.scenarios import load_scenario
from tests.agents.test_ppo import ContextBandit


def _no_last_choice(nvec: tuple[int, ...]) -> Envelope:
    """The envelope forbidding each dimension's last choice (never optimal in ContextBandit)."""
    return Envelope(tuple(tuple(i < n - 1 for i in range(n)) for n in nvec))


def _greedy_reward(env: ContextBandit, agent: BranchingQNetwork) -> float:
    """Mean reward of the greedy policy over every context."""
    return float((agent.act(torch.eye(env.n_contexts)) == env.optimal).float().mean())


def test_dqn_learns_the_bandit_optimum_quickly():
    torch.manual_seed(0)
    env = ContextBandit(num_envs=16)
    _: TorchVecEnv = env
    envelope = _no_last_choice(env.nvec)
    cfg = DQNConfig(learning_rate=3e-3, gamma=0.5, batch_size=64, buffer_size=2_000, tau=1.0, hidden_sizes=[32, 32])
    agent = BranchingQNetwork(env.n_contexts, env.nvec, cfg.hidden_sizes, envelope=envelope)
    target = make_target(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate)
    buffer = ReplayBuffer(cfg.buffer_size, agent.obs_dim, len(agent.nvec))
    num_iterations, explore_iterations, target_every = 400, 100, 10
    start = time.perf_counter()
    next_obs = env.reset_torch(seed=0)
    greedy = 0.0
    for iteration in range(num_iterations):
        epsilon = linear_schedule(1.0, 0.05, explore_iterations, iteration)
        batch, next_obs = collect_transitions(env, agent, next_obs, 2, epsilon, buffer=buffer)
        assert bool(envelope.contains(batch.actions).all())
        if len(buffer) >= cfg.batch_size:
            dqn_update(agent, target, optimizer, buffer.sample(cfg.batch_size), cfg)
        if iteration % target_every == 0:
            update_target(agent, target, cfg.tau)
        if iteration >= explore_iterations // 2 and iteration % 10 == 0:
            greedy = _greedy_reward(env, agent)
            if greedy == 1.0:
                break
    elapsed = time.perf_counter() - start
    print(f"iterations {iteration}, {elapsed:.2f}s, greedy return {greedy:.3f}")  # random play scores about 0.26
    assert greedy == 1.0
    assert elapsed < 20.0  # about 0.5 s alone; the margin is for a CPU shared with other jobs


def test_masking_never_picks_a_forbidden_choice():
    torch.manual_seed(0)
    nvec = (3, 4, 2, 5)
    envelope = Envelope(((False, True, False), (True, False, False, True), (False, True), (False,) * 4 + (True,)))
    agent = BranchingQNetwork(6, nvec, hidden_sizes=(16,), envelope=envelope)
    # Make the forbidden choices the most valuable: masking, not the weights, must keep them out.
    with torch.no_grad():
        agent.advantage.bias.copy_(100.0 * ~envelope.flat())
    obs = torch.randn(512, 6) * 5
    assert bool(envelope.contains(agent.act(obs)).all())
    for epsilon in (0.3, 1.0):
        assert bool(envelope.contains(agent.act(obs, deterministic=False, epsilon=epsilon)).all())
    assert bool(envelope.contains(agent.act(obs.reshape(8, 64, 6))).all())
    # Targets maximize over the envelope too, so they stay finite and ignore the forbidden values.
    batch = ReplayBatch(obs[:32], agent.act(obs[:32]), torch.zeros(32), obs[32:64], torch.zeros(32, dtype=torch.bool))
    q_next = agent.q_values(agent.obs_norm(batch.next_obs)).detach()
    best_allowed = q_next.masked_fill(~envelope.padded(), float("-inf")).max(-1).values.mean(-1)
    for double_q in (True, False):
        y = td_targets(agent, make_target(agent), batch, gamma=0.9, double_q=double_q)
        torch.testing.assert_close(y, 0.9 * best_allowed)
        assert float((y - 0.9 * q_next.max(-1).values.mean(-1)).max()) < -1.0  # forbidden values are far higher


def test_dueling_heads_and_double_q_targets_by_hand():
    torch.manual_seed(0)
    agent = BranchingQNetwork(4, (3, 2), hidden_sizes=(8,))
    nobs = torch.randn(5, 4)
    q = agent.q_values(nobs)
    assert q.shape == (5, 2, 3) and bool((q[:, 1, 2] == 0).all())  # dim 1 has 2 choices: one padding slot
    features = agent.torso(nobs)
    value = agent.value(features)
    torch.testing.assert_close(q[:, 0].mean(-1, keepdim=True), value)  # the dueling mean removes A's mean
    torch.testing.assert_close(q[:, 1, :2].mean(-1, keepdim=True), value)

    target = make_target(agent)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.randn_like(p))
    batch = ReplayBatch(
        torch.randn(5, 4),
        torch.zeros(5, 2, dtype=torch.long),
        torch.arange(5.0),
        torch.randn(5, 4),
        torch.tensor([False, True, False, False, True]),
    )
    online_next, target_next = agent.masked_q(batch.next_obs), target.masked_q(batch.next_obs)
    chosen = target_next.gather(-1, online_next.argmax(-1, keepdim=True)).squeeze(-1)
    expected = batch.rewards + 0.9 * (~batch.terminations) * chosen.mean(-1)
    torch.testing.assert_close(td_targets(agent, target, batch, 0.9, double_q=True), expected)
    expected_max = batch.rewards + 0.9 * (~batch.terminations) * target_next.max(-1).values.mean(-1)
    torch.testing.assert_close(td_targets(agent, target, batch, 0.9, double_q=False), expected_max)


def test_polyak_and_hard_target_updates():
    agent = BranchingQNetwork(3, (2, 2), hidden_sizes=(4,))
    target = make_target(agent)
    assert not any(p.requires_grad for p in target.parameters())
    agent.obs_norm.update(torch.randn(10, 3) + 4)
    with torch.no_grad():
        agent.value.bias.fill_(1.0)
        target.value.bias.fill_(0.0)
    update_target(agent, target, 0.25)
    assert float(target.value.bias) == pytest.approx(0.25)
    torch.testing.assert_close(target.obs_norm.mean, agent.obs_norm.mean)  # statistics are copied
    update_target(agent, target, 1.0)
    assert all(
        torch.equal(a, b) for a, b in zip(agent.state_dict().values(), target.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="tau"):
        update_target(agent, target, 0.0)


def test_linear_schedule_decays_then_holds():
    assert linear_schedule(1.0, 0.05, 100, 0) == pytest.approx(1.0)
    assert linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert linear_schedule(1.0, 0.05, 100, 1000) == pytest.approx(0.05)
    assert linear_schedule(1.0, 0.05, 0, 0) == pytest.approx(0.05)


def _rows(start: int, n: int) -> tuple[torch.Tensor, ...]:
    """n transitions numbered from start: every field encodes the number, to trace where it went."""
    ids = torch.arange(start, start + n)
    return (
        ids[:, None].float().expand(n, 3),
        ids[:, None].expand(n, 2),
        ids.float(),
        -ids[:, None].float().expand(n, 3),
        ids % 2 == 0,
    )


def test_replay_buffer_wraps_around_and_samples_batches():
    buffer = ReplayBuffer(capacity=10, obs_dim=3, action_dim=2)
    assert buffer.add(*_rows(0, 6)) == 6 and len(buffer) == 6 and not buffer.full
    assert buffer.add(*_rows(6, 6)) == 6 and len(buffer) == 10 and buffer.full and buffer.pos == 2
    # Transitions 10 and 11 overwrote the oldest two slots.
    assert buffer.rewards.tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    valid = torch.tensor([True, False, True, False])
    assert buffer.add(*_rows(12, 4), valid=valid) == 2 and buffer.rewards[2:4].tolist() == [12, 14]
    assert buffer.add(*_rows(100, 25)) == 10 and sorted(buffer.rewards.tolist()) == list(range(115, 125))
    batch = buffer.sample(32, generator=torch.Generator().manual_seed(0))
    assert batch.obs.shape == (32, 3) and batch.next_obs.shape == (32, 3) and batch.actions.shape == (32, 2)
    assert batch.rewards.shape == (32,) and batch.terminations.dtype == torch.bool
    # Fields of one sampled row belong to the same transition.
    assert torch.equal(batch.obs[:, 0], batch.rewards) and torch.equal(batch.actions[:, 0].float(), batch.rewards)
    assert torch.equal(batch.terminations, batch.rewards.long() % 2 == 0)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, 3, 2).sample(1)


def test_collection_skips_autoreset_steps_and_bootstraps_truncations():
    torch.manual_seed(0)
    env = ContextBandit(num_envs=3, episode_steps=2)
    agent = BranchingQNetwork(env.n_contexts, env.nvec, hidden_sizes=(8,))
    buffer = ReplayBuffer(100, agent.obs_dim, len(agent.nvec))
    tr, next_obs = collect_transitions(env, agent, env.reset_torch(seed=1), 6, epsilon=0.5, buffer=buffer)
    assert tr.truncations.all(1).tolist() == [False, True, False, False, True, False]
    assert tr.valid.all(1).tolist() == [True, True, False, True, True, False]
    assert len(buffer) == 4 * env.num_envs  # the autoreset steps are left out
    assert not bool(buffer.terminations[: len(buffer)].any())  # a truncation is not a termination
    torch.testing.assert_close(tr.next_obs[:-1], tr.obs[1:])
    torch.testing.assert_close(tr.next_obs[-1], next_obs)
    assert float(agent.obs_norm.count) == pytest.approx(6 * 3, abs=1e-3)


def test_checkpoint_round_trip_gives_the_same_actions(tmp_path):
    env = ShapingVectorEnv(num_envs=2, scenario=load_scenario("default"), tenant="gameco")
    spec = env.view.action.spec
    torch.manual_seed(0)
    agent = BranchingQNetwork(env.single_observation_space.shape[0], env.single_action_space.nvec, (32, 16))
    agent.set_envelope(build_envelope(spec))
    agent.obs_norm.update(torch.rand(64, agent.obs_dim) * 3 + 1)
    cfg = DQNConfig(hidden_sizes=[32, 16])
    loaded = load_checkpoint(save_checkpoint(tmp_path / "dqn.pt", agent, spec, cfg), spec)
    model = loaded.model
    assert isinstance(model, BranchingQNetwork) and loaded.kind == "dqn" and loaded.config["name"] == "dqn"
    assert model.envelope == build_envelope(spec)
    for name in ("mean", "var", "count"):
        torch.testing.assert_close(getattr(model.obs_norm, name), getattr(agent.obs_norm, name))
    obs = torch.rand(256, agent.obs_dim) * 4
    torch.testing.assert_close(model(obs), agent(obs))
    assert torch.equal(model.act(obs), agent.act(obs))


def test_collect_and_update_on_the_simulator_change_the_parameters():
    env = ShapingVectorEnv(num_envs=8, scenario=load_scenario("default"), tenant="gameco")
    envelope = build_envelope(env.view.action.spec)
    agent = BranchingQNetwork(env.single_observation_space.shape[0], env.single_action_space.nvec, envelope=envelope)
    target = make_target(agent)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    buffer = ReplayBuffer(64, agent.obs_dim, len(agent.nvec))
    tr, next_obs = collect_transitions(env, agent, env.reset_torch(seed=0), 4, epsilon=0.5, buffer=buffer)
    assert tr.actions.shape == (4, 8, len(agent.nvec)) and next_obs.shape == (8, agent.obs_dim)
    assert bool(envelope.contains(tr.actions).all()) and len(buffer) == 32
    cfg = DQNConfig(batch_size=16)
    stats = dqn_update(
        agent, target, torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate), buffer.sample(16), cfg
    )
    assert all(math.isfinite(v) for v in stats.values())
    changed = [k for k in before if not torch.equal(before[k], agent.state_dict()[k])]
    assert {"torso.0.weight", "value.weight", "advantage.weight"} <= set(changed)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # the target stays frozen
