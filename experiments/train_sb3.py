"""Stable-Baselines3 PPO on the batched simulator: ``python -m experiments.train_sb3 [overrides]``.

Trains SB3's PPO (MlpPolicy) for one tenant of a scenario through ShapingSB3VecEnv (`num_envs`
environments in one simulator batch, observation and reward normalization by VecNormalize), then
runs the trained policy (greedy) and a uniformly random policy on the same held-out environments
(`eval_envs` x `eval_steps`, seed `eval_seed`) and prints one JSON object: mean reward per step and
SLA violations per step of each, the training time and throughput, and where the model was saved.
Needs the optional dependency ``stable-baselines3`` (``pip install -e '.[sb3]'``).

    python -m experiments.train_sb3                                   # 200k env steps on default, gameco
    python -m experiments.train_sb3 scenario=edge_gaming tenant=arena total_timesteps=500000
    python -m experiments.train_sb3 total_timesteps=2048 eval_steps=20  # a quick look
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import CONF_PATH, exits_2_on_config_error, register_configs, to_typed
from experiments.threads import torch_threads
from shaping.checks import above, at_least
from shaping.config import RewardConfig, ScenarioConfig


@dataclass
class TrainSB3Config:
    """Primary config of experiments.train_sb3."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The scenario (conf/scenario/)."""
    tenant: str | None = None
    """The learning tenant; None: the scenario's first. The others follow their scenario policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights (training and evaluation)."""
    num_envs: int = 64
    """Environments of the training batch (one simulator batch)."""
    total_timesteps: int = 200_000
    """Env steps of training (all environments together), rounded up to whole rollouts by SB3."""
    n_steps: int = 32
    """Steps per environment per rollout: 32 x 64 environments is SB3's default rollout of 2048."""
    batch_size: int = 64
    """PPO minibatch (SB3's default)."""
    n_epochs: int = 10
    """PPO epochs per rollout (SB3's default)."""
    learning_rate: float = 3e-4
    """Adam's step size (SB3's default)."""
    max_episode_steps: int | None = None
    """Training episode length; None: the scenario's episode_steps."""
    normalize: bool = True
    """Normalize observations and rewards with VecNormalize (the evaluation uses the training statistics)."""
    eval_envs: int = 8
    """Environments of the evaluation."""
    eval_steps: int = 300
    """Steps of the evaluation."""
    eval_seed: int = 10_000
    """Seed of the evaluation batch (apart from training's)."""
    seed: int = 0
    """Seed of training (simulator and SB3)."""
    torch_threads: int = 1
    """torch threads (1: small networks, and results that do not depend on the machine's load)."""
    save: bool = True
    """Save the model (sb3_ppo.zip) and VecNormalize statistics (vecnormalize.pkl) in the run directory."""

    def __post_init__(self) -> None:
        at_least("train_sb3", self, 1, "num_envs", "total_timesteps", "n_steps", "batch_size", "n_epochs",
                 "eval_envs", "eval_steps", "torch_threads")  # fmt: skip
        above("train_sb3", self, 0, "learning_rate")


def evaluate(
    cfg: TrainSB3Config, tenant: str, act: Callable[[np.ndarray], np.ndarray], normalize: Any = None
) -> dict[str, float]:
    """Mean reward and SLA violations per step of `act` on the held-out batch.

    Args:
        cfg: the run's config (scenario, reward, evaluation size and seed).
        tenant: the controlled tenant.
        act: (B, obs) observations, normalized if `normalize` is given -> (B, n) actions.
        normalize: a VecNormalize whose observation statistics `act` expects, or None.
    """
    from shaping.sim.sb3_vec_env import ShapingSB3VecEnv

    env = ShapingSB3VecEnv(cfg.eval_envs, cfg.scenario, tenant=tenant, reward=cfg.reward,
                           max_episode_steps=cfg.eval_steps + 1)  # fmt: skip
    env.seed(cfg.eval_seed)
    obs = env.reset()
    venv = env.vector_env
    rewards, violations = [], []
    for _ in range(cfg.eval_steps):
        step = env.step(act(normalize.normalize_obs(obs) if normalize is not None else obs))
        obs, reward = cast(np.ndarray, step[0]), step[1]  # VecEnv's step is typed for dict observations too
        assert venv.last_output is not None
        rewards.append(reward.mean())
        violations.append(float(venv.view.reward(venv.last_output, venv.reward_config).violations.float().mean()))
    return {"reward_per_step": float(np.mean(rewards)), "sla_violations_per_step": float(np.mean(violations))}


def run(cfg: TrainSB3Config, out_dir: Path | None) -> dict[str, Any]:
    """Train, evaluate against a random policy, and return the JSON document (see the module docstring)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from shaping.sim.sb3_vec_env import ShapingSB3VecEnv

    tenant = cfg.tenant or cfg.scenario.tenants[0].name
    base = ShapingSB3VecEnv(cfg.num_envs, cfg.scenario, tenant=tenant, reward=cfg.reward,
                            max_episode_steps=cfg.max_episode_steps)  # fmt: skip
    env: Any = VecMonitor(base)
    if cfg.normalize:
        env = VecNormalize(env, norm_obs=True, norm_reward=True)
    model = PPO("MlpPolicy", env, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
                learning_rate=cfg.learning_rate, seed=cfg.seed, device="cpu")  # fmt: skip
    t0 = time.perf_counter()
    model.learn(total_timesteps=cfg.total_timesteps)
    train_s = time.perf_counter() - t0

    def greedy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    rng = np.random.default_rng(cfg.eval_seed)
    nvec = base.vector_env.single_action_space.nvec

    def uniform(obs: np.ndarray) -> np.ndarray:
        return rng.integers(0, nvec, size=(len(obs), len(nvec)))

    ppo = evaluate(cfg, tenant, greedy, env if cfg.normalize else None)
    random = evaluate(cfg, tenant, uniform)
    doc: dict[str, Any] = {
        "scenario": cfg.scenario.name, "tenant": tenant, "num_envs": cfg.num_envs,
        "env_steps": model.num_timesteps, "train_s": round(train_s, 2),
        "env_steps_per_s": round(model.num_timesteps / train_s, 1), "threads": torch.get_num_threads(),
        "eval": {"envs": cfg.eval_envs, "steps": cfg.eval_steps, "seed": cfg.eval_seed},
        "ppo": ppo, "random": random,
        "reward_gain_over_random": ppo["reward_per_step"] - random["reward_per_step"],
    }  # fmt: skip
    if cfg.save and out_dir is not None:
        model.save(out_dir / "sb3_ppo.zip")
        doc["model"] = str(out_dir / "sb3_ppo.zip")
        if cfg.normalize:
            env.save(str(out_dir / "vecnormalize.pkl"))
            doc["vecnormalize"] = str(out_dir / "vecnormalize.pkl")
    return doc


def register() -> None:
    """Store this entry point's schema (and the shared group schemas) in Hydra's ConfigStore."""
    register_configs()
    ConfigStore.instance().store(name="train_sb3_schema", node=TrainSB3Config)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train_sb3")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, print JSON."""
    conf = to_typed(cfg, TrainSB3Config)
    with torch_threads(conf.torch_threads):
        doc = run(conf, Path(HydraConfig.get().runtime.output_dir))
    print(json.dumps(doc, indent=2), flush=True)


if __name__ == "__main__":
    register()
    main()
