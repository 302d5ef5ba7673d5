"""Opening a GGUF file and reading its metadata: what the model loader (graphopt.checkpoints.gguf)
and the tokenizer builder (graphopt.checkpoints.gguf_tokenizer) both read."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from graphopt.checkpoints.errors import CheckpointError

MISSING = object()  # gguf_value without a default: the key must be there


def import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError("reading .gguf files needs the gguf package: pip install gguf "
                              "(or pip install 'graphopt[gguf]')") from e
    return gguf


class _PastTheEnd(Exception):
    """The reader asked for bytes the file does not have."""


def _bounded_reader(gguf):
    """GGUFReader whose every read (header, metadata, tensor infos, tensor data: all go through `_get`)
    first checks that the file is long enough, so a truncated file is named as such instead of failing
    later in a numpy reshape. (A gguf version without `_get` reads as before: the generic message.)"""
    class BoundedReader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            end = int(offset) + np.dtype(dtype).itemsize * int(count)
            if end > len(self.data):
                raise _PastTheEnd(end)
            return super()._get(offset, dtype, count, override_order)
    return BoundedReader


def open_gguf(path: str | Path):
    """gguf.GGUFReader over `path` (memory-mapped copy-on-write, so tensors convert to torch without a
    copy); a missing, empty, truncated or corrupt file -> CheckpointError naming it."""
    gguf = import_gguf()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a GGUF file")
    try:
        return _bounded_reader(gguf)(path, mode="c")
    except _PastTheEnd as e:
        raise CheckpointError(f"{path}: truncated GGUF file: it ends at byte {size} but its contents go on to byte "
                              f"{e.args[0]} at least (an interrupted download or copy?)") from None
    except Exception as e:  # bad magic, unknown value/tensor type, ...
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def gguf_value(reader, key: str, default=MISSING):
    """A metadata value as plain Python (int, float, str, bool or list); missing -> default or CheckpointError."""
    field = reader.fields.get(key)
    if field is None:
        if default is MISSING:
            raise CheckpointError(f"{reader.data.filename}: GGUF metadata lacks {key!r}")
        return default
    return field.contents()
