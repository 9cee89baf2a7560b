"""Evaluation: the model's probabilities on a split, gathered on the host, and their metrics.

One implementation serves the training loop (periodic evaluation), ``train.evaluate`` (one
checkpoint, per-class APs) and ``train.compare``. Labels below 0 are unknown (partial labels):
they are left out of each class's AP and of the threshold counts.

A diverged model (non-finite probabilities) is a result, not an error: :func:`evaluate` gives its
metrics as NaN and counts the non-finite probabilities (``nonfinite_probs``, ``_ema``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from asl_jax.data import BatchRequest, DataSource
from asl_jax.losses import known_labels_mask
from asl_jax.metrics import THRESHOLD_METRICS, average_precision, threshold_metrics
from asl_jax.training import parallel

#: The outputs of the two models a state holds, and the suffix of their metric names.
MODEL_OUTPUTS = (("probs", ""), ("probs_ema", "_ema"))


def _to_host(x: jax.Array) -> np.ndarray:
    # Outputs are replicated: every host reads its local copy (valid on several hosts too).
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def predict(
    eval_fn: Any,
    state: Any,
    source: DataSource,
    split: str,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """``probs``, ``probs_ema`` ([N, K]) and ``labels`` of every example of ``split``, in order.

    Args:
      eval_fn: the jitted evaluation step (``Programs.eval``).
      state: the train state.
      source: the data source.
      split: ``"val"`` or ``"train"``.
      batch_size: global evaluation batch size (the last batch is padded and masked).
      mesh: the device mesh the batches are sharded over.
    """
    outputs: dict[str, list[np.ndarray]] = {"probs": [], "probs_ema": [], "labels": []}
    for batch in source.batches(
        BatchRequest.evaluation(
            split,
            batch_size=batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    ):
        out = eval_fn(state, parallel.shard_batch(batch, mesh))
        keep = _to_host(out["mask"])
        for name, values in outputs.items():
            values.append(_to_host(out[name])[keep])
    return {name: np.concatenate(values) for name, values in outputs.items()}


def per_class_ap(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of every class over its known labels (``labels < 0`` = unknown); NaN without positives.

    Args:
      probs: float [N, K].
      labels: [N, K] in {0, 1}, or negative for an unknown label.

    Returns:
      float64 [K].
    """
    known = known_labels_mask(labels)
    return average_precision(probs, np.where(known, labels, 0), where=known)


def split_metrics(probs: np.ndarray, labels: np.ndarray, *, threshold: float) -> dict[str, float]:
    """``map``, ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1`` (fractions) over known labels.

    ``map`` is NaN when no class has a known positive. An unknown label (``labels < 0``) is
    neither a prediction nor a label of any metric.
    """
    known = known_labels_mask(labels)
    targets = np.where(known, labels, 0)
    ap = average_precision(probs, targets, where=known)
    scored = ap[~np.isnan(ap)]
    result = {"map": float(np.mean(scored, dtype=np.float64)) if scored.size else float("nan")}
    result.update(threshold_metrics(probs, targets, threshold=threshold, where=known))
    return result


def evaluate(
    eval_fn: Any,
    state: Any,
    source: DataSource,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    threshold: float = 0.5,
    split: str = "val",
) -> dict[str, float]:
    """The metrics of :func:`split_metrics` for the regular and (suffix ``_ema``) the EMA model.

    A model whose probabilities are not all finite (diverged parameters) gets NaN metrics, and
    the result counts them: ``nonfinite_probs`` (``nonfinite_probs_ema``), present only then
    (:func:`is_finite` tells).
    """
    outputs = predict(eval_fn, state, source, split, batch_size=batch_size, mesh=mesh)
    result: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, suffix in MODEL_OUTPUTS:
        bad = nonfinite_count(outputs[name])
        if bad:
            scores = dict.fromkeys(("map", *THRESHOLD_METRICS), float("nan"))
        else:
            scores = split_metrics(outputs[name], outputs["labels"], threshold=threshold)
        result.update({f"{key}{suffix}": value for key, value in scores.items()})
        counts[f"nonfinite_probs{suffix}"] = bad
    if any(counts.values()):
        result.update(counts)
    return result


def nonfinite_count(probs: np.ndarray) -> int:
    """How many entries of ``probs`` are NaN or infinite."""
    return int(np.count_nonzero(~np.isfinite(probs)))


def is_finite(scores: dict[str, Any]) -> bool:
    """Whether an evaluation of :func:`evaluate` (or its record) had finite probabilities."""
    return not any(scores.get(f"nonfinite_probs{suffix}") for _, suffix in MODEL_OUTPUTS)
