"""The set policy: any class and path counts, equivariance, numpy == torch, masks, gradients, save/load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shaping.agents import build_envelope
from shaping.agents.envelope import Envelope
from shaping.agents.ppo import collect_rollout, make_optimizer, ppo_update
from shaping.agents.set_numpy import SetNumpyActor, _attend, benchmark, benchmark_layout, widened_spec
from shaping.agents.set_policy import (
    SetActorCritic,
    SetPolicyConfig,
    SetPolicyFormatError,
    TenantBinding,
    bind,
    load_set_policy,
    save_set_policy,
)
from shaping.agents.set_tokens import CLASS_DIM, PATH_DIM, TENANT_DIM, TenantStructure
from shaping.baselines import static_priority_plan
from shaping.config import PPOConfig
from shaping.control import ControlLoop, LoopConfig, ModelPolicy, SimBackend
from shaping.sim.scenarios import load_scenario
from shaping.sim.vector_env import ShapingVectorEnv
from shaping.spec import ACTION_FIELDS, ActionLayout, ObservationLayout, TenantSpec, scenario_specs

#: Float32 sums in another order (means over permuted tokens): equal up to rounding.
PERM_TOL = {"rtol": 1e-5, "atol": 1e-4}
BASE = scenario_specs(load_scenario("default"))[0]  # gameco: 4 classes, 2 paths, VMs and a subnet


def make_spec(n_classes: int, n_paths: int) -> TenantSpec:
    """The default scenario's first tenant (VMs and a subnet, SLAs) widened to n_classes x n_paths."""
    return widened_spec(BASE, n_classes, n_paths)


def random_obs(spec: TenantSpec, n: int, seed: int) -> torch.Tensor:
    """(n, obs_dim) observations in [0, 1] with a valid plan_path one-hot."""
    gen = torch.Generator().manual_seed(seed)
    layout = ObservationLayout(spec)
    obs = torch.rand(n, layout.size, generator=gen)
    nc, np_ = len(spec.classes), len(spec.paths)
    start = sum(len(lab) for name, lab in layout.blocks[: [b for b, _ in layout.blocks].index("plan_path")])
    paths = torch.randint(np_, (n, nc), generator=gen)
    obs[:, start : start + nc * np_] = torch.nn.functional.one_hot(paths, np_).flatten(-2).float()
    return obs


def spread(model: SetActorCritic, seed: int = 0) -> SetActorCritic:
    """Weights spread out so logits are far from ties (an untrained model is near uniform)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SetActorCritic:
    torch.manual_seed(0)
    return spread(SetActorCritic())


def class_permutation_obs(spec: TenantSpec, obs: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The observation of the spec whose classes are reordered by perm (new class i = old class perm[i])."""
    layout = ObservationLayout(spec)
    out, off = [], 0
    nc, np_ = len(spec.classes), len(spec.paths)
    for name, labels in layout.blocks:
        block = obs[..., off : off + len(labels)]
        if len(labels) == nc and name.startswith(("class_", "plan_")) and name != "plan_root":
            block = block[..., perm]
        elif name == "plan_path":
            block = block.unflatten(-1, (nc, np_))[..., perm, :].flatten(-2)
        out.append(block)
        off += len(labels)
    return torch.cat(out, -1)


def path_permutation_obs(spec: TenantSpec, obs: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The observation of the spec whose paths are reordered by perm."""
    layout = ObservationLayout(spec)
    out, off = [], 0
    nc, np_ = len(spec.classes), len(spec.paths)
    for name, labels in layout.blocks:
        block = obs[..., off : off + len(labels)]
        if name.startswith("path_"):
            block = block[..., perm]
        elif name == "plan_path":
            block = block.unflatten(-1, (nc, np_))[..., perm].flatten(-2)
        out.append(block)
        off += len(labels)
    return torch.cat(out, -1)


@pytest.mark.parametrize("n_classes", [1, 2, 5, 16])
@pytest.mark.parametrize("n_paths", [1, 2, 3, 4])
def test_any_counts_run(model: SetActorCritic, n_classes: int, n_paths: int) -> None:
    spec = make_spec(n_classes, n_paths)
    cls_tok, path_tok, ten_tok, _ = TenantStructure.of(spec).tokens(random_obs(spec, 3, 0))
    assert cls_tok.shape == (3, n_classes, CLASS_DIM)
    assert path_tok.shape == (3, n_paths, PATH_DIM)
    assert ten_tok.shape == (3, TENANT_DIM)
    np_tokens = TenantStructure.of(spec).tokens_numpy(random_obs(spec, 3, 0).numpy())
    for t, n in zip((cls_tok, path_tok, ten_tok), np_tokens[:3], strict=True):
        np.testing.assert_allclose(n, t.numpy(), rtol=1e-6, atol=1e-6)
    agent = bind(model, spec)
    obs = random_obs(spec, 3, 1)
    action, logprob, entropy, value = agent.get_action_and_value(obs)
    nvec = torch.as_tensor(ActionLayout(spec).nvec)
    assert action.shape == (3, len(nvec)) and ((action >= 0) & (action < nvec)).all()
    assert torch.isfinite(logprob).all() and torch.isfinite(entropy).all() and torch.isfinite(value).all()
    ActionLayout(spec).decode(agent.act(obs[0]).numpy())  # the flat action decodes into a plan


def test_class_permutation_permutes_outputs(model: SetActorCritic) -> None:
    spec = make_spec(6, 3)
    perm = [3, 0, 5, 1, 4, 2]
    permuted = replace(spec, classes=tuple(spec.classes[i] for i in perm))
    obs = random_obs(spec, 4, 2)
    logits, value = bind(model, spec).forward_heads(obs)
    logits_p, value_p = bind(model, permuted).forward_heads(class_permutation_obs(spec, obs, perm))
    nf = len(ACTION_FIELDS)
    per_class = logits[:, :-1].unflatten(1, (6, nf))
    per_class_p = logits_p[:, :-1].unflatten(1, (6, nf))
    torch.testing.assert_close(per_class_p, per_class[:, perm], **PERM_TOL)
    torch.testing.assert_close(logits_p[:, -1], logits[:, -1], **PERM_TOL)
    torch.testing.assert_close(value_p, value, **PERM_TOL)


def test_path_permutation_moves_path_choices(model: SetActorCritic) -> None:
    spec = make_spec(5, 4)
    perm = [2, 0, 3, 1]
    permuted = replace(
        spec,
        paths=tuple(spec.paths[i] for i in perm),
        path_mbps=tuple(spec.path_mbps[i] for i in perm),
        path_delay_ms=tuple(spec.path_delay_ms[i] for i in perm),
    )
    obs = random_obs(spec, 4, 3)
    logits, value = bind(model, spec).forward_heads(obs)
    logits_p, value_p = bind(model, permuted).forward_heads(path_permutation_obs(spec, obs, perm))
    nf, path = len(ACTION_FIELDS), ACTION_FIELDS.index("path")
    paths = logits[:, :-1].unflatten(1, (5, nf))[:, :, path, :4]
    paths_p = logits_p[:, :-1].unflatten(1, (5, nf))[:, :, path, :4]
    torch.testing.assert_close(paths_p, paths[..., perm], **PERM_TOL)
    assert (paths_p.argmax(-1) == torch.as_tensor(perm).argsort()[paths.argmax(-1)]).all()
    others = [f for f in range(nf) if f != path]
    torch.testing.assert_close(
        logits_p[:, :-1].unflatten(1, (5, nf))[:, :, others], logits[:, :-1].unflatten(1, (5, nf))[:, :, others],
        **PERM_TOL,
    )  # fmt: skip
    torch.testing.assert_close(value_p, value, **PERM_TOL)


@pytest.mark.parametrize(("n_classes", "n_paths"), [(1, 1), (3, 2), (16, 4)])
def test_numpy_matches_torch(model: SetActorCritic, n_classes: int, n_paths: int) -> None:
    spec = make_spec(n_classes, n_paths)
    agent = bind(model, spec)
    actor = SetNumpyActor(agent)
    obs = random_obs(spec, 5, 4)
    with torch.no_grad():
        logits, value = agent.forward_heads(obs)
    np_logits, np_value = actor.forward(obs.numpy())
    finite = torch.isfinite(logits).numpy()
    assert (np.isfinite(np_logits) == finite).all()
    np.testing.assert_allclose(np_logits[finite], logits.numpy()[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_value, value.numpy(), rtol=1e-5, atol=1e-5)
    assert (actor.act(obs.numpy()) == agent.act(obs).numpy()).all()
    assert (actor.act(obs[0].numpy()) == agent.act(obs[0]).numpy()).all()  # one observation


def random_envelope(spec: TenantSpec, seed: int) -> Envelope:
    """An envelope keeping about half of every dimension's choices (at least one)."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for n in ActionLayout(spec).nvec:
        keep = torch.rand(int(n), generator=gen) < 0.5
        keep[int(torch.randint(int(n), (), generator=gen))] = True
        masks.append(tuple(bool(k) for k in keep))
    return Envelope(tuple(masks))


@pytest.mark.parametrize("seed", range(6))
def test_one_observation_greedy_matches_torch(model: SetActorCritic, seed: int) -> None:
    """The single-observation path (act and scores of one observation) on random tenants: every tenant of the
    default scenario (own VMs, apps and SLAs) widened to random counts, under its envelope or a random one."""
    rng = np.random.default_rng(seed)
    tenants = scenario_specs(load_scenario("default"))
    for i in range(4):
        n_classes, n_paths = (16, 4) if seed == 0 and i == 0 else (int(rng.integers(1, 17)), int(rng.integers(1, 5)))
        spec = widened_spec(tenants[int(rng.integers(len(tenants)))], n_classes, n_paths)
        envelope = random_envelope(spec, seed * 10 + i) if i % 2 else None
        agent = bind(model, spec, envelope)
        actor = SetNumpyActor(agent)
        obs = random_obs(spec, 8, seed * 10 + i)
        with torch.no_grad():
            logits = agent.masked_logits(obs).numpy()
            greedy = agent.act(obs).numpy()
        for j in range(len(obs)):
            one = obs[j].numpy()
            np.testing.assert_array_equal(actor.act(one), greedy[j])
            scores = actor.scores(one)
            finite = np.isfinite(logits[j])
            assert (np.isfinite(scores) == finite).all()
            np.testing.assert_allclose(scores[finite], logits[j][finite], rtol=1e-5, atol=1e-5)
        assert agent.envelope.contains(torch.as_tensor(np.stack([actor.act(o) for o in obs.numpy()]))).all()


def test_one_observation_with_saturated_attention_matches_torch() -> None:
    """QKV weights scaled up until attention scores span hundreds: the single-observation path's softmax falls
    back to per-query shifts (padded and unpadded token counts) and still agrees with torch."""
    torch.manual_seed(1)
    sharp = spread(SetActorCritic(), seed=1)
    with torch.no_grad():
        for layer in sharp.layers:
            layer.qkv.weight.mul_(6.0)
    for n_classes, n_paths in [(16, 4), (3, 2), (5, 2)]:  # 21 tokens (padded to 24), 6 (to 8), 8
        spec = make_spec(n_classes, n_paths)
        agent = bind(sharp, spec)
        actor = SetNumpyActor(agent)
        obs = random_obs(spec, 4, 9)
        with torch.no_grad():
            logits, greedy = agent.masked_logits(obs).numpy(), agent.act(obs).numpy()
        for j in range(len(obs)):
            np.testing.assert_array_equal(actor.act(obs[j].numpy()), greedy[j])
            finite = np.isfinite(logits[j])
            np.testing.assert_allclose(actor.scores(obs[j].numpy())[finite], logits[j][finite], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("padding", [0, 3])
def test_attention_shift_falls_back_when_a_query_underflows(padding: int) -> None:
    """Scores shifted by their overall maximum: a query whose scores all lie ~200 below it would underflow to
    0 / 0; the attention is then redone with each query's own maximum over the real keys, as torch's softmax
    computes it. Padding tokens (zero keys, values and ones) score 0, above every score of query 1 here."""
    rng = np.random.default_rng(0)
    h, dh, n = 2, 3, 5
    m = n + padding
    q = np.zeros((h, dh, m), np.float32)
    k = np.zeros((h, m, dh), np.float32)
    v = np.zeros((h, dh + 1, m), np.float32)
    q[..., :n] = rng.standard_normal((h, dh, n))
    k[:, :n] = rng.standard_normal((h, n, dh))
    v[:, :dh, :n] = rng.standard_normal((h, dh, n))
    v[:, dh, :n] = 1.0
    k[:, :n] = np.abs(k[:, :n]) + 1.0  # positive keys
    k[:, 0] *= 2.0
    q[:, :, 0] = 200.0  # query 0 scores every real key in the hundreds, key 0 highest; the others a few units
    q[:, :, 1] = -100.0  # query 1 scores every real key far below 0 (and so below the padding's zeros)
    s, top, o = np.empty((h, m, m), np.float32), np.empty((h, 1, m), np.float32), np.empty((h, dh + 1, m), np.float32)
    _attend(q, k, v, s, top, o, n)
    scores = torch.as_tensor(k[:, :n]) @ torch.as_tensor(q[..., :n])
    expected = (torch.as_tensor(v[:, :dh, :n]) @ torch.softmax(scores, 1)).numpy()  # softmax over the keys
    np.testing.assert_allclose(o[:, :dh, :n] / o[:, dh:, :n], expected, rtol=1e-5, atol=1e-5)
    assert (scores.max() - scores.amax(1)).max() > 110  # the overall shift would have underflowed
    assert (scores[:, :, 1] < -110).all()  # query 1's own maximum is far below the padding's 0


def test_masks_respected(model: SetActorCritic) -> None:
    spec = make_spec(4, 3)
    gen = torch.Generator().manual_seed(5)
    masks = []
    for n in ActionLayout(spec).nvec:
        keep = torch.rand(int(n), generator=gen) < 0.4
        keep[int(torch.randint(int(n), (), generator=gen))] = True
        masks.append(tuple(bool(k) for k in keep))
    env = Envelope(tuple(masks))
    agent = bind(model, spec, env)
    obs = random_obs(spec, 64, 6)
    torch.manual_seed(0)
    assert env.contains(agent.act(obs)).all()
    assert env.contains(agent.act(obs, deterministic=False)).all()
    actor = SetNumpyActor(agent)
    assert env.contains(torch.as_tensor(actor.sample(obs.numpy(), np.random.default_rng(0)))).all()
    # The real envelope of the tenant too (drop and rate bounds from its SLAs).
    real = build_envelope(spec)
    assert real.contains(bind(model, spec).act(obs)).all()


def test_binding_maps_flat_actions() -> None:
    spec = make_spec(3, 2)
    binding = TenantBinding(spec)
    flat = torch.as_tensor(np.stack([ActionLayout(spec).nvec - 1, np.zeros(len(ActionLayout(spec).nvec))]))
    per_class, root = binding.per_class(flat.long())
    assert per_class.shape == (2, 3, len(ACTION_FIELDS))
    assert (per_class[0, :, ACTION_FIELDS.index("path")] == 1).all() and (root[0] == len(spec.root_levels) - 1)
    assert (binding.flat(per_class, root) == flat).all()


def test_ppo_updates_on_a_real_env_have_finite_grads_and_fit_the_values() -> None:
    torch.manual_seed(0)
    env = ShapingVectorEnv(4, load_scenario("default"), tenant="gameco", max_episode_steps=8)
    model = SetActorCritic(SetPolicyConfig(d_model=32, n_heads=4, d_ff=64, d_key=16))
    agent = bind(model, env.view.observation.spec)
    rollout, _ = collect_rollout(env, agent, env.reset_torch(seed=0), 6)
    cfg = PPOConfig(update_epochs=1, num_minibatches=1, target_kl=None)
    opt = make_optimizer(agent, 1e-3)

    def value_loss() -> float:
        with torch.no_grad():
            return float(((agent.get_value(rollout.obs.flatten(0, 1)) - rollout.rewards.flatten()) ** 2).mean())

    before = value_loss()
    stats = ppo_update(agent, opt, rollout, cfg)
    assert all(np.isfinite(v) for k, v in stats.items() if k != "explained_variance")
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for _ in range(20):
        ppo_update(agent, opt, rollout, cfg)
    assert value_loss() < before


def test_save_load_round_trip_and_refuses_other_versions(model: SetActorCritic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = save_set_policy(tmp_path / "set.pt", model)
    loaded = load_set_policy(path)
    spec = make_spec(2, 2)
    obs = random_obs(spec, 2, 7)
    torch.testing.assert_close(bind(loaded, spec).masked_logits(obs), bind(model, spec).masked_logits(obs))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(SetPolicyFormatError, match="format 99"):
        load_set_policy(tmp_path / "old.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(SetPolicyFormatError, match="not a set policy"):
        load_set_policy(tmp_path / "other.pt")


def test_benchmark_reports_percentiles(model: SetActorCritic) -> None:
    stats = benchmark(SetNumpyActor(bind(model, make_spec(16, 4))), n=50, warmup=5)
    assert 0 < stats["p50_us"] <= stats["p99_us"] and stats["cpu_p50_us"] > 0
    assert benchmark_layout(2, 1, n=20)["p50_us"] > 0


def test_numpy_log_probs_match_torch(model: SetActorCritic) -> None:
    spec = make_spec(5, 3)
    agent = bind(model, spec)
    actor = SetNumpyActor(agent)
    obs = random_obs(spec, 4, 8)
    torch.manual_seed(1)
    with torch.no_grad():
        action, logprob, _, _ = agent.get_action_and_value(obs)
    np.testing.assert_allclose(actor.log_prob(obs.numpy(), action.numpy()), logprob.numpy(), rtol=1e-5, atol=1e-4)
    greedy, lp = actor.act_and_log_prob(obs[0].numpy())
    with torch.no_grad():
        _, torch_lp, _, _ = agent.get_action_and_value(obs[:1], torch.as_tensor(greedy)[None])
    assert lp == pytest.approx(float(torch_lp[0]), abs=1e-4)


def test_the_control_loop_runs_it_in_numpy_inside_the_envelope() -> None:
    torch.manual_seed(0)
    backend = SimBackend(load_scenario("default"), "gameco", seed=0)
    spec = backend.spec
    agent = bind(SetActorCritic(SetPolicyConfig(d_model=32, d_ff=64, d_key=16)), spec)
    policy = ModelPolicy(agent, spec, epsilon=0.2, deterministic=False, generator=torch.Generator().manual_seed(1))
    assert isinstance(policy.numpy_actor, SetNumpyActor)
    loop = ControlLoop(backend, policy, static_priority_plan(spec), config=LoopConfig(realtime=False, deadline_s=2.0))
    assert loop.run(6) == 6
    loop.close()
    layout = ActionLayout(spec)
    envelope = build_envelope(spec)
    for record in loop.history:
        assert record.decision is not None and np.isfinite(record.decision.logprob)
        assert envelope.contains(torch.as_tensor(record.decision.action)[None]).all()
        assert layout.decode(record.decision.action) == record.decision.plan
