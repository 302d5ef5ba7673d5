"""benchmarks/gpu_lease.sh on a machine without a GPU: every step fails with its own clear message in
its own log, and the script still runs the next step and exits 0 (a lease is never lost to one step)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_failing_steps_are_logged_and_the_next_step_runs(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "STEPS": "kernels check bogus", "PYTHON": sys.executable,
           "KERNELS_S": "60", "CHECK_S": "60"}
    proc = subprocess.run(["bash", "benchmarks/gpu_lease.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    kernels = (tmp_path / "kernels.log").read_text()
    check = (tmp_path / "check.log").read_text()
    assert "torch.cuda.is_available() is False" in kernels
    assert "'cuda' asked for but torch sees no CUDA device" in check
    assert (tmp_path / "report.log").exists()  # the report step ran after the failed check
    assert "=== kernels: exit 2" in proc.stdout and "=== check: exit 2" in proc.stdout
    assert "unknown step bogus" in proc.stdout
    assert (tmp_path / "machine.txt").exists()
