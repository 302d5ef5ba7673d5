"""A world of spawned ranks that stays up between tests: `World(n).run(fn, *args)` runs fn(*args) on
every rank of one gloo process group and returns the results in rank order, as
graphopt.distributed.launch does, without starting n interpreters and joining a new group for each
test. The ranks get launch's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, threads per
rank). A job that raises, a rank that dies, or a job past its time limit ends the world (every rank
is stopped) and raises WorldError with the failing rank's traceback. The tests of launch() itself
(results per rank, a failing rank stopping the world) still call launch()."""
from __future__ import annotations

import io
import os
import queue
import time
import traceback

import torch
import torch.multiprocessing as mp

from graphopt.distributed.groups import free_port, init_from_env


_PEER_GONE = ("Connection closed by peer", "DistNetworkError", "Connection reset by peer")  # a collective's peer died


class WorldError(RuntimeError):
    """A rank failed or a job timed out; the world that ran it has been stopped."""


def _serve(rank: int, size: int, port: int, threads: int, collective_timeout_s: float, jobs, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    init_from_env("gloo", timeout_s=collective_timeout_s)
    while True:
        job = jobs.get()
        if job is None:
            break
        fn, args = job
        try:
            buf = io.BytesIO()
            torch.save(fn(*args), buf)
            results.put((rank, True, buf.getvalue()))
        except BaseException:
            results.put((rank, False, traceback.format_exc()))
            results.close()
            results.join_thread()  # the traceback reaches the parent before we go
            os._exit(1)  # peers may be stuck in a collective with us: the parent stops them
    os._exit(0)  # no interpreter teardown of a gloo group whose peers are leaving too


class World:
    """n ranks in one gloo process group, serving jobs until close()."""

    def __init__(self, size: int, collective_timeout_s: float = 60.0):
        ctx = mp.get_context("spawn")
        port = free_port()
        threads = max(1, (os.cpu_count() or 1) // size)
        self.size = size
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(size)]
        self._procs = [ctx.Process(target=_serve, args=(r, size, port, threads, collective_timeout_s, self._jobs[r],
                                                        self._results), daemon=True) for r in range(size)]
        for p in self._procs:
            p.start()

    @property
    def alive(self) -> bool:
        return all(p.is_alive() for p in self._procs)

    def run(self, fn, *args, timeout_s: float = 300.0) -> list:
        """fn(*args) on every rank (fn importable: a module-level function) -> results in rank order."""
        if not self.alive:
            raise WorldError(f"world of {self.size} is not running")
        for q in self._jobs:
            q.put((fn, args))
        got, deadline = {}, time.monotonic() + timeout_s
        while len(got) < self.size:
            try:
                rank, ok, data = self._results.get(timeout=0.5)
            except queue.Empty:
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive() and r not in got]
                late = time.monotonic() > deadline
                if dead or late:
                    self.close()
                    why = f"ranks {dead} died without a result" if dead else f"timed out after {timeout_s:g}s"
                    raise WorldError(f"world of {self.size}: {fn.__name__} {why}") from None
                continue
            if not ok:
                rank, data = self._first_cause({rank: data})
                self.close()
                raise WorldError(f"world of {self.size}: rank {rank} failed in {fn.__name__}:\n{data}")
            got[rank] = torch.load(io.BytesIO(data), weights_only=True)
        return [got[r] for r in range(self.size)]

    def _first_cause(self, failed: dict, wait_s: float = 1.0) -> tuple[int, str]:
        """The failure that caused the others: a rank's own error, not a collective broken by a peer that
        died (those follow within moments)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                rank, ok, data = self._results.get(timeout=0.1)
            except queue.Empty:
                continue
            if not ok:
                failed[rank] = data
        own = {r: t for r, t in failed.items() if not any(m in t for m in _PEER_GONE)}
        rank = min(own or failed)
        return rank, (own or failed)[rank]

    def close(self, grace_s: float = 5.0) -> None:
        """Let every rank leave (or stop it); idempotent."""
        for p, q in zip(self._procs, self._jobs):
            if p.is_alive():
                q.put(None)
        deadline = time.monotonic() + grace_s
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(1.0)

