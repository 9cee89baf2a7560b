"""The compiled programs of a config: model, optimizer and the jitted init / train / eval steps.

They are cached per process on what determines them (:func:`asl_jax.training.config.program_key`:
the config's ``PROGRAM`` fields, plus the number of classes, the image size, the number of steps
and the mesh), so that several runs in one process (tests, comparisons, resume, evaluation after
training) compile once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import optax

from asl_jax.models import cpu_compiler_options, create_model, frozen_mask, torch_layout
from asl_jax.training import parallel
from asl_jax.training.config import Config, program_key
from asl_jax.training.optim import create_optimizer, create_schedule, freeze_for, head_mask
from asl_jax.training.state import TrainState, create_train_state
from asl_jax.training.step import eval_step, train_step


@dataclasses.dataclass(frozen=True)
class Programs:
    """The model, optimizer and jitted functions of a run (built once per process)."""

    model: Any
    tx: Any
    schedule: Any
    init: Callable[..., TrainState]
    train: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    eval: Callable[..., dict[str, jax.Array]]


_PROGRAMS: dict[Any, Programs] = {}


def build_programs(
    config: Config,
    *,
    num_classes: int,
    image_size: int,
    total_steps: int,
    mesh: jax.sharding.Mesh,
    steps_per_epoch: int | None = None,
) -> Programs:
    """Model, optimizer and the jitted init / train / eval steps for ``config`` on ``mesh``.

    ``steps_per_epoch`` reaches the losses that read the training progress in epochs (SPLC);
    for the others it is left out, so that training and evaluation share their programs.
    """
    if not config.loss.spec.reads_epoch:
        steps_per_epoch = None
    key = (program_key(config), num_classes, image_size, total_steps, mesh, steps_per_epoch)
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    model = create_model(
        config.model.name,
        num_classes=num_classes,
        dtype=config.model.dtype,
        width=config.model.width_or_default,
        normalization=config.model.normalization,
        head=config.model.head,
        ml_decoder_groups=config.model.ml_decoder_groups,
        drop_path_rate=config.model.drop_path_rate,
    )
    schedule = create_schedule(
        config.schedule,
        learning_rate=config.learning_rate,
        total_steps=total_steps,
        warmup_fraction=config.warmup_fraction,
    )
    tx = create_optimizer(
        config.optimizer,
        schedule=schedule,
        weight_decay=config.weight_decay,
        grad_clip_norm=config.grad_clip_norm or None,
    )
    if config.model.head == "ml_decoder":
        # ML-Decoder's query embeddings are constants: no update, weight decay included.
        tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen_mask))
    if config.model.freeze_backbone_steps:
        layout = torch_layout(config.model.name, config.model.head)
        head = head_mask(layout.flax_head or layout.head)
        tx = optax.chain(tx, freeze_for(config.model.freeze_backbone_steps, head))
    init = parallel.jit_init(
        functools.partial(
            create_train_state,
            model=model,
            tx=tx,
            image_shape=(image_size, image_size, 3),
            gamma_neg=config.loss.gamma_neg,
            class_prior_classes=num_classes if config.loss.spec.reads_class_prior else 0,
        ),
        mesh,
    )
    # On CPU devices the train step runs the model's matrix products, reductions and elementwise
    # ops through XLA:CPU's kernel library (model.cpu_fast_kernels). The eval step keeps XLA's
    # default: ResNet-50's forward was slower with them and took more memory (BENCHMARKS.md).
    cpu_options = cpu_compiler_options(config.model.name) if config.model.cpu_fast_kernels else None
    train = parallel.jit_train_step(
        functools.partial(
            train_step,
            loss=config.loss,
            augment=config.augment,
            ema_decay=config.ema_decay,
            schedule=schedule,
            steps_per_epoch=steps_per_epoch,
        ),
        mesh,
        cpu_options,
    )
    eval_fn = parallel.jit_eval_step(eval_step, mesh)
    programs = Programs(model, tx, schedule, init, train, eval_fn)
    _PROGRAMS[key] = programs
    return programs
