"""Every public definition of ``servers/``, ``protocol/`` and ``wire/`` states its contract
in a docstring.

Each module is parsed (``ast``, never imported); the test fails listing every module
without a docstring and every public definition without one: module-level functions and
classes, and the methods and properties of public classes (nested public classes too).
"Public" is a name not starting with ``_``, so dunder methods are left out. gRPC
servicer methods (``CreateRound``, ``Send``, ...) are not exempt: they are where a
caller's request is refused, so they say what they refuse. The generated stubs live in
``protos/``, outside the folders checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECKED = ("servers", "protocol", "wire")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, Definition]]:
    for node in body:
        if isinstance(node, Definition) and not node.name.startswith("_"):
            yield prefix + node.name, node
            if isinstance(node, ast.ClassDef):
                yield from _public(node.body, f"{prefix}{node.name}.")


def undocumented(source: str, name: str) -> list[str]:
    """``name:line qualified.name`` of each public definition in ``source`` that has no
    docstring (``name`` alone if the module itself has none)."""
    tree = ast.parse(source, filename=name)
    missing = [] if ast.get_docstring(tree) else [f"{name} (module)"]
    for qualname, node in _public(tree.body, ""):
        if not ast.get_docstring(node):
            missing.append(f"{name}:{node.lineno} {qualname}")
    return missing


def _modules() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))


def test_the_check_sees_what_is_missing() -> None:
    source = '''"""A module."""

def documented() -> None:
    """Does nothing."""

def bare() -> None:
    pass

def _private() -> None:
    pass

class Public:
    """A class."""

    def method(self) -> None:
        pass

    @property
    def value(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Public()"

    class Inner:
        pass

class _Hidden:
    def method(self) -> None:
        pass
'''
    assert undocumented(source, "m.py") == [
        "m.py:6 bare",
        "m.py:15 Public.method",
        "m.py:19 Public.value",
        "m.py:25 Public.Inner",
    ]
    assert undocumented("x = 1\n", "e.py") == ["e.py (module)"]


@pytest.mark.parametrize("folder", CHECKED)
def test_the_checked_folders_hold_modules(folder: str) -> None:
    held = [p for p in _modules() if p.is_relative_to(ROOT / folder)]
    assert len(held) >= 5, f"{folder}/ moved? the docstring check would check nothing there"


@pytest.mark.parametrize("folder", CHECKED)
def test_every_public_definition_has_a_docstring(folder: str) -> None:
    missing = [
        problem
        for path in _modules()
        if path.is_relative_to(ROOT / folder)
        for problem in undocumented(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not missing, f"{len(missing)} public definitions without a docstring:\n" + "\n".join(
        missing
    )
