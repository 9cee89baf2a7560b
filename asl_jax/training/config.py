"""The training config: one frozen dataclass per block, checked once, read as typed attributes.

:class:`Config` is what a run reads. Its top-level fields are grouped by concern in
:class:`RunConfig` (seed, length, batch, logging, checkpoints), :class:`OptimizerConfig` and
:class:`EvalConfig`; its blocks are :class:`~asl_jax.models.config.ModelConfig` (``model``),
:class:`~asl_jax.training.loss_registry.LossConfig` (``loss``),
:class:`~asl_jax.data.DataConfig` (``data``) and :class:`~asl_jax.data.AugmentConfig`
(``augment``). Each field is declared once, with its default, its check, a one-line description
and its :class:`~asl_jax.config_fields.Effect`; derived from those declarations:

- ``train/configs/default.py`` (:func:`default_config_dict`), the table of the documentation's
  config reference, ``docs/guides/config.md`` (:func:`config_table`,
  ``python -m asl_jax.training.config`` prints it);
- the key of the compiled-program cache (:func:`program_key`: the ``PROGRAM`` fields);
- the fields whose change makes a workdir refuse to resume (:func:`changed_result_fields`);
- what a field meant for a run whose ``config.json`` predates it (``stored=True`` of
  :meth:`~asl_jax.config_fields.ConfigBlock.from_mapping`).

An invalid value raises :class:`ConfigError` (a ``ValueError``) naming the field, the value and
what was expected, e.g. ``loss.name='nope': expected one of bce, focal, asl``. A field that the
config does not have (a typo in a config file) is an error too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    at_least,
    block,
    describe_fields,
    flat_mapping,
    interval,
    non_negative,
    one_of,
    option,
    positive,
)
from asl_jax.data import AugmentConfig, DataConfig
from asl_jax.models.config import ModelConfig
from asl_jax.training.loss_registry import LossConfig
from asl_jax.training.optim import OPTIMIZERS, SCHEDULES

__all__ = [
    "AUTO_EVALUATIONS",
    "Config",
    "ConfigError",
    "EvalConfig",
    "OptimizerConfig",
    "RunConfig",
    "changed_result_fields",
    "config_table",
    "default_config_dict",
    "eval_interval",
    "fit_batch_size",
    "program_key",
    "validate_config",
]

PROGRAM, RESULT, NONE = Effect.PROGRAM, Effect.RESULT, Effect.NONE


@dataclasses.dataclass(frozen=True)
class RunConfig(ConfigBlock):
    """The run: its name and seed, its length and batch, what it logs and checkpoints."""

    name: str = option(
        "default", "name of the configuration (reported in summary.json)", effect=NONE
    )
    seed: int = option(
        0,
        "seed of the initialisation, the data order and the augmentation",
        effect=RESULT,
        check=at_least(-(2**63)),
    )
    batch_size: int = option(
        64,
        "global batch size (all devices, all hosts); lowered, with a warning, to fit a smaller "
        "train split",
        effect=RESULT,
        check=at_least(1),
    )
    num_epochs: int = option(
        8, "training epochs (used when num_steps is 0)", effect=RESULT, check=at_least(0)
    )
    num_steps: int = option(
        0, "training steps; when > 0 it wins over num_epochs", effect=RESULT, check=at_least(0)
    )
    log_every: int = option(
        20, "write a train record every this many steps", effect=NONE, check=at_least(1)
    )
    checkpoint_every: int = option(
        256,
        "checkpoint every this many steps (0 = only at the end / on interrupt)",
        effect=NONE,
        check=at_least(0),
    )
    max_checkpoints_to_keep: int = option(
        2,
        "number of recent checkpoints kept (plus those of the best mAP and best EMA mAP)",
        effect=NONE,
        check=at_least(1),
    )
    async_checkpoints: bool = option(
        True,
        "write checkpoints in the background while training goes on (False: each save blocks "
        "until written); the last one is complete before the run returns either way",
        effect=NONE,
    )
    max_consecutive_nonfinite: int = option(
        20, "stop after this many consecutive non-finite steps", effect=NONE, check=at_least(1)
    )
    progress_bar: bool = option(True, "show a progress bar (process 0)", effect=NONE)
    tensorboard: bool = option(
        True, "also write the records as TensorBoard event files in the workdir", effect=NONE
    )
    profile_steps: int = option(
        0,
        "trace this many steps with jax.profiler into WORKDIR/profile (0 = off)",
        effect=NONE,
        check=at_least(0),
    )

    def check(self) -> None:
        super().check()
        if self.num_steps == 0 and self.num_epochs <= 0:
            raise self.fail("num_epochs", self.num_epochs, "an integer >= 1 when num_steps is 0")

    def total_steps(self, steps_per_epoch: int) -> int:
        """``num_steps`` when set (> 0), else ``num_epochs`` epochs of ``steps_per_epoch``."""
        return self.num_steps or self.num_epochs * steps_per_epoch


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(ConfigBlock):
    """The optimizer, its learning-rate schedule and the EMA of the weights."""

    optimizer: str = option(
        "adam",
        "adam (L2 on kernels, the official recipe) or adamw (decoupled decay)",
        effect=PROGRAM,
        check=one_of(OPTIMIZERS),
    )
    learning_rate: float = option(3e-3, "peak learning rate", effect=PROGRAM, check=positive())
    schedule: str = option(
        "onecycle", "onecycle, cosine or constant", effect=PROGRAM, check=one_of(SCHEDULES)
    )
    warmup_fraction: float = option(
        0.2,
        "fraction of the steps spent warming up (onecycle, cosine)",
        effect=PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
    )
    weight_decay: float = option(
        1e-4, "weight decay on kernels only (0 disables)", effect=PROGRAM, check=non_negative()
    )
    grad_clip_norm: float = option(
        0.0, "clip gradients to this global norm (0 disables)", effect=PROGRAM, check=non_negative()
    )
    # The official 0.9997 averages over ~3000 steps; the default run has 1024.
    ema_decay: float = option(
        0.99,
        "decay of the parameter EMA (with a (1+n)/(10+n) warm-up)",
        effect=PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig(ConfigBlock):
    """When and how the validation split is evaluated."""

    eval_batch_size: int = option(
        0, "global evaluation batch size (0 = batch_size)", effect=NONE, check=at_least(0)
    )
    eval_every: int = option(
        -1,
        "evaluate every this many steps (-1 = auto: at least 8 evaluations, every total steps "
        "// 8; 0 = only at the end; always at the end)",
        effect=NONE,
        check=at_least(-1),
    )
    threshold: float = option(
        0.5,
        "probability threshold of CP/CR/CF1/OP/OR/OF1",
        effect=NONE,
        check=interval(0.0, 1.0, low_open=True, high_open=True),
    )


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig, OptimizerConfig, RunConfig):
    """The whole training config (``train/configs/*.py`` start from its defaults).

    Examples:
      >>> config = Config(num_steps=100, loss=LossConfig(gamma_neg=2))
      >>> config.loss.gamma_neg, config.evaluation_batch_size
      (2.0, 64)
      >>> dataclasses.replace(config, batch_size=0)
      Traceback (most recent call last):
      ...
      asl_jax.config_fields.ConfigError: batch_size=0: expected an integer >= 1
    """

    loss: LossConfig = block(LossConfig, "the training loss")
    model: ModelConfig = block(ModelConfig, "the network")
    data: DataConfig = block(DataConfig, "the dataset")
    augment: AugmentConfig = block(AugmentConfig, "on-device augmentation")

    @property
    def evaluation_batch_size(self) -> int:
        """``eval_batch_size``, or ``batch_size`` when it is 0."""
        return self.eval_batch_size or self.batch_size


def validate_config(
    config: Config | Mapping[str, Any], *, num_devices: int | None = None, process_count: int = 1
) -> Config:
    """The typed, checked :class:`Config` of ``config``; raises naming the first bad field.

    Args:
      config: a :class:`Config`, or the (nested) ``ml_collections.ConfigDict`` / mapping of a
        config file; a field it lacks takes its default.
      num_devices: devices of the data mesh; the batch sizes must be divisible by it.
      process_count: number of hosts; the batch sizes must be divisible by it.

    Raises:
      ConfigError: (a ValueError) unknown field, wrong type or value out of range, with the
        field's dotted name.

    Examples:
      >>> validate_config({"loss": {"name": "nope"}})
      Traceback (most recent call last):
      ...
      asl_jax.config_fields.ConfigError: loss.name='nope': expected one of bce, focal, asl
    """
    if not isinstance(config, Config):
        config = Config.from_mapping(config)
    for field in ("batch_size", "eval_batch_size"):
        value = getattr(config, field)
        for divisor, what in ((num_devices, "device count"), (process_count, "process count")):
            if value and divisor and value % divisor:
                raise config.fail(field, value, f"a multiple of the {what} ({divisor})")
    return config


def default_config_dict() -> dict[str, Any]:
    """The defaults of every field as the nested dict of a config file."""
    return Config().to_dict()


def program_key(config: Config) -> str:
    """The fields that determine the compiled programs (``Effect.PROGRAM``), canonically.

    The data reaches the programs only through the image size and the number of classes, the run
    length through the total number of steps: the program cache adds those to the key.
    """
    program = {
        name: value
        for name, (f, value) in config.walk_values()
        if f.metadata["effect"] is Effect.PROGRAM
    }
    return json.dumps(program, sort_keys=True)


#: Evaluations a run makes at least when ``eval_every`` is -1 (auto): enough points for a curve.
AUTO_EVALUATIONS = 8


def eval_interval(eval_every: int, total_steps: int) -> int:
    """Steps between two evaluations of a run of ``total_steps`` steps.

    An explicit ``eval_every`` (>= 0; 0 = only at the end) is used as given. ``-1`` (auto) gives
    ``total_steps // AUTO_EVALUATIONS`` (at least 1): at least :data:`AUTO_EVALUATIONS`
    evaluations (every step in a shorter run), so that the mAP plot is a curve in short runs
    too. The loop always evaluates after the last step as well.

    Examples:
      >>> eval_interval(-1, 1024), eval_interval(-1, 5), eval_interval(100, 1024)
      (128, 1, 100)
    """
    if eval_every >= 0:
        return int(eval_every)
    return max(1, int(total_steps) // AUTO_EVALUATIONS)


def fit_batch_size(batch_size: int, num_examples: int, *, multiple: int = 1) -> int:
    """The train batch size a run can use on a train split of ``num_examples`` examples.

    ``batch_size`` when it fits; otherwise the largest multiple of ``multiple`` (the number of
    devices the batch is split over) that is at most ``num_examples``, so that a small folder of
    photos trains with the config's batch size instead of failing. The caller warns and records
    the value it uses (``config.json``), which keeps a resumed run identical.

    Raises:
      ConfigError: the split has fewer examples than ``multiple``: no batch size fits.

    Examples:
      >>> fit_batch_size(64, 1000), fit_batch_size(64, 48), fit_batch_size(64, 50, multiple=8)
      (64, 48, 48)
    """
    if batch_size <= num_examples:
        return batch_size
    fitted = num_examples // multiple * multiple
    if fitted == 0:
        raise ConfigError(
            f"batch_size={batch_size}: the train split has {num_examples} example(s), fewer than "
            f"the {multiple} devices a batch is split over; add training images or run on at "
            f"most {num_examples} device(s) (e.g. JAX_NUM_CPU_DEVICES, CUDA_VISIBLE_DEVICES)"
        )
    return fitted


def changed_result_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The result-changing fields whose values differ, as ``"field: old -> new"``.

    Used when a workdir with checkpoints is reused: resuming with a config that changes results
    (loss, model, data, schedule, number of steps...) would mix two different runs. Fields of
    :class:`~asl_jax.config_fields.Effect` ``NONE`` (cadence, reporting, paths) may differ.

    Args:
      old: the config the run was started with, as stored in its ``config.json`` (a field added
        to the project since counts as what it meant for that run).
      new: the config of this session (a Config, or a mapping: its values are compared as they
        are, unchecked).
    """
    before = Config.from_mapping(old, stored=True).flat()
    after = flat_mapping(new)
    result_fields = Config.names_with(lambda effect: effect.changes_result)
    return [
        f"{name}: {before[name]!r} -> {after.get(name, '<unset>')!r}"
        for name in sorted(result_fields)
        if before[name] != after.get(name, "<unset>")
    ]


def config_table() -> str:
    """The table of every field of the documentation's config reference
    (``docs/guides/config.md``): name, default, what a change does, meaning."""
    changes = {PROGRAM: "program", RESULT: "result", NONE: "—"}
    lines = ["| field | default | changes | meaning |", "|---|---|---|---|"]
    for row in describe_fields(Config):
        lines.append(
            f"| `{row['name']}` | `{row['default']!r}` | {changes[row['effect']]} | {row['doc']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())
