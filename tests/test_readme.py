"""The README is true: its Python blocks run as written, and its config reference is the table
generated from the typed config (every field, with its default, effect and meaning)."""

import contextlib
import io
import pathlib
import re

import pytest

from asl_jax.training.config import config_table

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_the_generated_table():
    """The table is generated from the typed config (``python -m asl_jax.training.config``):
    every field, its default, what a change does and its meaning, as declared."""
    section = README.read_text(encoding="utf-8").split("## Config reference", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert config_table() in section, (
        "README.md's config table differs from the config's declarations: replace it with the "
        "output of `python -m asl_jax.training.config`"
    )


def _python_blocks():
    """(first line number, code) of every ```python block of the README."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number + 1
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start - 1 : number - 1])))
            start = None
    assert start is None, f"README.md: the Python block of line {start} is not closed"
    return blocks


def test_readme_has_python_blocks():
    assert _python_blocks()


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"line{line}") for line, code in _python_blocks()],
)
def test_readme_python_block_runs_as_written(line, code):
    """Each block runs on its own, in a fresh namespace, as a user would paste it."""
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_examples_on_the_quick_start_run_name_no_fixed_step():
    """runs/default keeps only its last ``max_checkpoints_to_keep`` checkpoints and its best:
    an example with ``--step=N`` on it would fail after the quick start."""
    sources = {"README.md": README.read_text(encoding="utf-8")}
    for path in sorted((README.parent / "train").glob("*.py")):
        sources[f"train/{path.name}"] = path.read_text(encoding="utf-8")
    fixed = [
        f"{name}: {line.strip()}"
        for name, text in sources.items()
        for line in text.splitlines()
        if "--workdir=runs/default" in line and re.search(r"--step[= ]\d", line)
    ]
    assert not fixed, "\n".join(fixed)
