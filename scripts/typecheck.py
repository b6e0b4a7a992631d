"""Type-check the installed package layout: ``python scripts/typecheck.py [mypy args]``.

The repository's top-level folders are the subpackages of ``mpcagg`` (see
``[tool.setuptools.package-dir]`` in pyproject.toml), which mypy cannot follow through
the editable install's import hook. This builds ``.mypy_tree/mpcagg`` from symlinks in
the installed shape and runs ``mypy -p mpcagg`` on it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".mypy_tree"


def build() -> Path:
    """Recreate the symlink tree; returns its root (to put on MYPYPATH)."""
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "mpcagg"
    top.mkdir(parents=True)
    for item in (ROOT / mapping["mpcagg"]).iterdir():  # the root package's own files
        (top / item.name).symlink_to(item)
    for package, source in mapping.items():
        if package == "mpcagg":
            continue
        link = TREE.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT / source, target_is_directory=True)
    return TREE


def main() -> int:
    tree = build()
    cmd = [sys.executable, "-m", "mypy", "-p", "mpcagg", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env={"MYPYPATH": str(tree), "PATH": ""})


if __name__ == "__main__":
    sys.exit(main())
