"""The README is true: its Python blocks run as written, and its config reference matches the
config schema (every field, with its default)."""

import contextlib
import io
import pathlib
import re

import pytest

from asl_jax.training.config import FIELDS, flatten
from train.configs.default import get_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A row of the config table: | `field` | `default` | meaning |, or two fields in one row.
ROW = re.compile(r"^\| (`[a-z_.]+`(?:, `[a-z_.]+`)*) \| (`.*?`(?:, `.*?`)*) \| .+ \|$")


def _readme_defaults():
    section = README.read_text(encoding="utf-8").split("## Config reference", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            names = re.findall(r"`([a-z_.]+)`", match.group(1))
            values = re.findall(r"`(.*?)`", match.group(2))
            assert len(names) == len(values), line
            rows.update(zip(names, values, strict=True))
    return rows


DEFAULTS = flatten(get_config())


def test_readme_lists_every_config_field():
    assert set(_readme_defaults()) == set(DEFAULTS) == set(FIELDS)


@pytest.mark.parametrize("field", sorted(DEFAULTS))
def test_readme_default_is_the_config_default(field):
    assert _readme_defaults().get(field) == repr(DEFAULTS[field])


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
