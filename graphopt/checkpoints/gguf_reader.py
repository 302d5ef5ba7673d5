"""Opening a GGUF file and reading its metadata: what the model loader (graphopt.checkpoints.gguf)
and the tokenizer builder (graphopt.checkpoints.gguf_tokenizer) both read."""
from __future__ import annotations

from pathlib import Path

from graphopt.checkpoints.errors import CheckpointError

MISSING = object()  # gguf_value without a default: the key must be there


def import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError("reading .gguf files needs the gguf package: pip install gguf "
                              "(or pip install 'graphopt[gguf]')") from e
    return gguf


def open_gguf(path: str | Path):
    """gguf.GGUFReader over `path` (memory-mapped copy-on-write, so tensors convert to torch without a
    copy); a missing, truncated or corrupt file -> CheckpointError naming it."""
    gguf = import_gguf()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return gguf.GGUFReader(path, mode="c")
    except Exception as e:  # bad magic, truncated header or data, unknown value/tensor type, ...
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def gguf_value(reader, key: str, default=MISSING):
    """A metadata value as plain Python (int, float, str, bool or list); missing -> default or CheckpointError."""
    field = reader.fields.get(key)
    if field is None:
        if default is MISSING:
            raise CheckpointError(f"{reader.data.filename}: GGUF metadata lacks {key!r}")
        return default
    return field.contents()
