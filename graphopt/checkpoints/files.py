"""Reading checkpoint files safely: every failure becomes a CheckpointError naming the file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from graphopt.checkpoints.errors import CheckpointError


def load_pth(path: Path) -> dict[str, Tensor]:
    """torch.load a state dict memory-mapped (weights_only); any failure -> CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
        try:  # legacy (pre-zip) serialization cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e2})") from e2
    except Exception as e:  # truncated zip, unpickling error, EOF, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a dict of name -> tensor (a state dict)")
    return state


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def open_safetensors(path: Path):
    """A memory-mapped safetensors handle (safe_open); a bad header/size -> CheckpointError."""
    from safetensors import safe_open
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError: truncated file, bad header, ...
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
