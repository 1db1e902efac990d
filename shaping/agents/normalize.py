"""Running mean/variance observation normalizer whose statistics are module buffers.

The statistics are registered buffers, so they are part of ``state_dict()``: they travel with the
weights in checkpoints and in federated rounds, and follow the module across devices.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Normalizes observations by running statistics: ``clip((x - mean) / sqrt(var + epsilon))``.

    Statistics are merged from batches with the parallel (Chan et al.) update, as in CleanRL's and
    Stable-Baselines3's ``RunningMeanStd``; they change only through ``update``, never in ``forward``,
    so a policy evaluated twice on the same input gives the same output.

    Args:
        size: length of the observation vector.
        clip: normalized values are clipped to [-clip, clip].
        epsilon: added to the variance before the square root.
        initial_count: pseudo-count of the initial statistics (mean 0, variance 1).
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int, clip: float = 10.0, epsilon: float = 1e-8, initial_count: float = 1e-4) -> None:
        super().__init__()
        if size < 1 or clip <= 0:
            raise ValueError(f"RunningNorm needs size >= 1 and clip > 0, got size={size}, clip={clip}")
        self.size = size
        self.clip = clip
        self.epsilon = epsilon
        # float64: the count grows past float32's exact integers during long trainings.
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(initial_count, dtype=torch.float64))
        # Not a buffer: which statistics stay put is the trainer's choice, not part of the weights.
        self.frozen: torch.Tensor | None = None

    def freeze(self, features: torch.Tensor | None) -> None:
        """Keep the statistics of these features (a bool mask of `size`) as they are in `update`; None: none."""
        if features is not None and (features.dtype != torch.bool or features.shape != (self.size,)):
            got = f"{features.dtype} {tuple(features.shape)}"
            raise ValueError(f"freeze needs a bool mask of shape ({self.size},), got {got}")
        self.frozen = features

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch of observations of shape (..., size) into the statistics."""
        batch = x.reshape(-1, self.size).to(self.mean.dtype)
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        mean, var = self.mean + delta * n / total, m2 / total
        if self.frozen is not None:
            frozen = self.frozen.to(self.mean.device)  # not a buffer, so module.to() does not move it
            mean, var = torch.where(frozen, self.mean, mean), torch.where(frozen, self.var, var)
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized and clipped observations, in the dtype of x."""
        scale = torch.rsqrt(self.var + self.epsilon).to(x.dtype)
        return ((x - self.mean.to(x.dtype)) * scale).clamp(-self.clip, self.clip)

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return f"size={self.size}, clip={self.clip}, epsilon={self.epsilon}"
