"""graphopt's cache folder: what graphopt keeps across runs, and only that.

    $GRAPHOPT_CACHE_DIR (default: $XDG_CACHE_HOME/graphopt, i.e. ~/.cache/graphopt)
        GRAPHOPT_CACHE.json        marker: a graphopt cache folder (written whenever graphopt uses it)
        entries/<kind>/<key>       put() / get(): a header line (kind, key, size, sha256), then the bytes
        inductor-torch<version>/   inductor's own cache for one torch build (graphopt.compile_cache)
        locks/<name>.lock          locks of the above (lock())

put() writes atomically (a temporary file renamed into place), so readers never see half an entry and
processes writing the same entry at once leave one whole one. get() checks the size and sha256 written
with the entry: a mismatch discards it, says so in one line, and is a miss (the caller builds it
afresh). clear() removes exactly the names above, and only from a folder that carries the marker;
anything else in the folder is kept and named, and a folder without the marker is refused, naming it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from graphopt.errors import UserError

ENV = "GRAPHOPT_CACHE_DIR"
MARKER = "GRAPHOPT_CACHE.json"
ENTRIES = "entries"
LOCKS = "locks"
INDUCTOR_PREFIX = "inductor-torch"  # + torch version: inductor's folder (graphopt.compile_cache.inductor_dir)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a kind or key: one plain file name


def cache_root() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphopt"


def mark(root: Path | None = None) -> Path:
    """Create the cache folder if needed and write its marker (once); -> the folder. OSError if it
    cannot be written."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.is_file():
        _write_atomic(marker, (json.dumps({"graphopt_cache": 1, "note": "graphopt's cache folder: `graphopt cache "
                                           "--clear` removes what graphopt wrote here, nothing else"}) + "\n").encode())
    return root


def is_graphopt_cache(root: Path) -> bool:
    """The folder carries the marker, or holds nothing but inductor folders (what graphopt wrote before
    it wrote markers)."""
    if (root / MARKER).is_file():
        return True
    names = [p for p in root.iterdir()] if root.is_dir() else []
    return bool(names) and all(p.is_dir() and p.name.startswith(INDUCTOR_PREFIX) for p in names)


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"cache {what} {name!r}: expected letters, digits, '.', '_' or '-' (a file name)")
    return name


def _entry_path(root: Path, kind: str, key: str) -> Path:
    return root / ENTRIES / _check_name("kind", kind) / _check_name("key", key)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def put(kind: str, key: str, data: bytes) -> Path:
    """Store `data` as entry kind/key (replacing one there), with its size and sha256; -> its file."""
    path = _entry_path(cache_root(), kind, key)
    mark()
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"kind": kind, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _write_atomic(path, json.dumps(header).encode() + b"\n" + bytes(data))
    return path


def _check_entry(raw: bytes) -> tuple[bytes | None, str]:
    """(the data, "") when the header's size and sha256 match, else (None, what is wrong)."""
    head, sep, data = raw.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("size"), int):
        return None, "no valid header"
    if len(data) != header["size"]:
        return None, f"{len(data)} bytes, {header['size']} written"
    if hashlib.sha256(data).hexdigest() != header.get("sha256"):
        return None, "sha256 differs from the one written"
    return data, ""


def get(kind: str, key: str, log=None) -> bytes | None:
    """The bytes stored as kind/key; None when there is no such entry, or when it does not match the
    size and sha256 written with it (then it is removed and one line says so)."""
    path = _entry_path(cache_root(), kind, key)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    data, problem = _check_entry(raw)
    if data is None:
        path.unlink(missing_ok=True)
        (log or warn)(f"graphopt: discarded the corrupt cache entry {path} ({problem}); it is built afresh")
    return data


@dataclass
class KindSummary:
    kind: str
    keys: list[str] = field(default_factory=list)
    bytes: int = 0


def entries(root: Path | None = None) -> dict[str, KindSummary]:
    """{kind: its keys and their total size on disk}, kinds sorted."""
    base = (root or cache_root()) / ENTRIES
    out = {}
    for folder in sorted(base.iterdir()) if base.is_dir() else ():
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and _NAME.fullmatch(p.name)] \
            if folder.is_dir() else []
        if files:
            out[folder.name] = KindSummary(folder.name, [p.name for p in files], sum(p.stat().st_size for p in files))
    return out


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) \
        if folder.is_dir() else 0


def owned(root: Path) -> list[Path]:
    """What graphopt wrote in root: its marker, entries, locks and inductor folders."""
    return sorted(p for p in root.iterdir()
                  if p.name in (MARKER, ENTRIES, LOCKS) or (p.is_dir() and p.name.startswith(INDUCTOR_PREFIX)))


@dataclass
class Cleared:
    root: Path
    freed: int = 0  # bytes removed
    removed: list[str] = field(default_factory=list)  # names in root
    kept: list[str] = field(default_factory=list)  # names in root graphopt did not write


def clear(root: Path | None = None) -> Cleared:
    """Remove what graphopt wrote in its cache folder (owned()), and the folder itself once empty.
    A folder that is not a graphopt cache (is_graphopt_cache) is refused with a UserError naming it."""
    root = root or cache_root()
    done = Cleared(root)
    if not root.exists():
        return done
    if not root.is_dir():
        raise UserError(f"the cache folder {str(root)!r} ({ENV}) is a file, not a folder: nothing removed")
    if not is_graphopt_cache(root):
        held = sorted(p.name for p in root.iterdir())
        raise UserError(f"{str(root)!r} is not a graphopt cache folder (no {MARKER} in it; it holds "
                        f"{_names(held)}): nothing removed; point {ENV} at a folder of graphopt's own")
    mine = owned(root)
    done.kept = sorted(p.name for p in root.iterdir() if p not in mine)
    for p in mine:
        if p.name == MARKER and done.kept:
            continue  # the folder stays graphopt's cache ($GRAPHOPT_CACHE_DIR): keep saying so
        done.freed += folder_size(p) if p.is_dir() else p.stat().st_size
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        done.removed.append(p.name)
    if not done.kept and not root.is_symlink():
        root.rmdir()
    return done


def _names(names: list[str], most: int = 5) -> str:
    if not names:
        return "nothing"
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@contextmanager
def lock(name: str, shared: bool = False):
    """with lock("x"): ... holds locks/x.lock in the cache folder (flock: released if the process dies)."""
    fd = open_lock(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_lock(name: str) -> int:
    """An open file descriptor of locks/<name>.lock in the cache folder (for flock)."""
    folder = mark() / LOCKS
    folder.mkdir(exist_ok=True)
    return os.open(folder / f"{_check_name('lock', name)}.lock", os.O_RDWR | os.O_CREAT, 0o644)


def warn(message: str) -> None:
    print(message, file=sys.stderr)
