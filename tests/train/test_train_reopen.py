"""Tests of train.reopen: what makes a directory a workdir that can be reopened."""

import pytest

from train.reopen import RunError, read_class_names


def test_class_names_come_from_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    assert read_class_names(str(tmp_path)) == ("cat", "dog", "bird")


def test_a_directory_without_classes_txt_is_not_a_workdir(tmp_path):
    with pytest.raises(RunError, match=r"has no classes\.txt"):
        read_class_names(str(tmp_path))
