"""A trained agent checkpoint as a Policy (shaping.policies) of the whole scenario, for evaluation and comparison.

The checkpoint's tenant is controlled greedily from the observation that the same ObservationLayout
builds in training; every other tenant keeps the baseline it had in training (its scenario policy,
stored in the checkpoint), so ``python -m experiments.compare policies=[fq_codel,ppo:PATH]`` compares
what the agent changes for the tenant that deploys it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from shaping.agents.checkpoint import load_checkpoint, read_checkpoint
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
    _tenants: tuple[str, ...]

    @property
    def name(self) -> str:
        """Name used in reports."""
        return self._name

    @property
    def tenants(self) -> tuple[str, ...]:
        """The tenants the trained agents can control (shaping.policies.resolve_controlled reads it)."""
        return self._tenants

    @property
    def aqm(self) -> bool:
        """No CoDel on the leaves: in training the controlled tenants never run it (nor static_priority)."""
        return False


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
