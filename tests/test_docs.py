"""The README and the documentation site are true: every Python block of the README and of
the guides runs as written, the config reference is the table generated from the typed config,
the site builds with ``mkdocs build --strict`` (no broken link, anchor or API reference), and the
README stays a front door: short, and linking every guide."""

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

from asl_jax.training.config import config_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The pages whose Python blocks run: the README and every Markdown page of the site.
PAGES = [README, *sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)]
#: The README fits about two screens.
README_MAX_LINES = 250


def _name(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


def test_config_reference_is_the_generated_table():
    """The table is generated from the typed config (``python -m asl_jax.training.config``):
    every field, its default, what a change does and its meaning, as declared."""
    page = DOCS / "guides" / "config.md"
    assert config_table() in page.read_text(encoding="utf-8"), (
        f"{_name(page)}'s config table differs from the config's declarations: replace it with "
        "the output of `python -m asl_jax.training.config`"
    )


def _python_blocks(page: pathlib.Path) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of a Markdown page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number + 1
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start - 1 : number - 1])))
            start = None
    assert start is None, f"{_name(page)}: the Python block of line {start} is not closed"
    return blocks


def test_readme_and_the_library_guide_have_python_blocks():
    assert _python_blocks(README) and _python_blocks(DOCS / "guides" / "library.md")


@pytest.mark.parametrize(
    ("page", "line", "code"),
    [
        pytest.param(page, line, code, id=f"{_name(page)}:{line}")
        for page in PAGES
        for line, code in _python_blocks(page)
    ],
)
def test_python_block_runs_as_written(page, line, code):
    """Each block runs on its own, in a fresh namespace, as a user would paste it."""
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{_name(page)}:{line}", "exec"), {"__name__": "__docs__"})


def test_examples_on_the_quick_start_run_name_no_fixed_step():
    """runs/default keeps only its last ``max_checkpoints_to_keep`` checkpoints and its best:
    an example with ``--step=N`` on it would fail after the quick start."""
    sources = {_name(page): page.read_text(encoding="utf-8") for page in PAGES}
    for path in sorted((ROOT / "train").glob("*.py")):
        sources[f"train/{path.name}"] = path.read_text(encoding="utf-8")
    fixed = [
        f"{name}: {line.strip()}"
        for name, text in sources.items()
        for line in text.splitlines()
        if "--workdir=runs/default" in line and re.search(r"--step[= ]\d", line)
    ]
    assert not fixed, "\n".join(fixed)


def test_readme_is_a_front_door_to_every_guide():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text))
    guides = {_name(p) for p in (DOCS / "guides").glob("*.md")} | {"docs/benchmarks.md"}
    assert guides <= linked, f"guides the README does not link: {sorted(guides - linked)}"
    missing = [path for path in linked if not (ROOT / path).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with every link, anchor and API reference resolved."""
    pytest.importorskip("mkdocs", reason="the docs test needs the docs extra")
    pytest.importorskip("mkdocstrings", reason="the docs test needs the docs extra")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "api" / "asl_jax.losses" / "index.html").is_file()
