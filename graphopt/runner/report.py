"""Report of an experiment directory: the screen table (<= 120 columns, report_table.py) printed, and
files written next to the results: results.md (every column, full pass lists), results.csv (every
stored field) and the plots (report_plots.py). A folder that cannot be written still gets its table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from graphopt.runner.report_plots import PLOT_FILES, write_plots
from graphopt.runner.report_table import (SCREEN_WIDTH, generation_table, has_generation, results_table,
                                          screen_table, short_names, to_markdown, wide_table, with_speedup)
from graphopt.runner.store import load_results

TABLE_FILES = ("results.md", "results.csv")
OUTPUT_FILES = TABLE_FILES + PLOT_FILES

__all__ = ["OUTPUT_FILES", "report", "results_table", "table_text", "to_markdown", "with_speedup", "write_outputs",
           "write_plots"]


def _first_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else "failed"


def failed_runs(df: pd.DataFrame, width: int | None = SCREEN_WIDTH) -> list[str]:
    """'- run: first line of its error' per failed run, cut to `width` characters (None: whole line)."""
    names = short_names([str(n) for n in df["run"]]) if width else [str(n) for n in df["run"]]
    out = []
    for name, (_, r) in zip(names, df.reset_index(drop=True).iterrows()):
        if r["status"] != "ok":
            line = f"- {name}: {_first_line(r['error'])}"
            out.append(line if not width or len(line) <= width else line[:width - 1] + "…")
    return out


def table_text(root: str | Path, df: pd.DataFrame, wide: bool = False) -> str:
    """Heading, the screen table (or with wide=True every column), the generation table where generation was
    measured, and the failed runs' first error lines."""
    df = df.reset_index(drop=True)
    lines = [f"## {root}", "", wide_table(df) if wide else screen_table(df)]
    if has_generation(df) and not wide:  # (the wide table has its columns)
        lines += ["", "Generation (decode engine, greedy):", "", generation_table(df)]
    errors = failed_runs(df, width=None if wide else SCREEN_WIDTH)
    if errors:
        lines += ["", "Failed runs:"] + errors
    return "\n".join(lines)


def write_outputs(df: pd.DataFrame, root: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write OUTPUT_FILES for the results of `root` into out_dir (default: root); -> their paths.
    Raises the OSError of the first file that cannot be written."""
    out = Path(out_dir if out_dir is not None else root)
    (out / "results.md").write_text(table_text(root, df, wide=True) + "\n")
    with_speedup(df).to_csv(out / "results.csv", index=False)
    return [out / name for name in TABLE_FILES] + write_plots(df, root, out)


def written_line(paths: list[Path], root: str | Path) -> str:
    where = "" if paths and paths[0].parent == Path(root) else f" in {paths[0].parent}"
    return f"Written{where}: " + ", ".join(p.name for p in paths) + " (results.md: every column)"


def not_written_line(out_dir: str | Path, error: OSError) -> str:
    return (f"plots and results.md not written: cannot write to {out_dir} ({type(error).__name__}: {error}); "
            f"--out DIR writes them elsewhere, --no-plots prints the table only")


def report(root: str | Path, plots: bool = True, wide: bool = False) -> str:
    """-> the report of the results in `root` (and, with plots=True, its files written there; a folder
    that cannot be written gets one line saying so after the table)."""
    df = load_results(root)
    text = table_text(root, df, wide=wide)
    if not plots:
        return text
    try:
        return text + "\n\n" + written_line(write_outputs(df, root), root)
    except OSError as e:
        return text + "\n\n" + not_written_line(root, e)
