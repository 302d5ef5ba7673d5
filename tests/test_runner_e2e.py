"""End-to-end sweep on the tiny preset: every run in its own process; a sweep killed with SIGKILL after
its first row resumes without recomputing or losing finished rows; a run that raises (bad pass option)
and a run whose process dies (SIGKILL, as the OOM killer does) become status="error" rows while the
others complete; the report renders."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from graphopt.runner.execute import run_experiment
from graphopt.runner.report import report
from graphopt.runner.config import load_config
from graphopt.runner.store import COLUMNS, ResultStore

YAML = """\
name: e2e
model: tiny
data: {limit: 4}
warmup: 0
repeats: 1
output_dir: {out}
runs:
  - {name: padded, capture: none, scoring: {strategy: padded, options: {batch_size: 8}}}
  - {name: not-applicable, capture: export, passes: [sdpa_attention, prefix_attention]}   # padded: no layout ids
  - {name: killed, capture: none, scoring: {strategy: padded, options: {batch_size: 4}}}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "out"
    cfg_path = tmp / "e2e.yaml"
    cfg_path.write_text(YAML.replace("{out}", str(out)))
    env = dict(os.environ, GRAPHOPT_RUNNER_KILL="killed")
    code = textwrap.dedent(f"""
        from graphopt.runner.execute import run_experiment
        from graphopt.runner.config import load_config
        run_experiment(load_config({str(cfg_path)!r}), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    rows = out / "rows"
    deadline = time.monotonic() + 180  # the first row: a worker importing torch on a busy host can take a minute
    while time.monotonic() < deadline and proc.poll() is None and not list(rows.glob("*.parquet")):
        time.sleep(0.1)
    assert proc.poll() is None, "sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # kill -9 mid-sweep, right after the first row was stored
    proc.wait()
    before = ResultStore(out).load()
    assert len(before) >= 1
    os.environ["GRAPHOPT_RUNNER_KILL"] = "killed"
    try:
        table = run_experiment(load_config(cfg_path), progress=False, log=lambda *a: None)
    finally:
        del os.environ["GRAPHOPT_RUNNER_KILL"]
    return out, before, table


def test_all_rows_with_required_columns(sweep):
    out, _, table = sweep
    assert list(table["run"]) == ["reference", "padded", "not-applicable", "killed"]
    required = ["run", "run_key", "passes", "scoring", "dtype", "device", "world_size", "n_items", "acc", "acc_norm",
                "agree", "max_abs_dloglik", "within_tolerance", "latency_s", "items_per_s", "tokens_per_s",
                "speedup", "compile_s", "peak_mem_mb", "n_params", "status", "error"]
    assert set(required) <= set(table.columns) and set(COLUMNS) <= set(table.columns)
    ok = table[table["status"] == "ok"].set_index("run")
    assert list(ok.index) == ["reference", "padded"]
    assert (ok["n_items"] == 4).all() and (ok["latency_s"] > 0).all() and (ok["peak_mem_mb"] > 0).all()
    assert (ok["n_params"] > 0).all() and ok.loc["reference", "speedup"] == 1.0
    # padded batching computes the same log-likelihoods as per-pair scoring
    assert ok.loc["padded", "max_abs_dloglik"] < 1e-3 and ok.loc["padded", "agree"] == 1.0
    assert bool(ok.loc["padded", "within_tolerance"]) and ok.loc["padded", "acc"] == ok.loc["reference", "acc"]
    assert (out / "results.parquet").exists() and len(pd.read_parquet(out / "results.parquet")) == 4
    assert ResultStore(out).load_loglik(ok.loc["reference", "run_key"]).shape == (16,)  # 4 questions x 4 endings


def test_failures_become_error_rows(sweep):
    _, _, table = sweep
    rows = table.set_index("run")
    assert rows.loc["not-applicable", "status"] == "error"
    assert "doc_ids" in rows.loc["not-applicable", "error"] and "PassError" in rows.loc["not-applicable", "error"]
    assert rows.loc["killed", "status"] == "error" and "SIGKILL" in rows.loc["killed", "error"]
    assert not rows.loc["killed", "within_tolerance"]


def test_resume_after_kill_keeps_finished_rows(sweep):
    out, before, table = sweep
    assert len(table) == 4 and table["run_key"].is_unique
    after = table.set_index("run_key")
    for _, row in before.iterrows():  # rows finished before the kill were not recomputed
        assert after.loc[row["run_key"], "finished_at"] == row["finished_at"]
        assert after.loc[row["run_key"], "latency_s"] == row["latency_s"]
    # a third invocation runs nothing
    again = run_experiment(load_config(out.parent / "e2e.yaml"), progress=False, log=lambda *a: None)
    assert list(again["finished_at"]) == list(table["finished_at"])


def test_report_on_sweep(sweep):
    out, _, _ = sweep
    text = report(out)
    assert "| run" in text and "padded" in text and "not-applicable" in text and "Failed runs" in text
    for name in ("drift_vs_speedup.png", "speedup.png"):
        assert (out / name).stat().st_size > 1000


def test_run_over_time_limit_is_an_error_row_and_a_failed_reference_stops(tmp_path):
    from graphopt.errors import UserError
    cfg_path = tmp_path / "t.yaml"
    cfg_path.write_text(YAML.replace("{out}", str(tmp_path / "out")))
    with pytest.raises(UserError, match=r"(?s)reference run failed.*time limit"):
        run_experiment(load_config(cfg_path), progress=False, timeout_s=0.5, log=lambda *a: None)
    table = ResultStore(tmp_path / "out").load()
    assert list(table["run"]) == ["reference"] and table.loc[0, "status"] == "error"  # nothing ran after it


def test_cli_run_resumes_and_prints_report(sweep, capsys):
    from graphopt.cli import main
    out, _, table = sweep
    assert main(["run", str(out.parent / "e2e.yaml"), "--no-progress"]) == 1  # all done: prints the report only,
    printed = capsys.readouterr()                                               # and exits 1: two runs failed
    text = printed.out
    assert "| reference" in text and "| killed" in text
    assert printed.err.strip().splitlines()[-1].startswith(
        "graphopt run: 2 of 4 runs failed (not-applicable, killed); their errors are in the report above")
    assert list(ResultStore(out).load()["finished_at"]) == list(table["finished_at"])
    assert main(["run", str(out.parent / "e2e.yaml"), "--set", "data.limt=3"]) == 2
    assert "did you mean 'limit'" in capsys.readouterr().err
