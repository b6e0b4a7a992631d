"""Small files written whole: a temporary file, fsync, rename over the target, fsync
of the directory. A reader sees the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomic(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Durably replace ``path`` with ``data``, created with ``mode`` whatever the umask.

    Raises ``TypeError`` for data that is not bytes and ``OSError`` as the file system
    does; the temporary file is removed on any failure.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(tmp, flags, mode), "wb") as file:
            os.fchmod(file.fileno(), mode)  # os.open's mode was filtered by the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
