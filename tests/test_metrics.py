"""Tests for asl_jax.metrics: AP and mAP against scikit-learn, threshold metrics against loops."""

import doctest
import warnings

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from asl_jax import metrics
from asl_jax.metrics import (
    average_precision,
    mean_average_precision,
    threshold_metrics,
    tune_thresholds,
)

METRIC_KEYS = ("cp", "cr", "cf1", "op", "or", "of1")


def _random_problem(seed, n=200, k=7, rate=0.2, decimals=None):
    """Scores correlated with binary labels; every class gets at least one positive."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < rate).astype(np.int32)
    labels[rng.integers(0, n, k), np.arange(k)] = 1
    scores = rng.random((n, k)) + 0.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


def _sklearn_per_class(scores, labels):
    return np.array(
        [average_precision_score(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    )


# ------------------------------------------------------------------------------------------------
# average_precision / mean_average_precision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_sklearn_untied(seed):
    scores, labels = _random_problem(seed)
    assert len(np.unique(scores)) == scores.size  # really untied
    ap = average_precision(scores, labels)
    assert isinstance(ap, np.ndarray)
    assert ap.shape == (labels.shape[1],)
    assert ap.dtype == np.float64
    np.testing.assert_allclose(ap, _sklearn_per_class(scores, labels), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        mean_average_precision(scores, labels),
        average_precision_score(labels, scores, average="macro"),
        rtol=1e-12,
    )


def test_map_matches_sklearn_at_coco_like_sparsity():
    # 80 classes, ~1% positives, float32 scores with ties, some classes without positives.
    rng = np.random.default_rng(14)
    labels = rng.random((2000, 80)) < rng.uniform(0.0, 0.02, 80)
    labels[:, :3] = False
    scores = np.round(rng.random((2000, 80)) + 0.4 * labels, 2).astype(np.float32)
    with pytest.warns(UserWarning, match="No positive class found in y_true"):
        expected_zero = average_precision_score(labels, scores, average="macro")
    has_pos = labels.any(axis=0)
    expected_ignore = average_precision_score(labels[:, has_pos], scores[:, has_pos], average=None)
    ap = average_precision(scores, labels)
    np.testing.assert_allclose(ap[has_pos], expected_ignore, rtol=1e-12)
    assert np.isnan(ap[~has_pos]).all()
    np.testing.assert_allclose(
        mean_average_precision(scores, labels), expected_ignore.mean(), rtol=1e-12
    )
    np.testing.assert_allclose(
        mean_average_precision(scores, labels, no_positives="zero"), expected_zero, rtol=1e-12
    )


def test_ap_matches_ranking_walk_on_untied_scores():
    # The textbook definition (as the ASL / ML-GCN helpers compute it): walk the ranking and
    # average the precision at the rank of every positive. Independent of sklearn.
    scores, labels = _random_problem(3, n=120, k=5)
    expected = []
    for k in range(labels.shape[1]):
        hits, precisions = 0, []
        for rank, i in enumerate(np.argsort(-scores[:, k]), start=1):
            if labels[i, k]:
                hits += 1
                precisions.append(hits / rank)
        expected.append(sum(precisions) / len(precisions))
    np.testing.assert_allclose(average_precision(scores, labels), expected, rtol=1e-12)


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_ap_matches_sklearn_heavily_tied(decimals):
    scores, labels = _random_problem(4, n=300, k=6, decimals=decimals)
    assert len(np.unique(scores)) < 250  # many ties
    np.testing.assert_allclose(
        average_precision(scores, labels), _sklearn_per_class(scores, labels), rtol=1e-12
    )


def test_ap_is_invariant_to_example_order_with_ties():
    scores, labels = _random_problem(5, n=150, k=4, decimals=1)
    perm = np.random.default_rng(0).permutation(scores.shape[0])
    np.testing.assert_allclose(
        average_precision(scores[perm], labels[perm]), average_precision(scores, labels), rtol=1e-14
    )
    np.testing.assert_allclose(
        average_precision(scores[::-1], labels[::-1]), average_precision(scores, labels), rtol=1e-14
    )


def test_ap_all_scores_tied_is_prevalence():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [0, 1]])
    scores = np.full(labels.shape, 0.3)
    np.testing.assert_allclose(average_precision(scores, labels), [2 / 5, 4 / 5], rtol=1e-15)
    np.testing.assert_allclose(
        average_precision(scores, labels), _sklearn_per_class(scores, labels), rtol=1e-15
    )


def test_ap_perfect_and_worst_ranking():
    n, n_pos = 50, 8
    y = np.zeros(n, dtype=np.int64)
    y[:n_pos] = 1
    perfect = np.linspace(1.0, 0.0, n)  # positives first
    worst = perfect[::-1].copy()  # positives last
    labels = np.stack([y, y, np.ones(n, np.int64)], axis=1)
    scores = np.stack([perfect, worst, worst], axis=1)
    ap = average_precision(scores, labels)
    worst_ap = np.mean([i / (n - n_pos + i) for i in range(1, n_pos + 1)])
    np.testing.assert_allclose(ap, [1.0, worst_ap, 1.0], rtol=1e-14)  # all positive -> 1
    np.testing.assert_allclose(ap, _sklearn_per_class(scores, labels), rtol=1e-14)


def test_ap_integer_and_float32_scores_match_sklearn():
    scores, labels = _random_problem(6, n=100, k=4)
    int_scores = (scores * 4).astype(np.int64)  # a few distinct levels, heavy ties
    np.testing.assert_allclose(
        average_precision(int_scores, labels), _sklearn_per_class(int_scores, labels), rtol=1e-14
    )
    f32 = np.round(scores, 2).astype(np.float32)
    np.testing.assert_allclose(
        average_precision(f32, labels), _sklearn_per_class(f32, labels), rtol=1e-14
    )


def test_ap_label_dtypes_are_equivalent():
    scores, labels = _random_problem(7, n=60, k=3)
    expected = average_precision(scores, labels)
    for as_dtype in (bool, np.uint8, np.float32, np.float64):
        np.testing.assert_array_equal(average_precision(scores, labels.astype(as_dtype)), expected)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_ap_does_not_modify_its_inputs(layout):
    scores, labels = _random_problem(13, n=30, k=4)
    scores = np.array(scores, order=layout)
    scores_before, labels_before = scores.copy(), labels.copy()
    average_precision(scores, labels)
    np.testing.assert_array_equal(scores, scores_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_ap_column_chunks_give_the_same_result(monkeypatch):
    scores, labels = _random_problem(8, n=40, k=9, decimals=1)
    expected = average_precision(scores, labels)
    # 50 elements per block -> one class per block at N = 40; 130 -> blocks of 3 classes.
    for chunk in (50, 130):
        monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk)
        np.testing.assert_array_equal(average_precision(scores, labels), expected)


def _with_empty_class():
    scores, labels = _random_problem(9, n=80, k=5)
    labels[:, 2] = 0
    return scores, labels


def test_no_positives_ignore_is_default():
    scores, labels = _with_empty_class()
    ap = average_precision(scores, labels)
    assert np.isnan(ap[2])
    assert not np.isnan(np.delete(ap, 2)).any()
    np.testing.assert_allclose(ap, average_precision(scores, labels, no_positives="ignore"))
    kept = [0, 1, 3, 4]
    np.testing.assert_allclose(
        mean_average_precision(scores, labels),
        average_precision_score(labels[:, kept], scores[:, kept], average="macro"),
        rtol=1e-12,
    )


def test_no_positives_zero_matches_sklearn_macro():
    scores, labels = _with_empty_class()
    ap = average_precision(scores, labels, no_positives="zero")
    assert ap[2] == 0.0
    # What the module docstring says about scikit-learn (1.1+): it warns, returns 0 for the
    # empty class and counts it in the macro mean.
    with pytest.warns(UserWarning, match="No positive class found in y_true"):
        sk_empty = average_precision_score(labels[:, 2], scores[:, 2])
    assert sk_empty == 0.0
    with pytest.warns(UserWarning, match="No positive class found in y_true"):
        sk_macro = average_precision_score(labels, scores, average="macro")
    np.testing.assert_allclose(
        mean_average_precision(scores, labels, no_positives="zero"), sk_macro, rtol=1e-12
    )


def test_no_positives_raise_names_the_classes():
    scores, labels = _with_empty_class()
    labels[:, 4] = 0
    with pytest.raises(ValueError, match=r"class\(es\) \[2, 4\]"):
        average_precision(scores, labels, no_positives="raise")
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        mean_average_precision(scores, labels, no_positives="raise")
    # Without empty classes "raise" is a no-op.
    scores, labels = _random_problem(10, n=30, k=3)
    np.testing.assert_array_equal(
        average_precision(scores, labels, no_positives="raise"), average_precision(scores, labels)
    )


def test_no_class_has_positives():
    scores = np.random.default_rng(0).random((10, 3))
    labels = np.zeros((10, 3), dtype=bool)
    assert np.isnan(average_precision(scores, labels)).all()
    with pytest.raises(ValueError, match="no class has a positive label"):
        mean_average_precision(scores, labels)
    assert mean_average_precision(scores, labels, no_positives="zero") == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1, 2\]"):
        mean_average_precision(scores, labels, no_positives="raise")


def test_raise_message_truncates_long_class_lists():
    labels = np.zeros((4, 30), dtype=bool)
    with pytest.raises(ValueError, match=r"\.\.\. \(30 in all\)"):
        average_precision(np.zeros((4, 30)), labels, no_positives="raise")


def test_mean_average_precision_returns_python_float_fraction():
    scores, labels = _random_problem(11)
    m = mean_average_precision(scores, labels)
    assert type(m) is float
    assert 0.0 <= m <= 1.0


def test_ap_accepts_jax_arrays():
    scores, labels = _random_problem(12, n=64, k=5)
    f32 = scores.astype(np.float32)
    expected = average_precision(f32, labels)
    np.testing.assert_allclose(
        average_precision(jnp.asarray(f32), jnp.asarray(labels, dtype=jnp.bool_)), expected
    )
    np.testing.assert_allclose(
        average_precision(jnp.asarray(f32), jnp.asarray(labels, dtype=jnp.float32)), expected
    )
    # bfloat16 scores (ties from the short mantissa) match sklearn on the widened values.
    bf16 = jnp.asarray(scores, dtype=jnp.bfloat16)
    widened = np.asarray(bf16).astype(np.float32)
    np.testing.assert_allclose(
        average_precision(bf16, labels), _sklearn_per_class(widened, labels), rtol=1e-14
    )
    assert mean_average_precision(jnp.asarray(f32), labels) == pytest.approx(
        mean_average_precision(f32, labels), rel=1e-15
    )


# ------------------------------------------------------------------------------------------------
# threshold_metrics


def _reference_threshold_metrics(probs, labels, threshold, top_k=None):
    """The ML-GCN definitions written out with loops (0/0 -> 0, ties in top-k -> lower index)."""
    n, k = probs.shape
    pred = [[probs[i][j] >= threshold for j in range(k)] for i in range(n)]
    if top_k is not None:
        for i in range(n):
            ranked = sorted(range(k), key=lambda j, i=i: (-probs[i][j], j))
            chosen = set(ranked[:top_k])
            pred[i] = [pred[i][j] and j in chosen for j in range(k)]
    correct, predicted, positive = [0] * k, [0] * k, [0] * k
    for i in range(n):
        for j in range(k):
            correct[j] += int(pred[i][j] and labels[i][j] == 1)
            predicted[j] += int(pred[i][j])
            positive[j] += int(labels[i][j] == 1)

    def ratio(a, b):
        return a / b if b else 0.0

    def f1(p, r):
        return 2 * p * r / (p + r) if p + r else 0.0

    cp = sum(ratio(correct[j], predicted[j]) for j in range(k)) / k
    cr = sum(ratio(correct[j], positive[j]) for j in range(k)) / k
    op = ratio(sum(correct), sum(predicted))
    or_ = ratio(sum(correct), sum(positive))
    return {"cp": cp, "cr": cr, "cf1": f1(cp, cr), "op": op, "or": or_, "of1": f1(op, or_)}


def _assert_metrics_close(got, expected):
    assert tuple(got) == METRIC_KEYS
    for key in METRIC_KEYS:
        assert type(got[key]) is float, key
        assert 0.0 <= got[key] <= 1.0, key
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-15, err_msg=key)


def _random_probs(seed, n=60, k=8, decimals=None):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < 0.3).astype(np.int64)
    probs = np.clip(rng.random((n, k)) * 0.8 + 0.3 * labels, 0.0, 1.0)
    if decimals is not None:
        probs = np.round(probs, decimals)
    return probs, labels


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_threshold_metrics_match_reference(threshold):
    probs, labels = _random_probs(0)
    _assert_metrics_close(
        threshold_metrics(probs, labels, threshold=threshold),
        _reference_threshold_metrics(probs, labels, threshold),
    )


def test_threshold_metrics_default_threshold_is_half_inclusive():
    probs = np.array([[0.5, 0.4999], [0.6, 0.5]])
    labels = np.array([[1, 1], [0, 1]])
    got = threshold_metrics(probs, labels)
    _assert_metrics_close(got, _reference_threshold_metrics(probs, labels, 0.5))
    assert got["or"] == pytest.approx(2 / 3)  # p == 0.5 counts as positive


def test_threshold_metrics_zero_division_conventions():
    # Class 0: no prediction (CP_0 = 0); class 1: no positive label (CR_1 = 0);
    # class 2: neither (both 0); class 3: perfect.
    probs = np.array([[0.1, 0.9, 0.2, 0.8], [0.2, 0.1, 0.3, 0.1]])
    labels = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])
    got = threshold_metrics(probs, labels)
    _assert_metrics_close(got, _reference_threshold_metrics(probs, labels, 0.5))
    assert got["cp"] == pytest.approx((0 + 0 + 0 + 1) / 4)
    assert got["cr"] == pytest.approx((0 + 0 + 0 + 1) / 4)
    assert got["op"] == pytest.approx(1 / 2)  # pooled: not ML-GCN's +1 per empty class
    assert got["or"] == pytest.approx(1 / 2)
    # Nothing predicted and nothing positive at all: every metric is 0, never NaN.
    none = threshold_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert none == dict.fromkeys(METRIC_KEYS, 0.0)


@pytest.mark.parametrize(("top_k", "threshold"), [(1, 0.5), (3, 0.5), (3, 0.0), (2, 0.4)])
def test_threshold_metrics_top_k_with_ties_match_reference(top_k, threshold):
    probs, labels = _random_probs(1, n=80, k=6, decimals=1)  # many ties at the k-th score
    _assert_metrics_close(
        threshold_metrics(probs, labels, threshold=threshold, top_k=top_k),
        _reference_threshold_metrics(probs, labels, threshold, top_k=top_k),
    )


def test_threshold_metrics_top_k_tie_break_is_lower_class_index():
    probs = np.array([[0.6, 0.9, 0.6, 0.6]])
    labels = np.array([[0, 0, 1, 1]])
    # Top-2 = class 1 and, of the tied classes 0/2/3, class 0: no positive label is recalled.
    assert threshold_metrics(probs, labels, top_k=2)["or"] == 0.0
    assert threshold_metrics(probs, labels, top_k=4)["or"] == 1.0


def test_threshold_metrics_top_k_equal_to_num_classes_is_plain_threshold():
    probs, labels = _random_probs(2)
    assert threshold_metrics(probs, labels, top_k=probs.shape[1]) == threshold_metrics(
        probs, labels
    )


def test_threshold_metrics_row_blocks_give_the_same_result(monkeypatch):
    probs, labels = _random_probs(3, n=50, k=7, decimals=1)
    expected = threshold_metrics(probs, labels, top_k=2)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)  # blocks of 2 rows
    assert threshold_metrics(probs, labels, top_k=2) == expected


def test_threshold_is_compared_in_the_probabilities_dtype():
    probs = np.array([[0.7, 0.2], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 1]])
    # float32(0.7) < 0.7 in float64, but the threshold is cast to float32 like the scores.
    assert threshold_metrics(probs, labels, threshold=0.7)["or"] == 1.0


def test_threshold_metrics_accept_jax_arrays():
    probs, labels = _random_probs(4)
    f32 = probs.astype(np.float32)
    expected = threshold_metrics(f32, labels, top_k=3)
    got = threshold_metrics(jnp.asarray(f32), jnp.asarray(labels, dtype=jnp.bool_), top_k=3)
    assert got == expected
    bf16 = jnp.asarray(probs, dtype=jnp.bfloat16)
    widened = np.asarray(bf16).astype(np.float32)
    _assert_metrics_close(
        threshold_metrics(bf16, labels), _reference_threshold_metrics(widened, labels, 0.5)
    )
    chex.assert_trees_all_close(
        threshold_metrics(jnp.asarray(probs), labels),
        threshold_metrics(probs.astype(np.float32), labels),
    )


# ------------------------------------------------------------------------------------------------
# Errors


_S = np.full((4, 3), 0.5)
_Y = np.zeros((4, 3), dtype=np.int64)
_Y[0] = 1

_ERRORS_SCORES_LABELS = [
    (np.full(4, 0.5), _Y[:, 0], ValueError, r"scores must be a 2-D array .* got shape \(4,\)"),
    (np.full((2, 2, 3), 0.5), _Y, ValueError, "scores must be a 2-D array"),
    (_S, _Y[:, 0], ValueError, r"labels must be a 2-D array .* got shape \(4,\)"),
    (_S, _Y[:3], ValueError, r"same shape .* scores \(4, 3\) and labels \(3, 3\)"),
    (_S, _Y.T, ValueError, "same shape"),
    (np.zeros((0, 3)), np.zeros((0, 3)), ValueError, "at least one example"),
    (np.zeros((4, 0)), np.zeros((4, 0)), ValueError, "at least one example and one class"),
    (_S, np.where(_Y == 1, 2, 0), ValueError, r"labels must be binary .* 2 at \[0, 0\]"),
    (_S, np.where(_Y == 1, -2, 0), ValueError, r"labels must be binary .*-1 = unknown.* -2 at"),
    (_S, np.full((4, 3), 0.5), ValueError, "labels must be binary"),
    (_S, np.full((4, 3), np.nan), ValueError, "labels must be binary"),
    (_S, np.full((4, 3), "1"), TypeError, "labels must be binary .* dtype <U1"),
    (_S, np.zeros((4, 3), dtype=complex), TypeError, "labels must be binary"),
    (np.where(_Y == 1, np.nan, 0.5), _Y, ValueError, r"scores must be finite; found 3 .*\[0, 0\]"),
    (np.where(_Y == 1, -np.inf, 0.5), _Y, ValueError, "scores must be finite"),
    (_S > 0, _Y, TypeError, "scores must be real-valued .* bool"),
    (_S.astype(complex), _Y, TypeError, "scores must be real-valued .* complex"),
    (np.full((4, 3), "x"), _Y, TypeError, "scores must be real-valued"),
]


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (average_precision, "scores"),
        (mean_average_precision, "scores"),
        (threshold_metrics, "probs"),
    ],
)
@pytest.mark.parametrize(("scores", "labels", "error", "match"), _ERRORS_SCORES_LABELS)
def test_input_errors(fn, name, scores, labels, error, match):
    with pytest.raises(error, match=match.replace("scores", name)):
        fn(scores, labels)


@pytest.mark.parametrize(
    ("where", "error", "match"),
    [
        (np.ones((4, 3)), TypeError, "where must be a boolean .* float64"),
        (np.ones((3, 3), dtype=bool), ValueError, r"where must have the shape of labels \(4, 3\)"),
    ],
)
@pytest.mark.parametrize("fn", [average_precision, mean_average_precision, threshold_metrics])
def test_bad_where_mask(fn, where, error, match):
    with pytest.raises(error, match=match):
        fn(_S, _Y, where=where)


def test_non_finite_score_in_a_later_block_is_located(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 6)  # 2 rows per block
    scores = np.full((7, 3), 0.5)
    scores[5, 1] = np.inf
    with pytest.raises(ValueError, match=r"found 1 non-finite value\(s\), the first at \[5, 1\]"):
        average_precision(scores, _Y[[0, 1, 2, 3, 0, 1, 2]])
    labels = np.zeros((7, 3))
    labels[6, 2] = 3
    with pytest.raises(ValueError, match=r"3\.0 at \[6, 2\]"):
        average_precision(np.full((7, 3), 0.5), labels)


@pytest.mark.parametrize("policy", ["IGNORE", "skip", None, 0])
def test_unknown_no_positives_policy(policy):
    for fn in (average_precision, mean_average_precision):
        with pytest.raises(ValueError, match="no_positives must be one of"):
            fn(_S, _Y, no_positives=policy)


@pytest.mark.parametrize(
    ("probs", "match"),
    [(np.full((4, 3), 1.5), r"probabilities in \[0, 1\]"), (np.full((4, 3), -0.1), "sigmoid")],
)
def test_threshold_metrics_rejects_non_probabilities(probs, match):
    with pytest.raises(ValueError, match=match):
        threshold_metrics(probs, _Y)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": float("nan")}, ValueError, "threshold must not be NaN"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a real number"),
        ({"threshold": True}, TypeError, "threshold must be a real number"),
        ({"threshold": None}, TypeError, "threshold must be a real number"),
        ({"threshold": np.bool_(True)}, TypeError, "threshold must be a real number"),
        ({"threshold": np.array([0.5])}, ValueError, r"one per class, shape \(3,\)"),
        ({"threshold": jnp.array(0.5 + 1j)}, TypeError, "threshold must be a real number"),
        ({"top_k": 0}, ValueError, r"top_k must be in \[1, K\] = \[1, 3\]"),
        ({"top_k": 4}, ValueError, r"top_k must be in \[1, K\]"),
        ({"top_k": 1.5}, TypeError, "top_k must be None or an integer"),
        ({"top_k": True}, TypeError, "top_k must be None or an integer"),
    ],
)
def test_threshold_metrics_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        threshold_metrics(_S, _Y, **kwargs)


def test_numpy_and_jax_scalar_arguments_are_accepted():
    expected = threshold_metrics(_S, _Y, threshold=0.5, top_k=2)
    assert threshold_metrics(_S, _Y, threshold=np.float32(0.5), top_k=np.int64(2)) == expected
    assert threshold_metrics(_S, _Y, threshold=jnp.float32(0.5), top_k=2) == expected
    assert threshold_metrics(_S, _Y, threshold=jnp.asarray(0.5, jnp.bfloat16), top_k=2) == expected
    assert threshold_metrics(_S, _Y, threshold=np.array(1), top_k=2)["op"] == 0.0


def test_docstring_examples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------------------------
# Partial labels: unknown entries (where=False, or label -1) are left out of every metric.


def _partial_problem(seed, n=300, k=6, unknown_rate=0.3, decimals=None):
    scores, labels = _random_problem(seed, n=n, k=k, decimals=decimals)
    known = np.random.default_rng(seed + 100).random((n, k)) >= unknown_rate
    known[labels.argmax(0), np.arange(k)] = True  # every class keeps a known positive
    return scores, labels, known


def _sklearn_known(scores, labels, known):
    return np.array(
        [
            average_precision_score(labels[known[:, c], c], scores[known[:, c], c])
            for c in range(labels.shape[1])
        ]
    )


@pytest.mark.parametrize("as_minus_one", [False, True], ids=["where", "label-1"])
@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, None), (2, 1)])
def test_ap_of_partial_labels_is_sklearn_on_the_known_entries(seed, decimals, as_minus_one):
    scores, labels, known = _partial_problem(seed, decimals=decimals)
    expected = _sklearn_known(scores, labels, known)
    if as_minus_one:
        got = average_precision(scores, np.where(known, labels, -1))
        got_map = mean_average_precision(scores, np.where(known, labels, -1))
    else:
        got = average_precision(scores, labels, where=known)
        got_map = mean_average_precision(scores, labels, where=known)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got_map == pytest.approx(np.mean(expected), rel=1e-12)
    # Masking changes the result: the test would notice a mask that is ignored.
    assert not np.allclose(average_precision(scores, labels), expected)


def test_ap_of_partial_labels_with_integer_scores():
    scores, labels, known = _partial_problem(3)
    ranks = np.argsort(np.argsort(scores, axis=0), axis=0).astype(np.int32)
    np.testing.assert_allclose(
        average_precision(ranks, labels, where=known), _sklearn_known(ranks, labels, known)
    )


def test_a_class_without_known_positives_follows_the_policy():
    scores, labels, known = _partial_problem(4)
    known[labels[:, 2] == 1, 2] = False
    assert np.isnan(average_precision(scores, labels, where=known)[2])
    assert average_precision(scores, labels, where=known, no_positives="zero")[2] == 0.0
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        average_precision(scores, labels, where=known, no_positives="raise")


def _sklearn_threshold_metrics(probs, labels, known, threshold):
    from sklearn.metrics import precision_score, recall_score

    pred = probs >= threshold
    cols = range(labels.shape[1])
    kw = {"zero_division": 0}
    cp = np.mean(
        [precision_score(labels[known[:, c], c], pred[known[:, c], c], **kw) for c in cols]
    )
    cr = np.mean([recall_score(labels[known[:, c], c], pred[known[:, c], c], **kw) for c in cols])
    op = precision_score(labels[known], pred[known], **kw)
    or_ = recall_score(labels[known], pred[known], **kw)

    def f1(p, r):
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    return dict(zip(METRIC_KEYS, (cp, cr, f1(cp, cr), op, or_, f1(op, or_)), strict=True))


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("as_minus_one", [False, True], ids=["where", "label-1"])
def test_threshold_metrics_of_partial_labels_match_sklearn(threshold, as_minus_one):
    scores, labels, known = _partial_problem(5)
    probs = scores / scores.max()
    if as_minus_one:
        got = threshold_metrics(probs, np.where(known, labels, -1), threshold=threshold)
    else:
        got = threshold_metrics(probs, labels, threshold=threshold, where=known)
    expected = _sklearn_threshold_metrics(probs, labels, known, threshold)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


def test_top_k_ranks_only_known_entries():
    probs = np.array([[0.9, 0.8, 0.1]])
    labels = np.array([[0, 1, 0]])
    known = np.array([[False, True, True]])
    # Class 0 would take the only top-1 slot; unknown, it leaves it to class 1.
    assert threshold_metrics(probs, labels, top_k=1, threshold=0.0)["or"] == 0.0
    assert threshold_metrics(probs, labels, top_k=1, threshold=0.0, where=known)["or"] == 1.0


# ------------------------------------------------------------------------------------------------
# Per-class thresholds: threshold_metrics with a [K] threshold, tune_thresholds.


def test_one_threshold_per_class_is_each_column_at_its_threshold():
    scores, labels = _random_problem(6)
    probs = scores / scores.max()
    per_class = np.linspace(0.2, 0.8, probs.shape[1])
    pred = probs >= per_class
    got = threshold_metrics(probs, labels, threshold=per_class)
    # Thresholding each column at its own value = predictions `pred` at a global 0.5.
    assert got == threshold_metrics(pred.astype(np.float64), labels, threshold=0.5)
    assert got != threshold_metrics(probs, labels, threshold=0.5)


@pytest.mark.parametrize(
    ("threshold", "error", "match"),
    [
        (np.full(2, 0.5), ValueError, r"one per class, shape \(3,\); got shape \(2,\)"),
        (np.array([0.5, np.nan, 0.5]), ValueError, r"NaN; it is for class\(es\) \[1\]"),
        (np.array(["a", "b", "c"]), TypeError, "threshold must be real"),
    ],
)
def test_bad_per_class_threshold(threshold, error, match):
    with pytest.raises(error, match=match):
        threshold_metrics(_S, _Y, threshold=threshold)


def _brute_force_thresholds(probs, labels, known, default):
    from sklearn.metrics import f1_score

    out = []
    for k in range(labels.shape[1]):
        p, y = probs[known[:, k], k], labels[known[:, k], k]
        if not y.any():
            out.append(default)
            continue
        candidates = np.unique(p)  # ascending: max() keeps the first, the lowest, of equal F1s
        f1 = [f1_score(y, p >= t) for t in candidates]
        out.append(candidates[int(np.argmax(f1))])
    return np.array(out)


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, 1), (2, 2)])
def test_tuned_thresholds_maximise_each_class_f1(seed, decimals):
    scores, labels, known = _partial_problem(seed, n=120, decimals=decimals)
    probs = scores / scores.max()
    got = tune_thresholds(probs, labels, where=known)
    np.testing.assert_array_equal(got, _brute_force_thresholds(probs, labels, known, 0.5))
    everything = np.ones_like(known)
    np.testing.assert_array_equal(
        tune_thresholds(probs, labels), _brute_force_thresholds(probs, labels, everything, 0.5)
    )
    tuned = threshold_metrics(probs, labels, threshold=tune_thresholds(probs, labels))
    assert tuned["cf1"] >= threshold_metrics(probs, labels)["cf1"]


def test_tuned_threshold_ties_go_to_the_lower_threshold():
    # F1 = 2/3 at t = 0.9 (1 of 2 positives, no false positive) and at t = 0.6 (both, two false).
    probs = np.array([[0.9], [0.8], [0.7], [0.6]])
    labels = np.array([[1], [0], [0], [1]])
    assert tune_thresholds(probs, labels)[0] == 0.6


def test_a_class_without_known_positives_keeps_the_default_threshold():
    probs = np.array([[0.9, 0.2], [0.4, 0.3]])
    labels = np.array([[1, 0], [0, -1]])
    np.testing.assert_array_equal(tune_thresholds(probs, labels, default=0.3), [0.9, 0.3])
