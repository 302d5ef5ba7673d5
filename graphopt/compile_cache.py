"""Compiled artifacts kept across runs, and how many compiles a run did.

A second `graphopt eval` / `run` of the same model, pipeline and shapes reuses inductor's FX graph and
AOTAutograd caches instead of compiling again. They live in graphopt's cache folder
(graphopt.cache_store):

    $GRAPHOPT_CACHE_DIR (default: $XDG_CACHE_HOME/graphopt, i.e. ~/.cache/graphopt)
        inductor-torch<version>/      TORCHINDUCTOR_CACHE_DIR for this torch version

unless TORCHINDUCTOR_CACHE_DIR is already set (then that is used). `graphopt cache` shows the size,
`graphopt cache --clear` removes what graphopt wrote there. Entries are keyed by the graph, the input
shapes/dtypes and the torch build; nothing in the folder is trusted: every file inductor wrote is
recorded (size, sha256) after a compile and checked before the next process lets inductor load it,
and one that differs is discarded, said in one line, and compiled afresh (graphopt.inductor_files;
tests/test_compile_cache.py corrupts entries on purpose). Writes are atomic, so processes filling the
cache at once do not corrupt it. A cache folder that cannot be written (read-only, disk full) is not
an error: compiles then run without the cache, said once.
inductor-frozen (weights folded into the code) is never cached by inductor: that compile runs every
time, which is why the CPU default is exact-cpu with no compiler at all.
"""
from __future__ import annotations

import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from graphopt import inductor_files
from graphopt.cache_store import ENV, INDUCTOR_PREFIX, cache_root, mark

_state: dict | None = None  # what configure() decided in this process


def inductor_dir() -> Path:
    """The inductor cache folder of this torch version (another version gets its own: never reused)."""
    return cache_root() / f"{INDUCTOR_PREFIX}{torch.__version__.replace('+', '_')}"


def _writable(folder: Path) -> str | None:
    """None when a file can be created, written and removed in folder, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}"
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
        probe.unlink()
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def configure(log=None) -> dict:
    """Point inductor at graphopt's cache folder (once per process) and check it can be written; when
    it cannot, compile without the FX graph / AOTAutograd caches in a private temporary folder and say
    so once. -> {"dir": ..., "enabled": bool, "reason": str}."""
    global _state
    if _state is not None:
        return _state
    user_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if user_dir == _inductor_default():  # set by inductor itself on first use (cache_dir()), not by the user
        user_dir = None
    folder = Path(user_dir) if user_dir else inductor_dir()
    problem = _writable(folder)
    if problem is None and _writable(cache_root()) is not None:  # where the record of inductor's files goes
        folder, problem = cache_root(), _writable(cache_root())
    if problem is None:
        mark()
        inductor_files.verify(folder, log=log)  # before inductor may load anything there
        inductor_files.watch(folder, log=log)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        _state = {"dir": str(folder), "enabled": True, "reason": ""}
    else:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
        private = tempfile.mkdtemp(prefix="graphopt-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = private
        _state = {"dir": private, "enabled": False, "reason": problem}
        (log or _warn)(f"graphopt: the compile cache {str(folder)!r} cannot be written ({problem}); compiling "
                       f"without it this run (set {ENV} to a writable folder to keep compiles across runs)")
    return _state


def _inductor_default() -> str:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    return os.path.abspath(default_cache_dir())


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class CompileCount:
    compiles: int = 0  # graphs dynamo handed to a compiler
    cache_hits: int = 0  # of those, found in inductor's FX graph cache
    cache_misses: int = 0  # compiled and stored
    cache_bypass: int = 0  # compiled, not cacheable (inductor-frozen)

    def summary(self) -> str:
        return (f"{self.compiles} compile{'s' if self.compiles != 1 else ''}"
                + (f" (cache: {self.cache_hits} hit, {self.cache_misses} miss, {self.cache_bypass} not cacheable)"
                   if self.compiles else ""))


def _counts() -> tuple[int, int, int, int]:
    """dynamo's counters; zeros while torch._dynamo is not imported (then nothing was compiled, and
    importing it only to read them costs ~0.5 s a run that never compiles needs for nothing else)."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return 0, 0, 0, 0
    counters = utils.counters
    return (counters["stats"]["unique_graphs"], counters["inductor"]["fxgraph_cache_hit"],
            counters["inductor"]["fxgraph_cache_miss"], counters["inductor"]["fxgraph_cache_bypass"])


@contextmanager
def count_compiles():
    """with count_compiles() as c: ... -> c (a CompileCount) holds what was compiled inside."""
    before, out = _counts(), CompileCount()
    try:
        yield out
    finally:
        after = _counts()
        out.compiles, out.cache_hits, out.cache_misses, out.cache_bypass = (a - b for a, b in zip(after, before))
