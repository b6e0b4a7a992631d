"""Logging set-up with a redaction filter: no PEM private key ever reaches a log line."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
]


class RedactFilter(logging.Filter):
    """Rewrites a record's message, replacing secrets by ``<redacted>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace secrets in the record's message with ``<redacted>``; never drops a record."""
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact(text: str) -> str:
    """``text`` with every PEM private key replaced by ``<redacted>``."""
    for pattern in _PATTERNS:
        text = pattern.sub("<redacted>", text)
    return text


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("auto", "text", "json")
"""``auto``: text on a terminal, JSON otherwise (journald, containers, log shippers)."""

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, any ``extra=`` fields, and ``exception`` (its traceback) if any.
    The message is redacted (:class:`RedactFilter`) before it gets here."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object (time, level, logger, message, extras, exception),
        every string redacted.
        """
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
