"""Stable content hashes for store keys, run ids and model fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def hash_json(obj: Any) -> str:
    """Stable sha256 hex digest of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
