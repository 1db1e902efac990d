"""What every tenant policy network shares: the observation normalizer and the envelope-masked action layout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from shaping.agents.envelope import Envelope, pad_index
from shaping.agents.normalize import RunningNorm


class MaskedMultiDiscrete(nn.Module):
    """Base of ActorCritic and BranchingQNetwork: normalizer, padded (D, max choices) layout, envelope.

    Per-choice outputs are laid out padded, (..., D, max choices), through ``_index``; ``_real`` marks
    the real choices and ``_allowed`` the choices the tenant's envelope permits. These buffers are not
    persistent: the layout follows from nvec, and the envelope is the tenant's, not the model's.

    Args:
        obs_dim: length of the observation vector.
        nvec: MultiDiscrete sizes of the action.
        hidden_sizes: widths of the hidden layers.
        envelope: allowed choices (None: all); not saved in state_dict, set it per tenant.
        clip_obs: normalized observations are clipped to [-clip_obs, clip_obs].
    """

    _index: torch.Tensor
    _real: torch.Tensor
    _allowed: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        nvec: Iterable[int],
        hidden_sizes: Iterable[int] = (128, 128),
        envelope: Envelope | None = None,
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__()
        self.obs_dim = int(obs_dim)
        self.nvec = tuple(int(n) for n in nvec)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.clip_obs = float(clip_obs)
        self.obs_norm = RunningNorm(self.obs_dim, clip=self.clip_obs)
        index, real = pad_index(self.nvec)
        self.register_buffer("_index", index, persistent=False)
        self.register_buffer("_real", real, persistent=False)
        self.register_buffer("_allowed", real.clone(), persistent=False)
        self.envelope: Envelope | None = None
        self.set_envelope(envelope)

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (stored in checkpoints)."""
        return {
            "obs_dim": self.obs_dim,
            "nvec": list(self.nvec),
            "hidden_sizes": list(self.hidden_sizes),
            "clip_obs": self.clip_obs,
        }

    def set_envelope(self, envelope: Envelope | None) -> None:
        """Restrict the policy to an envelope's choices (None: every choice)."""
        if envelope is not None and envelope.nvec != self.nvec:
            raise ValueError(f"envelope for action sizes {list(envelope.nvec)}, policy has {list(self.nvec)}")
        self._allowed = self._real.clone() if envelope is None else envelope.padded(self._real.device)
        self.envelope = envelope
