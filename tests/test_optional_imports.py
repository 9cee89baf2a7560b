"""The suite passes without the optional extras (the quick start guide: torch, timm,
torchvision, TensorFlow, jax2onnx, onnxruntime, MkDocs).

Every test module is read as source (nothing is imported): a test that needs an optional package
must skip without it, i.e. call ``pytest.importorskip`` for it before importing it bare, itself or
through a helper of its module (or of ``tests.*``) that does; a bare import at module level needs
a module-level ``importorskip`` before it.
"""

from __future__ import annotations

import ast
import pathlib

TESTS = pathlib.Path(__file__).parent
#: The optional packages, each with those that installing it implies.
OPTIONAL = {
    "torch": {"torch"},
    "torchvision": {"torchvision", "torch"},
    "timm": {"timm", "torch"},
    "tensorflow": {"tensorflow"},
    "tensorflow_datasets": {"tensorflow_datasets", "tensorflow"},
    # The export extra (jax2onnx installs onnx and onnxruntime) and the docs extra.
    "jax2onnx": {"jax2onnx", "onnx", "onnxruntime"},
    "onnxruntime": {"onnxruntime"},
    "onnx": {"onnx"},
    "mkdocs": {"mkdocs"},
    "mkdocstrings": {"mkdocstrings"},
}


def _imported(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        roots = {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        roots = {node.module.split(".")[0]}
    else:
        return set()
    return roots & set(OPTIONAL)


def _skipped_for(node: ast.AST) -> set[str]:
    """The packages a ``pytest.importorskip("name")`` call makes sure of."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "importorskip"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return set(OPTIONAL.get(str(node.args[0].value).split(".")[0], set()))
    return set()


def _position(node: ast.AST) -> tuple[int, int]:
    return node.lineno, node.col_offset


class _Module:
    """The top-level functions of a test module and the ``tests.*`` names it imports."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.tree = ast.parse(source, name)
        self.functions = {
            n.name: n
            for n in self.tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.imports = {
            alias.asname or alias.name: (node.module, alias.name)
            for node in ast.walk(self.tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests")
            for alias in node.names
        }
        # Module-level statements, in order: guards and bare imports.
        self.guarded: set[str] = set()
        self.problems: list[str] = []
        for statement in self.tree.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for node in ast.walk(statement):
                self.guarded |= _skipped_for(node)
                missing = _imported(node) - self.guarded
                if missing:
                    self.problems.append(
                        f"{self.name}:{node.lineno}: imports {', '.join(sorted(missing))} at "
                        "module level without pytest.importorskip"
                    )


class _Suite:
    def __init__(self, sources: dict[str, str]):
        self.modules = {name: _Module(name, source) for name, source in sources.items()}
        self._memo: dict[tuple[str, str], tuple[set[str], set[str]]] = {}

    def _resolve(self, module: _Module, call: ast.Call) -> tuple[str, str] | None:
        if not isinstance(call.func, ast.Name):
            return None
        name = call.func.id
        if name in module.functions:
            return module.name, name
        if name in module.imports:
            target, original = module.imports[name]
            if target in self.modules and original in self.modules[target].functions:
                return target, original
        return None

    def effects(self, key: tuple[str, str]) -> tuple[set[str], set[str]]:
        """What a function makes sure of (anywhere in it) and what it needs unguarded."""
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = (set(), set())  # recursion: assume nothing
        module = self.modules[key[0]]
        events = []
        for node in ast.walk(module.functions[key[1]]):
            if _skipped_for(node):
                events.append((_position(node), _skipped_for(node), set()))
            elif _imported(node):
                events.append((_position(node), set(), _imported(node)))
            elif isinstance(node, ast.Call) and (callee := self._resolve(module, node)):
                guards, needs = self.effects(callee)
                events.append((_position(node), guards, needs))
        guarded, needed = set(module.guarded), set()
        for _, guards, needs in sorted(events, key=lambda e: e[0]):
            needed |= needs - guarded
            guarded |= guards
        self._memo[key] = (guarded, needed)
        return self._memo[key]


def _is_test_or_fixture(function: ast.FunctionDef) -> bool:
    if function.name.startswith("test_"):
        return True
    return any("fixture" in ast.unparse(d) for d in function.decorator_list)


def test_optional_packages_are_imported_only_after_importorskip():
    suite = _Suite(
        {
            ".".join(p.relative_to(TESTS.parent).with_suffix("").parts): p.read_text("utf-8")
            for p in sorted(TESTS.rglob("*.py"))
        }
    )
    problems = [p for m in suite.modules.values() for p in m.problems]
    for module in suite.modules.values():
        for name, function in module.functions.items():
            if not _is_test_or_fixture(function):
                continue
            _, needs = suite.effects((module.name, name))
            if needs:
                problems.append(
                    f"{module.name}:{function.lineno}: {name} imports "
                    f"{', '.join(sorted(needs))} without pytest.importorskip before"
                )
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_bare_import():
    """The check itself: a bare import inside a helper a test calls is found."""
    source = (
        "import pytest\n\n\ndef _helper():\n    import torch\n    return torch\n\n\n"
        "def test_guarded():\n    pytest.importorskip('torchvision')\n    _helper()\n\n\n"
        "def test_bare():\n    import torchvision\n    _helper()\n"
    )
    suite = _Suite({"tests.probe": source})
    module = suite.modules["tests.probe"]
    assert suite.effects((module.name, "test_guarded"))[1] == set()
    assert suite.effects((module.name, "test_bare"))[1] == {"torch", "torchvision"}
