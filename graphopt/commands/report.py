"""`graphopt report DIR`: print the results table of an experiment directory (markdown) and write its
plots (latency_vs_accuracy.png, speedup.png) into it."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="an experiment's output directory (holds rows/*.parquet)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")


def main(args) -> int:
    from graphopt.runner.report import report

    print(report(args.results, plots=not args.no_plots))
    return 0
