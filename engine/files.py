"""Atomic file writes: a unique temporary name in the target folder, then a rename. No half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from .errors import InputError


def write_atomic(path: str | os.PathLike, data: bytes | str | None = None,
                 writer: Callable[[IO[bytes]], None] | None = None) -> Path:
    """Write `data` (or whatever `writer(f)` writes to the binary file f) to `path` atomically."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it or choose another path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    return write_atomic(path, writer=lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")
