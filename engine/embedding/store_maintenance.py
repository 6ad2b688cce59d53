"""Looking after an embedding store as a cache: list its sets, check every shard, remove sets and garbage.

`list_sets` (what `iimm store ls` shows), `check_store` (every recorded shard against the size and
sha256 written with it, the files a finished set needs, and files no registry row owns), `remove_sets`
and `collect_garbage` (partial sets nobody is writing, folders without a registry row, registry rows
whose folder is gone, temporary files of killed runs). Removal plans first (`dry_run=True`, the
default) and acts only when asked; a set another process holds the lock of is left alone.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import InputError
from .store import Store, shard_name, shard_problem

SET_FILES = ("text.npy", "classnames.json", "meta.json")  # besides the shards, in a finished set
TEMP_SUFFIXES = (".tmp", ".link", ".probe")
TEMP_MIN_AGE_S = 3600  # a temporary file younger than this may belong to a writer outside any set lock


@dataclass
class SetSummary:
    """One embedding set as `iimm store ls` lists it."""

    id: str
    model: str
    pretrained: str | None
    data: str
    status: str
    rows: int | None
    shards: int
    bytes: int
    created: float
    last_used: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Problem:
    """Something `check_store` found: the set (or None), the file, what is wrong."""

    set_id: str | None
    path: str
    what: str


@dataclass
class Removal:
    """What a removal did (or, dry run, would do): sets and paths, with the bytes they hold."""

    sets: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # registry rows of sets whose folder is gone
    busy: list[str] = field(default_factory=list)  # sets another process holds: left alone
    bytes: int = 0
    done: bool = False


def list_sets(store: Store) -> list[SetSummary]:
    """Every embedding set of the store, most recently used first."""
    with store.connect(write=False) as con:
        rows = con.execute(
            "SELECT s.*, d.source AS data, (SELECT COUNT(*) FROM shards WHERE set_id=s.id) AS n_shards "
            "FROM embedding_sets s LEFT JOIN datasets d ON d.id = s.dataset_id").fetchall()
    out = [SetSummary(id=r["id"], model=r["model"], pretrained=r["pretrained"], data=r["data"] or "",
                      status=r["status"], rows=r["n_rows"], shards=r["n_shards"],
                      bytes=_folder_bytes(store.set_dir(r["id"])), created=r["created"],
                      last_used=max(r["last_used"] or 0.0, r["updated"])) for r in rows]
    return sorted(out, key=lambda s: -s.last_used)


def check_store(store: Store) -> list[Problem]:
    """Every problem of the store: a shard whose file is missing, of another size or another sha256 than was
    written; a finished set lacking a file; a set folder with no registry row; leftover temporary files."""
    problems = []
    with store.connect(write=False) as con:
        sets = [dict(r) for r in con.execute("SELECT id, status FROM embedding_sets")]
    for s in sets:
        folder = store.set_dir(s["id"])
        records = store.shard_records(s["id"])
        if not folder.is_dir():
            if records or s["status"] == "complete":  # a set opened but not yet written has no folder yet
                problems.append(Problem(s["id"], str(folder), "folder is gone (registry row without files)"))
            continue
        for record in records:
            what = shard_problem(folder, record)
            if what is not None:
                problems.append(Problem(s["id"], str(folder / shard_name("image", record["idx"])), what))
        if s["status"] == "complete":
            problems += [Problem(s["id"], str(folder / name), f"{name} is missing") for name in SET_FILES
                         if not (folder / name).is_file()]
    known = {s["id"] for s in sets}
    for path in _set_folders(store):
        if path.name not in known:
            problems.append(Problem(None, str(path), "folder has no registry row (orphan)"))
    problems += [Problem(None, str(p), "temporary file of an interrupted write") for p in _temp_files(store)]
    return problems


def resolve_set_ids(store: Store, prefixes: list[str]) -> list[str]:
    """Set ids from ids or unique prefixes (at least 4 characters) of ids."""
    with store.connect(write=False) as con:
        ids = [r["id"] for r in con.execute("SELECT id FROM embedding_sets")]
    ids += [p.name for p in _set_folders(store) if p.name not in ids]
    out = []
    for prefix in prefixes:
        found = [i for i in ids if i.startswith(prefix)]
        if len(prefix) < 4 or len(found) != 1:
            why = "matches no set" if not found else ("is too short" if len(prefix) < 4 else
                                                      f"matches {len(found)} sets")
            raise InputError(f"set id {prefix!r} {why}; pass an id (or a unique prefix of 4+ characters) "
                             f"from `iimm store ls`")
        out.append(found[0])
    return out


def remove_sets(store: Store, set_ids: list[str], dry_run: bool = True) -> Removal:
    """Remove embedding sets: their registry rows (score runs keep their scores, without the link) and files."""
    removal = Removal(done=not dry_run)
    for set_id in set_ids:
        _remove_set(store, set_id, removal, dry_run)
    return removal


def collect_garbage(store: Store, dry_run: bool = True, now: float | None = None) -> Removal:
    """Remove partial sets nobody is writing, set folders without a registry row, registry rows whose folder
    is gone, and temporary files older than an hour. Finished sets stay (`remove_sets` removes those)."""
    now = time.time() if now is None else now
    removal = Removal(done=not dry_run)
    with store.connect(write=False) as con:
        sets = {r["id"]: r["status"] for r in con.execute("SELECT id, status FROM embedding_sets")}
    for set_id, status in sorted(sets.items()):
        if status == "partial" or not store.set_dir(set_id).is_dir():
            _remove_set(store, set_id, removal, dry_run)
    for folder in _set_folders(store):
        if folder.name not in sets:
            _remove_set(store, folder.name, removal, dry_run)
    for path in _temp_files(store):
        if now - path.stat().st_mtime >= TEMP_MIN_AGE_S:
            removal.paths.append(str(path))
            removal.bytes += path.stat().st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    return removal


def _remove_set(store: Store, set_id: str, removal: Removal, dry_run: bool) -> None:
    folder = store.set_dir(set_id)
    with store.lock(set_id, wait=False) as held:
        if not held:
            removal.busy.append(set_id)
            return
        size = _folder_bytes(folder)
        if folder.is_dir():
            removal.sets.append(set_id)
            removal.paths.append(str(folder))
            removal.bytes += size
        else:
            removal.rows.append(set_id)
        if dry_run:
            return
        with store.connect() as con:
            con.execute("UPDATE score_runs SET embedding_set_id=NULL WHERE embedding_set_id=?", (set_id,))
            if _has_table(con, "finetune_runs"):
                con.execute("UPDATE finetune_runs SET embedding_set_id=NULL WHERE embedding_set_id=?", (set_id,))
            con.execute("DELETE FROM shards WHERE set_id=?", (set_id,))
            con.execute("DELETE FROM embedding_sets WHERE id=?", (set_id,))
        shutil.rmtree(folder, ignore_errors=True)  # the lock file stays: another run may be waiting on it


def _has_table(con, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _set_folders(store: Store) -> list[Path]:
    return sorted(p for p in (store.root / "embeddings").iterdir() if p.is_dir())


def _temp_files(store: Store) -> list[Path]:
    """Leftovers of writes that were killed: `.NAME.<random>.tmp` (atomic writes), `.NAME.PID.link` (shared shards)."""
    return sorted(p for p in (store.root / "embeddings").rglob(".*") if p.is_file() and p.suffix in TEMP_SUFFIXES)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
