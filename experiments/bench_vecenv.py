"""Throughput of the interfaces for outside trainers: ``python -m experiments.bench_vecenv [options]``.

Measures, on one tenant of one scenario with random actions (all rates are medians of `--repeats` runs):

- ``single_env``: ShapingEnv.step (Gymnasium, one environment), and ``sim_b1``: the simulator's own step
  at batch 1 under default plans, the ceiling of any one-environment interface; with the torch operator
  calls per step of each (counted by torch.profiler);
- ``vector_env``: ShapingVectorEnv.step (numpy in and out) and step_torch, env-steps/s at `--num-envs`;
- ``sb3_vec_env``: ShapingSB3VecEnv.step, env-steps/s at `--num-envs`;
- ``sb3_ppo``: Stable-Baselines3 PPO (its default hyperparameters, MlpPolicy) learning through
  ShapingSB3VecEnv, env-steps/s of learn() and of its rollout collection alone; n_steps is
  `--rollout` / `--num-envs`, so a rollout holds SB3's default 2048 transitions;
- ``sb3_ppo_batch``: the same with a larger `--batch-size` (fewer, larger gradient steps);
- ``sb3_ppo_dummy``: PPO on `--dummy-envs` ``gymnasium.make`` environments in SB3's DummyVecEnv (one
  run of one rollout), the way SB3 drives a Gymnasium environment without the adapter.

Torch's threads are fixed (`--threads`). The JSON holds the load average before and after: other
processes on the machine lower every number.

    python -m experiments.bench_vecenv
    python -m experiments.bench_vecenv --num-envs 256 --repeats 3 --rollouts 2 --no-dummy
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch

from shaping import ENV_ID
from shaping.sim import ShapingEnv, ShapingVectorEnv
from shaping.sim.scenarios import load_scenario


def _log(msg: str) -> None:
    print(f"[bench_vecenv] {msg}", file=sys.stderr, flush=True)


def _rate(step: Callable[[int], object], per_step: int, min_seconds: float, repeats: int) -> dict[str, Any]:
    """Median of `repeats` timed runs of at least `min_seconds`: step(i) calls, times `per_step` env-steps."""
    step(0)  # warm-up
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            step(n)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(n * per_step / elapsed)
    return {"steps_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates]}


def _torch_calls(step: Callable[[int], object], steps: int = 10) -> float:
    """Top-level torch operator calls per step(i) call (what bounds a batch-1 step: each costs a dispatch)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return len(top) / steps


def _random_actions(nvec: np.ndarray, shape: tuple[int, ...], count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, nvec, size=(*shape, len(nvec))) for _ in range(count)]


def bench_envs(args: argparse.Namespace) -> dict[str, Any]:
    """Step rates of the single env, the simulator at batch 1, the vector env and the SB3 adapter."""
    cfg = load_scenario(args.scenario)
    out: dict[str, Any] = {}
    env = ShapingEnv(scenario=cfg, tenant=args.tenant)
    env.reset(seed=0)
    acts = _random_actions(env.action_space.nvec, (), 256, 0)
    out["single_env"] = _rate(lambda i: env.step(acts[i % 256]), 1, args.min_seconds, args.repeats)
    out["single_env"]["torch_calls_per_step"] = _torch_calls(lambda i: env.step(acts[i % 256]))
    core = env.core

    def sim_step(i: int) -> object:
        return core.sim.step(core.default_plan, core.aqm)

    out["sim_b1"] = _rate(sim_step, 1, args.min_seconds, args.repeats)
    out["sim_b1"]["torch_calls_per_step"] = _torch_calls(sim_step)
    _log(f"single env {out['single_env']['steps_per_s']}/s, simulator at batch 1 {out['sim_b1']['steps_per_s']}/s")

    b = args.num_envs
    venv = ShapingVectorEnv(num_envs=b, scenario=cfg, tenant=args.tenant)
    venv.reset(seed=0)
    vacts = _random_actions(venv.single_action_space.nvec, (b,), 64, 1)
    out["vector_env"] = _rate(lambda i: venv.step(vacts[i % 64]), b, args.min_seconds, args.repeats)
    tacts = [torch.as_tensor(a) for a in vacts]
    out["vector_env_torch"] = _rate(lambda i: venv.step_torch(tacts[i % 64]), b, args.min_seconds, args.repeats)
    _log(f"vector env x{b} {out['vector_env']['steps_per_s']} env-steps/s")

    from shaping.sim.sb3_vec_env import ShapingSB3VecEnv  # optional dependency

    senv = ShapingSB3VecEnv(num_envs=b, scenario=cfg, tenant=args.tenant)
    senv.reset()
    out["sb3_vec_env"] = _rate(lambda i: senv.step(vacts[i % 64]), b, args.min_seconds, args.repeats)
    _log(f"SB3 adapter x{b} {out['sb3_vec_env']['steps_per_s']} env-steps/s")
    return out


def _ppo_run(
    make_env: Callable[[], Any], n_steps: int, rollouts: int, seed: int, **ppo_kwargs: Any
) -> dict[str, float]:
    """One PPO learn() of `rollouts` rollouts: env-steps/s overall and of the rollout collection alone."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    class CollectClock(BaseCallback):
        """Adds up the wall time of rollout collection (policy inference and environment steps)."""

        def __init__(self) -> None:
            super().__init__()
            self.collect_s = 0.0
            self._t0 = 0.0

        def _on_rollout_start(self) -> None:
            self._t0 = time.perf_counter()

        def _on_rollout_end(self) -> None:
            self.collect_s += time.perf_counter() - self._t0

        def _on_step(self) -> bool:
            return True

    env = make_env()
    model = PPO("MlpPolicy", env, n_steps=n_steps, seed=seed, device="cpu", **ppo_kwargs)
    clock = CollectClock()
    total = n_steps * env.num_envs * rollouts
    t0 = time.perf_counter()
    model.learn(total_timesteps=total, callback=clock)
    wall = time.perf_counter() - t0
    env.close()
    return {
        "env_steps": model.num_timesteps,
        "learn_steps_per_s": model.num_timesteps / wall,
        "collect_steps_per_s": model.num_timesteps / clock.collect_s,
    }


def _ppo(make_env: Callable[[], Any], n_steps: int, rollouts: int, repeats: int, **ppo_kwargs: Any) -> dict[str, Any]:
    runs = [_ppo_run(make_env, n_steps, rollouts, seed, **ppo_kwargs) for seed in range(repeats)]
    return {
        "n_steps": n_steps,
        "env_steps_per_run": runs[0]["env_steps"],
        "ppo_kwargs": ppo_kwargs,
        "learn_steps_per_s": round(statistics.median(r["learn_steps_per_s"] for r in runs), 1),
        "collect_steps_per_s": round(statistics.median(r["collect_steps_per_s"] for r in runs), 1),
        "learn_runs": [round(r["learn_steps_per_s"], 1) for r in runs],
    }


def bench_ppo(args: argparse.Namespace) -> dict[str, Any]:
    """SB3 PPO through the adapter (default and larger minibatches), and on a DummyVecEnv of Gymnasium envs."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from shaping.sim.sb3_vec_env import ShapingSB3VecEnv

    cfg = load_scenario(args.scenario)
    out: dict[str, Any] = {}

    def adapter() -> ShapingSB3VecEnv:
        return ShapingSB3VecEnv(num_envs=args.num_envs, scenario=cfg, tenant=args.tenant)

    n_steps = max(1, args.rollout // args.num_envs)
    out["sb3_ppo"] = _ppo(adapter, n_steps, args.rollouts, args.repeats)
    _log(f"SB3 PPO (defaults) through the adapter: {out['sb3_ppo']['learn_steps_per_s']} env-steps/s")
    if args.batch_size:
        out["sb3_ppo_batch"] = _ppo(adapter, n_steps, args.rollouts, args.repeats, batch_size=args.batch_size)
        _log(f"SB3 PPO batch_size={args.batch_size}: {out['sb3_ppo_batch']['learn_steps_per_s']} env-steps/s")
    if args.dummy_envs:
        def dummy() -> Any:
            # Not make_vec_env: it first asks gymnasium.make for render_mode "rgb_array", which warns here.
            venv = DummyVecEnv([lambda: gymnasium.make(ENV_ID, scenario=cfg, tenant=args.tenant)] * args.dummy_envs)
            venv.seed(0)
            return venv

        out["sb3_ppo_dummy"] = _ppo(dummy, max(1, args.rollout // args.dummy_envs), 1, 1)
        out["sb3_ppo_dummy"]["num_envs"] = args.dummy_envs
        _log(f"SB3 PPO on a DummyVecEnv: {out['sb3_ppo_dummy']['learn_steps_per_s']} env-steps/s")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--tenant", default="gameco")
    ap.add_argument("--num-envs", type=int, default=256, help="environments of the vector env and SB3 adapter")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="minimum length of one timed env run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rollout", type=int, default=2048, help="PPO transitions per rollout (n_steps x envs)")
    ap.add_argument("--rollouts", type=int, default=2, help="PPO rollouts per learn() run")
    ap.add_argument("--batch-size", type=int, default=512, help="minibatch of the sb3_ppo_batch run (0: skip)")
    ap.add_argument("--dummy-envs", type=int, default=8, help="DummyVecEnv size of sb3_ppo_dummy (0: skip)")
    ap.add_argument("--no-ppo", action="store_true", help="environment step rates only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import stable_baselines3

    out: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "scenario": args.scenario,
        "tenant": args.tenant,
        "num_envs": args.num_envs,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    out.update(bench_envs(args))
    if not args.no_ppo:
        out.update(bench_ppo(args))
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
