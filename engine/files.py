"""Atomic file writes: a unique temporary name in the target folder, then a rename. No half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np


from ..errors import InputError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail now, before any work is done, when `path` could not be written atomically later: its folder is
    missing, is a file, or refuses a new file; or `path` is a folder."""
    path = Path(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it or choose another path")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc} in {folder}; choose a writable folder") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread sees it change)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str | None = None,
                 writer: Callable[[IO[bytes]], None] | None = None) -> Path:
    """Write `data` (or whatever `writer(f)` writes to the binary file f) to `path` atomically.

    The file gets the mode a plain `open(path, "w")` would give (0666 less the umask: 0644 under umask 022),
    not the 0600 of the temporary file it starts as.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
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
    import numpy as np

    return write_atomic(path, writer=lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")
