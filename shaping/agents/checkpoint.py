"""Agent checkpoints: weights with the observation normalizer, spec version, tenant fingerprint and config.

A checkpoint is one ``torch.save`` file of plain types and tensors, so ``torch.load(weights_only=True)``
reads it without running code from the file. Loading checks the checkpoint against the tenant it is
meant for: a policy trained for another observation or action layout would act on wrong inputs.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shaping.agents.dqn import BranchingQNetwork
from shaping.agents.envelope import EnvelopeConfig, build_envelope
from shaping.agents.ppo import ActorCritic
from shaping.spec import SPEC_VERSION, SpecError, TenantSpec

#: Version of the checkpoint file layout (not of the spec).
CHECKPOINT_FORMAT = 1

#: Model classes by kind; each takes the keyword arguments its model_kwargs() returned.
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {"ppo": ActorCritic, "dqn": BranchingQNetwork}


class CheckpointMismatchError(SpecError):
    """A checkpoint trained for another spec version or tenant layout than the tenant loading it."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (normalizer included, envelope set) and what it was saved with."""

    model: nn.Module
    kind: str
    config: dict[str, Any]
    """The training config saved with the weights (e.g. the PPO hyperparameters)."""
    meta: dict[str, Any]
    """Everything else saved: spec_version, fingerprint, tenant, envelope, extra, ..."""


def _plain(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: TenantSpec,
    config: Any = None,
    *,
    envelope: EnvelopeConfig | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of a model trained for a tenant.

    Args:
        path: file to write (parent directories are created).
        model: the agent; needs ``kind`` and ``model_kwargs()`` (ActorCritic has them).
        spec: the tenant the model was trained for; its fingerprint is stored.
        config: training config (dataclass or mapping of plain values), stored as a dict.
        envelope: the envelope bounds used in training, restored by default on load.
        extra: further plain values to store (seed, iterations, evaluation reward, ...).
    Returns:
        The path written.
    """
    kind = str(getattr(model, "kind", ""))
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} has no loader; known kinds: {sorted(MODEL_KINDS)}")
    model_kwargs = model.model_kwargs()  # type: ignore[operator]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "spec_version": SPEC_VERSION,
        "fingerprint": spec.fingerprint(),
        "tenant": spec.name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": _plain(config),
        "envelope": asdict(envelope or EnvelopeConfig()),
        "extra": dict(extra or {}),
        "torch_version": str(torch.__version__),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return out


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw contents of a checkpoint, unchecked (for inspection).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is empty, truncated or not a FedShape checkpoint.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist or is not a file")
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} is not a FedShape agent checkpoint (it holds more than tensors and plain values)"
        ) from err
    except (EOFError, RuntimeError, OSError) as err:
        # torch 2.x: an empty file ends the unpickler (EOFError), a truncated zip fails in its reader
        # (RuntimeError "failed finding central directory", or OSError EINVAL).
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a readable agent checkpoint (empty or truncated?): {detail}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a FedShape agent checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def check_compatible(payload: Mapping[str, Any], spec: TenantSpec, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError, naming both sides, unless the checkpoint fits the tenant's spec."""
    theirs = (str(payload.get("spec_version")), str(payload.get("fingerprint")))
    ours = (SPEC_VERSION, spec.fingerprint())
    if theirs == ours:
        return
    if theirs[0] != ours[0]:
        raise CheckpointMismatchError(f"{source} was trained for observation layout version {theirs[0]}, this "
                                      f"FedShape reads version {ours[0]}: retrain the agent")  # fmt: skip
    lines = [
        f"{source} does not match tenant {spec.name!r}:",
        f"  checkpoint: spec version {theirs[0]!r}, trained for tenant {payload.get('tenant')!r}, "
        f"fingerprint {theirs[1]!r}",
        f"  tenant:     spec version {ours[0]!r}, fingerprint {ours[1]!r}",
    ]
    their_parts, our_parts = theirs[1].split(";"), ours[1].split(";")
    diff = [f"{a!r} vs {b!r}" for a, b in zip(their_parts, our_parts, strict=False) if a != b]
    if diff or len(their_parts) != len(our_parts):
        lines.append("  differing parts (checkpoint vs tenant): " + ("; ".join(diff) or "number of parts"))
    raise CheckpointMismatchError("\n".join(lines))


def load_checkpoint(
    path: str | os.PathLike[str],
    spec: TenantSpec,
    *,
    envelope: EnvelopeConfig | None = None,
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Load a checkpoint for a tenant, after checking it was trained for the tenant's spec.

    Args:
        path: the checkpoint file.
        spec: the tenant's spec; its fingerprint and SPEC_VERSION must match the checkpoint's.
        envelope: the tenant's envelope bounds; None: the bounds saved with the checkpoint. The
            envelope is rebuilt from the tenant's own spec and QoS either way.
        device: where the model goes.
    Raises:
        FileNotFoundError: there is no such file.
        CheckpointMismatchError: the spec version or the tenant fingerprint differs.
        ValueError: the file is empty, truncated, not a checkpoint, or its model cannot be rebuilt.
    """
    payload = read_checkpoint(path)
    check_compatible(payload, spec, source=f"checkpoint {os.fspath(path)!r}")
    kind = payload["kind"]
    if kind not in MODEL_KINDS:
        raise ValueError(f"checkpoint {os.fspath(path)!r} has model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}")
    try:
        model = MODEL_KINDS[kind](**payload["model_kwargs"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:  # a damaged or hand-edited payload
        raise ValueError(f"checkpoint {os.fspath(path)!r}: its {kind} model cannot be rebuilt: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err  # fmt: skip
    model.to(device)
    bounds = envelope or EnvelopeConfig(**payload["envelope"])
    set_envelope = getattr(model, "set_envelope", None)
    if set_envelope is not None:
        set_envelope(build_envelope(spec, bounds))
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "config", "model_kwargs")}
    meta["envelope"] = asdict(bounds)
    return Checkpoint(model=model, kind=kind, config=dict(payload["config"]), meta=meta)
