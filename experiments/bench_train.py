"""Time-to-target of our PPO against Stable-Baselines3's PPO: ``python -m experiments.bench_train [overrides]``.

Both learners train the same tenant of the same scenario with the same PPO hyperparameters (conf/agent/ppo.yaml
in CleanRL's names, mapped to SB3's), the same number of environments, observation and reward normalization,
and the same evaluation: after every `eval_every` rollouts a greedy run of the policy on one held-out
ShapingVectorEnv (`eval_envs` x `eval_steps`, seed `eval_seed`). Ours steps the batched simulator through
ShapingVectorEnv.step_torch (shaping.agents.train.train_ppo); SB3 steps `num_envs` Gymnasium environments
``gymnasium.make("FedShape/Shaping-v0")`` in a DummyVecEnv with VecNormalize. The clock counts training
only (evaluations are excluded for both). Prints one JSON object.

SB3 gets at most ``sb3_cap_factor`` times our time-to-target (and at most ``max_wall_s``): if it has not
reached the target by then, the speedup is at least the ratio of its training time to ours, which the
JSON reports as a lower bound (``speedup_is_lower_bound``).

    python -m experiments.bench_train
    python -m experiments.bench_train target_reward=0.5 num_envs=32 max_wall_s=300
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiments.config import CONF_PATH, exits_2_on_config_error, register_configs, to_typed
from shaping.checks import above, at_least
from shaping import ENV_ID
from shaping.agents.train import EvalResult, evaluate_agent, train_ppo
from shaping.config import PPOConfig, RewardConfig, ScenarioConfig, TrainConfig
from shaping.sim.vector_env import ShapingVectorEnv

log = logging.getLogger(__name__)


@dataclass
class BenchTrainConfig:
    """Primary config of experiments.bench_train."""

    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The scenario (conf/scenario/)."""
    tenant: str | None = None
    """The learning tenant; None: the scenario's first. The others follow their scenario policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights (training and evaluation)."""
    agent: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters of both learners (agent.total_timesteps is ignored: the clock and the target stop)."""
    num_envs: int = 64
    """Environments of both learners: our batch, SB3's DummyVecEnv size."""
    target_reward: float = 1.0
    """Stated evaluation reward (mean reward per step of the tenant) to reach."""
    eval_every: int = 1
    """Rollouts (iterations) between evaluations, for both learners."""
    eval_envs: int = 8
    """Environments of each evaluation."""
    eval_steps: int = 100
    """Control steps of each evaluation."""
    eval_seed: int = 10_000
    """Seed of the evaluation environments (the same for both learners and every evaluation)."""
    seed: int = 0
    """Seed of both learners."""
    max_wall_s: float = 600.0
    """Cap on each learner's training time (evaluations excluded), seconds."""
    sb3_cap_factor: float = 6.0
    """SB3 stops after this multiple of our time-to-target (a speedup lower bound above the 5x goal)."""
    sb3: bool = True
    """Run the SB3 side (false: only ours, e.g. without the dev dependency)."""
    threads: int | None = 1
    """torch threads for both (1: tiny networks, and fair on a shared machine); None: torch's default."""

    def __post_init__(self) -> None:
        at_least("bench_train", self, 1, "num_envs", "eval_every", "eval_envs", "eval_steps", "threads")
        above("bench_train", self, 0.0, "max_wall_s", "sb3_cap_factor")



class _Clock:
    """Training time of a learner: wall time minus the time spent in evaluations."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.eval_s = 0.0

    @property
    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.eval_s


def _ours(cfg: BenchTrainConfig, tenant: str) -> dict[str, Any]:
    """Our PPO until the target (or the cap); its time-to-target excludes evaluations."""
    batch = cfg.num_envs * cfg.agent.num_steps
    agent_cfg = PPOConfig(**{**vars(cfg.agent), "total_timesteps": batch * 100_000, "anneal_lr": False})
    train = TrainConfig(num_envs=cfg.num_envs, seed=cfg.seed, eval_every=cfg.eval_every, eval_envs=cfg.eval_envs,
                        eval_steps=cfg.eval_steps, eval_seed=cfg.eval_seed, progress=False, tensorboard=False,
                        max_wall_s=cfg.max_wall_s)  # fmt: skip
    evals: list[float] = []

    def stop(ev: EvalResult) -> bool:
        evals.append(ev.reward)
        return ev.reward >= cfg.target_reward

    res = train_ppo([cfg.scenario], agent_cfg, train, tenant=tenant, reward=cfg.reward, stop=stop)
    train_s = res.wall_s - res.eval_s
    return {"reached": res.stopped, "time_to_target_s": train_s if res.stopped else None, "train_s": train_s,
            "iterations": res.iterations, "env_steps": res.env_steps, "best_eval_reward": max(evals),
            "s_per_iteration": train_s / max(res.iterations, 1),
            "env_steps_per_s": res.env_steps / train_s}  # fmt: skip


def _sb3(cfg: BenchTrainConfig, tenant: str, cap_s: float) -> dict[str, Any]:
    """SB3's PPO on gymnasium.make(ENV_ID) environments with the same hyperparameters, until target or cap."""
    from stable_baselines3 import PPO  # dev-only dependency
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    a = cfg.agent
    env_kwargs = {"scenario": cfg.scenario, "tenant": tenant, "reward": cfg.reward}
    venv = VecNormalize(make_vec_env(ENV_ID, n_envs=cfg.num_envs, seed=cfg.seed, env_kwargs=env_kwargs),
                        norm_obs=True, norm_reward=True, gamma=a.gamma)  # fmt: skip
    eval_env = ShapingVectorEnv(cfg.eval_envs, cfg.scenario, tenant=tenant, reward=cfg.reward,
                                max_episode_steps=max(cfg.eval_steps, cfg.scenario.episode_steps))  # fmt: skip
    model = PPO(
        "MlpPolicy", venv, learning_rate=a.learning_rate, n_steps=a.num_steps,
        batch_size=cfg.num_envs * a.num_steps // a.num_minibatches, n_epochs=a.update_epochs, gamma=a.gamma,
        gae_lambda=a.gae_lambda, clip_range=a.clip_coef, clip_range_vf=a.clip_coef if a.clip_vloss else None,
        normalize_advantage=a.norm_adv, ent_coef=a.ent_coef, vf_coef=a.vf_coef, max_grad_norm=a.max_grad_norm,
        target_kl=a.target_kl, seed=cfg.seed, device="cpu",
        policy_kwargs={"net_arch": {"pi": list(a.hidden_sizes), "vf": list(a.hidden_sizes)},
                       "activation_fn": torch.nn.Tanh},
    )  # fmt: skip

    def act(obs: torch.Tensor) -> torch.Tensor:
        actions, _ = model.predict(venv.normalize_obs(obs.cpu().numpy()), deterministic=True)
        return torch.as_tensor(np.asarray(actions), dtype=torch.long)

    clock = _Clock()
    state: dict[str, Any] = {"rollouts": 0, "reached": False, "evals": [], "time_to_target_s": None}

    class Evaluate(BaseCallback):
        def _on_rollout_end(self) -> None:
            state["rollouts"] += 1
            if state["rollouts"] % cfg.eval_every:
                return
            t = time.perf_counter()
            reward = evaluate_agent(eval_env, act, cfg.eval_steps, cfg.eval_seed).reward
            clock.eval_s += time.perf_counter() - t
            state["evals"].append(reward)
            if reward >= cfg.target_reward and not state["reached"]:
                state["reached"], state["time_to_target_s"] = True, clock.train_s

        def _on_step(self) -> bool:
            return not state["reached"] and clock.train_s < cap_s

    clock.start = time.perf_counter()
    model.learn(total_timesteps=10**12, callback=Evaluate())
    train_s = clock.train_s
    steps = int(model.num_timesteps)
    return {"reached": state["reached"], "time_to_target_s": state["time_to_target_s"], "train_s": train_s,
            "cap_s": cap_s, "iterations": state["rollouts"], "env_steps": steps,
            "best_eval_reward": max(state["evals"], default=None),
            "s_per_iteration": train_s / state["rollouts"] if state["rollouts"] else None,
            "env_steps_per_s": steps / train_s}  # fmt: skip


def run_bench(cfg: BenchTrainConfig) -> dict[str, Any]:
    """Run both learners and return the JSON document (see the module docstring)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    tenant = cfg.tenant or cfg.scenario.tenants[0].name
    ours = _ours(cfg, tenant)
    out: dict[str, Any] = {
        "scenario": cfg.scenario.name, "tenant": tenant, "num_envs": cfg.num_envs, "num_steps": cfg.agent.num_steps,
        "target_reward": cfg.target_reward, "eval": {"every": cfg.eval_every, "envs": cfg.eval_envs,
                                                     "steps": cfg.eval_steps, "seed": cfg.eval_seed},
        "threads": torch.get_num_threads(), "ours": ours,
    }  # fmt: skip
    if not ours["reached"]:
        out["note"] = f"our PPO did not reach {cfg.target_reward} within {cfg.max_wall_s} s; no speedup measured"
        return out
    if not cfg.sb3:
        return out
    cap = min(cfg.max_wall_s, cfg.sb3_cap_factor * ours["time_to_target_s"])
    sb3 = _sb3(cfg, tenant, cap)
    out["sb3"] = sb3
    if sb3["reached"]:
        out["speedup_time_to_target"] = sb3["time_to_target_s"] / ours["time_to_target_s"]
        out["speedup_is_lower_bound"] = False
    else:
        out["speedup_time_to_target"] = sb3["train_s"] / ours["time_to_target_s"]
        out["speedup_is_lower_bound"] = True
        out["note"] = (
            f"SB3 did not reach {cfg.target_reward} within its cap of {cap:.0f} s (best evaluation "
            f"{sb3['best_eval_reward']}); the speedup is a lower bound: SB3's training time / ours"
        )
    # Throughput of training (env steps per second of training time): defined even when SB3 finished no rollout.
    out["speedup_env_steps_per_s"] = ours["env_steps_per_s"] / max(sb3["env_steps_per_s"], 1e-9)
    out["meets_5x_target"] = out["speedup_time_to_target"] >= 5.0
    return out


def register() -> None:
    """Store this entry point's schema (and the shared group schemas) in Hydra's ConfigStore."""
    register_configs()
    ConfigStore.instance().store(name="bench_train_schema", node=BenchTrainConfig)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="bench_train")
@exits_2_on_config_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, print JSON."""
    conf = to_typed(cfg, BenchTrainConfig)
    print(json.dumps(run_bench(conf), indent=2), flush=True)


if __name__ == "__main__":
    register()
    main()
