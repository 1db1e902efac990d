"""FedShape's Flower ClientApp: one tenant per node, wiring shaping.agents.local_train into a NumPyClient.

Node config (``flwr-supernode --node-config``; the simulation engine gives only partition-id):
- ``tenant``: the tenant's name (its identity); with ``scenario`` (a conf/scenario name or a YAML path
  holding the tenant) it fixes the tenant's spec and its simulated environment;
- ``num-envs``: environments per local iteration (default 8);
- ``experience-store``: a shaping.control ExperienceStore directory: train on the recorded experience
  instead of the simulator (the scenario then only supplies the spec and the held-out evaluation);
- without ``tenant``: ``partition-id`` picks the tenant from the run config's ``tenants`` (a JSON list);
- ``state-file``: where the tenant keeps its round-to-round state (fed_client.state); a simulation
  uses ``output.client_state_dir``/tenant_NNNN.json instead.
The NumPyClient shape is what SecAgg+'s legacy path needs (fed_server.secagg).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import ConfigRecord, NDArrays, Scalar

from fed_client.privacy import privacy_mods
from fed_client.state import load_state, save_state
from shaping.agents.global_model import get_weights, initial_model, make_model, set_weights
from shaping.agents.local_train import evaluate, local_train
from shaping.agents.universal import TenantTask, make_env, tenant_mapping
from shaping.fed_settings import RunSettings
from shaping.sim.scenarios import load_scenario
from shaping.spec.tenant import tenant_spec

STATE_KEY = "fedshape"

log = logging.getLogger(__name__)


def tenant_of(s: RunSettings, node_config: Mapping[str, Any]) -> tuple[int, TenantTask]:
    """(index, task) of this node: from its tenant/scenario keys, else its partition-id."""
    if "tenant" in node_config:
        task = TenantTask(str(node_config.get("scenario", "default")), str(node_config["tenant"]),
                          int(node_config.get("num-envs", 8)))  # fmt: skip
        index = next((i for i, t in enumerate(s.tenants) if t.name == task.name), -1)
        return index, task
    index = int(node_config["partition-id"])
    if not 0 <= index < len(s.tenants):
        raise ValueError(f"partition-id {index} but the run has {len(s.tenants)} tenants (run config key tenants)")
    return index, s.tenants[index]


class TenantClient(NumPyClient):
    """Trains and evaluates the global policy on one tenant's environment (or recorded experience)."""

    def __init__(self, s: RunSettings, index: int, task: TenantTask, context: Context, store: str | None,
                 state_file: str | None = None, inbox: str | None = None) -> None:  # fmt: skip
        self.s, self.index, self.task, self.context, self.store = s, index, task, context, store
        self.state_file = state_file
        self.inbox = inbox
        """The agent's model inbox (node config `model-inbox`), where each round's model is published."""
        self.state = context.state.config_records.setdefault(STATE_KEY, ConfigRecord({}))
        if state_file and not self.state:  # a restarted node, or a resumed run: pick up where it was
            saved = load_state(state_file)
            obs_size = s.layout.obs_dim
            if len(saved.get("norm_mean", [])) not in (0, obs_size):
                # Statistics of another layout (the provider changed the universal layout): start them afresh.
                log.warning("%s: normalizer statistics of %d inputs, the layout has %d: not used",
                            state_file, len(saved["norm_mean"]), obs_size)  # fmt: skip
                saved = {k: v for k, v in saved.items() if k not in ("norm_mean", "norm_var")}
            for key, value in saved.items():
                self.state[key] = value
        # A local normalizer starts from the run's initial weights, which this node must then hold too; from
        # its second round on (Flower builds a client per round) it comes from the node state (_load).
        first = s.local_normalizer and "norm_mean" not in self.state
        self.model = (initial_model(s.layout, s.hidden_sizes, s.seed, s.init_weights) if first
                      else make_model(s.layout, s.hidden_sizes, s.seed))  # fmt: skip
        # The features constant for a tenant (which application sits in a slot, its SLAs and paths) keep the
        # run's initial statistics: local statistics of a constant are its own mean and a variance of 0,
        # which would normalize each tenant's context to 0 under a local normalizer and, averaged by the
        # server (whose mean of the tenants' near-zero spreads misses the spread between tenants), blow
        # it up under a shared one; either way it would hide or garble what tells tenants apart.
        self.model.obs_norm.freeze(s.layout.constant_features())

    def _load(self, parameters: NDArrays) -> None:
        set_weights(self.model, parameters, self.s.local_normalizer)
        norm = self.model.obs_norm
        if "norm_count" in self.state:  # the normalizer's sample count is local (shaping.agents.global_model)
            norm.count.fill_(float(self.state["norm_count"]))  # type: ignore[arg-type]
        elif self.s.init_weights and self.s.init_norm_count > 0:
            # A pretrained start: its statistics count as init_norm_count observations, as in the
            # reference arms (shaping.agents.global_model.initial_model).
            norm.count.fill_(self.s.init_norm_count)
        if self.s.local_normalizer and "norm_mean" in self.state:
            norm.mean.copy_(torch.tensor(self.state["norm_mean"], dtype=norm.mean.dtype))
            norm.var.copy_(torch.tensor(self.state["norm_var"], dtype=norm.var.dtype))

    def _save_normalizer(self) -> None:
        norm = self.model.obs_norm
        self.state["norm_count"] = float(norm.count)
        if self.s.local_normalizer:
            self.state["norm_mean"] = norm.mean.tolist()
            self.state["norm_var"] = norm.var.tolist()

    def _hand_over(self, version: int) -> None:
        """Publish the round's global model, with this tenant's own normalizer statistics where they stay
        local, to the agent on this host (shaping.control.handover: a directory, nothing on the network).
        The agent gates it before it controls anything (shaping.control.gate)."""
        from shaping.control.handover import publish_model  # deferred: only nodes with an agent beside them

        card = {"layout": self.s.layout.to_config(), "hidden_sizes": list(self.s.hidden_sizes),
                "source": f"federated round {version}", "tenant": self.task.name}  # fmt: skip
        try:
            path = publish_model(str(self.inbox), get_weights(self.model), card, version)
        except (OSError, ValueError) as err:  # an older round evaluated again, a full disk: training goes on
            log.warning("%s: the round %d model was not handed over: %s", self.task.name, version, err)
            return
        log.info("%s: round %d model handed over to the agent (%s)", self.task.name, version, path)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """The initial global weights (same seed on every party)."""
        return get_weights(self.model, self.s.local_normalizer)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Local PPO iterations from the global weights; returns the new weights and metrics."""
        self._load(parameters)
        rnd = int(config.get("server_round", 0))
        dp = None
        if self.s.dpsgd_noise > 0:
            from fed_client.dpsgd import DPSGD  # opacus takes seconds to import: only when DP-SGD is on

            dp = DPSGD(self.s.dpsgd_noise, self.s.dpsgd_max_grad_norm, self.s.delta,
                       str(self.state.get("dpsgd_history", "")) or None)  # fmt: skip
            dp.check_budget(self.s.dpsgd_steps_per_round, 1.0 / self.s.ppo.num_minibatches, self.s.target_epsilon)
        if self.store:
            from fed_client.experience import open_store, train_on_experience

            spec = tenant_spec(load_scenario(self.task.scenario), self.task.tenant)
            store = open_store(self.store, spec)
            res = train_on_experience(self.model, store, tenant_mapping(spec, self.s.layout), self.s.round_ppo(rnd),
                                      dp=dp)
        else:
            env = make_env(self.task, self.s.layout)
            seed = self.s.seed + 1000 * rnd + max(self.index, 0)
            res = local_train(self.model, [env], self.s.local_iterations, self.s.round_ppo(rnd), dp=dp, seed=seed,
                              proximal_mu=self.s.proximal_mu)
        self._save_normalizer()
        weights = get_weights(self.model, self.s.local_normalizer)
        # Robustness experiments: a malicious tenant scales its update (and skips the clipping mod).
        if self.index in self.s.attack_tenants:
            weights = [g + self.s.attack_scale * (w - g) for w, g in zip(weights, parameters, strict=True)]
        metrics: dict[str, Scalar] = {"tenant": self.task.name}
        # The rollouts' mean reward and their count are statistics of the tenant's traffic (recorded
        # traffic, in deployment) that no DP mechanism noises: under DP they stay on the tenant.
        if not (self.s.client_level_dp or dp is not None):
            metrics |= {"rollout_reward": res.rollout_reward, "num_examples": res.num_examples}
        if dp is not None:
            self.state["dpsgd_history"] = dp.history_json()
            metrics["dpsgd_epsilon"] = dp.epsilon()
        if self.state_file:
            save_state(self.state_file, dict(self.state))
        # Under DP every update weighs the same: the noise is calibrated to a uniform mean.
        uniform = self.s.privacy_mode != "none" or self.s.weighting == "uniform"
        n = 1 if uniform else max(res.num_examples, 1)
        return [np.asarray(w, dtype=np.float32) for w in weights], n, metrics

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Greedy evaluation of the global policy on the tenant's held-out seeds; first, with a model inbox, the
        round's model is handed to the tenant's agent."""
        self._load(parameters)
        if self.inbox:
            self._hand_over(int(config.get("server_round", 0)))
        env = make_env(self.task, self.s.layout, self.s.eval_envs, episode_steps=max(self.s.eval_steps, 1))
        ev = evaluate(self.model, env, self.s.eval_steps, self.s.eval_seed)
        return -ev.reward, self.s.eval_envs * self.s.eval_steps, {
            "tenant": self.task.name, "reward": ev.reward, "sla_violation_rate": ev.sla_violation_rate}


def make_client_app(defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose settings are `defaults` overridden by the run config."""

    def settings_of(context: Context) -> RunSettings:
        return RunSettings.from_config({**(defaults or {}), **dict(context.run_config)})

    def client_fn(context: Context) -> Client:
        s = settings_of(context)
        index, task = tenant_of(s, context.node_config)
        store = context.node_config.get("experience-store")
        state_file = context.node_config.get("state-file") or (
            str(Path(s.client_state_dir) / f"tenant_{index:04d}.json") if s.client_state_dir and index >= 0 else None
        )
        inbox = context.node_config.get("model-inbox")
        return TenantClient(
            s, index, task, context, str(store) if store else None, str(state_file) if state_file else None,
            str(inbox) if inbox else None,
        ).to_client()  # fmt: skip

    def attacker(context: Context) -> bool:
        s = settings_of(context)
        return bool(s.attack_tenants) and tenant_of(s, context.node_config)[0] in s.attack_tenants

    return ClientApp(client_fn=client_fn, mods=privacy_mods(settings_of, attacker))


app = make_client_app()
