"""The training losses, one entry each: what the step computes, which fields it reads, its name.

Every consumer reads this registry: the train step (:func:`asl_jax.training.step.elementwise_loss`),
the config check (``loss.name``), ``train.compare`` (which runs can be reused, table labels,
settings) and the benchmarks. A new loss is one :class:`LossSpec` added to :data:`LOSSES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

#: ``loss.*`` fields every loss reads.
COMMON_FIELDS = frozenset({"name", "adaptive", "reduction"})
#: ``loss.*`` fields the adaptive γ− rule reads (when ``loss.adaptive``).
ADAPTIVE_FIELDS = frozenset(
    {"delta_p_target", "adaptive_step_size", "adaptive_min_gamma_neg", "adaptive_max_gamma_neg"}
)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One training loss, computed by :func:`asl_jax.asymmetric_loss` with some parameters.

    Attributes:
      name: the value of ``loss.name``.
      label: how tables name it.
      fields: the ``loss.*`` fields it reads besides :data:`COMMON_FIELDS`.
      parameters: ``(loss_config, gamma_neg) -> keyword arguments of asymmetric_loss``;
        ``gamma_neg`` is the value carried in the train state (adaptive or constant).
      describe: ``loss_config -> short text of its settings`` for tables.
      adaptive: whether the adaptive γ− rule applies to it.
    """

    name: str
    label: str
    fields: frozenset[str]
    parameters: Callable[[Any, Any], Mapping[str, Any]]
    describe: Callable[[Any], str]
    adaptive: bool = False


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            name="bce",
            label="BCE",
            fields=frozenset(),
            parameters=lambda loss, gamma_neg: {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0},
            describe=lambda loss: "—",
        ),
        LossSpec(
            name="focal",
            label="focal",
            fields=frozenset({"focal_gamma", "detach_focal_weight"}),
            parameters=lambda loss, gamma_neg: {
                "gamma_pos": loss.focal_gamma,
                "gamma_neg": loss.focal_gamma,
                "clip": 0.0,
                "detach_focal_weight": loss.detach_focal_weight,
            },
            describe=lambda loss: f"γ={loss.focal_gamma:g}",
        ),
        LossSpec(
            name="asl",
            label="ASL",
            fields=frozenset({"gamma_pos", "gamma_neg", "clip", "detach_focal_weight"}),
            parameters=lambda loss, gamma_neg: {
                "gamma_pos": loss.gamma_pos,
                "gamma_neg": gamma_neg,
                "clip": loss.clip,
                "detach_focal_weight": loss.detach_focal_weight,
            },
            describe=lambda loss: f"γ+={loss.gamma_pos:g}, γ−={loss.gamma_neg:g}, m={loss.clip:g}",
            adaptive=True,
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
