"""Checks of the machine a command is about to use, made before any work starts: the device a user
names exists here, and the folder results go to can be written. Each failure is a UserError that
names the value and the cause, so the command line prints one line instead of a traceback."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from graphopt.errors import UserError

DEVICE_TYPES = ("cpu", "cuda")


def check_device(device: str, what: str = "--device") -> str:
    """device ('cpu', 'cuda', 'cuda:N') if this machine has it; -> the same string."""
    import torch

    kind, _, index = str(device).partition(":")
    if kind not in DEVICE_TYPES or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UserError(f"{what} {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cpu":
        return device
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device or driver visible"
        raise UserError(f"{what} {device!r}: torch {torch.__version__} sees no CUDA device here ({build}); "
                        f"use --device cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise UserError(f"{what} {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def file_blocking(path: Path) -> Path | None:
    """The path itself or the first parent of it that exists as a file (so no folder can be made there)."""
    return next((a for a in [path, *path.parents] if a.exists() and not a.is_dir()), None)


def write_problem(folder: Path) -> str | None:
    """Why no file can be created in the existing folder (one phrase), or None when one can."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e))
    return None


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create path (and its parents) if needed and prove a file can be written in it; -> the Path."""
    p = Path(path)
    blocker = file_blocking(p)
    if blocker is not None:
        raise UserError(f"{what} {str(p)!r}: {str(blocker)!r} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e))
        raise UserError(f"{what} {str(p)!r} cannot be written: {reason}") from None
    reason = write_problem(p)
    if reason is not None:
        raise UserError(f"{what} {str(p)!r} cannot be written: {reason}")
    return p
