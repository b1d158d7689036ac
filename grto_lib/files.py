"""Writing files so that nothing written is lost: the one place the project writes atomically.

A file is first written to a temporary file in the same folder, then renamed over the target (``os.replace``
is atomic on POSIX and Windows): a reader, or a run resumed after a crash, sees the old file or the new one,
never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(path, dump) -> None:
    """Write ``path`` atomically: ``dump(tmp)`` writes a temporary file beside it, which then replaces ``path``.
    The temporary file is removed if ``dump`` fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        dump(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    """``atomic_write`` of a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, data) -> None:
    """``atomic_write`` of ``data`` as indented JSON (numpy scalars and arrays become numbers and lists)."""
    write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value):
    """``json.dumps``'s ``default``: numpy scalars and arrays as numbers and lists, anything else as its string."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
