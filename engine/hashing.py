"""Stable content hashes for store keys, run ids and model fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def hash_json(obj: Any) -> str:
    """Stable sha256 hex digest of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
