"""The compile cache kept across runs (graphopt.compile_cache): a second process with the same model,
pipeline and shapes takes its compile from the cache; two processes filling it at once both succeed
and leave it usable; corrupt entries are misses that get rebuilt (FX graph and AOTAutograd entries, and
the .so and .py files inductor loads: a truncated .so used to end every later run in SIGBUS, a garbage
one in a traceback; now each is discarded in one line and compiled afresh); a folder that cannot be
written means compiling without the cache, said once, not an error. Each run is `graphopt eval` in a
fresh process, as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EVAL = [sys.executable, "-m", "graphopt", "eval", "--model", "tiny", "--limit", "4", "--no-progress",
        "--pipeline", "exact", "--compiler", "inductor", "--output", "json"]


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    return dict(env, GRAPHOPT_CACHE_DIR=str(cache))


def _run(cache: Path) -> dict:
    done = subprocess.run(EVAL, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout), "stderr": done.stderr}


def test_second_process_hits_concurrent_fill_and_corrupt_entries(tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(EVAL, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # two processes fill the empty cache at once
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    cold = [json.loads(o[0]) for o in outs]
    assert all(c["n_compiles"] == 1 for c in cold) and cold[0]["acc"] == cold[1]["acc"]
    folder = next(cache.glob("inductor-torch*"))
    assert list((folder / "fxgraph").rglob("*")), "nothing was written to the FX graph cache"

    warm = _run(cache)
    assert warm["n_compiles"] == 1 and warm["cache_hits"] == 1
    assert (warm["acc"], warm["acc_norm"]) == (cold[0]["acc"], cold[0]["acc_norm"])

    for f in list((folder / "fxgraph").rglob("*")) + list((folder / "aotautograd").rglob("*")):
        if f.is_file():
            f.write_bytes(b"not a cache entry")
    rebuilt = _run(cache)
    assert rebuilt["cache_hits"] == 0 and (rebuilt["acc"], rebuilt["acc_norm"]) == (warm["acc"], warm["acc_norm"])

    kernels = sorted(folder.glob("*/*.main.so"), key=lambda p: p.name)  # the graph's kernels, loaded on a hit
    truncated, garbage, module = kernels[0], kernels[1], sorted(folder.glob("*/*.py"))[0]
    sizes = {p: p.stat().st_size for p in (truncated, garbage)}
    truncated.write_bytes(truncated.read_bytes()[:4096])  # as a compile killed while gcc wrote it
    garbage.write_bytes(os.urandom(sizes[garbage]))  # same size, other bytes
    module.write_text("garbage(\n")
    fixed = _run(cache)  # before: SIGBUS (exit 135 from a shell), or a 140-line traceback for the garbage one
    lines = [line for line in fixed["stderr"].splitlines() if "discarded" in line]
    assert len(lines) == 1 and "discarded 3 files of the compile cache" in lines[0], fixed["stderr"][-2000:]
    assert all(p.relative_to(folder).as_posix() in lines[0] for p in (truncated, garbage, module))
    assert (fixed["acc"], fixed["acc_norm"]) == (warm["acc"], warm["acc_norm"])
    assert {p: p.stat().st_size for p in sizes} == sizes  # compiled afresh

    again = _run(cache)
    assert again["cache_hits"] == 1 and "discarded" not in again["stderr"]  # rebuilt entries are good again


@pytest.mark.slow  # one more inductor compile in a fresh process (~25 s idle); the cache's reuse and
# corrupt-entry tests above stay in the default run
def test_a_cache_folder_that_cannot_be_written_compiles_without_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = _run(blocker / "cache")  # a folder under a regular file cannot be made
    assert out["n_compiles"] == 1 and out["cache_hits"] == 0
    assert out["stderr"].count("cannot be written") == 1 and "without it" in out["stderr"]


def test_cache_command_shows_and_clears(tmp_path, capsys, monkeypatch):
    from graphopt.cli import main
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c" / "inductor-torchX").mkdir(parents=True)
    (tmp_path / "c" / "inductor-torchX" / "entry").write_bytes(b"0" * 2**20)
    assert main(["cache"]) == 0
    assert str(tmp_path / "c") in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "1.0 MiB" in capsys.readouterr().out and not (tmp_path / "c").exists()


def test_another_torch_version_gets_its_own_folder(monkeypatch, tmp_path):
    """Entries of another torch build are never read: each version compiles into its own folder."""
    import torch

    from graphopt.compile_cache import inductor_dir
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    here = inductor_dir()
    monkeypatch.setattr(torch, "__version__", "2.99.0+cpu")
    other = inductor_dir()
    assert here != other and here.parent == other.parent == tmp_path and "2.99.0" in other.name
