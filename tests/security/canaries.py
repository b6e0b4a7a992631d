"""What tests/security/test_canary.py scans for: the forms a planted secret could leak
in (hex, decimal, base64, Python repr; whole and word by word) and what the canary run
produced for a human or a log pipeline to see."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from mpcagg import MpcaggError


def b64_forms(data: bytes) -> set[str]:
    forms = set()
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        text = enc(data).decode()
        forms |= {text, text.rstrip("=")}
    return forms


def bytes_forms(data: bytes) -> set[str]:
    """Hex, base64, decimal and repr of ``data`` and of each of its 8-byte words."""
    forms = {data.hex(), data.hex().upper(), repr(data)[2:-1], str(list(data[:8]))[1:-1]}
    forms |= b64_forms(data)
    forms |= {str(int.from_bytes(data, order)) for order in ("big", "little")}
    for i in range(0, len(data) - 7, 8):
        forms |= word_forms(int.from_bytes(data[i : i + 8], "little"))
        forms.add(data[i : i + 8].hex())
    return forms


def word_forms(value: int) -> set[str]:
    """A uint64 ring element as decimal (unsigned and signed), hex, and base64 of its bytes."""
    signed = value - (1 << 64) if value >= 1 << 63 else value
    raw = value.to_bytes(8, "little")
    forms = {str(value), str(signed), f"{value:x}", f"{value:016x}", f"{value:X}", raw.hex()}
    return forms | b64_forms(raw) | b64_forms(value.to_bytes(8, "big"))


def vector_forms(vector: np.ndarray) -> set[str]:
    data = np.ascontiguousarray(vector, dtype="<u8").tobytes()
    forms = b64_forms(data) | {data.hex()}
    for v in vector.tolist():
        forms |= word_forms(int(v))
    return forms


@dataclass
class Secrets:
    """Every planted secret, by name, with the strings that would reveal it."""

    forms: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, forms: set[str]) -> None:
        # Very short renderings (e.g. a small decimal) would match by chance.
        self.forms.setdefault(name, set()).update(f for f in forms if len(f) >= 8)

    def leaks(self, text: str) -> list[str]:
        return sorted(
            f"{name}: {form!r}"
            for name, forms in self.forms.items()
            for form in forms
            if form in text
        )


@dataclass
class Observed:
    """Everything the canary run produced that a human or a log pipeline could see."""

    secrets: Secrets
    server_logs: dict[int, str]
    errors: dict[str, str]
    reprs: dict[str, str]
    client_logs: str
    share_files: dict[str, int]
    """Mode of every file under the parties' spool directories, before and after commit."""


def error_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), *getattr(exc, "__notes__", [])]
    parts += [str(getattr(exc, name, "")) for name in ("server_message", "failures")]
    if isinstance(exc, grpc.RpcError):
        parts += [str(exc.details()), str(exc.debug_error_string())]  # type: ignore[attr-defined]
    return "\n".join(parts)


def provoke(errors: dict[str, str], name: str, call: Callable[[], object]) -> None:
    try:
        call()
    except (MpcaggError, grpc.RpcError) as exc:
        errors[name] = error_text(exc)
    else:
        raise AssertionError(f"{name}: expected a refusal")
