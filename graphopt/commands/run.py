"""`graphopt run CONFIG [--set key=value ...] [--output DIR] [--wait]`: run an experiment YAML (reference
first, each run in its own process, results stored as they finish, finished runs skipped on re-run),
then print its report. Mistakes the model's sizes or the machine reveal (sharding that does not divide,
too many stages, missing CUDA devices) stop it before the reference runs; so does another `graphopt run`
holding the same output folder (--wait: queue behind it instead), and a folder whose rows came from
another configuration. SIGTERM is handled as Ctrl-C (rows kept, resumable); the exit status is 1 when
runs failed (the last line names them).

Under torchrun (`torchrun --nnodes N --nproc-per-node G -m graphopt run cfg.yaml`) it joins torchrun's
world instead of spawning processes: graphopt.runner.torchrun; only rank 0 writes rows and prints."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, dotted, value parsed as YAML (e.g. --set data.limit=20 "
                             "--set runs.0.dtype=bfloat16); repeatable")
    parser.add_argument("--output", default=None, help="results directory (default: the YAML's output_dir, "
                                                       "else results/<name>)")
    parser.add_argument("--retry-errors", action="store_true", help="run again the runs stored with status=error")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per run (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars / worker output")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    parser.add_argument("--wait", action="store_true", help="if another graphopt run holds the output folder, "
                                                            "wait for it to finish (default: fail at once, naming it)")


def main(args) -> int:
    from graphopt.errors import UserError
    from graphopt.runner.config import load_config
    from graphopt.runner.execute import run_experiment
    from graphopt.runner.report import report
    from graphopt.runner.sweep import expand
    from graphopt.runner.yaml_source import ConfigError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.output:
            cfg.output_dir = args.output
        if args.dry_run:
            for run in expand(cfg):
                print(f"{run.key}  {run.name:24s} capture={run.capture} compiler={run.compiler} "
                      f"dtype={run.dtype} scoring={run.scoring.strategy} passes={run.passes_label()}")
            return 0
        from graphopt.distributed.groups import under_torchrun
        from graphopt.runner.torchrun import run_under_torchrun
        if under_torchrun():
            return run_under_torchrun(cfg, retry_errors=args.retry_errors, progress=not args.no_progress,
                                      wait=args.wait)
        with sigterm_as_interrupt():
            table = run_experiment(cfg, retry_errors=args.retry_errors, progress=not args.no_progress,
                                   timeout_s=args.timeout, wait=args.wait)
    except ConfigError as e:
        raise UserError(str(e)) from None
    print(report(cfg.out_dir))
    failed = table[table["status"] != "ok"]
    if len(failed):  # the sweep went on past them; say so last, and in the exit status
        print(f"graphopt run: {len(failed)} of {len(table)} runs failed ({', '.join(map(str, failed['run']))}); "
              f"their errors are in the report above (Failed runs); --retry-errors runs them again", file=sys.stderr)
        return 1
    return 0


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (kill, a scheduler stopping the job) handled as Ctrl-C is: the running worker is stopped,
    rows already stored are kept, the output folder's temporary files are removed, and a re-run resumes."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
