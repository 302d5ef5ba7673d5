"""Inductor's files in the compile cache are never trusted: each is checked before inductor may load it.

Inductor writes its artifacts itself (FX graph and AOTAutograd entries, the generated .py module, the
C++ sources and the .so files built from them) and loads what it finds: a truncated .so ends the
process with SIGBUS, a garbage one in a traceback, on every later run. So graphopt keeps, next to the
cache, a record of every file as inductor left it after a finished compile (size and sha256; written at
the end of each dynamo compile), and before the first compile of a process it checks the folder
against that record:

- a recorded file whose size or sha256 differs is removed; inductor then builds it afresh (a missing
  .so is compiled again from its source, a missing .py is written again from the FX graph entry);
- in graphopt's own inductor folder, when no other graphopt process is using it, files no finished
  compile recorded are removed too (a compile killed halfway leaves a .so cut short: gcc writes it
  in place); a folder the user named with TORCHINDUCTOR_CACHE_DIR keeps them (not graphopt's files).

Either removal is said in one line. The record is a cache_store entry (kind "inductor-files"), itself
checked by its sha256; a record that does not match is discarded and the folder is treated as unrecorded.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from graphopt import cache_store

KIND = "inductor-files"
_held: dict[str, int] = {}  # folder -> descriptor of its "in use" lock, held shared while this process runs
_watched: set[str] = set()


def _owned(folder: Path) -> bool:
    """graphopt's own inductor folder (in its cache folder), not one the user named."""
    return folder.name.startswith(cache_store.INDUCTOR_PREFIX) and \
        folder.parent.resolve() == cache_store.cache_root().resolve()


def _key(folder: Path) -> str:
    """The record's name: graphopt's own folder by its name (the cache folder may move), another by its path."""
    return folder.name if _owned(folder) else "at-" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]


def _skipped(rel: Path) -> bool:
    """Inductor's lock files and in-flight temporary files: never recorded, never checked."""
    return rel.parts[0] == "locks" or any(part.startswith(".") for part in rel.parts) or rel.suffix == ".lock"


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not p.is_symlink() and not _skipped(rel):
            out[rel.as_posix()] = p
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load(folder: Path, log) -> dict[str, list]:
    raw = cache_store.get(KIND, _key(folder), log=log)
    try:
        record = json.loads(raw) if raw is not None else {}
    except ValueError:
        record = {}
    files = record.get("files") if isinstance(record, dict) and record.get("folder") == _key(folder) else None
    if not isinstance(files, dict):
        return {}
    return {rel: v for rel, v in files.items() if isinstance(v, list) and len(v) == 2}  # [size, sha256]


def _save(folder: Path, files: dict[str, list]) -> None:
    cache_store.put(KIND, _key(folder), json.dumps({"folder": _key(folder), "files": files}).encode())


def _being_built(folder: Path, rel: str) -> bool:
    """Another process holds inductor's lock of this file's key (it is compiling it right now)."""
    lock = folder / "locks" / (Path(rel).name.split(".")[0] + ".lock")
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def record(folder: Path, log=None) -> int:
    """Add every file not yet recorded (but those another process is compiling) to the folder's record;
    -> how many were added."""
    folder = Path(folder)
    with cache_store.lock(f"{KIND}-{_key(folder)}"):
        files = _load(folder, log)
        added = 0
        for rel, p in _files(folder).items():
            if rel in files or _being_built(folder, rel):
                continue
            try:
                files[rel] = [p.stat().st_size, _sha256(p)]
            except FileNotFoundError:
                continue
            added += 1
        if added:
            _save(folder, files)
    return added


def _claim(folder: Path) -> bool:
    """Mark folder as in use by this process (a shared lock held until it ends); -> True when no other
    graphopt process was using it (then files nobody recorded are leftovers of a stopped compile)."""
    fd = cache_store.open_lock(f"{KIND}-{_key(folder)}-in-use")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except OSError:
        alone = False
    fcntl.flock(fd, fcntl.LOCK_SH)  # (from exclusive: a downgrade)
    _held[str(folder)] = fd
    return alone


def verify(folder: Path, log=None) -> list[str]:
    """Check folder against its record before inductor reads it (see the module's docstring); remove
    what does not match, and, in graphopt's own folder with no other graphopt process using it, what
    was never recorded. -> the removed files, each with why; one line says so when any."""
    folder = Path(folder)
    alone = _claim(folder)
    removed = []
    with cache_store.lock(f"{KIND}-{_key(folder)}"):
        files = _load(folder, log)
        on_disk = _files(folder) if folder.is_dir() else {}
        gone = [rel for rel in files if rel not in on_disk]  # removed by hand or by inductor: nothing to check
        for rel in gone:
            del files[rel]
        for rel, (size, sha) in list(files.items()):
            p = on_disk[rel]
            got = p.stat().st_size
            why = (f"{got} bytes, {size} recorded" if got != size else
                   "sha256 differs from the recorded one" if _sha256(p) != sha else None)
            if why:
                p.unlink(missing_ok=True)
                del files[rel], on_disk[rel]
                removed.append(f"{rel}: {why}")
        if alone and _owned(folder):
            for rel, p in on_disk.items():
                if rel not in files:
                    p.unlink(missing_ok=True)
                    removed.append(f"{rel}: not recorded by a finished compile")
        if removed or gone:
            _save(folder, files)
    if removed:
        shown = "; ".join(removed[:3]) + (f"; and {len(removed) - 3} more" if len(removed) > 3 else "")
        (log or cache_store.warn)(f"graphopt: discarded {len(removed)} file{'s' if len(removed) != 1 else ''} of "
                                   f"the compile cache {folder} that cannot be trusted ({shown}); compiling "
                                   f"afresh what they held")
    return removed


def watch(folder: Path, log=None) -> None:
    """Record the folder's new files at the end of every dynamo compile of this process."""
    folder = Path(folder)
    if str(folder) in _watched:
        return
    _watched.add(str(folder))
    from torch._dynamo.callback import on_compile_end

    @on_compile_end
    def _record_after_compile(_args) -> None:
        try:
            record(folder, log)
        except OSError as e:  # a full disk: the files stay unrecorded (and are rebuilt next time), not an error
            (log or cache_store.warn)(f"graphopt: could not record the compile cache {folder} ({e})")
