"""The training engine: train state, pure steps, optimizer, data parallelism, checkpoints, loop.

Typical use (what ``python -m train`` does)::

    from asl_jax.training import train_and_evaluate
    result = train_and_evaluate(config, "runs/default")

The pieces, for your own loop::

    mesh = make_mesh()                                   # all devices, axis "data"
    programs = build_programs(config, num_classes=K, image_size=32, total_steps=N, mesh=mesh)
    state = programs.init(jax.random.key(0))             # TrainState, replicated
    state, metrics = programs.train(state, shard_batch(batch, mesh))
"""

from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.config import ConfigError, validate_config
from asl_jax.training.loop import (
    NonFiniteError,
    Programs,
    TrainResult,
    WorkdirConfigError,
    build_programs,
    evaluate,
    format_summary,
    train_and_evaluate,
)
from asl_jax.training.optim import create_optimizer, create_schedule, kernel_mask
from asl_jax.training.parallel import (
    data_sharding,
    initialize_distributed,
    make_mesh,
    replicated_sharding,
    shard_batch,
)
from asl_jax.training.state import TrainState, create_train_state
from asl_jax.training.step import AugmentConfig, LossConfig, eval_step, train_step

__all__ = [
    "AugmentConfig",
    "Checkpointer",
    "ConfigError",
    "LossConfig",
    "NonFiniteError",
    "Programs",
    "TrainResult",
    "TrainState",
    "WorkdirConfigError",
    "build_programs",
    "create_optimizer",
    "create_schedule",
    "create_train_state",
    "data_sharding",
    "eval_step",
    "evaluate",
    "format_summary",
    "initialize_distributed",
    "kernel_mask",
    "make_mesh",
    "replicated_sharding",
    "shard_batch",
    "train_and_evaluate",
    "train_step",
    "validate_config",
]
