"""Tests of asl_jax.training.evaluation: masked metrics and the evaluation batch size."""

import numpy as np
import pytest

from asl_jax.metrics import average_precision, mean_average_precision, threshold_metrics
from asl_jax.training.config import Config
from asl_jax.training.evaluation import per_class_ap, split_metrics


def _data(seed=0, n=40, k=5):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, k))
    labels = (rng.random((n, k)) < 0.4).astype(np.float32)
    return probs, labels


def test_all_known_labels_give_the_library_metrics():
    probs, labels = _data()
    result = split_metrics(probs, labels, threshold=0.5)
    assert result["map"] == pytest.approx(mean_average_precision(probs, labels))
    for key, value in threshold_metrics(probs, labels, threshold=0.5).items():
        assert result[key] == pytest.approx(value)


def test_unknown_labels_are_left_out_of_each_class():
    probs, labels = _data(1)
    partial = labels.copy()
    partial[:10, 2] = -1
    ap = per_class_ap(probs, partial)
    np.testing.assert_allclose(ap[[0, 1, 3, 4]], average_precision(probs, labels)[[0, 1, 3, 4]])
    assert ap[2] == pytest.approx(average_precision(probs[10:, 2:3], labels[10:, 2:3])[0])
    assert split_metrics(probs, partial, threshold=0.5)["map"] == pytest.approx(np.mean(ap))


def test_unknown_labels_are_neither_hits_nor_misses():
    probs, labels = _data(2)
    partial = labels.copy()
    partial[:, 4] = -1
    result = split_metrics(probs, partial, threshold=0.5)
    # Class 4 has no known label: the overall counts are those of the other classes.
    expected = threshold_metrics(probs[:, :4], labels[:, :4], threshold=0.5)
    assert result["op"] == pytest.approx(expected["op"])
    assert result["or"] == pytest.approx(expected["or"])


@pytest.mark.parametrize(("eval_size", "train_size", "expected"), [(0, 64, 64), (128, 64, 128)])
def test_eval_batch_size(eval_size, train_size, expected):
    config = Config(eval_batch_size=eval_size, batch_size=train_size)
    assert config.evaluation_batch_size == expected


def test_unknown_labels_are_not_predictions_even_at_threshold_zero():
    probs, labels = _data(3)
    partial = labels.copy()
    partial[:, 4] = -1
    result = split_metrics(probs, partial, threshold=0.0)
    expected = threshold_metrics(probs[:, :4], labels[:, :4], threshold=0.0)
    assert result["op"] == pytest.approx(expected["op"])


def test_any_negative_label_is_unknown_and_a_nan_label_is_an_error():
    probs, labels = _data(4)
    minus_one, minus_two = labels.copy(), labels.copy()
    minus_one[:, 4] = -1
    minus_two[:, 4] = -2
    assert split_metrics(probs, minus_two, threshold=0.5) == split_metrics(
        probs, minus_one, threshold=0.5
    )
    corrupt = labels.copy()
    corrupt[3, 1] = np.nan
    with pytest.raises(ValueError, match="labels must be binary"):
        split_metrics(probs, corrupt, threshold=0.5)
