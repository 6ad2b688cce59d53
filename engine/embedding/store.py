"""The embedded store: a SQLite registry beside folders of `.npy` embedding shards.

Layout under the store root (`$IIMM_HOME`, else `~/.cache/iimm`):

    registry.sqlite            datasets, embedding sets, their shards, score runs, file hashes
    embeddings/<set id>/       image-00000.npy, label-00000.npy, …, text.npy, classnames.json, meta.json
    embeddings/<set id>.lock   held (flock) while one process extracts that set

An embedding set's id is a hash of everything its numbers depend on: model
architecture and weights fingerprint, preprocessing, dataset fingerprint (paths,
sizes, mtimes, labels), storage dtype, class names and prompt templates. Every file
is written under a temporary name and renamed into place; the registry runs in WAL
mode with a busy timeout, so concurrent runs on one store never see half a file or
a torn row. Other modules add their own tables (fine-tune runs, calibrations) with
`Store.migrate(module, version, statements)`; rows refer to `datasets.id` and
`embedding_sets.id`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Iterator


import numpy as np

from ...errors import InputError
from ..files import write_atomic
from ..hashing import file_sha256, hash_json

BUSY_TIMEOUT_MS = 60_000
SHARD_KINDS = ("image", "label")
ID_CHARS = 24
# Dataset items per shard, the unit an interrupted embedding resumes from. A fixed count, not a time, so shard i
# holds items [i * rows, (i + 1) * rows) on every machine and every run: the files, and the units distributed
# embedding hands out, are the same everywhere. 1 024 images take about 40 s to encode with ViT-B-32 on a CPU
# (25 img/s), well under a second on a GPU, where one more shard costs a few milliseconds.
DEFAULT_SHARD_ROWS = 1024

_CORE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_migrations (
        module TEXT PRIMARY KEY, version INTEGER NOT NULL, applied REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS datasets (
        id TEXT PRIMARY KEY,            -- dataset fingerprint
        source TEXT NOT NULL,           -- folder or manifest path
        n_items INTEGER NOT NULL,
        class_keys TEXT NOT NULL,       -- JSON list
        created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS embedding_sets (
        id TEXT PRIMARY KEY,            -- hash of image_key, class names, templates
        image_key TEXT NOT NULL,        -- hash of model, preprocessing, dataset, dtype
        dataset_id TEXT NOT NULL REFERENCES datasets(id),
        model TEXT NOT NULL, architecture TEXT NOT NULL, pretrained TEXT,
        model_fingerprint TEXT NOT NULL, preprocess TEXT NOT NULL,
        classnames TEXT NOT NULL, templates TEXT NOT NULL,
        dtype TEXT NOT NULL, shard_rows INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('partial', 'complete')),
        n_rows INTEGER, n_skipped INTEGER, location TEXT NOT NULL,
        created REAL NOT NULL, updated REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS embedding_sets_image_key ON embedding_sets(image_key, status)",
    """CREATE TABLE IF NOT EXISTS shards (
        set_id TEXT NOT NULL REFERENCES embedding_sets(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, rows INTEGER NOT NULL,
        skipped TEXT NOT NULL,          -- JSON list of unreadable image paths
        PRIMARY KEY (set_id, idx))""",
    """CREATE TABLE IF NOT EXISTS score_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        embedding_set_id TEXT REFERENCES embedding_sets(id),
        input TEXT NOT NULL, backend TEXT, device TEXT, version TEXT,
        scores TEXT NOT NULL,           -- JSON {key: value}
        seconds REAL, created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS file_hashes (
        key TEXT PRIMARY KEY,           -- real path : size : mtime_ns
        digest TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS results (
        kind TEXT NOT NULL,             -- e.g. zeroshot_accuracy, zeroshot_scores
        key TEXT NOT NULL,              -- hash of everything the value depends on
        value TEXT NOT NULL,            -- JSON
        created REAL NOT NULL,
        PRIMARY KEY (kind, key))""",
]

_CORE_NAMES = {re.search(r"EXISTS (\w+)", statement).group(1) for statement in _CORE_SCHEMA}

# Each shard file's size and sha256, recorded when it is written: a truncated or altered shard is found
# and encoded again instead of being read as data. Rows of older stores have NULLs (checked for presence only).
SHARD_CHECKSUMS = [f"ALTER TABLE shards ADD COLUMN {kind}_{field} {sql}" for kind in SHARD_KINDS
                   for field, sql in (("bytes", "INTEGER"), ("sha256", "TEXT"))]

# The stat signature (size, mtime, inode) of each shard file when its sha256 last matched: a later check of
# an unchanged file trusts it instead of reading every byte again (`iimm store check` always reads them).
SHARD_VERIFIED = ["ALTER TABLE shards ADD COLUMN verified TEXT"]
# A file modified less than this long before it was verified keeps no signature: a write in the same tick of a
# coarse file clock would leave the mtime unchanged (git's "racily clean" entries).
RACY_SECONDS = 2.0


def default_store_root() -> Path:
    """`$IIMM_HOME` if set, else `~/.cache/iimm`."""
    home = os.environ.get("IIMM_HOME")
    return Path(home).expanduser() if home else Path("~/.cache/iimm").expanduser()


def _enable_wal(con: sqlite3.Connection) -> None:
    """Switch the registry to WAL once (the mode is persistent), retrying while another opener holds the lock.

    Changing the journal mode needs an exclusive lock, and SQLite may answer SQLITE_BUSY at once rather than
    call the busy handler when two processes open a fresh registry together; so retry until BUSY_TIMEOUT_MS.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Store:
    """A store root: the SQLite registry and the embedding folders."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else default_store_root()
        try:
            (self.root / "embeddings").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the embedding store at {self.root}: {exc}; set IIMM_HOME or --store "
                             f"to a writable folder") from exc
        self.db_path = self.root / "registry.sqlite"
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _enable_wal(con)
        except sqlite3.Error as exc:
            raise InputError(f"cannot open the store registry {self.db_path}: {exc}; check the folder is "
                             f"writable or pass another --store") from exc
        finally:
            con.close()
        with self.connect(write=False) as con:  # an existing registry is only read here (no write lock)
            have = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        if not _CORE_NAMES <= have:
            with self.connect() as con:
                for statement in _CORE_SCHEMA:
                    con.execute(statement)
        self.migrate("shard_checksums", 1, SHARD_CHECKSUMS)
        self.migrate("set_last_used", 1, ["ALTER TABLE embedding_sets ADD COLUMN last_used REAL"])
        self.migrate("shard_verified", 1, SHARD_VERIFIED)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @contextlib.contextmanager
    def connect(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction committing on success and rolling back on error (rows as sqlite3.Row).

        write=False opens a read transaction, which WAL lets run beside a writer; only writes take the lock.
        """
        try:
            con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise InputError(f"cannot open the store registry {self.db_path}: {exc}; check the folder is "
                             f"writable or pass another --store") from exc
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA foreign_keys=ON")
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def migrate(self, module: str, version: int, statements: list[str]) -> bool:
        """Apply a module's schema statements once per version; True if they ran now.

        Every `Store()` asks for each module: the common case (nothing to apply) reads only, beside any writer."""
        with self.connect(write=False) as con:
            row = con.execute("SELECT version FROM schema_migrations WHERE module=?", (module,)).fetchone()
        if row is not None and row["version"] >= version:
            return False
        with self.connect() as con:
            row = con.execute("SELECT version FROM schema_migrations WHERE module=?", (module,)).fetchone()
            if row is not None and row["version"] >= version:
                return False
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT OR REPLACE INTO schema_migrations VALUES (?, ?, ?)", (module, version, time.time()))
        return True

    # ---- datasets and embedding sets ----------------------------------------------------------------

    def set_dir(self, set_id: str) -> Path:
        return self.root / "embeddings" / set_id

    def record_dataset(self, fingerprint: str, source: str, n_items: int, class_keys: list[str]) -> None:
        with self.connect() as con:
            con.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?, ?, ?, ?)",
                        (fingerprint, source, n_items, json.dumps(class_keys), time.time()))

    def get_set(self, set_id: str) -> dict | None:
        with self.connect(write=False) as con:
            row = con.execute("SELECT * FROM embedding_sets WHERE id=?", (set_id,)).fetchone()
        return dict(row) if row else None

    def complete_set_with_images(self, image_key: str) -> dict | None:
        """A finished set whose image rows match `image_key` (whatever its class names or templates)."""
        with self.connect(write=False) as con:
            row = con.execute("SELECT * FROM embedding_sets WHERE image_key=? AND status='complete' "
                              "ORDER BY updated DESC LIMIT 1", (image_key,)).fetchone()
        return dict(row) if row else None

    def open_set(self, set_id: str, image_key: str, dataset_id: str, fields: dict) -> dict:
        """Register a set as 'partial' unless it exists; return its row."""
        now = time.time()
        row = dict(id=set_id, image_key=image_key, dataset_id=dataset_id, status="partial", n_rows=None,
                   n_skipped=None, location=str(self.set_dir(set_id)), created=now, updated=now, **fields)
        with self.connect() as con:
            cols = ", ".join(row)
            con.execute(f"INSERT OR IGNORE INTO embedding_sets ({cols}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
            found = con.execute("SELECT * FROM embedding_sets WHERE id=?", (set_id,)).fetchone()
        return dict(found)

    def finished_shards(self, set_id: str, verify: bool = True) -> dict[int, tuple[int, list[str]]]:
        """idx -> (rows, skipped paths) for every shard recorded finished whose files are present.

        verify: also check each file against its recorded size and sha256, reading it only when its size,
        mtime or inode changed since its checksum last matched; a shard that fails (truncated, altered,
        gone) is forgotten here, so the run that asked encodes it again.
        """
        with self.connect(write=False) as con:
            rows = [dict(r) for r in con.execute("SELECT * FROM shards WHERE set_id=?", (set_id,))]
        folder = self.set_dir(set_id)
        bad, verified = set(), {}
        for r in rows:
            stats = shard_stats(folder, r["idx"])
            signature = shard_signature(stats)
            unchanged = signature is not None and r.get("verified") == signature
            if shard_problem(folder, r, checksum=verify and not unchanged, stats=stats) is not None:
                bad.add(r["idx"])
            elif verify and not unchanged:
                verified[r["idx"]] = signature
        if bad:
            self.forget_shards(set_id, sorted(bad))
        if any(v is not None for v in verified.values()):
            with self.connect() as con:
                con.executemany("UPDATE shards SET verified=? WHERE set_id=? AND idx=?",
                                [(v, set_id, i) for i, v in verified.items() if v is not None])
        return {r["idx"]: (r["rows"], json.loads(r["skipped"])) for r in rows if r["idx"] not in bad}

    def shard_records(self, set_id: str) -> list[dict]:
        """The registry rows of a set's shards (idx, rows, skipped, sizes and checksums), by index."""
        with self.connect(write=False) as con:
            return [dict(r) for r in con.execute("SELECT * FROM shards WHERE set_id=? ORDER BY idx", (set_id,))]

    def forget_shards(self, set_id: str, shards: list[int] | None = None) -> None:
        """Drop shards (all of them when None) from the registry (their files failed a check or went missing):
        the set is partial until they are encoded again."""
        with self.connect() as con:
            if shards is None:
                con.execute("DELETE FROM shards WHERE set_id=?", (set_id,))
            else:
                con.executemany("DELETE FROM shards WHERE set_id=? AND idx=?", [(set_id, i) for i in shards])
            con.execute("UPDATE embedding_sets SET status='partial', updated=? WHERE id=?", (time.time(), set_id))

    def record_shard(self, set_id: str, idx: int, rows: int, skipped: list[str],
                     files: dict[str, tuple[int, str]] | None = None) -> None:
        """Record a finished shard. files: kind -> (bytes, sha256) as `write_shard` returns them; None reads
        them from the shard's files (a driver recording what workers wrote)."""
        signature = shard_signature(shard_stats(self.set_dir(set_id), idx))  # taken before any hashing below
        if files is None:
            files = {kind: file_digest(self.set_dir(set_id) / shard_name(kind, idx)) for kind in SHARD_KINDS}
        sums = [v for kind in SHARD_KINDS for v in files[kind]]
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO shards (set_id, idx, rows, skipped, image_bytes, image_sha256, "
                        "label_bytes, label_sha256, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (set_id, idx, rows, json.dumps(skipped), *sums, signature))

    def touch_set(self, set_id: str) -> None:
        """Note that a set was read now (`iimm store ls` shows it as its last use)."""
        with self.connect() as con:
            con.execute("UPDATE embedding_sets SET last_used=? WHERE id=?", (time.time(), set_id))

    def mark_complete(self, set_id: str, n_rows: int, n_skipped: int) -> None:
        with self.connect() as con:
            con.execute("UPDATE embedding_sets SET status='complete', n_rows=?, n_skipped=?, updated=? WHERE id=?",
                        (n_rows, n_skipped, time.time(), set_id))

    def record_score_run(self, scores: dict, *, input: str, embedding_set_id: str | None = None,
                         backend: str | None = None, device: str | None = None, version: str | None = None,
                         seconds: float | None = None) -> int:
        """Log one scoring run; returns its id."""
        with self.connect() as con:
            cur = con.execute("INSERT INTO score_runs (embedding_set_id, input, backend, device, version, scores, "
                              "seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (embedding_set_id, input, backend, device, version, json.dumps(scores), seconds,
                               time.time()))
            return int(cur.lastrowid)

    # ---- results computed once and reused ------------------------------------------------------------

    def get_result(self, kind: str, key: dict) -> Any | None:
        """The JSON value stored for (`kind`, hash of `key`), or None when it was never computed."""
        with self.connect(write=False) as con:
            row = con.execute("SELECT value FROM results WHERE kind=? AND key=?", (kind, hash_json(key))).fetchone()
        return None if row is None else json.loads(row["value"])

    def put_result(self, kind: str, key: dict, value: Any) -> None:
        """Keep a JSON-able `value` under (`kind`, hash of `key`); `key` must name everything it depends on."""
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                        (kind, hash_json(key), json.dumps(value), time.time()))

    # ---- locks and file hashes ----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, set_id: str, wait: bool = True) -> Iterator[bool]:
        """Exclusive lock on one embedding set across processes (waits for the holder to finish).

        wait=False: yields False at once, holding nothing, when another process holds the lock.
        """
        path = self.root / "embeddings" / f"{set_id}.lock"
        with open(path, "a+b") as f:
            try:
                import fcntl
            except ImportError:  # no flock (Windows): atomic renames still keep files whole
                yield True
                return
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def hash_memo(self) -> "FileHashMemo":
        return FileHashMemo(self)


class FileHashMemo(MutableMapping):
    """Content hashes of weight files keyed by (real path, size, mtime), kept in the registry."""

    def __init__(self, store: Store):
        self.store = store

    def __getitem__(self, key: str) -> str:
        with self.store.connect(write=False) as con:
            row = con.execute("SELECT digest FROM file_hashes WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row["digest"]

    def __setitem__(self, key: str, digest: str) -> None:
        with self.store.connect() as con:
            con.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?)", (key, digest))

    def __delitem__(self, key: str) -> None:
        with self.store.connect() as con:
            con.execute("DELETE FROM file_hashes WHERE key=?", (key,))

    def __iter__(self):
        with self.store.connect(write=False) as con:
            keys = [r["key"] for r in con.execute("SELECT key FROM file_hashes")]
        return iter(keys)

    def __len__(self) -> int:
        with self.store.connect(write=False) as con:
            return int(con.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0])


def shard_name(kind: str, idx: int) -> str:
    """`image-00003.npy` / `label-00003.npy`: the names `load_embeddings` reads in order."""
    return f"{kind}-{idx:05d}.npy"


def write_shard(folder: Path, idx: int, rows: np.ndarray, labels: np.ndarray) -> dict[str, tuple[int, str]]:
    """Write a shard's `image-NNNNN.npy` (rows (n, D)) and `label-NNNNN.npy` (labels (n,) int64) atomically;
    return kind -> (bytes, sha256) of what was written, for `Store.record_shard`."""
    files = {}
    for kind, array in (("image", rows), ("label", labels)):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        data = buf.getvalue()
        write_atomic(Path(folder) / shard_name(kind, idx), data)
        files[kind] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file."""
    return path.stat().st_size, file_sha256(path)


def shard_stats(folder: Path, idx: int) -> dict[str, os.stat_result | None]:
    """kind -> the stat of a shard's file (None when it is missing or not a regular file)."""
    stats = {}
    for kind in SHARD_KINDS:
        try:
            st = os.stat(os.path.join(folder, shard_name(kind, idx)))
        except OSError:
            st = None
        stats[kind] = st if st is not None and stat.S_ISREG(st.st_mode) else None
    return stats


def shard_signature(stats: dict[str, os.stat_result | None]) -> str | None:
    """"size:mtime_ns:inode" of each of a shard's files (`shard_stats`), or None when one is missing or was
    modified less than RACY_SECONDS ago (its mtime could still hide a change)."""
    if any(st is None for st in stats.values()):
        return None
    now = time.time_ns()
    if any(now - st.st_mtime_ns < RACY_SECONDS * 1e9 for st in stats.values()):
        return None
    return " ".join(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" for st in stats.values())


def shard_problem(folder: Path, record: dict, checksum: bool = True,
                  stats: dict[str, os.stat_result | None] | None = None) -> str | None:
    """What is wrong with a recorded shard's files in `folder` (missing, wrong size, wrong sha256), or None.

    record: a `shards` row. checksum=False checks presence and size only (no read). stats: the files'
    `shard_stats`, when the caller has them.
    """
    stats = stats or shard_stats(folder, record["idx"])
    for kind in SHARD_KINDS:
        path = folder / shard_name(kind, record["idx"])
        if stats[kind] is None:
            return f"{path.name} is missing"
        size, sha = record.get(f"{kind}_bytes"), record.get(f"{kind}_sha256")
        if size is not None and stats[kind].st_size != size:
            return f"{path.name} has {stats[kind].st_size} bytes, {size} were written"
        if checksum and sha is not None and file_digest(path)[1] != sha:
            return f"{path.name} does not match the sha256 recorded when it was written"
    return None


def open_store(store) -> Store | None:
    """A Store from None (the default root), a path, or a Store."""
    if isinstance(store, Store):
        return store
    return Store(store)
