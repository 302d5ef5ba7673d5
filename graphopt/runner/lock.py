"""One `graphopt run` at a time per output folder: an exclusive flock on OUTPUT_DIR/.lock, held for the
whole run, with the holder (pid, host, start time, command) written in the file for the message a second
run gets. The kernel drops a flock when its holder exits, however it exits (kill -9 included), so a lock
left behind by a dead process never blocks: only the file stays, and the next run takes it over.

    with hold_output_dir(cfg.out_dir):            # a second run: FolderBusyError naming the holder
        ...
    with hold_output_dir(out, wait=True):         # --wait: block until the holder finishes
        ...
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from graphopt.errors import UserError

LOCK_NAME = ".lock"


class FolderBusyError(UserError):
    """Another process holds the output folder's lock."""


def describe_holder(text: str) -> str:
    """The lock file's JSON -> 'pid 123 on host h since 2026-...: graphopt run x.yaml' (or what is known)."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']} since {h['started_at']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its details yet" if not text.strip() else f"holder {text.strip()!r}"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 65536).decode(errors="replace")


def _command_line() -> str:
    """This process's command line as typed: 'graphopt run x.yaml', 'python -m graphopt run x.yaml'."""
    prog = Path(sys.argv[0] or "python")
    head = ["python", "-m", prog.parent.name] if prog.name == "__main__.py" else [prog.name]
    return shlex.join(head + sys.argv[1:])


def _write_holder(fd: int, command: str | None) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": command or _command_line()}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())


@contextmanager
def hold_output_dir(out_dir: str | Path, wait: bool = False, command: str | None = None,
                    on_wait: Callable[[str], None] | None = None):
    """Hold OUTPUT_DIR/.lock for the body. Held by another process: FolderBusyError naming it, or with
    wait=True, on_wait(holder description) is called once and the call blocks until the lock is free."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # not inherited by run subprocesses
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_read(fd))
            if not wait:
                raise FolderBusyError(f"output folder {str(out_dir)!r} is in use by another graphopt run ({holder}; "
                                      f"lock file {path}). Wait for it to finish, pass --wait to queue behind it, "
                                      f"or choose another --output") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd, command)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: no stale holder details left for a reader
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
