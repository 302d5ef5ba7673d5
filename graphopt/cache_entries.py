"""Entries of graphopt's cache folder: put(kind, key, bytes) / get(kind, key) -> bytes | None.

    <cache folder>/entries/<kind>/<key>    a header line {"kind", "key", "size", "sha256"}, then the bytes

put() writes atomically (a temporary file renamed into place): readers never see half an entry, and
processes writing one entry at once leave one whole one. get() checks the size and sha256 written
with the entry; a mismatch (a truncated or damaged file) is a miss, said in one line, and the entry
is removed so that the caller's fresh one replaces it. A folder that cannot be written is a warning,
never an error: the caller just works without the entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from pathlib import Path

from graphopt.compile_cache import cache_root

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _path(kind: str, key: str) -> Path:
    for what, name in (("kind", kind), ("key", key)):
        if not _NAME.fullmatch(name):
            raise ValueError(f"cache {what} {name!r}: expected letters, digits, '.', '_' or '-' (a file name)")
    return cache_root() / "entries" / kind / key


def put(kind: str, key: str, data: bytes, log=None) -> Path | None:
    """Store `data` as kind/key; -> its file (None when the folder cannot be written: said in one line)."""
    path = _path(kind, key)
    header = {"kind": kind, "key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n" + bytes(data))
        os.replace(tmp, path)
        return path
    except OSError as e:
        (log or warn)(f"graphopt: could not keep {kind} {key[:16]} in the cache folder ({e}); it is rebuilt next time")
        return None
    finally:
        tmp.unlink(missing_ok=True)


def get(kind: str, key: str, log=None) -> bytes | None:
    """The bytes of kind/key; None when absent, or when they do not match the size and sha256 written
    with them (then the entry is removed and one line says so)."""
    path = _path(kind, key)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    head, sep, data = raw.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if isinstance(header, dict) and header.get("size") == len(data) \
            and header.get("sha256") == hashlib.sha256(data).hexdigest():
        return data
    path.unlink(missing_ok=True)
    (log or warn)(f"graphopt: discarded the damaged cache entry {path} (size or sha256 differ from those "
                   f"written); it is built afresh")
    return None


def warn(message: str) -> None:
    print(message, file=sys.stderr)
