"""lm-eval's index of its own task folder, kept in graphopt's cache folder (graphopt.cache_store).

Every lm-eval TaskManager walks lm-eval's built-in task folder and parses its ~14000 YAML files (5-6 s on
2 cores) before it can name a task, on every command, although that folder changes only when lm-eval is
installed again. `graphopt lm-eval` keeps the parsed index of that one folder as JSON, keyed by lm-eval's
version, the folder, the options of the walk and every YAML file's relative path, size and mtime (a stat
of each file: ~0.05 s); a second command reads it back instead of parsing (graphopt.harness.tasks.
task_index_built_once). Folders of --include_path are the user's own and are parsed as lm-eval parses
them (their YAML may include files from anywhere).

An index whose configs do not survive JSON unchanged (a YAML key that is not a string, say) is not kept;
a damaged entry is a miss with one line (cache_store.get) and is built afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from graphopt import cache_store

KIND = "lm-eval-task-index"
FORMAT = 1


def builtin_tasks_folder() -> Path:
    """lm-eval's own task folder (what TaskManager indexes when include_defaults)."""
    import lm_eval.tasks
    return Path(lm_eval.tasks.__file__).parent


def folder_key(root: Path, options: dict) -> str:
    """sha256 over lm-eval's version, the folder, the walk's options and each YAML file's (relative path,
    size, mtime_ns), in the order lm-eval walks them."""
    import lm_eval
    from lm_eval.tasks._index import TaskIndex
    h = hashlib.sha256(json.dumps([FORMAT, getattr(lm_eval, "__version__", "?"), str(Path(root).resolve()),
                                   sorted((k, repr(v)) for k, v in options.items())]).encode())
    for path in TaskIndex._iter_yaml_files(Path(root)):
        st = os.stat(path)
        h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def encode(index: dict) -> bytes | None:
    """{name: Entry} -> JSON bytes; None when an entry's config does not come back from JSON equal."""
    rows = []
    for name, e in index.items():
        if json.loads(json.dumps(e.cfg)) != e.cfg:
            return None
        rows.append([name, e.name, e.kind.name, None if e.yaml_path is None else str(e.yaml_path), e.cfg,
                     sorted(e.tags)])
    return json.dumps({"format": FORMAT, "entries": rows}).encode()


def decode(data: bytes) -> dict:
    """encode's bytes -> {name: Entry}; ValueError when they are not its format."""
    from lm_eval.tasks._index import Entry, Kind
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a task index of this format")
    return {key: Entry(name=name, kind=Kind[kind], yaml_path=None if path is None else Path(path), cfg=cfg,
                       tags=set(tags))
            for key, name, kind, path, cfg, tags in doc["entries"]}


def cached_folder_index(build, root: Path, options: dict) -> dict:
    """build([root], **options), read from graphopt's cache folder when this folder was indexed before
    with the same files; built and kept otherwise. A cache folder that cannot be written only costs the
    keeping."""
    key = folder_key(root, options)
    data = cache_store.get(KIND, key)
    if data is not None:
        try:
            return decode(data)
        except (ValueError, KeyError, TypeError):
            cache_store.warn(f"graphopt: the kept lm-eval task index {key[:12]} is not one graphopt reads; "
                             "it is built afresh")
    index = build([root], **options)
    data = encode(index)
    if data is not None:
        try:
            cache_store.put(KIND, key, data)
        except OSError as e:
            cache_store.warn(f"graphopt: could not keep lm-eval's task index in {cache_store.cache_root()} ({e})")
    return index
