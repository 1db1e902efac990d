"""The reference arms of the federated comparison: local-only and centralized training, and static baselines.

Both training arms use the same local training as the Flower clients (fed_client.training.local_train)
with the same budget per round: local-only trains each tenant's own model on its own environment for
``local_iterations`` per round; centralized trains one model on the union of the tenants'
environments, ``local_iterations`` per tenant per round (round robin), i.e. the same environment steps
as the federation. Every round, each arm is evaluated on each tenant's held-out seeds as the clients do.
"""

from __future__ import annotations

from typing import Any

from fed_client.settings import RunSettings
from fed_client.training import (
    PaddedEnv,
    evaluate,
    evaluate_baseline,
    local_train,
    make_env,
    make_model,
)


def _eval_envs(s: RunSettings) -> list[PaddedEnv]:
    return [make_env(t, s.layout, s.eval_envs, episode_steps=max(s.eval_steps, 1)) for t in s.tenants]


def local_only(s: RunSettings) -> list[dict[str, Any]]:
    """Per round, each tenant's own model (trained alone) evaluated on its held-out seeds."""
    models = [make_model(s.layout, s.hidden_sizes, s.seed) for _ in s.tenants]
    envs = [make_env(t, s.layout) for t in s.tenants]
    evals = _eval_envs(s)
    rounds = []
    for rnd in range(1, s.rounds + 1):
        per_tenant = {}
        for i, (task, model) in enumerate(zip(s.tenants, models, strict=True)):
            local_train(model, [envs[i]], s.local_iterations, s.ppo, seed=s.seed + 1000 * rnd + i,
                        proximal_mu=0.0)  # fmt: skip
            ev = evaluate(model, evals[i], s.eval_steps, s.eval_seed)
            per_tenant[task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
        rounds.append({"round": rnd, "eval": per_tenant})
    return rounds


def centralized(s: RunSettings) -> list[dict[str, Any]]:
    """Per round, one model trained on every tenant's environments, evaluated on each tenant's held-out seeds."""
    model = make_model(s.layout, s.hidden_sizes, s.seed)
    envs = [make_env(t, s.layout) for t in s.tenants]
    evals = _eval_envs(s)
    rounds = []
    for rnd in range(1, s.rounds + 1):
        local_train(model, envs, s.local_iterations * len(envs), s.ppo, seed=s.seed + 1000 * rnd)
        per_tenant = {}
        for task, env in zip(s.tenants, evals, strict=True):
            ev = evaluate(model, env, s.eval_steps, s.eval_seed)
            per_tenant[task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
        rounds.append({"round": rnd, "eval": per_tenant})
    return rounds


def static_baselines(s: RunSettings, names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """baseline -> tenant -> {reward, sla_violation_rate}: the tenant runs the baseline's plan (as the nearest
    action) instead of the agent, on the same held-out seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    evals = _eval_envs(s)
    for name in names:
        out[name] = {}
        for task, env in zip(s.tenants, evals, strict=True):
            ev = evaluate_baseline(env, name, s.eval_steps, s.eval_seed)
            out[name][task.name] = {"reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}
    return out
