"""`graphopt report DIR [--wide] [--out DIR] [--no-plots]`: print the results table of an experiment
directory (within 120 columns; --wide: every column) and write next to it results.md (every column),
results.csv and the plots (drift_vs_speedup.png, speedup.png).

Exit status: 0, or 1 when the table was printed but the files could not be written (a read-only
folder: the table is still printed first, then one line naming the folder and the OS error; --out
writes the files elsewhere, --no-plots asks for none), or 2 when there are no results to read."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="an experiment's output directory (holds rows/*.parquet)")
    parser.add_argument("--wide", action="store_true",
                        help="print every column with full pass lists (what results.md holds), not the "
                             "120-column table")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write results.md, results.csv and the plots to DIR (created if missing) instead of "
                             "the results directory, e.g. when that is read-only")
    parser.add_argument("--no-plots", action="store_true", help="print the table only, write no files")


def main(args) -> int:
    import sys
    from pathlib import Path

    from graphopt.runner.report import not_written_line, table_text, write_outputs, written_line
    from graphopt.runner.store import load_results

    df = load_results(args.results)
    print(table_text(args.results, df, wide=args.wide), flush=True)
    if args.no_plots:
        return 0
    out = Path(args.out) if args.out else Path(args.results)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = write_outputs(df, args.results, out)
    except OSError as e:
        print(f"graphopt report: {not_written_line(out, e)}", file=sys.stderr)
        return 1
    print("\n" + written_line(paths, args.results))
    return 0
