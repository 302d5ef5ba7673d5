"""The output-folder lock (issue #18 item 2): while one process holds OUTPUT_DIR/.lock a second run fails
at once naming the holder (pid, command) and stores nothing; with wait it queues behind the holder; a
holder killed with SIGKILL leaves a folder that runs again (the kernel drops the flock)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from graphopt.runner.execute import run_experiment
from graphopt.runner.lock import FolderBusyError, hold_output_dir
from graphopt.runner.config import config_from_dict
from graphopt.runner.store import ResultStore


def _holder(out):
    """A process that takes the lock, says 'held', and keeps it until a line arrives on its stdin."""
    code = textwrap.dedent(f"""
        import sys
        from graphopt.runner.lock import hold_output_dir
        with hold_output_dir({str(out)!r}, command="holder-command --for-the-test"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _tiny_config(out):
    """Only the reference runs: the listed run resolves to the same key and is measured once."""
    return config_from_dict({"name": "locked", "model": "tiny", "data": {"limit": 2}, "warmup": 0, "repeats": 1,
                             "output_dir": str(out), "runs": [{"name": "same", "capture": "none"}]})


def test_second_run_fails_at_once_naming_the_holder_and_stores_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(FolderBusyError) as e:
            with hold_output_dir(out):
                pass
        msg = str(e.value)
        assert f"pid {proc.pid} on host" in msg and "holder-command --for-the-test" in msg, msg
        assert str(out) in msg and "--wait" in msg, msg
        with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"):
            run_experiment(_tiny_config(out), progress=False, log=lambda *a: None)
        assert not (out / "rows").exists() and not (out / "experiment.json").exists()
    finally:
        proc.communicate("release\n")
    assert proc.returncode == 0
    assert (out / ".lock").read_text() == ""  # released: no stale holder details


def test_wait_queues_behind_the_holder(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    seen = []

    def on_wait(holder):  # called once, before blocking: let the holder go
        seen.append(holder)
        proc.stdin.write("release\n")
        proc.stdin.flush()

    with hold_output_dir(out, wait=True, on_wait=on_wait, command="waiter"):
        held = json.loads((out / ".lock").read_text())
        assert held["pid"] == os.getpid() and held["command"] == "waiter"
    proc.wait()
    assert len(seen) == 1 and f"pid {proc.pid}" in seen[0], seen


def test_a_killed_holder_does_not_block_the_folder(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    proc.kill()  # SIGKILL: no chance to release; the kernel drops its flock
    proc.wait()
    assert f'"pid": {proc.pid}' in (out / ".lock").read_text()  # its details are still in the file
    table = run_experiment(_tiny_config(out), progress=False, log=lambda *a: None)
    assert list(table["run"]) == ["reference"] and list(table["status"]) == ["ok"], table[["run", "error"]]
    assert len(ResultStore(out).load()) == 1
