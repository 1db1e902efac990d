"""A global (universal-layout) model turned into an ordinary model of one tenant, exactly.

The federation's model reads the universal observation and writes the universal action (shaping.agents.universal):
a tenant's observation is scattered into it, the rest of it is constant for that tenant (application one-hots,
presence flags, empty slots), and the tenant's action dimensions are read from some of its action dimensions.
Everything a constant input contributes can be folded into the first layers' biases, and the unread action
dimensions dropped from the actor's last layer: what is left is an ActorCritic of the tenant's own observation
and action sizes that computes the same logits and values as the global model through the mapping (up to float
rounding). The control loop (shaping.control.ModelPolicy), its numpy inference, its envelope and its experience
records then treat a global model like any checkpoint trained for the tenant.

Folding a constant input is exact even with the normalizer's clipping: the normalizer works feature by feature,
so a constant feature normalizes (and clips) to a constant.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from shaping.agents.global_model import VERSION_KEY, load_weights, make_model, set_weights
from shaping.agents.ppo import ActorCritic
from shaping.agents.universal import TenantMapping, UniversalLayout, tenant_mapping
from shaping.spec import ActionLayout, ObservationLayout, TenantSpec

#: Hidden sizes of a global model whose directory has no summary.json (the federation's default).
DEFAULT_HIDDEN_SIZES = (64, 64)


def is_global_weights(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a global weights file (save_weights: an .npz holding the layout version), not a
    checkpoint of shaping.agents.checkpoint (also a zip, written by torch.save)."""
    try:
        with zipfile.ZipFile(path) as z:
            return f"{VERSION_KEY}.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def read_model_card(
    weights: str | os.PathLike[str],
    layout: UniversalLayout | None = None,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES,
) -> tuple[UniversalLayout, tuple[int, ...]]:
    """The layout and hidden sizes of a global weights file: those of the summary.json beside it (pretraining
    and federated runs write one), else `layout` (None: UniversalLayout()) and `hidden_sizes`."""
    summary = Path(weights).parent / "summary.json"
    meta = json.loads(summary.read_text()) if summary.is_file() else {}
    if "layout" in meta:
        lay = dict(meta["layout"])
        layout = UniversalLayout(**{**lay, "per_class": tuple(lay["per_class"])})
    return layout or UniversalLayout(), tuple(int(h) for h in meta.get("hidden_sizes", hidden_sizes))


def load_global_model(weights: str | os.PathLike[str]) -> tuple[ActorCritic, UniversalLayout]:
    """The global model of a weights file (shaping.agents.global_model.save_weights) and its layout.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file is of another observation layout version.
        ValueError: its arrays do not fit the layout and hidden sizes its summary.json (or the defaults) give.
    """
    layout, hidden = read_model_card(weights)
    model = make_model(layout, hidden)
    try:
        set_weights(model, load_weights(Path(weights)))
    except (RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"global model {os.fspath(weights)!r} does not fit layout {layout.to_config()} and hidden "
                         f"sizes {list(hidden)}: {str(err).splitlines()[0]}") from err  # fmt: skip
    return model.eval(), layout


def project(model: ActorCritic, mapping: TenantMapping, spec: TenantSpec) -> ActorCritic:
    """The tenant's own ActorCritic computing what `model` computes through `mapping` (see the module doc).

    Raises:
        ValueError: the mapping reads features or choices the tenant does not have.
    """
    obs_dim = ObservationLayout(spec).size
    src, dst = mapping.obs_src.long(), mapping.obs_dst.long()
    nvec = tuple(int(n) for n in ActionLayout(spec).nvec)
    wide = [int(model.nvec[int(d)]) for d in mapping.act_src]
    if (
        (len(src) and int(src.max()) >= obs_dim)
        or len(wide) != len(nvec)
        or any(n > w for n, w in zip(nvec, wide, strict=True))
    ):
        raise ValueError(f"the universal mapping does not fit tenant {spec.name!r}'s observation and action")
    out = ActorCritic(obs_dim, nvec, model.hidden_sizes, clip_obs=model.clip_obs)
    with torch.no_grad():
        norm_u, norm_t = model.obs_norm, out.obs_norm
        norm_t.mean[src] = norm_u.mean[dst]
        norm_t.var[src] = norm_u.var[dst]
        norm_t.count.copy_(norm_u.count)
        # The universal features the tenant does not fill are constant: normalized once, folded into biases.
        fixed = torch.ones(norm_u.size, dtype=torch.bool)
        fixed[dst] = False
        constant = norm_u(mapping.static.to(torch.float32).unsqueeze(0))[0]
        for net_u, net_t in ((model.actor, out.actor), (model.critic, out.critic)):
            lin_u, lin_t = _linears(net_u), _linears(net_t)
            lin_t[0].weight.zero_()
            lin_t[0].weight[:, src] = lin_u[0].weight[:, dst]
            lin_t[0].bias.copy_(lin_u[0].bias + lin_u[0].weight[:, fixed] @ constant[fixed])
            for a, b in zip(lin_u[1:-1], lin_t[1:-1], strict=True):
                b.load_state_dict(a.state_dict())
        _linears(out.critic)[-1].load_state_dict(_linears(model.critic)[-1].state_dict())
        # The actor's last layer: only the rows of the universal choices the tenant's heads read.
        offsets = [0, *itertools.accumulate(int(n) for n in model.nvec)]
        rows = torch.tensor([offsets[int(d)] + k for d, n in zip(mapping.act_src, nvec, strict=True) for k in range(n)])
        last_u, last_t = _linears(model.actor)[-1], _linears(out.actor)[-1]
        last_t.weight.copy_(last_u.weight[rows])
        last_t.bias.copy_(last_u.bias[rows])
    return out.eval()


def tenant_model(weights: str | os.PathLike[str], spec: TenantSpec) -> ActorCritic:
    """A global weights file as the tenant's own ActorCritic (load_global_model, tenant_mapping, project).

    Raises:
        ValueError: the tenant does not fit the model's layout, or the file does not fit its summary (one line).
    """
    model, layout = load_global_model(weights)
    return project(model, tenant_mapping(spec, layout), spec)


def _linears(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]
