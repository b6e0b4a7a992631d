"""What each package may import (docs/architecture.md, "Layout"), checked on the source.

Every module of the installed package is parsed and its imports resolved; the test
fails naming the module and the import that breaks a rule.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGE_DIRS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
    "setuptools"
]["package-dir"]

# package -> the mpcagg packages it may import (besides itself and mpcagg.v1 stubs where allowed)
MAY_IMPORT = {
    "mpcagg.mpc": set(),
    "mpcagg.protocol": {"mpcagg.mpc"},
    "mpcagg.wire": {"mpcagg.mpc", "mpcagg.protocol", "mpcagg.v1"},
    "mpcagg.servers": {"mpcagg.mpc", "mpcagg.protocol", "mpcagg.wire", "mpcagg.v1"},
    "mpcagg.clients": {"mpcagg.mpc", "mpcagg.protocol", "mpcagg.wire", "mpcagg.v1"},
    "mpcagg.ops": {
        "mpcagg",
        "mpcagg.mpc",
        "mpcagg.protocol",
        "mpcagg.wire",
        "mpcagg.servers",
        "mpcagg.clients",
    },
    "mpcagg": {"mpcagg.clients", "mpcagg.protocol", "mpcagg.mpc"},
    # The Flower integration is a client of the cluster: trainers and the collector.
    "mpcagg.flower": {"mpcagg", "mpcagg.clients", "mpcagg.protocol"},
}
GENERIC = {"mpc", "servers", "clients", "protos", "protocol", "wire", "ops", "api"}


def _modules() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGE_DIRS.items():
        if package == "mpcagg.v1":
            continue
        directory = ROOT / folder
        for path in sorted(directory.rglob("*.py")):
            rel = path.relative_to(directory).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "mpcagg" and parts:
                continue  # the root package's own folder holds only __init__
            yield ".".join([package, *parts]), path


def _imports(module: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = (
                    module.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else (module.split(".")[: len(module.split(".")) - node.level + 1])
                )
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name
            for alias in node.names:  # `from mpcagg.v1 import aggregation_pb2`
                yield f"{name}.{alias.name}"


def _owner(module: str) -> str:
    """The layer a module belongs to: the longest package of MAY_IMPORT it is inside."""
    candidates = [p for p in MAY_IMPORT if module == p or module.startswith(p + ".")]
    return max(candidates, key=len)


MODULES = list(_modules())


def test_the_walk_sees_every_layer() -> None:
    owners = {_owner(m) for m, _ in MODULES}
    assert owners == set(MAY_IMPORT)
    assert len(MODULES) > 40


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    owner = _owner(module)
    allowed = MAY_IMPORT[owner] | {owner}
    problems = []
    for name in set(_imports(module, path)):
        head = name.split(".")[0]
        if head in GENERIC:
            problems.append(f"{name}: a generic top-level name; import it from mpcagg")
            continue
        if head != "mpcagg" or (name == "mpcagg" and owner == "mpcagg"):
            continue
        target = _owner(name) if name != "mpcagg" else "mpcagg"
        if name.startswith("mpcagg.v1"):
            target = "mpcagg.v1"
            if name.rsplit(".", 1)[-1].endswith("_pb2") and owner != "mpcagg.wire":
                problems.append(f"{name}: only mpcagg.wire converts protobuf messages")
                continue
        if target not in allowed:
            problems.append(f"{name}: {owner} may not import {target}")
    assert not problems, f"{module}: " + "; ".join(sorted(problems))
