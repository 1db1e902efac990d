"""Learning agents of a tenant: PPO with observation normalization, the safety envelope and checkpoints."""

from shaping.agents.checkpoint import (
    MODEL_KINDS,
    Checkpoint,
    CheckpointMismatchError,
    check_compatible,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from shaping.agents.envelope import Envelope, EnvelopeConfig, build_envelope, mask_logits, random_actions
from shaping.agents.normalize import RunningNorm
from shaping.agents.ppo import (
    ActorCritic,
    PPOHyperparams,
    Rollout,
    TorchVecEnv,
    collect_rollout,
    compute_gae,
    linear_lr,
    make_optimizer,
    ppo_update,
    set_lr,
)

__all__ = [
    "MODEL_KINDS",
    "ActorCritic",
    "Checkpoint",
    "CheckpointMismatchError",
    "Envelope",
    "EnvelopeConfig",
    "PPOHyperparams",
    "Rollout",
    "RunningNorm",
    "TorchVecEnv",
    "build_envelope",
    "check_compatible",
    "collect_rollout",
    "compute_gae",
    "linear_lr",
    "load_checkpoint",
    "make_optimizer",
    "mask_logits",
    "ppo_update",
    "random_actions",
    "read_checkpoint",
    "save_checkpoint",
    "set_lr",
]
