"""The ClientApp's node identity and the run settings both apps read."""

from __future__ import annotations

import json

import pytest

from fed_client.app import tenant_of
from shaping.fed_settings import DEFAULT_TENANTS, RunSettings


def test_partition_id_picks_the_run_configs_tenant():
    s = RunSettings()
    assert tenant_of(s, {"partition-id": 2, "num-partitions": 4}) == (2, DEFAULT_TENANTS[2])
    with pytest.raises(ValueError, match="partition-id 7"):
        tenant_of(s, {"partition-id": 7})


def test_deployment_node_config_names_the_tenant():
    s = RunSettings()
    index, task = tenant_of(s, {"tenant": "gameco", "scenario": "default", "num-envs": 4})
    assert index == 0 and task.name == "gameco@default" and task.num_envs == 4
    index, task = tenant_of(s, {"tenant": "bank", "scenario": "default"})
    assert index == -1 and task.num_envs == 8  # not in the run's table: still a valid tenant node


def test_settings_from_flat_keys_with_defaults_and_strings():
    tenants = [{"scenario": "single_path", "tenant": "devops", "num_envs": 3}]
    s = RunSettings.from_config({"fl.strategy": "fedprox", "fl.rounds": "7", "privacy.target_epsilon": "null",
                                 "tenants": json.dumps(tenants), "train.hidden_sizes": "[16, 16]",
                                 "attack.tenants": "[0]", "unknown.key": 1})  # fmt: skip
    assert s.strategy == "fedprox" and s.rounds == 7 and s.target_epsilon is None
    assert s.tenants[0].name == "devops@single_path" and s.hidden_sizes == (16, 16) and s.attack_tenants == (0,)
    assert RunSettings.from_config({"privacy.target_epsilon": 8.0}).target_epsilon == 8.0
    assert RunSettings.from_config({}).tenants == DEFAULT_TENANTS


def _client(s, context, state_file):
    from fed_client.app import TenantClient

    index, task = tenant_of(s, {"partition-id": 0})
    return TenantClient(s, index, task, context, None, state_file)


def _context():
    from flwr.app import Context
    from flwr.common import RecordDict

    return Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_a_restarted_tenant_picks_up_its_state_and_privacy_spent_from_its_file(tmp_path):
    """The node context dies with the SuperNode (or the run); the tenant's state file carries the
    normalizer's count and the DP-SGD accountant's history into the next one."""
    from fed_client.state import load_state
    from shaping.config import PPOConfig
    from shaping.agents.universal import TenantTask

    ppo = PPOConfig(num_steps=4, update_epochs=1, num_minibatches=1)
    s = RunSettings(tenants=(TenantTask("single_path", "devops", 1),), local_iterations=1, ppo=ppo,
                    hidden_sizes=(8,), dpsgd_noise=1.0)  # fmt: skip
    path = tmp_path / "tenant_0000.json"
    first = _client(s, _context(), str(path))
    weights = first.get_parameters({})
    _, _, metrics = first.fit(weights, {"server_round": 1})
    saved = load_state(path)
    assert saved["norm_count"] > 0 and json.loads(saved["dpsgd_history"])
    # A new node (fresh context) reads the file; its next round's epsilon adds to the first's.
    again = _client(s, _context(), str(path))
    assert again.state["norm_count"] == saved["norm_count"]
    _, _, later = again.fit(weights, {"server_round": 2})
    assert float(later["dpsgd_epsilon"]) > float(metrics["dpsgd_epsilon"]) > 0
    # Without a file a fresh node starts from nothing (what every restart did before).
    fresh = _client(s, _context(), None)
    _, _, cold = fresh.fit(weights, {"server_round": 2})
    assert float(cold["dpsgd_epsilon"]) == pytest.approx(float(metrics["dpsgd_epsilon"]))


def test_a_state_file_of_another_layout_keeps_its_privacy_history_but_not_its_statistics(tmp_path):
    from fed_client.state import save_state

    path = tmp_path / "tenant_0000.json"
    save_state(path, {"norm_count": 5.0, "norm_mean": [0.0, 1.0], "norm_var": [1.0, 1.0], "dpsgd_history": "[]"})
    client = _client(RunSettings(local_normalizer=True, hidden_sizes=(8,)), _context(), str(path))
    assert "norm_mean" not in client.state and "norm_var" not in client.state
    assert client.state["norm_count"] == 5.0 and client.state["dpsgd_history"] == "[]"


@pytest.mark.parametrize("local_normalizer", [True, False])
def test_the_normalizer_keeps_the_initial_statistics_of_the_constant_features(local_normalizer):
    """A tenant's statistics of its constant context would normalize it to 0 (local normalizer) or, averaged
    with other tenants' near-zero spreads, blow it up (shared one): they stay the run's initial ones."""
    from shaping.agents.universal import TenantTask
    from shaping.config import PPOConfig

    ppo = PPOConfig(num_steps=8, update_epochs=1, num_minibatches=1)
    s = RunSettings(tenants=(TenantTask("small_congested", "studio", 2),), local_iterations=2, ppo=ppo,
                    hidden_sizes=(8,), local_normalizer=local_normalizer)  # fmt: skip
    client = _client(s, _context(), None)
    client.fit(client.get_parameters({}), {"server_round": 1})
    norm, constant = client.model.obs_norm, s.layout.constant_features()
    assert (norm.mean[constant] == 0).all() and (norm.var[constant] == 1).all()
    assert (norm.mean[~constant] != 0).any()  # the measured features did learn their statistics
    # The next round's client (Flower builds one per round) freezes them too.
    again = _client(s, client.context, None)
    again.fit(client.get_parameters({}), {"server_round": 2})
    assert (again.model.obs_norm.var[constant] == 1).all()


CENTRAL = {"privacy_mode": "central", "noise_multiplier": 1.0}


@pytest.mark.parametrize(("privacy", "shared"), [({}, True), ({"dpsgd_noise": 1.0}, False), (CENTRAL, False)])
def test_under_dp_a_tenant_keeps_its_rollout_statistics_to_itself(privacy, shared):
    """The rollouts' mean reward and count are statistics of the tenant's traffic that no mechanism noises."""
    from shaping.agents.universal import TenantTask
    from shaping.config import PPOConfig

    ppo = PPOConfig(num_steps=4, update_epochs=1, num_minibatches=1)
    s = RunSettings(tenants=(TenantTask("single_path", "devops", 1),), local_iterations=1, ppo=ppo,
                    hidden_sizes=(8,), **privacy)  # fmt: skip
    client = _client(s, _context(), None)
    _, _, metrics = client.fit(client.get_parameters({}), {"server_round": 1})
    assert metrics["tenant"] == "devops@single_path"
    assert ("rollout_reward" in metrics and "num_examples" in metrics) == shared


def test_a_tenant_trains_at_its_rounds_learning_rate(monkeypatch):
    """With train.anneal_lr the client takes the round's rate from the server's round number, as the arms do."""
    import fed_client.app as app
    from shaping.agents.local_train import LocalResult
    from shaping.agents.universal import TenantTask
    from shaping.config import PPOConfig

    rates = []

    def record(model, envs, iterations, cfg, **_):
        rates.append(cfg.learning_rate)
        return LocalResult(num_examples=1, rollout_reward=0.0, optimizer_steps=0)

    monkeypatch.setattr(app, "local_train", record)
    s = RunSettings(tenants=(TenantTask("single_path", "devops", 1),), rounds=4, anneal_lr=True,
                    ppo=PPOConfig(num_steps=4, learning_rate=1e-3), hidden_sizes=(8,))  # fmt: skip
    client = _client(s, _context(), None)
    for rnd in (1, 3):
        client.fit(client.get_parameters({}), {"server_round": rnd})
    assert rates == [1e-3, 0.5e-3]


def test_each_evaluated_round_hands_its_model_to_the_agents_inbox(tmp_path):
    """With node config `model-inbox`, evaluate publishes the round's model; the agent's inbox sees each new
    round once, and the published file drives the tenant (its card names the run's layout and sizes)."""
    from fed_client.app import TenantClient
    from shaping.agents.projection import tenant_model
    from shaping.agents.universal import TenantTask
    from shaping.config import PPOConfig
    from shaping.control.handover import ModelInbox
    from shaping.sim.scenarios import load_scenario
    from shaping.spec import tenant_spec

    ppo = PPOConfig(num_steps=4, update_epochs=1, num_minibatches=1)
    s = RunSettings(tenants=(TenantTask("single_path", "devops", 1),), local_iterations=1, ppo=ppo,
                    hidden_sizes=(8,), eval_envs=1, eval_steps=2)  # fmt: skip
    index, task = tenant_of(s, {"partition-id": 0})
    client = TenantClient(s, index, task, _context(), None, None, str(tmp_path / "inbox"))
    inbox = ModelInbox(tmp_path / "inbox")
    weights = client.get_parameters({})
    client.evaluate(weights, {"server_round": 1})
    got = inbox.poll()
    assert got is not None and got[0] == 1 and inbox.poll() is None
    path = got[1]
    client.evaluate(weights, {"server_round": 1})  # evaluated again: not newer, a warning, training goes on
    client.evaluate(weights, {"server_round": 2})
    assert inbox.poll()[0] == 2
    model = tenant_model(path, tenant_spec(load_scenario("single_path"), "devops"))
    assert model.hidden_sizes == (8,)
