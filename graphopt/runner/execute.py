"""Run an experiment: the reference first, then every run in its own subprocess
(`python -m graphopt.runner.worker`), so a crash, an OOM kill or a compile failure becomes a row with
status="error" and the sweep goes on. Rows are stored as they finish; runs already in the store (by
run key) are skipped, so an interrupted sweep resumes where it stopped. Before anything runs, the
preflight checks (model sizes vs sharding, devices) pass and the output folder's lock is taken for the
whole run (graphopt.runner.lock): two runs into one folder never interleave, and a folder whose rows came
from another configuration is refused (graphopt.runner.same_experiment). A worker ends with this process,
even one killed with kill -9 (graphopt.parent_death)."""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import select
import signal
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from graphopt.errors import UserError
from graphopt.pipeline import pipeline_dtype
from graphopt.env_checks import check_writable_dir
from graphopt.parent_death import PARENT_PID_ENV
from graphopt.runner.lock import hold_output_dir
from graphopt.runner.preflight import preflight
from graphopt.runner.same_experiment import RECORD, check_same_experiment
from graphopt.runner.schema import ExperimentConfig, to_dict
from graphopt.runner.yaml_source import ConfigError
from graphopt.runner.store import COLUMNS, ResultStore, atomic_write
from graphopt.runner.sweep import ResolvedRun, expand
from graphopt.runner.worker import WorkerJob

WORKDIR = ".graphopt-run-tmp"  # inside the output folder (see run_workdir)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_world_size(cfg: ExperimentConfig) -> None:
    if cfg.world_size > 1 and importlib.util.find_spec("graphopt.distributed.launch") is None:
        raise ConfigError(f"{cfg.source}: world_size {cfg.world_size} > 1 needs graphopt.distributed "
                          f"(graphopt.distributed.launch is not available in this install)")


def _run_worker(job: WorkerJob, workdir: Path, timeout_s: float | None) -> dict:
    """Run one job in a fresh interpreter; -> the worker's result dict, or an error dict if it died."""
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(job.to_json())
    if result_path.exists():
        result_path.unlink()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_PID_ENV: str(os.getpid())})  # it ends with this process
    proc = subprocess.Popen([sys.executable, "-m", "graphopt.runner.worker", str(spec_path), str(result_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    tail = collections.deque(maxlen=64)  # last chunks of output, for the error text of a hard crash
    start = time.monotonic()
    timed_out = False
    try:
        fd = proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if timeout_s and not timed_out and time.monotonic() - start > timeout_s:
                timed_out = True
                proc.kill()
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            if job.progress:
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
            tail.append(chunk)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc in (130, -signal.SIGINT) and not result_path.exists():
        raise KeyboardInterrupt
    if result_path.exists():
        return json.loads(result_path.read_text())
    out = b"".join(tail).decode(errors="replace").strip()[-3000:]
    if timed_out:
        why = f"run exceeded its time limit of {timeout_s:g} s and was killed"
    elif rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = f"worker process died with signal {name}" + (" (killed: out of memory?)" if -rc == 9 else "")
    else:
        why = f"worker process exited with code {rc} without a result"
    return {"status": "error", "error": why + (f"\n--- last output ---\n{out}" if out else "")}


@contextmanager
def run_workdir(out_dir: Path):
    """OUTPUT_DIR/.graphopt-run-tmp: the workers' spec, result and log-likelihood files, removed when the
    sweep ends, however it ends short of kill -9; one that a killed sweep left is cleared by the next run
    into the folder (which holds the folder's lock, so no other sweep is using it)."""
    work = Path(out_dir) / WORKDIR
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_row(cfg: ExperimentConfig, run: ResolvedRun, order: int, result: dict, ref_row: dict | None,
             started_at: str, wall_s: float) -> dict:
    row = {c: None for c in COLUMNS}
    row.update({
        "order": order, "run": run.name, "run_key": run.key, "is_reference": run.is_reference,
        "reference_key": run.key if run.is_reference else (ref_row or {}).get("run_key"),
        "capture": run.capture, "passes": run.passes_label(), "compiler": run.compiler,
        "scoring": run.scoring.strategy + (json.dumps(run.scoring.options, sort_keys=True) if run.scoring.options else ""),
        "dtype": pipeline_dtype(run.passes, run.dtype), "device": cfg.device, "world_size": cfg.world_size,
        "started_at": started_at, "finished_at": _now(), "wall_s": wall_s,
        "config": json.dumps(run.config, sort_keys=True, default=str),
    })
    row.update(result)
    ok = row["status"] == "ok"
    if ok and ref_row is not None and ref_row.get("status") == "ok":
        d_acc_points = abs(row["acc"] - ref_row["acc"]) * 100.0
        row["within_tolerance"] = bool(d_acc_points <= cfg.tolerance.acc_points + 1e-9
                                       and row["max_abs_dloglik"] <= cfg.tolerance.max_abs_dloglik)
        row["speedup"] = float(ref_row["latency_s"] / row["latency_s"]) if row["latency_s"] > 0 else None
    elif ok and run.is_reference:
        row["within_tolerance"], row["speedup"] = True, 1.0
    else:
        row["within_tolerance"] = False
    row["error"] = row.get("error") or ""
    return row


def run_experiment(cfg: ExperimentConfig, retry_errors: bool = False, progress: bool = True,
                   timeout_s: float | None = None, log=print, wait: bool = False, run_job=None) -> pd.DataFrame:
    """Run every run of `cfg` not yet in its output dir; -> the full results table. The output dir is
    locked for the whole run: another run holding it -> FolderBusyError, or with wait=True, wait for it.
    run_job(job, workdir, timeout_s) -> result dict measures one run (default: a fresh worker process
    that spawns the ranks; under torchrun, graphopt.runner.torchrun runs it on the joined world)."""
    check_world_size(cfg)
    preflight(cfg)
    check_writable_dir(cfg.out_dir, what="output_dir")  # a read-only or misplaced folder: one line, before any run
    with hold_output_dir(cfg.out_dir, wait=wait, on_wait=lambda holder: log(f"{cfg.out_dir}: waiting for {holder}")):
        return _run_locked(cfg, retry_errors, progress, timeout_s, log, run_job or _run_worker)


def _run_locked(cfg: ExperimentConfig, retry_errors: bool, progress: bool, timeout_s: float | None,
                log, run_job) -> pd.DataFrame:
    runs = expand(cfg)
    store = ResultStore(cfg.out_dir)
    check_same_experiment(cfg.out_dir, to_dict(cfg), has_rows=not store.load().empty)
    text = json.dumps(to_dict(cfg), indent=2, default=str)
    atomic_write(cfg.out_dir / RECORD, lambda p: Path(p).write_text(text))
    ref = runs[0]
    assert ref.is_reference
    ref_row = store.get(ref.key)
    if ref_row is not None and store.load_loglik(ref.key) is None:
        ref_row = None  # its log-likelihoods were lost: measure it again
    if ref_row is not None and ref_row["status"] != "ok" and retry_errors:
        ref_row = None
    done = store.done_keys(include_errors=not retry_errors)
    todo = [r for r in runs if r.key not in done or (r.is_reference and ref_row is None)]
    if len(todo) < len(runs):
        log(f"{cfg.out_dir}: {len(runs) - len(todo)} of {len(runs)} runs already done, running {len(todo)}")
    with run_workdir(cfg.out_dir) as tmp:
        bar = tqdm(total=len(todo), desc=cfg.name, unit="run", disable=not progress, file=sys.stderr)
        for run in todo:
            order = runs.index(run)
            bar.set_postfix_str(run.name)
            if not run.is_reference and (ref_row is None or ref_row["status"] != "ok"):
                raise UserError(f"the reference run failed, nothing to compare with:\n{ref_row and ref_row['error']}")
            job = WorkerJob(cfg, run, loglik_out=str(Path(tmp) / "loglik.npy"),
                            reference_loglik=None if run.is_reference else str(store.loglik_path(ref.key)),
                            progress=progress, timeout_s=timeout_s)
            started, t0 = _now(), time.perf_counter()
            result = run_job(job, Path(tmp), timeout_s)
            if result["status"] == "ok":
                import numpy as np
                store.save_loglik(run.key, np.load(job.loglik_out))
            row = make_row(cfg, run, order, result, None if run.is_reference else ref_row, started,
                           time.perf_counter() - t0)
            store.write_row(row)
            if run.is_reference:
                ref_row = row
            if row["status"] != "ok":
                first = row["error"].strip().splitlines()[0] if row["error"].strip() else "?"
                tqdm.write(f"run {run.name!r} failed: {first}", file=sys.stderr)
            bar.update(1)
        bar.close()
    if ref_row is None or ref_row["status"] != "ok":
        raise UserError(f"the reference run failed:\n{ref_row and ref_row['error']}")
    return store.load()
