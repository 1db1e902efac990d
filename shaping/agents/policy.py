"""A trained agent checkpoint as a Policy (shaping.policies) of the whole scenario, for evaluation and comparison.

The checkpoint's tenant is controlled greedily from the observation that the same ObservationLayout
builds in training; every other tenant keeps the baseline it had in training (its scenario policy,
stored in the checkpoint), so ``python -m experiments.compare policies=[fq_codel,ppo:PATH]`` compares
what the agent changes for the tenant that deploys it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from shaping.agents.checkpoint import load_checkpoint, read_checkpoint
from shaping.agents.global_model import load_weights, make_model, set_weights
from shaping.agents.ppo import ActorCritic
from shaping.agents.universal import TenantMapping, UniversalLayout, tenant_mapping
from shaping.baselines import get_baseline
from shaping.policies import PolicyInput
from shaping.sim.layout import ScenarioTensors
from shaping.sim.tenant_view import TenantView
from shaping.spec import PlanBatch, decode_batch, stack_plans

#: Baseline of the tenants that the checkpoint does not name (a scenario other than the training one).
DEFAULT_OTHER_POLICY = "static_priority"


def baseline_plans(st: ScenarioTensors, policies: Mapping[str, str], default: str) -> PlanBatch:
    """Every tenant's baseline plan (its policy in `policies` by name, else `default`), one environment."""
    row = [get_baseline(policies.get(s.name, default)).plan(s) for s in st.specs]
    return stack_plans([row], st.n_classes, st.device)


def write_actions(fields: list[torch.Tensor], view: TenantView, actions: torch.Tensor, st: ScenarioTensors) -> None:
    """Decode the tenant's actions (batch, n_heads) into its rows of the plan fields (batch, tenants, classes)."""
    k, n = view.index, view.n_classes
    dec = decode_batch(actions.long().view(actions.shape[0], 1, -1), n, st.cap_mbps[k : k + 1], st.levels)
    for f, d in zip(fields, dec, strict=True):
        f[:, k, :n] = d[:, 0]


class TrainedPolicyBase:
    """What the policies of trained agents share: a report name, the tenants they were trained for and no
    CoDel (never run in training)."""

    _name: str
    _tenants: tuple[str, ...] | None

    @property
    def name(self) -> str:
        """Name used in reports."""
        return self._name

    @property
    def tenants(self) -> tuple[str, ...] | None:
        """The tenants the trained agents can control, None for any (shaping.policies.resolve_controlled reads it)."""
        return self._tenants

    @property
    def aqm(self) -> bool:
        """No CoDel on the leaves: in training the controlled tenants never run it (nor static_priority)."""
        return False


#: Turns one tenant's observation (a batch) into its flat actions in the tenant's own layout.
TenantActor = Callable[[torch.Tensor], torch.Tensor]


class PerTenantModelPolicy(TrainedPolicyBase):
    """A model bound to each controlled tenant on first sight of a scenario (``_actors``), run greedily on that
    tenant's observation every step; the other rows keep the warm-up plan (the evaluation overwrites the
    neighbours' rows), and at step 0, with nothing measured yet, the controlled tenants run it too."""

    _key: tuple[ScenarioTensors, tuple[int, ...]] | None = None
    _drivers: list[tuple[TenantView, TenantActor]]
    _base: PlanBatch | None = None

    def _actors(self, st: ScenarioTensors, controlled: tuple[int, ...]) -> list[TenantActor]:
        """One actor per controlled tenant, in `controlled` order."""
        raise NotImplementedError

    def _bind(self, st: ScenarioTensors, controlled: tuple[int, ...]) -> None:
        actors = self._actors(st, controlled)
        self._drivers = [(TenantView.of(st, k), act) for k, act in zip(controlled, actors, strict=True)]
        self._base = baseline_plans(st, {}, DEFAULT_OTHER_POLICY)
        self._key = (st, controlled)

    @torch.no_grad()
    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Plans of every environment and tenant: the model's decoded actions for the controlled tenants."""
        controlled = inp.controlled or tuple(range(inp.tensors.n_tenants))
        if self._key is None or self._key[0] is not inp.tensors or self._key[1] != controlled:
            self._bind(inp.tensors, controlled)
        assert self._base is not None
        b = int(inp.state.t.shape[0])
        fields = [x.expand(b, *x.shape[1:]).clone() for x in self._base]
        if inp.last is not None:
            for view, act in self._drivers:
                write_actions(fields, view, act(view.observe(inp.last)), inp.tensors)
        return PlanBatch(*fields)


class AgentPolicy(TrainedPolicyBase):
    """Drives one tenant with a checkpointed agent (greedy actions), the others with their baselines.

    The checkpoint is read when the policy first sees a scenario: its tenant must be in the scenario
    (by name) with the spec it was trained for, else load_checkpoint raises CheckpointMismatchError.
    At step 0 there is no measurement to observe yet, so the tenant runs its baseline plan, as in
    training (the warm-up interval of a reset).

    Args:
        path: the checkpoint file.
        name: name in reports; default ``ppo:PATH``.
        other_policy: baseline of tenants the checkpoint does not name.
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None,
                 other_policy: str = DEFAULT_OTHER_POLICY) -> None:  # fmt: skip
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"agent checkpoint {os.fspath(path)!r} does not exist")
        self._name = name or f"ppo:{os.fspath(path)}"
        self._tenants = (str(read_checkpoint(self.path).get("tenant")),)
        self.other_policy = other_policy
        self._key: ScenarioTensors | None = None
        self._model: torch.nn.Module | None = None
        self._view: TenantView | None = None
        self._base: PlanBatch | None = None

    def _bind(self, st: ScenarioTensors) -> None:
        """Load the checkpoint for the scenario's tenant and build every tenant's baseline plan."""
        payload = read_checkpoint(self.path)
        tenant = str(payload.get("tenant"))
        names = [s.name for s in st.specs]
        if tenant not in names:
            raise ValueError(f"checkpoint {os.fspath(self.path)!r} is for tenant {tenant!r}; the scenario has {names}")
        k = names.index(tenant)
        ckpt = load_checkpoint(self.path, st.specs[k], device=st.device)
        # The others' drivers, and the controlled tenant's plan before its first observation (the warm-up).
        trained = dict(payload.get("extra", {}).get("scenario_policies", {}))
        self._base = baseline_plans(st, trained, self.other_policy)
        self._model = ckpt.model
        self._view = TenantView.of(st, k)
        self._key = st

    @torch.no_grad()
    def __call__(self, inp: PolicyInput) -> PlanBatch:
        """Plans of every environment and tenant: the agent's decoded action for its tenant."""
        if self._key is not inp.tensors:
            self._bind(inp.tensors)
        assert self._base is not None and self._view is not None and self._model is not None
        b = int(inp.state.t.shape[0])
        fields = [x.expand(b, *x.shape[1:]).clone() for x in self._base]
        if inp.last is not None:
            actions = self._model.act(self._view.observe(inp.last))  # type: ignore[operator]
            write_actions(fields, self._view, actions, inp.tensors)
        return PlanBatch(*fields)


def _through_layout(mapping: TenantMapping, model: ActorCritic) -> TenantActor:
    """A universal-layout model as one tenant's actor: its observation mapped in, the actions mapped back."""
    return lambda obs: mapping.action(model.act(mapping.observation(obs)))


class UniversalPolicy(PerTenantModelPolicy):
    """The federation's universal model (a weights file of experiments.pretrain_universal or a federated round)
    driving every controlled tenant through its mapping into the universal layout, greedily.

    The layout and hidden sizes come from the ``summary.json`` beside the weights (pretraining writes it), else
    from ``layout`` / ``hidden_sizes``. A controlled tenant that does not fit the layout (more classes, entities,
    VMs, paths or action choices than it holds) makes the policy raise ValueError when it first sees the
    scenario: the benchmark reports it as not applicable there. At step 0 the controlled tenants run their
    scenario policy's plan, as in training.

    Args:
        path: the weights file (.npz of shaping.agents.global_model.save_weights).
        name: name in reports; default ``universal:PATH``.
        layout: the layout when no summary.json names one (default UniversalLayout()).
        hidden_sizes: the hidden sizes when no summary.json names them (default (64, 64)).
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None, *,
                 layout: UniversalLayout | None = None, hidden_sizes: tuple[int, ...] = (64, 64)) -> None:  # fmt: skip
        from shaping.agents.projection import read_model_card  # deferred: it imports shaping.agents.ppo

        self.path = Path(path)
        self._name = name or f"universal:{os.fspath(path)}"
        self._tenants = None
        self.layout, self.hidden_sizes = read_model_card(self.path, layout, hidden_sizes)
        self._weights = load_weights(self.path)
        self._drivers = []

    def _actors(self, st: ScenarioTensors, controlled: tuple[int, ...]) -> list[TenantActor]:
        """One model copy per controlled tenant, masked by that tenant's envelope in the universal layout."""
        model = make_model(self.layout, self.hidden_sizes)
        set_weights(model, self._weights)
        model.eval()
        actors: list[TenantActor] = []
        for k in controlled:
            mapping = tenant_mapping(st.specs[k], self.layout)
            own = copy.deepcopy(model).to(st.device)
            own.set_envelope(mapping.envelope)
            actors.append(_through_layout(mapping, own))
        return actors


class SetPolicy(PerTenantModelPolicy):
    """A set policy (shaping.agents.set_policy, a file of save_set_policy) driving every controlled tenant,
    greedily, whatever its number of classes and paths: the model is bound to each tenant with that tenant's
    envelope. At step 0 the controlled tenants run their warm-up plan, as in training.

    Args:
        path: the weights file.
        name: name in reports; default ``set:PATH``.
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        from shaping.agents.set_policy import load_set_policy  # deferred: it imports shaping.agents.ppo

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"set policy weights {os.fspath(path)!r} do not exist")
        self._name = name or f"set:{os.fspath(path)}"
        self._tenants = None
        self._model = load_set_policy(self.path)
        self._drivers = []

    def _actors(self, st: ScenarioTensors, controlled: tuple[int, ...]) -> list[TenantActor]:
        """The model bound to each controlled tenant (its own token structure, levels and envelope)."""
        from shaping.agents.set_policy import bind

        model = self._model.to(st.device)
        return [bind(model, st.specs[k]).act for k in controlled]
