"""Sample-level differential privacy of local training: Opacus DP-SGD with an RDP accountant kept across rounds.

Opacus computes per-sample gradients (GradSampleModule hooks on the policy's Linear layers) and its
DPOptimizer clips each transition's gradient and adds Gaussian noise at every step of ppo_update.
The accountant's history is a list of (noise_multiplier, sample_rate, steps) that serializes to JSON, so
the Flower client keeps it in its node context between rounds and reports the spent epsilon each round.

What is protected, exactly: clipping bounds one *training example's* influence, i.e. one transition
with its advantage and return, only if no example's loss term depends on another's data. So training
under DP-SGD keeps its examples independent (shaping.agents.local_train's independent_examples): no
per-minibatch advantage normalization, no running reward scale (rewards / FIXED_REWARD_SCALE), the
observation normalizer frozen at the global model's statistics (which also keeps them from leaving the
tenant un-noised when the normalizer is shared), no target_kl stop. One control interval's traffic
still reaches the advantages of the intervals before it in the same rollout (GAE), so for one
interval's raw data the guarantee is group privacy over a rollout segment, which is weak at these
epsilons; client-level DP (fed_server.privacy) is the guarantee for a tenant's traffic as a whole.

Accounting: minibatches are Poisson samples at sample_rate = 1 / num_minibatches (ppo_update), the
sampling RDP accounting of the subsampled Gaussian assumes, and the accountant is charged for every
step, every epoch's included: several epochs reuse a rollout, and experience training reuses recorded
transitions across rounds, so no step is assumed to miss an example.
"""

from __future__ import annotations

import json

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer


class PrivacyBudgetExceeded(RuntimeError):
    """A round of DP-SGD would take a tenant past its privacy budget."""


class DPSGD:
    """DP-SGD settings plus the accountant of one tenant.

    Args:
        noise_multiplier: Gaussian noise std as a multiple of max_grad_norm.
        max_grad_norm: per-sample gradient clipping bound.
        delta: delta of the reported (epsilon, delta).
        history: the accountant's JSON history from an earlier round (None: nothing spent yet).
    """

    def __init__(self, noise_multiplier: float, max_grad_norm: float, delta: float, history: str | None = None) -> None:
        if noise_multiplier <= 0 or max_grad_norm <= 0:
            raise ValueError("DP-SGD needs noise_multiplier > 0 and max_grad_norm > 0")
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.accountant = RDPAccountant()
        if history:
            self.accountant.history = [tuple(h) for h in json.loads(history)]
        self._gsm: GradSampleModule | None = None

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int,
               num_minibatches: int) -> DPOptimizer:  # fmt: skip
        """Hook per-sample gradients into model and return optimizer wrapped as a DPOptimizer."""
        # GradSampleModule registers its hooks on model's submodules, so model's own methods
        # (get_action_and_value, called by ppo_update) produce per-sample gradients too.
        self._gsm = GradSampleModule(model, loss_reduction="mean")
        sample_rate = 1.0 / num_minibatches
        dp_opt = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                             expected_batch_size=max(1, batch // num_minibatches), loss_reduction="mean")  # fmt: skip

        def charge(_: object) -> None:
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

        dp_opt.attach_step_hook(charge)
        return dp_opt

    def detach(self, model: torch.nn.Module) -> None:
        """Remove the per-sample gradient hooks (the model is a plain module again)."""
        if self._gsm is not None:
            self._gsm._close()
            self._gsm = None
        for p in model.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None

    def epsilon(self) -> float:
        """Epsilon spent so far at self.delta (0 before any step)."""
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant.history else 0.0

    def epsilon_after(self, steps: int, sample_rate: float) -> float:
        """Epsilon this tenant would have spent after `steps` more DP-SGD steps at sample_rate."""
        projected = RDPAccountant()
        projected.history = [*self.accountant.history, (self.noise_multiplier, sample_rate, steps)]
        return float(projected.get_epsilon(self.delta))

    def check_budget(self, steps: int, sample_rate: float, target_epsilon: float | None) -> None:
        """Refuse to train when `steps` more steps would take this tenant past target_epsilon (None: no budget).

        The server already stops the run before the budget (fed_server.app); this guard keeps a tenant
        within its own budget whatever a server asks.
        """
        if target_epsilon is None:
            return
        after = self.epsilon_after(steps, sample_rate)
        if after > target_epsilon:
            raise PrivacyBudgetExceeded(
                f"DP-SGD: this round's {steps} steps would spend epsilon {after:.3f} > privacy.target_epsilon "
                f"{target_epsilon} at delta {self.delta} (spent so far: {self.epsilon():.3f}); not training"
            )

    def history_json(self) -> str:
        """The accountant's state, for the node context."""
        return json.dumps([list(h) for h in self.accountant.history])
