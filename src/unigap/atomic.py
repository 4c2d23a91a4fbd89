"""Atomic file writes: a reader (or a resumed job) sees the old file or the new one, never half of one.

Every result, checkpoint and figure goes through `write_atomically`: write a temporary file in the target's
directory, then `os.replace` it over the target. Kept free of torch so light modules can use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

FILE_MODE = 0o644  # mkstemp creates private (0600) files; results are meant to be shared


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary path)` next to `path` (its directory created if missing), then rename the
    result over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) into `path`, atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
