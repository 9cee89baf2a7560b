"""Evaluation: the model's probabilities on a split, gathered on the host, and their metrics.

One implementation serves the training loop (periodic evaluation), ``train.evaluate`` (one
checkpoint, per-class APs) and ``train.compare``. Labels below 0 are unknown (partial labels):
they are left out of each class's AP and of the threshold counts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from asl_jax.data import DataSource
from asl_jax.metrics import average_precision, mean_average_precision, threshold_metrics
from asl_jax.training import parallel

#: The two models a state holds, and the suffix of their metric names.
MODELS = (("probs", ""), ("probs_ema", "_ema"))


def eval_batch_size(config: Any) -> int:
    """The evaluation batch size of a config: ``eval_batch_size``, or ``batch_size`` when 0."""
    return int(config.eval_batch_size) or int(config.batch_size)


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
        split,
        batch_size=batch_size,
        seed=0,
        shuffle=False,
        drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
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
    known = labels >= 0
    if known.all():
        return average_precision(probs, labels)
    ap = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        rows = known[:, k]
        if rows.any():
            ap[k] = average_precision(probs[rows, k : k + 1], labels[rows, k : k + 1])[0]
    return ap


def metrics(probs: np.ndarray, labels: np.ndarray, *, threshold: float) -> dict[str, float]:
    """``map``, ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1`` (fractions) over known labels.

    ``map`` is NaN when no class has a known positive. A probability and a label of 0 put where
    the label is unknown make that element neither a true nor a false positive nor a miss.
    """
    known = labels >= 0
    if known.all():
        m_ap = float(mean_average_precision(probs, labels))
    else:
        ap = per_class_ap(probs, labels)
        m_ap = float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan")
    result = {"map": m_ap}
    thr = threshold_metrics(
        np.where(known, probs, 0.0), np.where(known, labels, 0.0), threshold=threshold
    )
    result.update(thr)
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
    """The metrics of :func:`metrics` for the regular and (suffix ``_ema``) the EMA model."""
    outputs = predict(eval_fn, state, source, split, batch_size=batch_size, mesh=mesh)
    result: dict[str, float] = {}
    for name, suffix in MODELS:
        for key, value in metrics(outputs[name], outputs["labels"], threshold=threshold).items():
            result[f"{key}{suffix}"] = value
    return result
