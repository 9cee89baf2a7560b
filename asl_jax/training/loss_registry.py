"""The training losses, one entry each: what the step computes, which fields it reads, its name.

Every consumer reads this registry: the train step (:func:`asl_jax.training.step.elementwise_loss`),
the config check (``loss.name``), ``train.compare`` (which runs can be reused, table labels,
settings, the default comparison) and the benchmarks. A new loss is one :class:`LossSpec` added
to :data:`LOSSES` (and its hyper-parameters, fields of :class:`LossConfig`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.adaptive import DEFAULT_MAX_GAMMA_NEG, DEFAULT_STEP_SIZE, DEFAULT_TARGET
from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    interval,
    non_negative,
    one_of,
    option,
    positive,
)
from asl_jax.losses import REDUCTIONS, asymmetric_loss
from asl_jax.missing_labels import focal_margin_loss, hill_loss, splc_labels

#: ``loss.*`` fields every loss reads.
COMMON_FIELDS = frozenset({"name", "adaptive", "reduction", "class_weights", "pos_weight"})
#: ``loss.*`` fields the adaptive γ− rule reads (when ``loss.adaptive``).
ADAPTIVE_FIELDS = frozenset(
    {"delta_p_target", "adaptive_step_size", "adaptive_min_gamma_neg", "adaptive_max_gamma_neg"}
)


#: ``(logits, labels, loss_config, gamma_neg, epoch) -> element-wise loss``: ``gamma_neg`` is the
#: value carried in the train state (adaptive or constant), ``epoch`` the training progress in
#: epochs (a traced scalar in the train step; None outside training).
ElementwiseLoss = Callable[[jax.Array, jax.Array, Any, Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One training loss.

    Attributes:
      name: the value of ``loss.name``.
      label: how tables name it.
      fields: the ``loss.*`` fields it reads besides :data:`COMMON_FIELDS`.
      elementwise: the element-wise loss (:data:`ElementwiseLoss`).
      applied_gamma_neg: ``(loss_config, gamma_neg) -> the γ− the loss applies`` (reported in
        the train records and the summary; 0 for a loss without negative focusing).
      describe: ``loss_config -> short text of its settings`` for tables.
      adaptive: whether the adaptive γ− rule applies to it.
      compared: whether ``train.compare`` runs it by default (the paper's comparison).
      reads_epoch: whether it reads the training progress (``epoch`` of ``elementwise``).
    """

    name: str
    label: str
    fields: frozenset[str]
    elementwise: ElementwiseLoss
    applied_gamma_neg: Callable[[Any, Any], Any]
    describe: Callable[[Any], str]
    adaptive: bool = False
    compared: bool = True
    reads_epoch: bool = False


def _asl_spec(parameters: Callable[[Any, Any], Mapping[str, Any]], **kwargs: Any) -> LossSpec:
    """A loss computed by :func:`asl_jax.asymmetric_loss` with ``parameters(loss, gamma_neg)``."""
    return LossSpec(
        elementwise=lambda z, y, loss, gamma_neg, epoch: asymmetric_loss(
            z, y, **parameters(loss, gamma_neg)
        ),
        applied_gamma_neg=lambda loss, gamma_neg: parameters(loss, gamma_neg)["gamma_neg"],
        **kwargs,
    )


def _splc(z: jax.Array, y: jax.Array, loss: Any, gamma_neg: Any, epoch: Any) -> jax.Array:
    # The correction starts after the warm-up; outside training (no epoch) it is off.
    active = False if epoch is None else jnp.asarray(epoch) >= loss.splc_warmup_epochs
    corrected = splc_labels(z, y, tau=loss.splc_tau, active=active)
    return focal_margin_loss(z, corrected, margin=loss.margin, gamma=loss.focal_gamma)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        _asl_spec(
            lambda loss, gamma_neg: {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0},
            name="bce",
            label="BCE",
            fields=frozenset(),
            describe=lambda loss: "—",
        ),
        _asl_spec(
            lambda loss, gamma_neg: {
                "gamma_pos": loss.focal_gamma,
                "gamma_neg": loss.focal_gamma,
                "clip": 0.0,
                "detach_focal_weight": loss.detach_focal_weight,
            },
            name="focal",
            label="focal",
            fields=frozenset({"focal_gamma", "detach_focal_weight"}),
            describe=lambda loss: f"γ={loss.focal_gamma:g}",
        ),
        _asl_spec(
            lambda loss, gamma_neg: {
                "gamma_pos": loss.gamma_pos,
                "gamma_neg": gamma_neg,
                "clip": loss.clip,
                "detach_focal_weight": loss.detach_focal_weight,
            },
            name="asl",
            label="ASL",
            fields=frozenset({"gamma_pos", "gamma_neg", "clip", "detach_focal_weight"}),
            describe=lambda loss: f"γ+={loss.gamma_pos:g}, γ−={loss.gamma_neg:g}, m={loss.clip:g}",
            adaptive=True,
        ),
        LossSpec(
            name="focal_margin",
            label="focal margin",
            fields=frozenset({"focal_gamma", "margin"}),
            elementwise=lambda z, y, loss, gamma_neg, epoch: focal_margin_loss(
                z, y, margin=loss.margin, gamma=loss.focal_gamma
            ),
            applied_gamma_neg=lambda loss, gamma_neg: loss.focal_gamma,
            describe=lambda loss: f"γ={loss.focal_gamma:g}, margin {loss.margin:g}",
            compared=False,
        ),
        LossSpec(
            name="hill",
            label="Hill",
            fields=frozenset({"focal_gamma", "margin", "hill_lambda"}),
            elementwise=lambda z, y, loss, gamma_neg, epoch: hill_loss(
                z, y, margin=loss.margin, gamma=loss.focal_gamma, hill_lambda=loss.hill_lambda
            ),
            applied_gamma_neg=lambda loss, gamma_neg: 0.0,
            describe=lambda loss: (
                f"γ+={loss.focal_gamma:g}, margin {loss.margin:g}, λ={loss.hill_lambda:g}"
            ),
            compared=False,
        ),
        LossSpec(
            name="splc",
            label="SPLC",
            fields=frozenset({"focal_gamma", "margin", "splc_tau", "splc_warmup_epochs"}),
            elementwise=_splc,
            reads_epoch=True,
            applied_gamma_neg=lambda loss, gamma_neg: loss.focal_gamma,
            describe=lambda loss: (
                f"γ={loss.focal_gamma:g}, margin {loss.margin:g}, τ={loss.splc_tau:g} after "
                f"{loss.splc_warmup_epochs:g} epoch(s)"
            ),
            compared=False,
        ),
    )
}
LOSS_NAMES = tuple(LOSSES)


def loss_spec(name: str) -> LossSpec:
    """The registry entry of ``name``; ``ValueError`` naming the known losses otherwise."""
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r}: expected one of {', '.join(LOSS_NAMES)}")
    return LOSSES[name]


def used_fields(name: str, *, adaptive: bool) -> frozenset[str]:
    """The ``loss.*`` fields a run of loss ``name`` reads."""
    spec = loss_spec(name)
    return COMMON_FIELDS | spec.fields | (ADAPTIVE_FIELDS if adaptive and spec.adaptive else set())


#: ``loss.class_weights`` value that derives the weights from the train labels.
INVERSE_FREQUENCY = "inverse_frequency"


def parse_class_weights(text: str) -> tuple[float, ...]:
    """``"1,2.5,0"`` -> ``(1.0, 2.5, 0.0)``; ``""`` -> ``()``. Finite and >= 0, else ValueError."""
    if not text.strip():
        return ()
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"loss.class_weights={text!r}: expected '', 'inverse_frequency' or one number per "
            "class separated by commas"
        ) from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"loss.class_weights={text!r}: weights must be finite and >= 0")
    return weights


def resolve_class_weights(text: str, train_labels: Any) -> str:
    """``loss.class_weights`` with ``inverse_frequency`` replaced by its numbers.

    Class ``k`` with ``n_k`` positive training labels gets a weight proportional to
    ``1 / (n_k + 1)`` (the +1 keeps a class without positives finite), scaled so that the weights
    average 1 over the classes: the loss keeps its scale and rare classes weigh more.

    Args:
      text: the config's value.
      train_labels: ``[N, K]`` labels of the train split (1 positive, 0 negative, -1 unknown);
        only read for ``inverse_frequency``.

    Returns:
      ``text`` unchanged, or the weights as ``"w1,w2,..."`` (6 significant digits; recorded in
      ``config.json``, so a resumed run uses the same ones).
    """
    if text != INVERSE_FREQUENCY:
        return text
    positives = np.count_nonzero(np.asarray(train_labels) > 0, axis=0)
    inverse = 1.0 / (positives + 1.0)
    return ",".join(f"{w:.6g}" for w in inverse / inverse.mean())


# Every loss field is part of the compiled train step.
PROGRAM = Effect.PROGRAM


@dataclasses.dataclass(frozen=True)
class LossConfig(ConfigBlock):
    """The ``loss`` config block: the training loss (hashable, a static argument of ``jit``).

    - ``bce``: ``asymmetric_loss`` with γ+ = γ− = 0 and no margin.
    - ``focal``: γ+ = γ− = ``focal_gamma`` and no margin (focal loss without α).
    - ``asl``: γ+ = ``gamma_pos``, γ− = ``gamma_neg`` (or the adaptive value carried in the
      state when ``adaptive``), margin ``clip``.
    - ``focal_margin``, ``hill``, ``splc``: the losses for missing labels of
      :mod:`asl_jax.missing_labels` with ``focal_gamma``, ``margin``, ``hill_lambda``,
      ``splc_tau`` and ``splc_warmup_epochs``.

    ``reduction`` ``batchmean`` (sum / batch size) keeps logged losses and ``grad_clip_norm``
    independent of the batch size; Adam is invariant to the loss's scale either way. The adaptive
    rule is off by default: on the embedded data it keeps Δp near its target, but γ− drifts from
    4 to about 0.3 and the mAP is not better.
    """

    PREFIX: ClassVar[str] = "loss"

    name: str = option(
        "asl", ", ".join(LOSSES), effect=PROGRAM, check=one_of(lambda: tuple(LOSSES))
    )
    gamma_pos: float = option(0.0, "γ+ of ASL", effect=PROGRAM, check=non_negative())
    gamma_neg: float = option(
        4.0, "γ− of ASL (the initial value when adaptive)", effect=PROGRAM, check=non_negative()
    )
    focal_gamma: float = option(
        2.0,
        "γ of the focal loss (γ+ = γ− = focal_gamma, no margin), and of focal margin, Hill "
        "(its positives) and SPLC",
        effect=PROGRAM,
        check=non_negative(),
    )
    clip: float = option(
        0.05,
        "probability margin m of ASL, in [0, 1)",
        effect=PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
    )
    detach_focal_weight: bool = option(
        False, "compute the focusing weights without gradient (official code)", effect=PROGRAM
    )
    reduction: str = option(
        "batchmean",
        "sum (official), batchmean (sum / batch size) or mean",
        effect=PROGRAM,
        check=one_of(REDUCTIONS),
    )
    adaptive: bool = option(
        False,
        "adapt γ− during training towards loss.delta_p_target (ASL only)",
        effect=PROGRAM,
    )
    delta_p_target: float = option(
        DEFAULT_TARGET,
        "target Δp = p̄− − p̄+ of the adaptive rule (paper: 0.1)",
        effect=PROGRAM,
        check=interval(-1.0, 1.0),
    )
    adaptive_step_size: float = option(
        DEFAULT_STEP_SIZE,
        "λ of the adaptive rule γ− ← γ− + λ (Δp − target)",
        effect=PROGRAM,
        check=positive(),
    )
    adaptive_min_gamma_neg: float = option(
        0.0, "lower bound of the adaptive γ−", effect=PROGRAM, check=non_negative()
    )
    adaptive_max_gamma_neg: float = option(
        DEFAULT_MAX_GAMMA_NEG,
        "upper bound of the adaptive γ−",
        effect=PROGRAM,
        check=non_negative(),
    )
    # The losses for missing labels of Zhang et al. (asl_jax.missing_labels), with their
    # paper's defaults.
    margin: float = option(
        1.0,
        "logit margin of the positives of focal margin, Hill and SPLC",
        effect=PROGRAM,
        check=non_negative(),
    )
    hill_lambda: float = option(
        1.5, "λ of Hill's negatives, (λ − p)·p²", effect=PROGRAM, check=non_negative()
    )
    splc_tau: float = option(
        0.6,
        "SPLC: a negative above this probability is taken as a positive",
        effect=PROGRAM,
        check=interval(0.0, 1.0),
    )
    splc_warmup_epochs: float = option(
        1.0,
        "SPLC: epochs before the label correction starts",
        effect=PROGRAM,
        check=non_negative(),
    )
    # Weighting outside the paper (as timm's loss factory offers).
    class_weights: str = option(
        "",
        "per-class loss weights: '' (none), 'inverse_frequency' or '1,2.5,...'",
        effect=PROGRAM,
    )
    pos_weight: float = option(
        1.0, "weight of the loss of positive labels (1 = none)", effect=PROGRAM, check=positive()
    )

    def check(self) -> None:
        if self.class_weights != INVERSE_FREQUENCY:
            try:
                parse_class_weights(self.class_weights)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if not self.adaptive:
            return
        if not loss_spec(self.name).adaptive:
            adaptive = [name for name, spec in LOSSES.items() if spec.adaptive]
            raise ConfigError(
                f"loss.adaptive=True needs loss.name={' or '.join(map(repr, adaptive))} (got "
                f"loss.name={self.name!r}): the adaptive rule drives ASL's γ−"
            )
        low, high = self.adaptive_min_gamma_neg, self.adaptive_max_gamma_neg
        if not low <= self.gamma_neg <= high:
            raise self.fail(
                "gamma_neg",
                self.gamma_neg,
                "a start value within [loss.adaptive_min_gamma_neg, "
                f"loss.adaptive_max_gamma_neg] = [{low}, {high}]",
            )

    @property
    def spec(self) -> LossSpec:
        """The registry entry of ``name``."""
        return loss_spec(self.name)
