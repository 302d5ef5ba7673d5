"""Stopping `graphopt run` from outside: SIGTERM is handled as Ctrl-C (the worker is stopped, one line says
so, rows are kept, the temporary files go), and after kill -9 of the sweep its worker ends too (and the
ranks a worker launches end with it), even one killed while it was still starting (before it could ask the kernel for a death signal, the way a worker
used to be left running as an orphan). Nothing is left in the system's temporary folder, and the next
run into the folder clears what kill -9 left there and resumes.

The run under test is a user's pass that sleeps for an hour: a run that cannot end by itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphopt.runner.store import ResultStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the death signal is Linux's")

HANG = '''
import time
from pathlib import Path
from graphopt.pipeline import PassResult, register_pass

@register_pass("test_hang_for_an_hour", "sleeps for an hour: a run that does not end by itself (test)")
def hang(gm, ctx):
    Path(__file__).with_name("hanging").write_text("")
    time.sleep(3600)
    return PassResult(gm, False, {})
'''

YAML = """\
name: signals
model: tiny
data: {{limit: 4}}
warmup: 0
repeats: 1
output_dir: {out}
pass_modules: [hang.py]
runs:
  - {{name: hang, capture: export, passes: [test_hang_for_an_hour]}}
"""


def _workers_of(parent: int, command: bytes = b"graphopt.runner.worker") -> list[int]:
    """Live processes whose parent is `parent` and whose command line holds `command` (from /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and command in cmdline:
            found.append(int(d.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _graphopt_temporary(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name.startswith("graphopt-")]  # (torch keeps caches there too)


def _wait_for(condition, what: str, limit_s: float = 300.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def sweep(tmp_path):
    (tmp_path / "hang.py").write_text(HANG)
    (tmp_path / "signals.yaml").write_text(YAML.format(out=tmp_path / "out"))
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))  # where a temporary folder would be leaked
    started = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "graphopt", "run", str(tmp_path / "signals.yaml"),
                                 "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    orphans = []
    yield tmp_path, start, orphans
    for pid in orphans:  # a test that failed leaves its orphan: end it (it is this test's)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigterm_then_kill_9_end_the_worker_keep_the_rows_and_leak_nothing(sweep):
    tmp_path, start, orphans = sweep
    out = tmp_path / "out"

    # SIGTERM once the worker is inside the hour-long run: handled as Ctrl-C
    main = start()
    _wait_for(lambda: (tmp_path / "hanging").exists() or main.poll() is not None, "the run to start hanging")
    assert main.poll() is None, main.communicate()[1]
    (worker,) = _workers_of(main.pid)
    orphans.append(worker)
    main.send_signal(signal.SIGTERM)
    _, err = main.communicate(timeout=120)
    assert main.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("graphopt run: interrupted (SIGTERM); results written so far are kept")
    _wait_for(lambda: not _alive(worker), "the worker to end", limit_s=60)
    assert list(ResultStore(out).load()["run"]) == ["reference"]
    assert not (out / ".graphopt-run-tmp").exists() and _graphopt_temporary(tmp_path / "tmp") == []

    # kill -9 while the next worker is still starting (importing): it ends instead of running the hour
    (tmp_path / "hanging").unlink()
    reference = ResultStore(out).load()["finished_at"].tolist()
    main = start()
    _wait_for(lambda: _workers_of(main.pid) or main.poll() is not None, "the worker to start")
    assert main.poll() is None, main.communicate()[1]
    (worker,) = _workers_of(main.pid)
    orphans.append(worker)
    main.kill()
    main.wait()
    _wait_for(lambda: not _alive(worker), "the worker to end with its parent", limit_s=120)
    assert not (tmp_path / "hanging").exists()  # it never reached the run
    assert _graphopt_temporary(tmp_path / "tmp") == []  # its files were in the output folder

    # the next run resumes: the reference is not measured again, what kill -9 left is cleared
    from graphopt.runner.execute import run_experiment
    from graphopt.runner.config import load_config
    resumed = YAML.format(out=out).replace("pass_modules: [hang.py]\n", "")  # runs and pass modules may change
    (tmp_path / "signals.yaml").write_text(
        resumed.replace("hang, capture: export, passes: [test_hang_for_an_hour]",
                        "padded, capture: none, scoring: {strategy: padded, options: {batch_size: 8}}"))
    table = run_experiment(load_config(tmp_path / "signals.yaml"), progress=False, log=lambda *a: None)
    assert list(table["run"]) == ["reference", "padded"] and table["finished_at"].tolist()[:1] == reference
    assert not (out / ".graphopt-run-tmp").exists()


def sleep_an_hour():
    """A rank of launch() below (the spawned process imports it by name)."""
    time.sleep(3600)


def test_kill_9_of_a_launcher_ends_its_ranks():
    """The ranks of a world_size > 1 run are forked by launch()'s fork server, a child of its worker: the
    server ends with the worker and the ranks with the server."""
    code = ("from graphopt.distributed.launch import launch; from tests.test_runner_signals import sleep_an_hour; "
            "launch(sleep_an_hour, 2, timeout_s=3600)")
    launcher = subprocess.Popen([sys.executable, "-c", code])
    ranks = []

    def started() -> list[int]:
        servers = _workers_of(launcher.pid, b"forkserver")
        return [pid for server in servers for pid in _workers_of(server, b"forkserver")]
    try:
        _wait_for(lambda: len(started()) == 2 or launcher.poll() is not None, "the ranks to start")
        ranks = started() + _workers_of(launcher.pid, b"forkserver")
        assert launcher.poll() is None and len(ranks) == 3
        launcher.kill()
        launcher.wait()
        _wait_for(lambda: not any(map(_alive, ranks)), "the fork server and the ranks to end with their launcher",
                  limit_s=120)
    finally:
        for pid in ranks:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
