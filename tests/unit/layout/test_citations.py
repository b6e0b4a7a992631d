"""Every Internet-Draft the code or the design record cites names its version.

Section numbers move between drafts, so ``draft-irtf-cfrg-vdaf §7.2`` says nothing a
reader can check; ``draft-irtf-cfrg-vdaf-12 §7.2.1`` does. The test reads the package
folders' Python sources, ``docs/architecture.md`` and the README as text and fails
listing every draft name without its two-digit version.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FOLDERS = ("api", "mpc", "protocol", "wire", "servers", "clients", "ops", "flower")
DOCUMENTS = ("docs/architecture.md", "README.md")

_DRAFT = re.compile(r"\bdraft-[a-z0-9]+(?:-[a-z0-9]+)+")
_VERSIONED = re.compile(r"-\d{2}$")


def unversioned(text: str) -> list[str]:
    """The draft names in ``text`` that do not end in a two-digit version."""
    return [m.group(0) for m in _DRAFT.finditer(text) if not _VERSIONED.search(m.group(0))]


def _sources() -> list[Path]:
    files = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    return files + [ROOT / d for d in DOCUMENTS]


def test_the_checker_tells_versioned_from_unversioned() -> None:
    assert unversioned("Prio3 (draft-irtf-cfrg-vdaf §7.2)") == ["draft-irtf-cfrg-vdaf"]
    assert unversioned("draft-irtf-cfrg-vdaf-12 §7.2.1, RFC 5869") == []
    assert unversioned("no citation at all") == []


def test_cited_drafts_name_their_version() -> None:
    sources = _sources()
    assert len(sources) > 50, "the package folders moved? the check would read nothing"
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in unversioned(path.read_text(encoding="utf-8"))
    }
    assert not found, "drafts cited without a version:\n" + "\n".join(sorted(found))
