"""MkDocs hook: one API reference page per module of ``asl_jax``, found in the package tree.

Each page is ``::: asl_jax.module`` (mkdocstrings renders it from the docstrings); ``api/index.md``
lists them, and the nav's "API reference" section gets one entry per page. A new module gets
its page without an edit here; a private one (``_name``) gets none.
"""

from __future__ import annotations

import pathlib

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.nav import Navigation, Section
from mkdocs.structure.pages import Page

PACKAGE = "asl_jax"
ROOT = pathlib.Path(__file__).resolve().parents[2]


def modules() -> list[str]:
    """The dotted names of the package's public modules, packages first, sorted."""
    names = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        names.append(".".join(parts))
    return sorted(names, key=lambda name: (name.count("."), name))


def _page(name: str) -> str:
    return f"api/{name}.md"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """MkDocs event: adds the generated pages (``api/index.md`` and one per module)."""
    names = modules()
    index = ["# API reference", "", "Generated from the docstrings of every module:", ""]
    index += [f"- [`{name}`]({name}.md)" for name in names]
    files.append(File.generated(config, "api/index.md", content="\n".join(index) + "\n"))
    for name in names:
        files.append(File.generated(config, _page(name), content=f"# `{name}`\n\n::: {name}\n"))
    return files


def on_nav(nav: Navigation, config: MkDocsConfig, files: Files) -> Navigation:
    """MkDocs event: the nav entry of ``api/index.md`` becomes a section with every module."""
    for item in nav.items:
        if isinstance(item, Page) and item.file.src_uri == "api/index.md":
            pages = [item] + [
                Page(name, files.get_file_from_path(_page(name)), config) for name in modules()
            ]
            section = Section("API reference", pages)
            nav.items[nav.items.index(item)] = section
            nav.pages.extend(pages[1:])
    return nav
