"""The training engine: train state, pure steps, optimizer, data parallelism, checkpoints, loop.

Typical use (what ``python -m train`` does)::

    from asl_jax.training import Config, LossConfig, train_and_evaluate
    config = Config(num_steps=256, loss=LossConfig(gamma_neg=2.0))
    result = train_and_evaluate(config, "runs/default")

The pieces, for your own loop::

    mesh = make_mesh()                                   # all devices, axis "data"
    programs = build_programs(config, num_classes=K, image_size=32, total_steps=N, mesh=mesh)
    state = programs.init(jax.random.key(0))             # TrainState, replicated
    state, metrics = programs.train(state, shard_batch(batch, mesh))
"""

from asl_jax.data import AugmentConfig, DataConfig
from asl_jax.models.config import ModelConfig
from asl_jax.training.checkpoint import Checkpointer
from asl_jax.training.config import (
    Config,
    ConfigError,
    EvalConfig,
    OptimizerConfig,
    RunConfig,
    validate_config,
)
from asl_jax.training.evaluation import evaluate
from asl_jax.training.lock import WorkdirBusyError, lock_workdir
from asl_jax.training.loop import NonFiniteError, TrainResult, train_and_evaluate
from asl_jax.training.loss_registry import LossConfig
from asl_jax.training.optim import create_optimizer, create_schedule, kernel_mask
from asl_jax.training.parallel import (
    data_sharding,
    initialize_distributed,
    make_mesh,
    replicated_sharding,
    shard_batch,
)
from asl_jax.training.programs import Programs, build_programs
from asl_jax.training.state import TrainState, create_train_state
from asl_jax.training.step import eval_step, train_step
from asl_jax.training.workdir import WorkdirConfigError

__all__ = [
    "AugmentConfig",
    "Checkpointer",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "NonFiniteError",
    "OptimizerConfig",
    "Programs",
    "RunConfig",
    "TrainResult",
    "TrainState",
    "WorkdirBusyError",
    "WorkdirConfigError",
    "build_programs",
    "create_optimizer",
    "create_schedule",
    "create_train_state",
    "data_sharding",
    "eval_step",
    "evaluate",
    "initialize_distributed",
    "kernel_mask",
    "lock_workdir",
    "make_mesh",
    "replicated_sharding",
    "shard_batch",
    "train_and_evaluate",
    "train_step",
    "validate_config",
]
