"""Tests of asl_jax.training.statistics against scipy."""

import math

import numpy as np
import pytest

from asl_jax.training.statistics import mean_and_std, paired_difference, student_t_two_sided_p

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize(("t", "df"), [(0.0, 1), (0.7, 1), (-2.5, 2), (2.0, 4), (12.0, 9)])
def test_two_sided_p_matches_scipy(t, df):
    expected = 2 * scipy_stats.t.sf(abs(t), df)
    assert student_t_two_sided_p(t, df) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_difference_is_scipys_paired_t_test(seed, n):
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.9, 0.01, n)
    values = baseline + rng.normal(0.003, 0.004, n)
    got = paired_difference(values, baseline)
    reference = scipy_stats.ttest_rel(values, baseline)
    assert got["mean"] == pytest.approx(np.mean(values - baseline))
    assert got["t"] == pytest.approx(reference.statistic, rel=1e-9)
    assert got["p"] == pytest.approx(reference.pvalue, rel=1e-7)
    assert got["stderr"] == pytest.approx(scipy_stats.sem(values - baseline))
    assert got["n"] == n


@pytest.mark.parametrize(
    ("values", "baseline", "t", "p"),
    [([0.5, 0.6], [0.4, 0.5], math.inf, 0.0), ([0.5, 0.6], [0.5, 0.6], 0.0, 1.0)],
)
def test_identical_differences(values, baseline, t, p):
    got = paired_difference(values, baseline)
    assert got["stderr"] == 0.0 and got["t"] == t and got["p"] == p


def test_one_seed_has_a_difference_but_no_test():
    assert paired_difference([0.5], [0.25]) == {
        "mean": 0.25,
        "stderr": None,
        "t": None,
        "p": None,
        "n": 1,
    }


def test_mean_and_std():
    assert mean_and_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_and_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: paired_difference([1.0, 2.0], [1.0]), "same non-zero length"),
        (lambda: paired_difference([], []), "same non-zero length"),
        (lambda: mean_and_std([]), "non-empty"),
        (lambda: student_t_two_sided_p(1.0, 0), "df must be >= 1"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
