"""asl-jax: Asymmetric Loss for multi-label classification in JAX.

The library: pure, jit-able losses with a hand-written gradient (`asymmetric_loss`,
`asymmetric_loss_single_label`), reductions and partial labels (-1 = unknown:
`known_labels_mask`, `partial_labels`), losses designed for missing labels after ASL
(`focal_margin_loss`, `hill_loss`, `splc_labels`, `assume_negative_loss`, `large_loss_weights`,
`selective_loss`, `update_class_prior`), the paper's probability analysis and
adaptive γ− rule (`probability_stats`, `update_gamma_neg`) and the multi-label metrics papers report
(`asl_jax.metrics`). It needs only JAX and NumPy.
"""

from asl_jax import metrics
from asl_jax.adaptive import ProbabilityStats, probability_stats, update_gamma_neg
from asl_jax.losses import (
    asymmetric_loss,
    asymmetric_loss_single_label,
    known_labels_mask,
    partial_labels,
    reduce_loss,
)
from asl_jax.missing_labels import (
    assume_negative_loss,
    focal_margin_loss,
    hill_loss,
    large_loss_weights,
    selective_loss,
    splc_labels,
    update_class_prior,
)

__all__ = [
    "ProbabilityStats",
    "assume_negative_loss",
    "asymmetric_loss",
    "asymmetric_loss_single_label",
    "focal_margin_loss",
    "hill_loss",
    "known_labels_mask",
    "large_loss_weights",
    "metrics",
    "partial_labels",
    "probability_stats",
    "reduce_loss",
    "selective_loss",
    "splc_labels",
    "update_class_prior",
    "update_gamma_neg",
]

__version__ = "0.1.0"
