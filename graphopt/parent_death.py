"""Processes graphopt starts (a `graphopt run` worker, the ranks `launch` spawns) end with the process that
started them, however it ends (kill -9 included), instead of running on as orphans.

Linux's PR_SET_PDEATHSIG has the kernel send a signal when the parent dies. Set in the child, it can
come too late: a worker spends seconds importing torch and pandas before it runs a line of its own, and
a parent killed in that time leaves it an orphan that runs to the end (the signal is only sent for a
death that happens after it is set). So the child also compares its parent pid with the pid of the
process that started it, right after setting the signal: different means that parent is already gone.
(The signal follows the parent *thread* that started the child; graphopt starts them from the thread that
then waits for them.)"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "GRAPHOPT_PARENT_PID"  # the pid a `graphopt run` worker was started by
_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when its parent dies; if `parent_pid` (the process that started it) already
    has, exit now (None: the signal only). No-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before the signal was set
        os._exit(1)


def take_parent_pid_from_env() -> int | None:
    """The pid in GRAPHOPT_PARENT_PID, removed from the environment (this process's own children are
    started by it, not by that pid)."""
    value = os.environ.pop(PARENT_PID_ENV, "")
    return int(value) if value.isdigit() else None
