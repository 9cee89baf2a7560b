r"""Multi-label classification metrics as papers report them: mAP and the ML-GCN threshold metrics.

Everything here runs on the host in NumPy (evaluation is a host-side reduction over a whole split).
Inputs are ``[N, K]`` arrays (``N`` examples, ``K`` classes), NumPy or JAX; JAX arrays are copied to
the host with :func:`numpy.asarray`. An array sharded over several hosts is not fully addressable
from one process: gather it first (e.g. ``jax.experimental.multihost_utils.process_allgather``).

**Average precision.** Non-interpolated AP, the step-function integral of the precision-recall
curve, as ASL, ML-GCN and scikit-learn compute it (not the 11-point interpolated AP of the old
PASCAL VOC devkit). Tied scores form a single threshold: the result depends only on the scores, not
on the order of the examples, and equals :func:`sklearn.metrics.average_precision_score` exactly
(up to float64 rounding). Code that sorts and walks the ranking one example at a time (the official
ASL and ML-GCN helpers) breaks ties by the sort's arbitrary order; on untied scores it agrees with
ours.

**Classes without positives.** AP is undefined for a class with no positive label in the evaluated
split (recall has no denominator). The ``no_positives`` argument makes the choice explicit:

- ``"ignore"`` (default): the class's AP is reported as NaN and it is left out of the mean.
- ``"zero"``: AP = 0, counted in the mean.
- ``"raise"``: :class:`ValueError` naming the class indices.

``"ignore"`` is the default because such a class says nothing about the model: counting it as 0
makes mAP depend on which classes happen to be absent from a (small, or sharded, or subsampled)
evaluation split. The benchmarks papers report (MS-COCO, PASCAL VOC 2007, NUS-WIDE) have positives
for every class, so there all three policies give the same number and ``"ignore"`` reproduces the
published protocol. What the reference code does when a class has no positives:

- The official ASL validation (``mAP`` in Alibaba-MIIL/ASL ``helper_functions.py``) divides by
  ``n_pos + 1e-8``, so the class gets AP = 0 and is counted in the mean: that is ``"zero"``.
- scikit-learn (since release 1.1): ``precision_recall_curve``
  warns ``UserWarning: No positive class found in y_true, recall is set to one for all
  thresholds`` and ``average_precision_score`` returns 0.0 for such a column; with
  ``average="macro"`` that 0 is counted in the mean: also ``"zero"``. Releases before 1.1
  returned NaN (division by zero) and a NaN macro mean.

So use ``no_positives="zero"`` to reproduce the ASL code's or scikit-learn's macro mean on a split
with empty classes.

**Threshold metrics.** CP, CR, CF1 (per-class averages) and OP, OR, OF1 (overall, all elements
pooled) in the ML-GCN convention; see :func:`threshold_metrics` for the exact 0/0 conventions.

**Names.** Every metric has one key, in lower case, wherever it is stored: the dictionaries
returned here, ``eval.json``, ``summary.json`` and ``compare.json`` (``map``, ``cp``, ``cr``,
``cf1``, ``op``, ``or``, ``of1``; ``_ema`` appended for the EMA model). :data:`METRIC_LABELS` maps
each key to the label that tables print (the papers' ``mAP``, ``CF1``, ...).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from asl_jax.losses import known_labels_mask

__all__ = [
    "METRIC_LABELS",
    "THRESHOLD_METRICS",
    "average_precision",
    "mean_average_precision",
    "threshold_metrics",
    "tune_thresholds",
]

#: The keys of :func:`threshold_metrics`, in the order papers print them.
THRESHOLD_METRICS = ("cp", "cr", "cf1", "op", "or", "of1")
#: Key -> the label tables print, for mAP and every threshold metric.
METRIC_LABELS = {"map": "mAP", **{key: key.upper() for key in THRESHOLD_METRICS}}

NoPositivesPolicy = Literal["ignore", "zero", "raise"]
_NO_POSITIVES_POLICIES = ("ignore", "zero", "raise")

# Work is done on blocks of about this many elements (columns for AP, rows for the threshold
# metrics), so memory beyond the inputs stays at a few hundred MB even at Open-Images size
# (125k x 9,605): 2**24 elements are 64 MB as float32, 128 MB as float64.
_CHUNK_ELEMENTS = 2**24


# --------------------------------------------------------------------------------------------
# Input validation.


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Converts to a NumPy array and checks that it is a non-empty ``[N, K]`` matrix."""
    try:
        arr = np.asarray(x)
    except Exception as e:  # e.g. a JAX array that is not fully addressable from this host.
        raise TypeError(
            f"{name} must be an array convertible with numpy.asarray (NumPy or JAX); got "
            f"{type(x).__name__}: {e}"
        ) from e
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape [N, K] (examples x classes); got shape "
            f"{arr.shape}. For a single class pass x[:, None]."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must have at least one example and one class; got shape {arr.shape}."
        )
    return arr


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices of about ``_CHUNK_ELEMENTS`` elements each."""
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _first_bad(bad: np.ndarray, offset: int) -> tuple[int, int]:
    """(row, column) of the first True of a 2-D block, rows shifted by ``offset``."""
    row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row) + offset, int(col)


def _check_scores(x: Any, name: str) -> np.ndarray:
    """Real-valued, finite ``[N, K]`` scores; half-precision floats are widened to float32."""
    arr = _as_matrix(x, name)
    dtype = arr.dtype
    if dtype.kind == "b":
        raise TypeError(
            f"{name} must be real-valued (float or int); got bool. "
            "Did you swap the scores and the labels?"
        )
    if dtype.kind in "iu":
        return arr  # Sorting and comparing integers is exact; no conversion needed.
    # `jnp.issubdtype` also recognises bfloat16 / float8 (ml_dtypes), which NumPy does not.
    if dtype.kind != "f" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be real-valued (float or int); got dtype {dtype}.")
    if dtype.itemsize < 4:
        # float16 / bfloat16 / float8 -> float32 is exact (ties are preserved) and NumPy sorts
        # and compares float32 natively.
        arr = arr.astype(np.float32)
    for rows in _row_blocks(*arr.shape):
        finite = np.isfinite(arr[rows])
        if not finite.all():
            r, c = _first_bad(~finite, rows.start)
            count = sum(
                int(np.count_nonzero(~np.isfinite(arr[b]))) for b in _row_blocks(*arr.shape)
            )
            raise ValueError(
                f"{name} must be finite; found {count} non-finite value(s), the first at "
                f"[{r}, {c}] = {arr[r, c]}."
            )
    return arr


def _check_labels(x: Any, name: str = "labels") -> np.ndarray:
    """``[N, K]`` labels: 1 positive, 0 negative, -1 unknown (bool, or numbers); unconverted."""
    arr = _as_matrix(x, name)
    dtype = arr.dtype
    if dtype.kind == "b":
        return arr
    if dtype.kind not in "iuf" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be binary (bool, or numbers equal to 0 or 1; -1 = unknown); got dtype "
            f"{dtype}."
        )
    if dtype.kind not in "iuf":
        arr = arr.astype(np.float32)  # bfloat16 & co.: 0, 1 and -1 are exact.
    for rows in _row_blocks(*arr.shape):
        block = arr[rows]
        bad = (block != 0) & (block != 1) & (block != -1)
        if bad.any():
            r, c = _first_bad(bad, rows.start)
            raise ValueError(
                f"{name} must be binary (0 or 1, or bool; -1 = unknown); found {arr[r, c]} at "
                f"[{r}, {c}]."
            )
    return arr


def _known_entries(labels: np.ndarray, where: Any) -> np.ndarray | None:
    """The ``[N, K]`` mask of known entries (``where`` and labels != -1); None if all are known.

    ``labels`` passed :func:`_check_labels` (entries 0, 1 or -1): -1 is their only unknown value.
    """
    known = None
    if where is not None:
        known = np.asarray(where)
        if known.dtype != np.bool_:
            raise TypeError(f"where must be a boolean [N, K] mask; got dtype {known.dtype}.")
        if known.shape != labels.shape:
            raise ValueError(
                f"where must have the shape of labels {labels.shape}; got {known.shape}."
            )
    if labels.dtype.kind != "b":
        unknown = ~known_labels_mask(labels)
        if unknown.any():
            known = ~unknown if known is None else known & ~unknown
    return None if known is None or known.all() else known


def _check_same_shape(scores: np.ndarray, labels: np.ndarray, scores_name: str) -> None:
    if scores.shape != labels.shape:
        raise ValueError(
            f"{scores_name} and labels must have the same shape [N, K]; got {scores_name} "
            f"{scores.shape} and labels {labels.shape}."
        )


def _check_policy(no_positives: Any) -> None:
    if not isinstance(no_positives, str) or no_positives not in _NO_POSITIVES_POLICIES:
        raise ValueError(
            f"no_positives must be one of {_NO_POSITIVES_POLICIES}; got {no_positives!r}."
        )


def _format_indices(indices: np.ndarray, limit: int = 20) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f", ... ({indices.size} in all)" if indices.size > limit else ""
    return f"[{shown}{more}]"


# --------------------------------------------------------------------------------------------
# Average precision.


def _average_precision_block(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AP of each row of a ``[c, N]`` block (rows = classes); NaN for rows without positives.

    For a positive example ``i`` with score ``s_i`` the precision at its threshold is
    ``#{positives with s >= s_i} / #{examples with s >= s_i}``: counting with ``>=`` puts a
    whole tie group at one threshold, exactly scikit-learn's curve. AP is the mean of that
    precision over the positives. The O(N log N) work, sorting every row, is one batched
    ``np.sort`` call; the loop below is over classes and only binary-searches each class's P
    positives (O(P log N)), because ``np.searchsorted`` has no batched form. Sorting values and
    searching was 2-5x faster here than ``argsort`` + gathering labels + cumulative sums.
    """
    num_classes, n = scores.shape
    # Positive scores, ascending, taken before the rows are sorted in place.
    pos_sorted = [np.sort(scores[k][positive[k]]) for k in range(num_classes)]
    scores.sort(axis=1)  # `scores` is a private copy.
    ap = np.full(num_classes, np.nan, dtype=np.float64)
    for k, pos in enumerate(pos_sorted):
        if pos.size == 0:
            continue
        n_ge = n - np.searchsorted(scores[k], pos, side="left")  # examples with s >= s_i
        p_ge = pos.size - np.searchsorted(pos, pos, side="left")  # positives with s >= s_i
        ap[k] = np.sum(p_ge / n_ge, dtype=np.float64) / pos.size
    return ap


def _transposed_columns(x: np.ndarray, cols: slice, dtype: np.dtype) -> np.ndarray:
    """A new C-ordered ``[c, N]`` array holding ``x[:, cols].T`` (converted to ``dtype``).

    Copied in tiles of rows: a single strided transpose of a wide ``[N, K]`` array thrashes the
    cache and was 3-4x slower at Open-Images size. Always a fresh array, which the caller may
    sort in place (``np.ascontiguousarray`` would return a view of a Fortran-ordered input).
    """
    n = x.shape[0]
    out = np.empty((cols.stop - cols.start, n), dtype=dtype)
    for start in range(0, n, 512):
        stop = min(start + 512, n)
        tile = x[start:stop, cols]
        out[:, start:stop] = (tile != 0).T if dtype == np.bool_ else tile.T
    return out


def _per_class_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n, num_classes = scores.shape
    ap = np.empty(num_classes, dtype=np.float64)
    width = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, num_classes, width):
        cols = slice(start, min(start + width, num_classes))
        # Every class becomes a contiguous row: fast to sort, and ours to sort in place.
        block = _transposed_columns(scores, cols, scores.dtype)
        positive = _transposed_columns(labels, cols, np.dtype(np.bool_))
        ap[cols] = _average_precision_block(block, positive)
    return ap


def average_precision(
    scores: Any,
    labels: Any,
    *,
    where: Any = None,
    no_positives: NoPositivesPolicy = "ignore",
) -> np.ndarray:
    r"""Per-class (non-interpolated) average precision of a multi-label prediction.

    For class :math:`k` with positive set :math:`\mathcal{P}_k` and scores :math:`s_{ik}`:

    .. math::
        \mathrm{AP}_k = \frac{1}{|\mathcal{P}_k|} \sum_{i \in \mathcal{P}_k}
        \frac{|\{j \in \mathcal{P}_k : s_{jk} \ge s_{ik}\}|}{|\{j : s_{jk} \ge s_{ik}\}|}

    i.e. :math:`\sum_n (R_n - R_{n-1}) P_n` over the distinct score thresholds :math:`n`. Because
    of the :math:`\ge`, tied scores form one threshold: the result does not depend on the order of
    the examples and equals :func:`sklearn.metrics.average_precision_score` applied to each
    column. Sorting is batched over classes in NumPy and accumulations are float64 (COCO size,
    40k x 80, takes a fraction of a second; Open-Images size, 125k x 9,605, is limited by sorting
    1.2e9 numbers, in column blocks of bounded memory).

    **Partial labels** (Open Images: a label is positive, negative or unknown): an unknown entry
    (``where`` False, or label -1) is left out of its class's ranking, so :math:`\mathrm{AP}_k`
    is the AP over the known entries of class :math:`k` (scikit-learn on those entries). It is
    done by giving unknown entries the score :math:`-\infty` and a negative label: they then
    rank below every known entry and are never counted in a precision.

    Args:
      scores: ``[N, K]`` real scores (probabilities or logits: only their order matters), NumPy or
        JAX, finite.
      labels: ``[N, K]`` binary labels (bool, or numbers equal to 0 or 1), same shape; -1 marks
        an unknown label.
      where: optional boolean ``[N, K]`` mask, True where the label is known (combined with the
        -1 labels). Unknown entries are left out of their class's AP.
      no_positives: what to do with a class that has no (known) positive label: ``"ignore"``
        (default) reports NaN for it, ``"zero"`` reports 0, ``"raise"`` raises. See the module
        docstring for why ``"ignore"`` is the default and what ASL's code and scikit-learn do.

    Returns:
      float64 array of shape ``[K]`` with the AP of every class, in :math:`[0, 1]` (NaN for the
      ignored classes).

    Raises:
      ValueError: bad shapes, non-binary labels, non-finite scores, an unknown policy, or (with
        ``no_positives="raise"``) a class without positives.
      TypeError: inputs that are not real-valued arrays.

    Examples:
      >>> import numpy as np
      >>> from asl_jax.metrics import average_precision
      >>> scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.7], [0.1, 0.2]])
      >>> labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
      >>> average_precision(scores, labels)  # class 1 has no positive label
      array([0.83333333,        nan])
      >>> average_precision(scores, labels, no_positives="zero")
      array([0.83333333, 0.        ])

    References:
      Ridnik et al., `Asymmetric Loss For Multi-Label Classification
      <https://arxiv.org/abs/2009.14119>`_, ICCV 2021 (mAP protocol of its validation code).
    """
    _check_policy(no_positives)
    scores = _check_scores(scores, "scores")
    labels = _check_labels(labels)
    _check_same_shape(scores, labels, "scores")
    known = _known_entries(labels, where)
    if known is not None:
        if scores.dtype.kind in "iu":
            scores = scores.astype(np.float64)
        scores = np.where(known, scores, -np.inf)
        labels = known & (labels == 1)
    ap = _per_class_ap(scores, labels)
    empty = np.flatnonzero(np.isnan(ap))
    if empty.size:
        if no_positives == "raise":
            raise ValueError(
                f"labels has no positive example for class(es) {_format_indices(empty)}: their "
                "average precision is undefined. Pass no_positives='ignore' to leave them out of "
                "the mean or no_positives='zero' to count them as AP = 0."
            )
        if no_positives == "zero":
            ap[empty] = 0.0
    return ap


def mean_average_precision(
    scores: Any,
    labels: Any,
    *,
    where: Any = None,
    no_positives: NoPositivesPolicy = "ignore",
) -> float:
    r"""Mean average precision (mAP) over classes, as a fraction in :math:`[0, 1]`.

    .. math::
        \mathrm{mAP} = \frac{1}{|\mathcal{K}|} \sum_{k \in \mathcal{K}} \mathrm{AP}_k

    with :math:`\mathrm{AP}_k` as in :func:`average_precision` and :math:`\mathcal{K}` the classes
    that have at least one positive label (``no_positives="ignore"``) or all classes
    (``"zero"``, empty classes counting 0). Papers print :math:`100 \cdot \mathrm{mAP}`.

    Args:
      scores: ``[N, K]`` real scores, NumPy or JAX, finite.
      labels: ``[N, K]`` binary labels, same shape (-1 = unknown).
      where: optional boolean ``[N, K]`` mask of the known labels; see :func:`average_precision`.
      no_positives: ``"ignore"`` (default), ``"zero"`` or ``"raise"``; see
        :func:`average_precision`.

    Returns:
      The mean AP as a Python float. With ``"zero"`` and no positive label at all it is 0.0.

    Raises:
      ValueError: as :func:`average_precision`; also when, under ``"ignore"``, no class has a
        positive label (the mean of nothing is undefined).
      TypeError: inputs that are not real-valued arrays.

    Examples:
      >>> import numpy as np
      >>> from asl_jax.metrics import mean_average_precision
      >>> scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.7], [0.1, 0.2]])
      >>> labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
      >>> # Class 1's positive ties with a negative at 0.7: one threshold, precision 1/2.
      >>> round(mean_average_precision(scores, labels), 4)  # (5/6 + 1/2) / 2
      0.6667

    References:
      Ridnik et al., `Asymmetric Loss For Multi-Label Classification
      <https://arxiv.org/abs/2009.14119>`_, ICCV 2021.
    """
    ap = average_precision(scores, labels, where=where, no_positives=no_positives)
    counted = ap[~np.isnan(ap)]
    if counted.size == 0:
        raise ValueError(
            "mean_average_precision is undefined: no class has a positive label in labels "
            f"(shape {np.shape(labels)}), and no_positives='ignore' leaves every class out."
        )
    return float(np.mean(counted, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Threshold metrics.


def _top_k_mask(probs: np.ndarray, k: int) -> np.ndarray:
    """True for the ``k`` highest scores of each row; ties broken towards lower class index."""
    num_classes = probs.shape[1]
    kth = np.partition(probs, num_classes - k, axis=1)[:, num_classes - k, None]  # k-th largest
    above = probs > kth
    at = probs == kth
    # Take from the tie group at the k-th value only as many as are still needed, in class order,
    # so exactly k classes are chosen and the choice is deterministic.
    needed = k - np.count_nonzero(above, axis=1, keepdims=True)
    return above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= needed))


def _real_scalar(value: Any, name: str) -> float:
    """A Python float from a real number, NumPy scalar or 0-d NumPy/JAX array (not bool)."""
    scalar = isinstance(value, numbers.Real) or (hasattr(value, "dtype") and np.ndim(value) == 0)
    dtype = np.asarray(value).dtype if scalar else None
    if dtype is None or not (dtype.kind in "iuf" or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r}.")
    return float(value)


def _check_threshold(threshold: Any, num_classes: int) -> float | np.ndarray:
    """A real scalar, or a ``[K]`` array of real numbers (one threshold per class); no NaN."""
    if np.ndim(threshold) == 1:
        values = np.asarray(threshold)
        if not (values.dtype.kind in "iuf" or jnp.issubdtype(values.dtype, jnp.floating)):
            raise TypeError(f"threshold must be real; got dtype {values.dtype}.")
        if values.shape != (num_classes,):
            raise ValueError(
                f"threshold must be a number or one per class, shape ({num_classes},); got shape "
                f"{values.shape}."
            )
        values = values.astype(np.float64)
        if np.isnan(values).any():
            bad = _format_indices(np.flatnonzero(np.isnan(values)))
            raise ValueError(f"threshold must not be NaN; it is for class(es) {bad}.")
        return values
    value = _real_scalar(threshold, "threshold")
    if np.isnan(value):
        raise ValueError("threshold must not be NaN.")
    return value


def _safe_ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den in float64, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def threshold_metrics(
    probs: Any,
    labels: Any,
    *,
    threshold: float = 0.5,
    top_k: int | None = None,
    where: Any = None,
) -> dict[str, float]:
    r"""Per-class and overall precision, recall and F1 at a threshold (the ML-GCN convention).

    Example :math:`i` is predicted positive for class :math:`k` iff :math:`p_{ik} \ge t` (and,
    with ``top_k``, :math:`k` is also among the ``top_k`` highest scores of example :math:`i`).
    With :math:`N^c_k` the correct positive predictions, :math:`N^p_k` the positive predictions
    and :math:`N^g_k` the positive labels of class :math:`k`:

    .. math::
        \mathrm{CP} = \frac{1}{K} \sum_k \frac{N^c_k}{N^p_k}, \quad
        \mathrm{CR} = \frac{1}{K} \sum_k \frac{N^c_k}{N^g_k}, \quad
        \mathrm{CF1} = \frac{2\,\mathrm{CP}\cdot\mathrm{CR}}{\mathrm{CP} + \mathrm{CR}}

        \mathrm{OP} = \frac{\sum_k N^c_k}{\sum_k N^p_k}, \quad
        \mathrm{OR} = \frac{\sum_k N^c_k}{\sum_k N^g_k}, \quad
        \mathrm{OF1} = \frac{2\,\mathrm{OP}\cdot\mathrm{OR}}{\mathrm{OP} + \mathrm{OR}}

    CF1 is computed from the averaged CP and CR (not as a mean of per-class F1s), as in ML-GCN
    and the papers that copy its table. Every 0/0 is 0: a class with no positive prediction has
    precision 0 (ML-GCN's guard), a class with no positive label has recall 0 (ML-GCN divides by
    zero and reports NaN there), and an F1 with zero precision and recall is 0; all K classes
    stay in the means. ML-GCN's guard also adds 1 to the OP denominator per class without
    predictions; we do not (OP is exactly pooled precision). On benchmark splits, where every
    class has labels and predictions, both agree.

    Partial labels: an unknown entry (``where`` False, or label -1) is neither a prediction nor a
    label, so it enters none of the counts; with ``top_k`` it is not ranked either.

    ``top_k=k``: as ML-GCN's ``overall_topk``, a label must be among the k highest scores of its
    example **and** reach the threshold; pass ``threshold=0.0`` for the pure top-k ranking. Ties
    at the k-th score are broken towards the lower class index, so exactly k classes are ranked
    (``torch.topk`` breaks them arbitrarily).

    Args:
      probs: ``[N, K]`` probabilities in :math:`[0, 1]` (apply a sigmoid to logits first),
        NumPy or JAX. Compared with ``threshold`` in their own floating dtype (float32 for half
        precision), as PyTorch and NumPy compare an array with a Python scalar.
      labels: ``[N, K]`` binary labels (bool, or numbers equal to 0 or 1), same shape; -1 marks
        an unknown label.
      threshold: decision threshold, a real number (default 0.5), or one per class (a ``[K]``
        array, e.g. from :func:`tune_thresholds`).
      top_k: ``None`` (default) or an integer in ``[1, K]``.
      where: optional boolean ``[N, K]`` mask, True where the label is known.

    Returns:
      ``{"cp", "cr", "cf1", "op", "or", "of1"}`` (:data:`THRESHOLD_METRICS`) as Python floats in
      :math:`[0, 1]` (fractions; papers print them times 100).

    Raises:
      ValueError: bad shapes, non-binary labels, probabilities outside [0, 1] or non-finite,
        NaN threshold, ``top_k`` outside ``[1, K]``.
      TypeError: non-numeric inputs, a non-real threshold or a non-integer ``top_k``.

    Examples:
      >>> import numpy as np
      >>> from asl_jax.metrics import threshold_metrics
      >>> probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.8, 0.7]])
      >>> labels = np.array([[1, 0, 0], [0, 1, 1]])
      >>> m = threshold_metrics(probs, labels)  # class 1: 1 of its 2 predictions is right
      >>> {name: round(value, 4) for name, value in m.items()}
      {'cp': 0.8333, 'cr': 1.0, 'cf1': 0.9091, 'op': 0.75, 'or': 1.0, 'of1': 0.8571}
      >>> threshold_metrics(probs, labels, top_k=1)["or"]  # one label per image
      0.6666666666666666

    References:
      Chen et al., `Multi-Label Image Recognition with Graph Convolutional Networks
      <https://arxiv.org/abs/1904.03582>`_, CVPR 2019 (ML-GCN; the definitions and the top-3
      protocol).
      Ridnik et al., `Asymmetric Loss For Multi-Label Classification
      <https://arxiv.org/abs/2009.14119>`_, ICCV 2021.
    """
    probs = _check_scores(probs, "probs")
    labels = _check_labels(labels)
    _check_same_shape(probs, labels, "probs")
    known = _known_entries(labels, where)
    n, num_classes = probs.shape
    threshold = _check_threshold(threshold, num_classes)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise TypeError(f"top_k must be None or an integer; got {top_k!r}.")
        if not 1 <= top_k <= num_classes:
            raise ValueError(
                f"top_k must be in [1, K] = [1, {num_classes}] (K = classes); got {top_k}."
            )
        top_k = int(top_k)
    if probs.dtype.kind in "iu":
        probs = probs.astype(np.float64)
    lo, hi = float(np.min(probs)), float(np.max(probs))
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"probs must be probabilities in [0, 1]; got values in [{lo}, {hi}]. Apply a sigmoid "
            "to logits (jax.nn.sigmoid) first."
        )
    thr = np.asarray(threshold).astype(probs.dtype)  # one per class broadcasts over columns

    correct = np.zeros(num_classes, dtype=np.int64)  # N^c_k
    predicted = np.zeros(num_classes, dtype=np.int64)  # N^p_k
    positive = np.zeros(num_classes, dtype=np.int64)  # N^g_k
    for rows in _row_blocks(n, num_classes):
        p = probs[rows]
        y = labels[rows] == 1
        pred = p >= thr
        if known is not None:
            y &= known[rows]
            pred &= known[rows]
            p = np.where(known[rows], p, -np.inf)  # not ranked by top_k
        if top_k is not None and top_k < num_classes:
            pred &= _top_k_mask(p, top_k)
        correct += np.count_nonzero(pred & y, axis=0)
        predicted += np.count_nonzero(pred, axis=0)
        positive += np.count_nonzero(y, axis=0)

    cp = float(np.mean(_safe_ratio(correct, predicted)))
    cr = float(np.mean(_safe_ratio(correct, positive)))
    op = float(_safe_ratio(correct.sum(), predicted.sum()))
    or_ = float(_safe_ratio(correct.sum(), positive.sum()))
    values = (cp, cr, _f1(cp, cr), op, or_, _f1(op, or_))
    return dict(zip(THRESHOLD_METRICS, values, strict=True))


def tune_thresholds(
    probs: Any, labels: Any, *, where: Any = None, default: float = 0.5
) -> np.ndarray:
    r"""Per class, the threshold that maximises that class's F1 on the given data.

    For class :math:`k` the candidates are its distinct (known) probabilities :math:`t`, with
    example :math:`i` predicted positive iff :math:`p_{ik} \ge t` (as in
    :func:`threshold_metrics`), and

    .. math::
        \mathrm{F1}_k(t) = \frac{2\,\mathrm{TP}_k(t)}{\mathrm{TP}_k(t) + \mathrm{FP}_k(t)
        + |\mathcal{P}_k|}

    Ties go to the lower threshold (more recall for the same F1). A class without a known
    positive label gets ``default``: its F1 is 0 at every threshold, so nothing can be tuned.

    Thresholds tuned on a split make the threshold metrics of that same split optimistic: tune
    on one split and report on another.

    Args:
      probs: ``[N, K]`` probabilities in :math:`[0, 1]`, NumPy or JAX.
      labels: ``[N, K]`` binary labels, same shape (-1 = unknown).
      where: optional boolean ``[N, K]`` mask, True where the label is known; unknown entries are
        left out.
      default: the threshold of classes without known positives.

    Returns:
      float64 array ``[K]`` of thresholds, usable as ``threshold_metrics(..., threshold=...)``.

    Examples:
      >>> import numpy as np
      >>> from asl_jax.metrics import tune_thresholds
      >>> probs = np.array([[0.9, 0.2], [0.4, 0.3], [0.35, 0.1], [0.1, 0.6]])
      >>> labels = np.array([[1, 0], [1, 0], [0, 0], [0, 1]])
      >>> tune_thresholds(probs, labels)  # class 0: t = 0.4 catches both positives, F1 = 1
      array([0.4, 0.6])
    """
    default = _real_scalar(default, "default")
    probs = _check_scores(probs, "probs")
    labels = _check_labels(labels)
    _check_same_shape(probs, labels, "probs")
    known = _known_entries(labels, where)
    if known is None:
        known = np.ones(labels.shape, dtype=bool)
    thresholds = np.full(labels.shape[1], default, dtype=np.float64)
    for k in range(labels.shape[1]):
        scores = probs[known[:, k], k].astype(np.float64)
        positive = labels[known[:, k], k] == 1
        if positive.any():
            thresholds[k] = _best_f1_threshold(scores, positive)
    return thresholds


def _best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The lowest of the distinct ``scores`` at which F1 (predict ``s >= t``) is largest."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    true_pos = np.cumsum(positive)
    # The last index of each run of equal scores: a tie group is predicted all at once.
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    predicted = ends + 1
    f1 = 2 * true_pos[ends] / (predicted + positive.sum())
    best = np.flatnonzero(f1 == f1.max())[-1]  # descending scores: the last is the lowest
    return float(scores[ends[best]])
