"""Simulated annotation: which training labels a partially annotated dataset would have.

Real multi-label datasets are rarely annotated completely: Open Images verifies a few classes per
image, web data has one tag per image, and a crowd misses objects. These functions turn complete
``[N, K]`` labels (1 positive, 0 negative) into the labels such a process leaves, with ``-1``
for an entry nobody annotated, so that a method for missing labels can be measured against the
truth (the validation labels stay complete):

- :func:`drop_positives`: a fraction of the positives becomes negative (a missed object that
  nobody marked as unknown);
- :func:`annotate` with one of :data:`ANNOTATIONS`:

  - ``complete``: every entry known (the labels as they are);
  - ``positives_only``: only the positives are known, every other entry unknown (tagged data);
  - ``single_positive``: one positive per image, chosen at random, is known; every other entry
    is unknown (Cole et al., 2021);
  - ``random_partial``: a random ``annotated_fraction`` of each image's entries is known
    (Ben-Baruch et al., 2022, "random per sample");
  - ``fixed_per_class``: per class, ``annotated_per_class`` positives and as many negatives are
    known, chosen at random (Ben-Baruch et al., "fixed per class"; all of them when a class has
    fewer).

Every choice is drawn from a NumPy generator seeded by the run's seed and a constant of its own,
on the whole split before it is sharded: the same seed gives the same labels on any number of
hosts, and a larger drop fraction drops a superset of a smaller one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ANNOTATIONS", "annotate", "drop_positives", "simulate_missing_labels"]

#: The values of ``data.annotation``.
ANNOTATIONS = ("complete", "positives_only", "single_positive", "random_partial", "fixed_per_class")

# One random stream per simulator, so that changing one setting never reshuffles another's draw.
# The drop stream is the one the embedded dataset has always used: earlier results reproduce.
_STREAMS = {"drop_positives": 0xD409, "single_positive": 0x5109, "random_partial": 0x8A27,
            "fixed_per_class": 0xF1C5}  # fmt: skip


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) % (1 << 64), _STREAMS[stream]])


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, K], got shape {labels.shape}.")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(
            "simulated annotation needs complete labels in {0, 1}; these have other values "
            f"({sorted(set(np.unique(labels)) - {0.0, 1.0})[:5]}): the data is already partial"
        )
    return labels


def drop_positives(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Turns ``fraction`` of the positive labels into negatives (missing labels).

    Exactly ``round(fraction * num_positives)`` positives, chosen uniformly at random from a
    stream seeded by ``seed``; a larger fraction drops a superset of a smaller one (same seed).

    Args:
      labels: [N, K] in {0, 1}.
      fraction: in [0, 1).
      seed: any int.

    Returns:
      A new float32 array [N, K].
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}.")
    out = _check_labels(labels).copy()
    positives = np.flatnonzero(out.ravel() > 0.5)
    k = round(fraction * positives.size)
    if k:
        order = _rng(seed, "drop_positives").permutation(positives.size)
        out.ravel()[positives[order[:k]]] = 0.0
    return out


def annotate(
    labels: np.ndarray,
    annotation: str,
    *,
    seed: int,
    annotated_fraction: float = 0.5,
    annotated_per_class: int = 100,
) -> np.ndarray:
    """The labels an annotation process leaves: known entries kept, the others ``-1``.

    Args:
      labels: [N, K] in {0, 1} (after :func:`drop_positives`, if any).
      annotation: one of :data:`ANNOTATIONS` (see the module docstring).
      seed: any int.
      annotated_fraction: ``random_partial``: the fraction of each image's K entries that is
        known (``round(fraction * K)`` of them), in (0, 1].
      annotated_per_class: ``fixed_per_class``: known positives (and known negatives) per class.

    Returns:
      A new float32 array [N, K] in {1, 0, -1}.
    """
    out = _check_labels(labels).copy()
    num_classes = out.shape[1]
    if annotation == "complete":
        return out
    if annotation == "positives_only":
        out[out == 0] = -1.0
        return out
    known = np.zeros(out.shape, bool)
    if annotation == "single_positive":
        rng = _rng(seed, "single_positive")
        # A uniform choice among each row's positives: the largest random key wins.
        keys = np.where(out > 0, rng.random(out.shape), -1.0)
        rows = np.flatnonzero(out.max(axis=1) > 0)
        known[rows, keys[rows].argmax(axis=1)] = True
    elif annotation == "random_partial":
        if not 0.0 < annotated_fraction <= 1.0:
            raise ValueError(f"annotated_fraction must be in (0, 1], got {annotated_fraction}.")
        per_image = max(1, round(annotated_fraction * num_classes))
        order = _rng(seed, "random_partial").random(out.shape).argsort(axis=1)
        np.put_along_axis(known, order[:, :per_image], True, axis=1)
    elif annotation == "fixed_per_class":
        if annotated_per_class < 1:
            raise ValueError(f"annotated_per_class must be >= 1, got {annotated_per_class}.")
        rng = _rng(seed, "fixed_per_class")
        for k in range(num_classes):
            for value in (1.0, 0.0):
                rows = np.flatnonzero(out[:, k] == value)
                known[rng.permutation(rows)[:annotated_per_class], k] = True
    else:
        raise ValueError(f"annotation={annotation!r}: expected one of {', '.join(ANNOTATIONS)}")
    out[~known] = -1.0
    return out


def simulate_missing_labels(
    labels: np.ndarray,
    *,
    seed: int,
    drop_positive_fraction: float = 0.0,
    annotation: str = "complete",
    annotated_fraction: float = 0.5,
    annotated_per_class: int = 100,
) -> np.ndarray:
    """:func:`drop_positives`, then :func:`annotate`: the training labels of a simulated run."""
    dropped = drop_positives(labels, drop_positive_fraction, seed=seed)
    return annotate(
        dropped,
        annotation,
        seed=seed,
        annotated_fraction=annotated_fraction,
        annotated_per_class=annotated_per_class,
    )
