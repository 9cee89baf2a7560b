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
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.adaptive import DEFAULT_MAX_GAMMA_NEG, DEFAULT_STEP_SIZE, DEFAULT_TARGET
from asl_jax.config_fields import (
    ConfigBlock,
    ConfigError,
    Effect,
    at_least,
    interval,
    non_negative,
    one_of,
    option,
    positive,
)
from asl_jax.losses import REDUCTIONS, asymmetric_loss
from asl_jax.missing_labels import (
    assume_negative_loss,
    focal_margin_loss,
    hill_loss,
    large_loss_weights,
    selective_loss,
    splc_labels,
)

#: ``loss.*`` fields every loss reads.
COMMON_FIELDS = frozenset({"name", "adaptive", "reduction", "class_weights", "pos_weight"})
#: ``loss.*`` fields the adaptive γ− rule reads (when ``loss.adaptive``).
ADAPTIVE_FIELDS = frozenset(
    {"delta_p_target", "adaptive_step_size", "adaptive_min_gamma_neg", "adaptive_max_gamma_neg"}
)
#: ``loss.*`` fields the train step's class-prior estimate reads (for a loss that reads it).
CLASS_PRIOR_FIELDS = frozenset({"prior_decay"})


class LossContext(NamedTuple):
    """What a loss may read besides the logits, the labels and its config fields.

    Attributes:
      gamma_neg: the γ− carried in the train state (adaptive or constant).
      epoch: the training progress in epochs (a traced scalar in the train step; None outside
        training).
      class_prior: the running estimate of the class priors ``[K]`` carried in the train state
        (None unless the loss reads it).
      rows: ``[B, 1]`` bool, the rows of the batch that count (False: padding); None: all.
    """

    gamma_neg: Any
    epoch: Any = None
    class_prior: Any = None
    rows: Any = None


#: ``(logits, labels, loss_config, context) -> element-wise loss`` (see :class:`LossContext`).
ElementwiseLoss = Callable[[jax.Array, jax.Array, Any, LossContext], jax.Array]

#: How a loss sees unknown labels (-1): it ``follows`` ``loss.unknown`` (ignored: masked out, or
#: assumed negative), it always ``assumes_negative`` (the methods built on that assumption), or it
#: ``reads`` them (gets the -1 entries and decides itself).
UNKNOWN_HANDLING = ("follows", "assumes_negative", "reads")
#: The values of ``loss.unknown``.
UNKNOWN_LABELS = ("ignore", "negative")


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
      reads_epoch: whether it reads the training progress (``epoch`` of its context).
      unknown: how it sees unknown labels, one of :data:`UNKNOWN_HANDLING`.
      reads_class_prior: whether it reads the class priors, which the train state then carries
        and the train step updates (:func:`asl_jax.update_class_prior`).
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
    unknown: str = "follows"
    reads_class_prior: bool = False

    def unknown_labels(self, loss: Any) -> str:
        """``"ignore"``, ``"negative"`` or ``"read"``: what becomes of -1 labels under ``loss``."""
        return {"follows": loss.unknown, "assumes_negative": "negative", "reads": "read"}[
            self.unknown
        ]


def _asl_spec(parameters: Callable[[Any, Any], Mapping[str, Any]], **kwargs: Any) -> LossSpec:
    """A loss computed by :func:`asl_jax.asymmetric_loss` with ``parameters(loss, gamma_neg)``."""
    return LossSpec(
        elementwise=lambda z, y, loss, context: asymmetric_loss(
            z, y, **parameters(loss, context.gamma_neg)
        ),
        applied_gamma_neg=lambda loss, gamma_neg: parameters(loss, gamma_neg)["gamma_neg"],
        **kwargs,
    )


def _splc(z: jax.Array, y: jax.Array, loss: Any, context: LossContext) -> jax.Array:
    # The correction starts after the warm-up; outside training (no epoch) it is off.
    epoch = context.epoch
    active = False if epoch is None else jnp.asarray(epoch) >= loss.splc_warmup_epochs
    corrected = splc_labels(z, y, tau=loss.splc_tau, active=active)
    return focal_margin_loss(z, corrected, margin=loss.margin, gamma=loss.focal_gamma)


def weak_negative_weight(loss: Any, num_classes: int) -> float:
    """The weight of WAN's assumed negatives: ``loss.negative_weight``, or 1/(K − 1) for 0."""
    return loss.negative_weight or 1.0 / max(num_classes - 1, 1)


def _large_loss_rejection(z: jax.Array, y: jax.Array, loss: Any, context: LossContext) -> jax.Array:
    # The rejection rate grows by rejection_per_epoch with every completed epoch after the first;
    # outside training (no epoch) nothing is rejected.
    value = assume_negative_loss(z, y)
    if context.epoch is None:
        return value
    rate = loss.rejection_per_epoch * jnp.floor(jnp.asarray(context.epoch, jnp.float32))
    return value * large_loss_weights(value, y, rejection_rate=rate, where=context.rows)


def _selective(z: jax.Array, y: jax.Array, loss: Any, context: LossContext) -> jax.Array:
    if context.class_prior is None:
        raise ValueError(
            "loss.name='selective' reads the class priors that the train state carries; "
            "pass LossContext(class_prior=...)"
        )
    return selective_loss(
        z,
        y,
        class_prior=context.class_prior,
        gamma_pos=loss.gamma_pos,
        gamma_neg=loss.selective_gamma_neg,
        gamma_unknown=loss.gamma_unknown,
        clip=loss.selective_clip,
        likelihood_topk=loss.likelihood_topk,
        prior_threshold=loss.prior_threshold,
        detach_focal_weight=loss.detach_focal_weight,
        where=context.rows,
    )


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
            elementwise=lambda z, y, loss, context: focal_margin_loss(
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
            elementwise=lambda z, y, loss, context: hill_loss(
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
        LossSpec(
            name="wan",
            label="weak assume negative",
            fields=frozenset({"negative_weight"}),
            elementwise=lambda z, y, loss, context: assume_negative_loss(
                z, y, negative_weight=weak_negative_weight(loss, z.shape[-1])
            ),
            applied_gamma_neg=lambda loss, gamma_neg: 0.0,
            describe=lambda loss: (
                f"negatives × {loss.negative_weight:g}"
                if loss.negative_weight
                else "negatives × 1/(K − 1)"
            ),
            compared=False,
            unknown="assumes_negative",
        ),
        LossSpec(
            name="an_ls",
            label="assume negative + label smoothing",
            fields=frozenset({"label_smoothing"}),
            elementwise=lambda z, y, loss, context: assume_negative_loss(
                z, y, label_smoothing=loss.label_smoothing
            ),
            applied_gamma_neg=lambda loss, gamma_neg: 0.0,
            describe=lambda loss: f"ε={loss.label_smoothing:g}",
            compared=False,
            unknown="assumes_negative",
        ),
        LossSpec(
            name="llr",
            label="large-loss rejection",
            fields=frozenset({"rejection_per_epoch"}),
            elementwise=_large_loss_rejection,
            applied_gamma_neg=lambda loss, gamma_neg: 0.0,
            describe=lambda loss: f"Δ_rel={100 * loss.rejection_per_epoch:g}%/epoch",
            compared=False,
            reads_epoch=True,
            unknown="assumes_negative",
        ),
        LossSpec(
            name="selective",
            label="selective",
            fields=frozenset(
                {
                    "gamma_pos",
                    "selective_gamma_neg",
                    "gamma_unknown",
                    "selective_clip",
                    "likelihood_topk",
                    "prior_threshold",
                    "detach_focal_weight",
                }
            ),
            elementwise=_selective,
            applied_gamma_neg=lambda loss, gamma_neg: loss.selective_gamma_neg,
            describe=lambda loss: (
                f"γ−={loss.selective_gamma_neg:g}, γu={loss.gamma_unknown:g}, top-"
                f"{loss.likelihood_topk}, prior > {loss.prior_threshold:g}"
            ),
            compared=False,
            unknown="reads",
            reads_class_prior=True,
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
    fields = (
        COMMON_FIELDS | spec.fields | (ADAPTIVE_FIELDS if adaptive and spec.adaptive else set())
    )
    fields |= CLASS_PRIOR_FIELDS if spec.reads_class_prior else set()
    return fields | ({"unknown"} if spec.unknown == "follows" else set())


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
    - ``wan``, ``an_ls``, ``llr``: binary cross-entropy with the unknown labels assumed
      negative, with weak negatives (``negative_weight``), label smoothing
      (``label_smoothing``) or large-loss rejection (``rejection_per_epoch``).
    - ``selective``: the class-aware selective loss for labels {1, 0, -1} (``gamma_pos``,
      ``selective_gamma_neg``, ``gamma_unknown``, ``selective_clip``, ``likelihood_topk``,
      ``prior_threshold``, ``prior_decay``).

    ``unknown`` says what the other losses do with unknown labels (-1): leave them out
    (``ignore``) or take them as negatives (``negative``, "assume negative").

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
    # Unknown labels (-1) and the methods for single positive and partial labels
    # (asl_jax.missing_labels), with their papers' defaults.
    unknown: str = option(
        "ignore",
        "unknown labels (-1) for losses that do not read them: ignore (left out of the loss) or "
        "negative (assumed negative)",
        effect=PROGRAM,
        check=one_of(UNKNOWN_LABELS),
    )
    negative_weight: float = option(
        0.0,
        "wan: weight of the assumed negatives (0 = 1/(K − 1), the paper's)",
        effect=PROGRAM,
        check=non_negative(),
    )
    label_smoothing: float = option(
        0.1, "an_ls: label smoothing ε", effect=PROGRAM, check=interval(0.0, 1.0)
    )
    rejection_per_epoch: float = option(
        0.002,
        "llr: fraction of all labels rejected more per epoch after the first (Δ_rel)",
        effect=PROGRAM,
        check=interval(0.0, 1.0),
    )
    selective_gamma_neg: float = option(
        1.0, "selective: γ− of annotated negatives", effect=PROGRAM, check=non_negative()
    )
    gamma_unknown: float = option(
        2.0,
        "selective: γ of the unknown labels learned as negatives",
        effect=PROGRAM,
        check=non_negative(),
    )
    selective_clip: float = option(
        0.0,
        "selective: probability margin of the negatives, in [0, 1)",
        effect=PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
    )
    likelihood_topk: int = option(
        5,
        "selective: unknown labels ignored per image, the batch's most likely",
        effect=PROGRAM,
        check=at_least(0),
    )
    prior_threshold: float = option(
        0.05,
        "selective: unknown labels of classes whose prior is above this are ignored",
        effect=PROGRAM,
        check=interval(0.0, 1.0),
    )
    prior_decay: float = option(
        0.99,
        "selective: decay of the running estimate of the class priors",
        effect=PROGRAM,
        check=interval(0.0, 1.0, high_open=True),
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
