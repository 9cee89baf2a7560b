"""The ``model`` config block: which network, at which width and precision, from which weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    at_least,
    interval,
    one_of,
    option,
)
from asl_jax.models import (
    DTYPE_NAMES,
    HEAD_NAMES,
    MODELS,
    NORMALIZATION_NAMES,
    default_normalization,
    pretrained_model_names,
)
from asl_jax.models.pretrained import parse_pretrained


def _normalization_of_older_runs(stored: Mapping[str, Any]) -> str:
    # Runs stored before model.normalization existed normalised as their model does.
    name = stored.get("name", ModelConfig.name)
    return default_normalization(name) if name in MODELS else "auto"


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBlock):
    """The ``model`` config block (see :func:`asl_jax.models.create_model`)."""

    PREFIX: ClassVar[str] = "model"

    name: str = option(
        "cnn", ", ".join(MODELS), effect=Effect.PROGRAM, check=one_of(lambda: tuple(MODELS))
    )
    width: int = option(
        16,
        "channels of the first stage, the token width for vit (0 = the model's default: "
        + ", ".join(f"{spec.default_width} for {name}" for name, spec in MODELS.items())
        + ")",
        effect=Effect.PROGRAM,
        check=at_least(0),
    )
    dtype: str = option(
        "auto",
        "compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), float32 or bfloat16",
        effect=Effect.PROGRAM,
        check=one_of(DTYPE_NAMES),
    )
    # The initial weights reach the programs as an argument of the initialiser.
    pretrained: str = option(
        "",
        "initial weights: '' (from scratch), a .pth/.pt/.safetensors file, "
        "'torchvision:<name>' or 'timm:<name>'",
        effect=Effect.RESULT,
    )
    normalization: str = option(
        "auto",
        "input normalisation: auto (what the weights expect; resolved into config.json), "
        + ", ".join(NORMALIZATION_NAMES),
        effect=Effect.PROGRAM,
        check=one_of(("auto", *NORMALIZATION_NAMES)),
        absent=_normalization_of_older_runs,
    )
    head: str = option(
        "linear",
        "classifier head: linear (pooled features, one dense layer) or ml_decoder (ML-Decoder "
        "on every position / token: 768-wide cross-attention of fixed queries, group FC)",
        effect=Effect.PROGRAM,
        check=one_of(HEAD_NAMES),
    )
    ml_decoder_groups: int = option(
        0,
        "ML-Decoder's number of queries, each scoring ceil(classes / groups) classes "
        "(0 = min(classes, 100); model.head=ml_decoder only)",
        effect=Effect.PROGRAM,
        check=at_least(0),
    )
    drop_path_rate: float = option(
        0.0,
        "stochastic depth in training: the last block's residual branch is dropped with this "
        "probability, earlier blocks' linearly less (0 = none; "
        + ", ".join(name for name, spec in MODELS.items() if spec.drop_path)
        + ")",
        effect=Effect.PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
    )
    # Runs stored before the field existed were compiled without the library kernels.
    cpu_fast_kernels: bool = option(
        True,
        "on CPU devices, compile the train step with the model's XLA:CPU library fusions "
        "(same results to float32 rounding, faster; see BENCHMARKS.md)",
        effect=Effect.PROGRAM,
        absent=lambda stored: False,
    )
    freeze_backbone_steps: int = option(
        0,
        "keep every parameter but the classifier head fixed for this many steps (0 = never)",
        effect=Effect.PROGRAM,
        check=at_least(0),
    )

    def check(self) -> None:
        try:
            kind, _ = parse_pretrained(self.pretrained)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.ml_decoder_groups and self.head != "ml_decoder":
            raise self.fail(
                "ml_decoder_groups", self.ml_decoder_groups, "0 unless model.head='ml_decoder'"
            )
        if self.drop_path_rate and not MODELS[self.name].drop_path:
            raise self.fail(
                "drop_path_rate",
                self.drop_path_rate,
                f"0 for model.name={self.name!r} (it has no stochastic depth)",
            )
        has_layout = MODELS[self.name].torch is not None
        if self.freeze_backbone_steps and not has_layout:
            raise self.fail(
                "freeze_backbone_steps",
                self.freeze_backbone_steps,
                f"0 for model.name={self.name!r} (it has no classifier head layout to tell apart)",
            )
        if not kind:
            return
        if not has_layout:
            raise ConfigError(
                f"model.pretrained={self.pretrained!r} needs a model that can start from "
                f"PyTorch weights: one of {', '.join(pretrained_model_names())} "
                f"(got model.name={self.name!r})"
            )
        if self.width not in (0, MODELS[self.name].default_width):
            raise self.fail(
                "width", self.width, "0 (the model's own width) with pretrained weights"
            )

    @property
    def width_or_default(self) -> int | None:
        """The width :func:`asl_jax.models.create_model` takes: None for the model's own."""
        return self.width or None
