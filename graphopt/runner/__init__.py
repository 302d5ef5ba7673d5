"""Experiment runner: YAML schema (schema.py) and its loader (config.py), sweep expansion (sweep.py), one
subprocess per run (execute.py + worker.py), the parquet result store (store.py) and reports (report.py).

    cfg = load_config("experiments/quickstart.yaml", ["data.limit=4"])
    table = run_experiment(cfg)          # reference first, then every run; resumes by run key
    print(report(cfg.out_dir))           # markdown table + plots in the output dir
"""
from graphopt.runner.config import load_config
from graphopt.runner.schema import ExperimentConfig
from graphopt.runner.store import ResultStore, load_results
from graphopt.runner.sweep import ResolvedRun, expand
from graphopt.runner.yaml_source import ConfigError


def run_experiment(*args, **kwargs):
    from graphopt.runner.execute import run_experiment as run
    return run(*args, **kwargs)


def report(*args, **kwargs):
    from graphopt.runner.report import report as render
    return render(*args, **kwargs)


__all__ = ["ConfigError", "ExperimentConfig", "ResolvedRun", "ResultStore", "expand", "load_config", "load_results",
           "report", "run_experiment"]
