"""launch(fn, world_size): run fn(*args) on world_size processes joined in one process group (forked from
a fork server that has imported torch once: _rank_context).

Each process gets torchrun's env (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free
port), so code written for torchrun runs unchanged; the group is nccl on CUDA, gloo on CPU, with a
collective timeout. The parent collects every rank's return value (list in rank order; rank 0's is
`results[0]`). A rank that raises writes its traceback and exits 1; the parent then stops every
other rank (SIGTERM, then SIGKILL) and raises LaunchError with that rank's traceback — never a hang.
The LaunchError's first line names the cause: 'launch: rank 0 of 3 failed: ValueError: ...'.
"""
from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from graphopt.distributed.groups import default_backend, free_port, init_from_env
from graphopt.parent_death import end_with_parent


class LaunchError(RuntimeError):
    """A rank failed or the world timed out; the message holds the failing rank's traceback."""

    def __init__(self, message: str, rank: int | None = None, exitcodes: dict | None = None):
        super().__init__(message)
        self.rank, self.exitcodes = rank, exitcodes or {}


def _worker(fn, rank: int, world_size: int, port: int, backend: str, timeout_s: float, args: tuple,
            outdir: str, threads: int, parent_pid: int, environ: dict) -> None:
    end_with_parent(parent_pid)  # the fork server ends when the launcher does (even kill -9): the ranks too
    _let_the_fork_server_end()
    os.environ.clear()  # the launcher's environment now, not the fork server's from when it started
    os.environ.update(environ)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    out = Path(outdir)
    try:
        init_from_env(backend, timeout_s=timeout_s)
        result = fn(*args)
        buf = io.BytesIO()
        torch.save(result, buf)
        (out / f"rank{rank}.tmp").write_bytes(buf.getvalue())
        os.replace(out / f"rank{rank}.tmp", out / f"rank{rank}.pt")
    except BaseException as e:
        # first line: when it failed and whether it is a collective failing because a peer died,
        # so the parent can name the rank that caused it
        import torch.distributed as dist
        secondary = int(isinstance(e, getattr(dist, "DistError", ())) or "Connection closed by peer" in str(e))
        (out / f"rank{rank}.err").write_text(f"{time.time()} {secondary}\n" + traceback.format_exc())
        os._exit(1)  # skip process-group teardown: peers may be stuck in a collective with us
    # Wait for every rank, then leave without interpreter teardown: destroying a gloo group (or
    # letting its threads meet C++ static destructors) once a peer has gone can abort the process
    # ("terminate called without an active exception"), turning a finished run into a crash.
    try:
        import torch.distributed as dist
        dist.barrier()
    except Exception:
        (out / f"rank{rank}.err").write_text(f"{time.time()} 1\n" + traceback.format_exc())
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def exception_line(traceback_text: str) -> str:
    """The 'Type: message' line of a formatted traceback (the first unindented line after its last
    'File ...' frame, the type without its module), so the one-line cause of a failure can head an
    error message; text that is not a traceback -> its first line."""
    lines = [line for line in traceback_text.rstrip().splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    after = [line for line in lines[frames[-1] + 1:] if not line[:1].isspace()] if frames else []
    line = (after or lines or [""])[0].strip()
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*:)", r"\1", line)  # graphopt.pipeline.PassError: -> PassError:


def _root_cause(outdir: str, bad: list[int]) -> int:
    """The failed rank that caused the others: not a collective broken by a dead peer, earliest."""
    keyed = []
    for r in bad:
        err = Path(outdir) / f"rank{r}.err"
        if err.exists():
            t, secondary = err.read_text().split("\n", 1)[0].split()
            keyed.append((int(secondary), float(t), r))
        else:
            keyed.append((0, float("inf"), r))  # crashed without a traceback (signal, OOM)
    return min(keyed)[2]


def _stop(procs, grace_s: float = 3.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _let_the_fork_server_end() -> None:
    """A forked rank holds the write end of the pipe whose end-of-file tells the fork server that its
    launcher is gone (multiprocessing hands it to every child, so that the server outlives them): with it
    open, a launcher killed with -9 would leave the server and so the ranks running. Closed here, the
    server exits when the launcher does, and each rank with the server (end_with_parent)."""
    from multiprocessing import forkserver
    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if fd is not None:
        forkserver._forkserver._forkserver_alive_fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def _rank_context(fn):
    """Ranks are forked from a fork server that has imported torch once (multiprocessing's "forkserver"),
    not spawned: a spawned rank imports torch and graphopt afresh (2 s of CPU each, 8 s for a world of
    4 on 2 cores) for every run of a sweep. The server is a clean single-threaded process started on the
    first launch and kept for the launcher's life (no CUDA context, no thread pools: safe to fork).
    Each rank then takes the launcher's environment of the moment (_worker)."""
    from multiprocessing import forkserver
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "graphopt.distributed.launch", fn.__module__])  # once: the first launch
    forkserver.ensure_running()
    return ctx, forkserver._forkserver._forkserver_pid


def launch(fn, world_size: int, args: tuple = (), backend: str | None = None, timeout_s: float = 120.0,
           collective_timeout_s: float = 30.0, threads_per_rank: int | None = None, workdir: str | None = None) -> list:
    """Run fn(*args) on world_size processes; return their results in rank order.

    fn must be importable (a module-level function). timeout_s bounds the whole run;
    collective_timeout_s bounds each collective (init_process_group(timeout=...)). The ranks' result
    files live in a temporary folder inside `workdir` (default: the system's temporary folder)."""
    assert world_size >= 1, world_size
    backend = backend or default_backend()
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world_size)
    ctx, parent_pid = _rank_context(fn)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="graphopt-launch-", dir=workdir) as outdir:
        procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, backend, collective_timeout_s, args,
                                                   outdir, threads, parent_pid, dict(os.environ)), daemon=False)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        failed = None
        while True:
            codes = [p.exitcode for p in procs]
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                time.sleep(0.5)  # let the errors it causes on other ranks land, then pick the cause
                failed = _root_cause(outdir, [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)])
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                _stop(procs)
                running = [r for r, c in enumerate(codes) if c is None]
                raise LaunchError(f"launch: world of {world_size} timed out after {timeout_s:.0f}s; "
                                  f"ranks still running: {running}", exitcodes=dict(enumerate(codes)))
            time.sleep(0.05)
        if failed is not None:
            _stop(procs)
            err = Path(outdir) / f"rank{failed}.err"
            text = err.read_text().split("\n", 1)[1] if err.exists() else \
                f"(rank {failed} exited with code {procs[failed].exitcode} without a traceback: killed or crashed)"
            # first line: the cause, in one line (a console or a table's error column shows just that)
            raise LaunchError(f"launch: rank {failed} of {world_size} failed: {exception_line(text)}\n{text}",
                              rank=failed, exitcodes={r: p.exitcode for r, p in enumerate(procs)})
        results = []
        for r in range(world_size):
            data = (Path(outdir) / f"rank{r}.pt").read_bytes()
            results.append(torch.load(io.BytesIO(data), weights_only=True))
        return results
