"""Learning agents of a tenant: PPO and DQN, observation normalization, the safety envelope, checkpoints, training."""

from shaping.agents.checkpoint import (
    MODEL_KINDS,
    Checkpoint,
    CheckpointMismatchError,
    check_compatible,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from shaping.agents.dqn import (
    BranchingQNetwork,
    DQNHyperparams,
    collect_transitions,
    dqn_update,
    linear_schedule,
    make_target,
    td_targets,
    update_target,
)
from shaping.agents.envelope import Envelope, EnvelopeConfig, build_envelope, mask_logits, random_actions
from shaping.agents.normalize import RunningNorm
from shaping.agents.numpy_actor import NumpyActor, UnsupportedModelError
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
from shaping.agents.replay import ReplayBatch, ReplayBuffer

__all__ = [
    "MODEL_KINDS",
    "ActorCritic",
    "BranchingQNetwork",
    "Checkpoint",
    "CheckpointMismatchError",
    "DQNHyperparams",
    "Envelope",
    "EnvelopeConfig",
    "NumpyActor",
    "PPOHyperparams",
    "ReplayBatch",
    "ReplayBuffer",
    "Rollout",
    "RunningNorm",
    "TorchVecEnv",
    "UnsupportedModelError",
    "build_envelope",
    "check_compatible",
    "collect_rollout",
    "collect_transitions",
    "compute_gae",
    "dqn_update",
    "linear_lr",
    "linear_schedule",
    "load_checkpoint",
    "make_optimizer",
    "make_target",
    "mask_logits",
    "ppo_update",
    "random_actions",
    "read_checkpoint",
    "save_checkpoint",
    "set_lr",
    "td_targets",
    "update_target",
]
