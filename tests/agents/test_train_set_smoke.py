"""Tiny-budget run of train_set_ppo over tenants of different shapes, and its saved model as ``set:PATH``."""

from __future__ import annotations

from pathlib import Path

import torch

from shaping.agents.set_policy import SetActorCritic, SetPolicyConfig, load_set_policy
from shaping.agents.train_set import train_set_ppo
from shaping.agents.universal import TenantTask
from shaping.config import PPOConfig, TrainConfig
from shaping.evaluation import evaluate_policy
from shaping.policies import make_policy
from shaping.sim.scenarios import load_scenario


def test_a_few_iterations_over_three_layouts(tmp_path: Path) -> None:
    tasks = [  # 4 classes x 2 paths, 2 classes x 1 path, 3 classes x 3 paths
        TenantTask("default", "gameco", num_envs=2),
        TenantTask("single_path", "devops", num_envs=2),
        TenantTask("datacenter", "search", num_envs=2),
    ]
    cfg = PPOConfig(total_timesteps=3 * 2 * 4, num_steps=4, num_minibatches=1, update_epochs=1)
    train = TrainConfig(episode_steps=6, eval_every=2, eval_envs=1, eval_steps=3, progress=False, tensorboard=False)
    small = SetPolicyConfig(d_model=16, n_heads=2, d_ff=32, d_key=8)
    before = [p.detach().clone() for p in load_model_params(small)]
    result = train_set_ppo(tasks, cfg, train, model_config=small, out_dir=tmp_path)
    assert result.iterations == 3 and result.env_steps == 24
    assert [row["scenario"] for row in result.history] == [t.name for t in tasks]
    assert result.best_eval is not None and set(result.evals) == {t.name for t in tasks}
    assert (tmp_path / "train.csv").is_file() and result.best_path is not None and result.last_path is not None
    after = list(result.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
    loaded = load_set_policy(result.last_path)
    assert loaded.config == small
    r = evaluate_policy(load_scenario("edge_gaming"), make_policy(f"set:{result.best_path}"), seeds=1, steps=2)
    assert r.controlled  # a scenario it never trained on


def load_model_params(config: SetPolicyConfig) -> list[torch.nn.Parameter]:
    """The initial parameters train_set_ppo's seeded model starts from (same seed, same construction)."""
    torch.manual_seed(TrainConfig().seed)
    return list(SetActorCritic(config).parameters())
