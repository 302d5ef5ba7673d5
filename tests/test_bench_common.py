"""benchmarks/_common.run_timed: a command's peak RSS is its own, not the benchmark process's (Linux starts a
forked process's ru_maxrss at its parent's image), and its exit status is the command's."""
import os
import sys

from benchmarks._common import run_timed


def test_peak_rss_is_the_commands_own_and_the_status_passes_through():
    held = bytearray(600 * 2**20)  # this process: 600 MB more than the command will ever hold
    held[::4096] = b"x" * len(held[::4096])  # touched, so resident
    small = run_timed([sys.executable, "-c", "b = bytearray(100 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                      dict(os.environ), None)
    assert small["rc"] == 0 and 100 <= small["peak_rss_mb"] < 400, small["peak_rss_mb"]  # before: >= 600 + this
    assert run_timed([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ), None)["rc"] == 3
    assert run_timed([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], dict(os.environ), None)["rc"] == -9
    slow = run_timed([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), 1.0)
    assert slow["rc"] == "timeout" and slow["wall_s"] < 30
