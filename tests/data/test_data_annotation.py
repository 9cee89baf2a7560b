"""Tests of asl_jax.data.annotation and of its use by create_source: what each simulated
annotation keeps and drops, that validation stays complete, and determinism across host counts."""

import numpy as np
import pytest
from absl.testing import parameterized

from asl_jax.data import BatchRequest, DataConfig, create_source
from asl_jax.data.annotation import ANNOTATIONS, annotate, drop_positives, simulate_missing_labels


def _labels(seed=0, shape=(300, 12), rate=0.25):
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


class DropPositivesTest(parameterized.TestCase):
    def test_drops_exactly_that_many_positives_and_nothing_else(self):
        clean = _labels()
        dropped = drop_positives(clean, 0.3, seed=5)
        assert clean.sum() - dropped.sum() == round(0.3 * clean.sum())
        assert np.all(dropped <= clean)  # only positives change, and only to 0

    def test_a_larger_fraction_drops_a_superset_and_the_seed_fixes_the_draw(self):
        clean = _labels()
        half, more = drop_positives(clean, 0.5, seed=5), drop_positives(clean, 0.75, seed=5)
        assert np.all(more <= half)
        np.testing.assert_array_equal(drop_positives(clean, 0.5, seed=5), half)
        assert not np.array_equal(drop_positives(clean, 0.5, seed=6), half)

    def test_fraction_must_be_below_one(self):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            drop_positives(_labels(), 1.0, seed=0)


class AnnotateTest(parameterized.TestCase):
    def test_complete_keeps_everything(self):
        clean = _labels()
        np.testing.assert_array_equal(annotate(clean, "complete", seed=0), clean)

    def test_positives_only_makes_every_other_label_unknown(self):
        clean = _labels()
        got = annotate(clean, "positives_only", seed=0)
        np.testing.assert_array_equal(got, np.where(clean == 1, 1.0, -1.0))

    def test_single_positive_keeps_one_true_positive_per_image(self):
        clean = _labels()
        got = annotate(clean, "single_positive", seed=3)
        has_positive = clean.sum(axis=1) > 0
        np.testing.assert_array_equal((got == 1).sum(axis=1), has_positive.astype(int))
        assert np.all(clean[got == 1] == 1) and np.all(np.isin(got, (1.0, -1.0)))
        # A random positive, not always the first: over the images with several positives, the
        # kept one is at another place than the first positive for some of them.
        several = clean.sum(axis=1) > 1
        first = clean[several].argmax(axis=1)
        assert np.any(got[several].argmax(axis=1) != first)

    @parameterized.named_parameters(("quarter", 0.25, 3), ("half", 0.5, 6), ("all", 1.0, 12))
    def test_random_partial_knows_that_fraction_of_each_image(self, fraction, per_image):
        clean = _labels()
        got = annotate(clean, "random_partial", seed=1, annotated_fraction=fraction)
        known = got >= 0
        np.testing.assert_array_equal(known.sum(axis=1), per_image)
        np.testing.assert_array_equal(got[known], clean[known])  # known labels are the truth
        assert known.sum(axis=0).min() > 0  # spread over the classes, not the first columns

    def test_fixed_per_class_knows_that_many_positives_and_negatives_per_class(self):
        clean = _labels(rate=0.1)
        got = annotate(clean, "fixed_per_class", seed=2, annotated_per_class=20)
        for k in range(clean.shape[1]):
            positives, negatives = int(clean[:, k].sum()), int((clean[:, k] == 0).sum())
            assert (got[:, k] == 1).sum() == min(20, positives)
            assert (got[:, k] == 0).sum() == min(20, negatives)
        known = got >= 0
        np.testing.assert_array_equal(got[known], clean[known])

    @parameterized.parameters(*ANNOTATIONS)
    def test_same_seed_same_labels(self, annotation):
        clean = _labels()
        first = simulate_missing_labels(clean, seed=7, drop_positive_fraction=0.2,
                                        annotation=annotation)  # fmt: skip
        again = simulate_missing_labels(clean, seed=7, drop_positive_fraction=0.2,
                                        annotation=annotation)  # fmt: skip
        np.testing.assert_array_equal(first, again)
        assert np.all(first[first >= 0] <= clean[first >= 0])  # never invents a positive

    @parameterized.named_parameters(
        (
            "partial_input",
            lambda: annotate(-_labels(), "positives_only", seed=0),
            "already partial",
        ),
        ("unknown_mode", lambda: annotate(_labels(), "most", seed=0), "expected one of complete"),
        (
            "zero_fraction",
            lambda: annotate(_labels(), "random_partial", seed=0, annotated_fraction=0.0),
            r"annotated_fraction must be in \(0, 1\]",
        ),
    )
    def test_bad_input(self, build, message):
        with pytest.raises(ValueError, match=message):
            build()


def _shapes(tmp_path, **fields):
    config = DataConfig(num_train=64, num_val=16, image_size=8, cache_dir=str(tmp_path), **fields)
    return create_source(config, seed=3)


def test_create_source_changes_only_the_train_labels(tmp_path):
    clean = _shapes(tmp_path)
    partial = _shapes(tmp_path, drop_positive_fraction=0.3, annotation="single_positive")
    train = partial.arrays("train")[1]
    expected = simulate_missing_labels(
        clean.arrays("train")[1], seed=3, drop_positive_fraction=0.3, annotation="single_positive"
    )
    np.testing.assert_array_equal(train, expected)
    np.testing.assert_array_equal(partial.arrays("val")[1], clean.arrays("val")[1])
    np.testing.assert_array_equal(partial.arrays("train")[0], clean.arrays("train")[0])
    assert set(np.unique(clean.arrays("val")[1])) <= {0.0, 1.0}


def test_same_labels_on_any_host_count(tmp_path):
    fields = dict(drop_positive_fraction=0.3, annotation="random_partial")
    whole = _shapes(tmp_path, **fields)
    one_host = next(whole.batches(BatchRequest.training(batch_size=16, seed=1)))["labels"]
    # Two hosts, each building its source from the config and reading its half of the batch.
    halves = [
        next(
            _shapes(tmp_path, **fields).batches(
                BatchRequest.training(batch_size=16, seed=1, process_index=i, process_count=2)
            )
        )["labels"]
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(halves), one_host)
    assert np.any(one_host < 0)


def test_folder_source_simulates_too(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'a b' if i % 2 else 'b c'}")
    (tmp_path / "train.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text("image,labels\n" + "\n".join(rows[:2]) + "\n")
    config = DataConfig(
        name="folder", path=str(tmp_path), image_size=8, annotation="positives_only"
    )
    source = create_source(config, seed=0)
    labels = source.labels("train")
    np.testing.assert_array_equal((labels == 1).sum(axis=1), 2)
    assert np.all(np.isin(labels, (1.0, -1.0)))
    assert set(np.unique(source.labels("val"))) == {0.0, 1.0}
