"""Seed statistics for comparisons: mean ± standard deviation, and paired differences.

Runs that differ only in the loss but share a seed share the data order, the augmentation and the
initialisation, so their results are paired: the per-seed difference removes the seed's own
effect, and a paired t-test on those differences says whether a loss is better than noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_and_std(values: Sequence[float]) -> dict[str, Any]:
    """``mean``, ``std`` (sample standard deviation, ``ddof=1``; None for one value) and ``n``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"expected a non-empty list of numbers; got shape {arr.shape}")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else None
    return {"mean": float(np.mean(arr)), "std": std, "n": int(arr.size)}


def student_t_two_sided_p(t: float, df: int) -> float:
    r"""Two-sided p-value of Student's t with ``df`` degrees of freedom.

    :math:`P(|T| \ge |t|) = I_{df/(df+t^2)}(df/2, 1/2)`, the regularised incomplete beta function
    (computed by ``jax.scipy.special.betainc`` in float64 on the host).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1; got {df}")
    if math.isinf(t):
        return 0.0
    import jax
    from jax.scipy.special import betainc

    with jax.default_device(jax.devices("cpu")[0]), jax.enable_x64(True):
        x = df / (df + t * t)
        return float(betainc(df / 2.0, 0.5, x))


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Mean of the per-seed differences ``values - baseline``, its standard error, a paired t-test.

    Args:
      values: one result per seed.
      baseline: the baseline's result for the same seeds, in the same order.

    Returns:
      ``mean`` (of the differences), ``stderr`` (their sample standard deviation / sqrt(n)),
      ``t`` (mean / stderr), ``p`` (two-sided, ``n - 1`` degrees of freedom) and ``n``. With one
      seed only ``mean`` and ``n`` are defined (the others are None). When every difference is
      the same, ``stderr`` is 0: ``t`` is infinite and ``p`` 0, or both 0 and 1 for no difference.
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"values and baseline must be two lists of the same non-zero length (one per seed); "
            f"got shapes {a.shape} and {b.shape}"
        )
    diff = a - b
    n = int(diff.size)
    mean = float(np.mean(diff))
    out: dict[str, Any] = {"mean": mean, "stderr": None, "t": None, "p": None, "n": n}
    if n < 2:
        return out
    stderr = float(np.std(diff, ddof=1) / math.sqrt(n))
    if stderr == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / stderr
        p = student_t_two_sided_p(t, n - 1)
    out.update(stderr=stderr, t=t, p=p)
    return out
