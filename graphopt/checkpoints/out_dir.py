"""The folder a checkpoint is written into (`graphopt prune --out`): refused, before any work, when the
write would destroy something, and emptied with --force of exactly what the new checkpoint supersedes.

Refused: the model being read (or a folder inside it), a path that is or lies under a file, a folder
that cannot be written, and a folder that already holds files unless `force`. With force, the files a
loader would read instead of (or beside) the new ones go: weight files and their indexes (HF single,
sharded and .bin, Meta's params.json + consolidated.NN.pth), config.json and the tokenizer files;
everything else in the folder (notes, results, other models' subfolders) is kept.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

from graphopt.checkpoints.errors import CheckpointError

_CHECKPOINT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json", "params.json", "tokenizer.json", "tokenizer.model",
                     "tokenizer_word_hash.json", "tokenizer_config.json", "special_tokens_map.json")
_SHARDS = re.compile(r"(model-\d+-of-\d+\.safetensors|pytorch_model-\d+-of-\d+\.bin|consolidated\.\d+\.pth)")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out_dir: str | Path, source: str | Path | None = None, force: bool = False) -> Path:
    """Refuse (CheckpointError starting with out_dir) an out_dir that is `source` or inside it, is or
    lies under a file, cannot be written, or holds files while not `force`. Creates nothing. -> Path."""
    out = Path(out_dir)
    if source is not None and Path(source).exists():
        src = Path(source).resolve()
        if _inside(out.resolve(), src):
            what = "is" if out.resolve() == src else "is inside"
            raise CheckpointError(f"{out}: {what} the model being read ({source}); writing there would replace it: "
                                  f"name a new folder")
    blocker = next((a for a in [out, *out.parents] if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise CheckpointError(f"{out}: {str(blocker)!r} is a file, not a folder")
    existing = next(a for a in [out, *out.parents] if a.exists())  # the folder a write would start from
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e))
        raise CheckpointError(f"{out}: cannot be written ({existing}: {reason})") from None
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise CheckpointError(f"{out}: already holds files ({shown}); name a new or empty folder, or add --force "
                              f"to replace the checkpoint in it (files that are not a checkpoint's are kept)")
    return out


def superseded(out_dir: Path, keep: set[Path] = frozenset()) -> list[Path]:
    """The checkpoint files in out_dir that a new checkpoint written there replaces or makes stale
    (see the module's docstring), but the `keep` ones (the files the model was read from)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = {d / n for n in _CHECKPOINT_FILES if (d / n).is_file()}
    found |= {p for p in d.iterdir() if p.is_file() and _SHARDS.fullmatch(p.name)}
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            weight_map = json.loads((d / index).read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(weight_map, dict):  # the shards it lists, whatever their names (in this folder only)
            found |= {d / n for n in weight_map.values() if isinstance(n, str) and "/" not in n and (d / n).is_file()}
    kept = {k.resolve() for k in keep}
    return sorted(p for p in found if p.resolve() not in kept)
