"""Validation of the training configuration, and the policy for resuming a workdir.

Every field is checked before anything is built or trained; an invalid value raises a
``ValueError`` that names the field, the value and what was expected, e.g.
``loss.name='nope': expected one of bce, focal, asl``. Unknown fields (a typo in a config file)
are errors too: ``config_flags`` already rejects unknown ``--config.x=...`` overrides, but not
extra keys written in a config file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from asl_jax.data import (
    AUGMENT_DEFAULTS,
    DATA_DEFAULTS,
    validate_augment_config,
    validate_data_config,
)
from asl_jax.losses import REDUCTIONS
from asl_jax.models import (
    DTYPE_NAMES,
    MODEL_NAMES,
    MODELS,
    NORMALIZATION_NAMES,
    pretrained_model_names,
)
from asl_jax.models.pretrained import parse_pretrained
from asl_jax.training.loss_registry import (
    INVERSE_FREQUENCY,
    LOSS_NAMES,
    LOSSES,
    parse_class_weights,
)
from asl_jax.training.optim import OPTIMIZERS, SCHEDULES

#: Every field of the training config, with a one-line description (the README's table).
FIELDS: dict[str, str] = {
    "name": "name of the configuration (reported in summary.json)",
    "seed": "seed of the initialisation, the data order and the augmentation",
    "batch_size": (
        "global batch size (all devices, all hosts); lowered, with a warning, to fit a "
        "smaller train split"
    ),
    "eval_batch_size": "global evaluation batch size (0 = batch_size)",
    "num_epochs": "training epochs (used when num_steps is 0)",
    "num_steps": "training steps; when > 0 it wins over num_epochs",
    "optimizer": "adam (L2 on kernels, the official recipe) or adamw (decoupled decay)",
    "learning_rate": "peak learning rate",
    "schedule": "onecycle, cosine or constant",
    "warmup_fraction": "fraction of the steps spent warming up (onecycle, cosine)",
    "weight_decay": "weight decay on kernels only (0 disables)",
    "grad_clip_norm": "clip gradients to this global norm (0 disables)",
    "ema_decay": "decay of the parameter EMA (with a (1+n)/(10+n) warm-up)",
    "log_every": "write a train record every this many steps",
    "eval_every": (
        "evaluate every this many steps (-1 = auto: at least 8 evaluations, every "
        "total steps // 8; 0 = only at the end; always at the end)"
    ),
    "checkpoint_every": "checkpoint every this many steps (0 = only at the end / on interrupt)",
    "max_checkpoints_to_keep": "number of recent checkpoints kept (plus those of the best mAP "
    "and best EMA mAP)",
    "async_checkpoints": (
        "write checkpoints in the background while training goes on (False: each save blocks "
        "until written); the last one is complete before the run returns either way"
    ),
    "max_consecutive_nonfinite": "stop after this many consecutive non-finite steps",
    "threshold": "probability threshold of CP/CR/CF1/OP/OR/OF1",
    "progress_bar": "show a progress bar (process 0)",
    "tensorboard": "also write the records as TensorBoard event files in the workdir",
    "profile_steps": "trace this many steps with jax.profiler into WORKDIR/profile (0 = off)",
    "loss.name": "bce, focal or asl",
    "loss.gamma_pos": "γ+ of ASL",
    "loss.gamma_neg": "γ− of ASL (the initial value when adaptive)",
    "loss.focal_gamma": "γ of the focal loss (γ+ = γ− = focal_gamma, no margin)",
    "loss.clip": "probability margin m of ASL, in [0, 1)",
    "loss.detach_focal_weight": "compute the focusing weights without gradient (official code)",
    "loss.reduction": "sum (official), batchmean (sum / batch size) or mean",
    "loss.class_weights": "per-class loss weights: '' (none), 'inverse_frequency' or '1,2.5,...'",
    "loss.pos_weight": "weight of the loss of positive labels (1 = none)",
    "loss.adaptive": "adapt γ− during training towards loss.delta_p_target (ASL only)",
    "loss.delta_p_target": "target Δp = p̄− − p̄+ of the adaptive rule (paper: 0.1)",
    "loss.adaptive_step_size": "λ of the adaptive rule γ− ← γ− + λ (Δp − target)",
    "loss.adaptive_min_gamma_neg": "lower bound of the adaptive γ−",
    "loss.adaptive_max_gamma_neg": "upper bound of the adaptive γ−",
    "model.name": ", ".join(MODEL_NAMES),
    "model.width": (
        "channels of the first stage, the token width for vit (0 = the model's default: "
        + ", ".join(f"{spec.default_width} for {name}" for name, spec in MODELS.items())
        + ")"
    ),
    "model.dtype": "compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), float32 or bfloat16",
    "model.pretrained": (
        "initial weights: '' (from scratch), a .pth/.pt/.safetensors file, "
        "'torchvision:<name>' or 'timm:<name>'"
    ),
    "model.normalization": (
        "input normalisation: auto (what the weights expect; resolved into config.json), "
        + ", ".join(NORMALIZATION_NAMES)
    ),
    "model.freeze_backbone_steps": (
        "keep every parameter but the classifier head fixed for this many steps (0 = never)"
    ),
    **{f"data.{k}": "see asl_jax.data" for k in DATA_DEFAULTS},
    **{f"augment.{k}": "see asl_jax.data.augment" for k in AUGMENT_DEFAULTS},
}

#: Fields that do not change what a run computes: a workdir may be resumed with other values.
OPERATIONAL_FIELDS = frozenset(
    {
        "name",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "max_checkpoints_to_keep",
        "async_checkpoints",
        "max_consecutive_nonfinite",
        "progress_bar",
        "tensorboard",
        "profile_steps",
        "eval_batch_size",
        "threshold",
        "data.path",
        "data.data_dir",
        "data.cache_dir",
        "data.num_workers",
    }
)


class ConfigError(ValueError):
    """An invalid training config (the message names the field)."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"loss.name": "asl", ...}`` from a (nested) ConfigDict or mapping."""
    items = config.items() if hasattr(config, "items") else dict(config).items()
    out: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _fail(field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{field}={value!r}: expected {expected}")


def validate_config(config: Any, *, num_devices: int | None = None, process_count: int = 1) -> None:
    """Checks a training config; raises ValueError naming the first bad field.

    Args:
      config: the ``ml_collections.ConfigDict`` (or nested mapping) of ``train/configs``.
      num_devices: devices of the data mesh; ``batch_size`` must be divisible by it.
      process_count: number of hosts; ``batch_size`` must be divisible by it.

    Raises:
      ConfigError: (a ValueError) unknown field, wrong type or value out of range, with the
        field's dotted name.

    Example:
      >>> cfg = get_config(); cfg.loss.name = "nope"          # doctest: +SKIP
      >>> validate_config(cfg)                                 # doctest: +SKIP
      ValueError: loss.name='nope': expected one of bce, focal, asl
    """
    flat = flatten(config)
    unknown = sorted(k for k in flat if k not in FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(unknown)}; known fields: "
            f"{', '.join(sorted(FIELDS))}"
        )
    missing = sorted(k for k in FIELDS if k not in flat and not k.startswith(("data.", "augment.")))
    if missing:
        raise ConfigError(f"missing config field(s): {', '.join(missing)}")

    check = _Checker(flat)
    if not isinstance(flat["name"], str):
        raise _fail("name", flat["name"], "a string")
    check.integer("seed", -(2**63))
    _check_loss(check, flat)
    _check_model_and_optimizer(check)
    _check_run(check, flat, num_devices=num_devices, process_count=process_count)
    try:
        validate_data_config(config["data"] if "data" in config else {})
        validate_augment_config(config["augment"] if "augment" in config else {})
    except ValueError as e:
        raise ConfigError(str(e)) from e


#: Evaluations a run makes at least when ``eval_every`` is -1 (auto): enough points for a curve.
AUTO_EVALUATIONS = 8


def eval_interval(eval_every: int, total_steps: int) -> int:
    """Steps between two evaluations of a run of ``total_steps`` steps.

    An explicit ``eval_every`` (>= 0; 0 = only at the end) is used as given. ``-1`` (auto) gives
    ``total_steps // AUTO_EVALUATIONS`` (at least 1): at least :data:`AUTO_EVALUATIONS`
    evaluations (every step in a shorter run), so that the mAP plot is a curve in short runs
    too. The loop always evaluates after the last step as well.

    Example:
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

    Example:
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


def changed_result_fields(
    old: Mapping[str, Any], new: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> list[str]:
    """Fields (other than :data:`OPERATIONAL_FIELDS`) whose values differ, as ``"f: a -> b"``.

    Used when a workdir with checkpoints is reused: resuming with a config that changes results
    (loss, model, data, schedule, number of steps...) would mix two different runs.

    A field that ``old`` lacks but ``defaults`` (a nested mapping) has was added to the project
    after that run was started; the run behaved as its default does, so ``old`` is read as
    having the default. Defaults are built so that a new field's default keeps the old
    behaviour (no class weights, ``pos_weight`` 1...).
    """
    a, b = flatten(old), flatten(new)
    added = {k: v for k, v in flatten(defaults or {}).items() if k not in a}
    a = {**added, **a}
    out = []
    for key in sorted(set(a) | set(b)):
        if key in OPERATIONAL_FIELDS:
            continue
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb and not (_is_real(va) and _is_real(vb) and float(va) == float(vb)):
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out


class _Checker:
    """Type and range checks of the fields of a flattened config (errors name the field)."""

    def __init__(self, flat: dict[str, Any]):
        self.flat = flat

    def choice(self, field: str, options: tuple[str, ...]) -> None:
        if self.flat[field] not in options:
            raise _fail(field, self.flat[field], f"one of {', '.join(options)}")

    def boolean(self, field: str) -> None:
        if not isinstance(self.flat[field], bool):
            raise _fail(field, self.flat[field], "True or False")

    def integer(self, field: str, minimum: int) -> None:
        if not _is_int(self.flat[field]) or self.flat[field] < minimum:
            raise _fail(field, self.flat[field], f"an integer >= {minimum}")

    def real(
        self, field: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
    ) -> None:
        v = self.flat[field]
        ok = _is_real(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise _fail(field, v, f"a number in {interval}")


def _check_loss(check: _Checker, flat: dict[str, Any]) -> None:
    check.choice("loss.name", LOSS_NAMES)
    check.choice("loss.reduction", REDUCTIONS)
    for field in ("loss.gamma_pos", "loss.gamma_neg", "loss.focal_gamma"):
        check.real(field, 0.0, math.inf, hi_open=True)
    check.real("loss.clip", 0.0, 1.0, hi_open=True)
    check.boolean("loss.detach_focal_weight")
    check.boolean("loss.adaptive")
    check.real("loss.pos_weight", 0.0, math.inf, lo_open=True, hi_open=True)
    weights = flat["loss.class_weights"]
    if not isinstance(weights, str):
        raise _fail("loss.class_weights", weights, "a string: '', 'inverse_frequency' or '1,2,...'")
    if weights != INVERSE_FREQUENCY:
        try:
            parse_class_weights(weights)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    check.real("loss.delta_p_target", -1.0, 1.0)
    check.real("loss.adaptive_step_size", 0.0, math.inf, lo_open=True, hi_open=True)
    check.real("loss.adaptive_min_gamma_neg", 0.0, math.inf, hi_open=True)
    check.real("loss.adaptive_max_gamma_neg", 0.0, math.inf, hi_open=True)
    if not flat["loss.adaptive"]:
        return
    if not LOSSES[flat["loss.name"]].adaptive:
        raise ConfigError(
            f"loss.adaptive=True needs loss.name='asl' (got loss.name={flat['loss.name']!r}): "
            "the adaptive rule drives ASL's γ−"
        )
    lo, hi = flat["loss.adaptive_min_gamma_neg"], flat["loss.adaptive_max_gamma_neg"]
    if not lo <= flat["loss.gamma_neg"] <= hi:
        raise _fail(
            "loss.gamma_neg",
            flat["loss.gamma_neg"],
            f"a start value within [loss.adaptive_min_gamma_neg, loss.adaptive_max_gamma_neg]"
            f" = [{lo}, {hi}]",
        )


def _check_pretrained(check: _Checker) -> None:
    flat = check.flat
    check.choice("model.normalization", ("auto", *NORMALIZATION_NAMES))
    check.integer("model.freeze_backbone_steps", 0)
    try:
        kind, _ = parse_pretrained(flat["model.pretrained"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    name = flat["model.name"]
    if flat["model.freeze_backbone_steps"] and MODELS[name].torch is None:
        raise _fail(
            "model.freeze_backbone_steps",
            flat["model.freeze_backbone_steps"],
            f"0 for model.name={name!r} (it has no classifier head layout to tell apart)",
        )
    if not kind:
        return
    if MODELS[name].torch is None:
        raise ConfigError(
            f"model.pretrained={flat['model.pretrained']!r} needs a model that can start from "
            f"PyTorch weights: one of {', '.join(pretrained_model_names())} "
            f"(got model.name={name!r})"
        )
    if flat["model.width"] not in (0, MODELS[name].default_width):
        raise _fail(
            "model.width", flat["model.width"], "0 (the model's own width) with pretrained weights"
        )


def _check_model_and_optimizer(check: _Checker) -> None:
    check.choice("model.name", MODEL_NAMES)
    check.integer("model.width", 0)
    check.choice("model.dtype", DTYPE_NAMES)
    _check_pretrained(check)
    check.choice("optimizer", OPTIMIZERS)
    check.choice("schedule", SCHEDULES)
    check.real("learning_rate", 0.0, math.inf, lo_open=True, hi_open=True)
    check.real("weight_decay", 0.0, math.inf, hi_open=True)
    check.real("warmup_fraction", 0.0, 1.0, hi_open=True)
    check.real("grad_clip_norm", 0.0, math.inf, hi_open=True)
    check.real("ema_decay", 0.0, 1.0, hi_open=True)


def _check_run(
    check: _Checker, flat: dict[str, Any], *, num_devices: int | None, process_count: int
) -> None:
    check.real("threshold", 0.0, 1.0, lo_open=True, hi_open=True)
    check.integer("batch_size", 1)
    check.integer("eval_batch_size", 0)
    check.integer("num_steps", 0)
    check.integer("num_epochs", 0)
    if flat["num_steps"] == 0 and flat["num_epochs"] <= 0:
        raise _fail("num_epochs", flat["num_epochs"], "an integer >= 1 when num_steps is 0")
    check.integer("log_every", 1)
    check.integer("eval_every", -1)
    check.integer("checkpoint_every", 0)
    check.integer("max_checkpoints_to_keep", 1)
    check.boolean("async_checkpoints")
    check.integer("max_consecutive_nonfinite", 1)
    check.boolean("progress_bar")
    check.boolean("tensorboard")
    check.integer("profile_steps", 0)
    for field in ("batch_size", "eval_batch_size"):
        value = flat[field]
        if value == 0:
            continue
        for divisor, what in ((num_devices, "device count"), (process_count, "process count")):
            if divisor and value % divisor:
                raise _fail(field, value, f"a multiple of the {what} ({divisor})")
