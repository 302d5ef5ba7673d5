"""Results tables of an experiment directory, as markdown.

`screen_table(df)`: what a person reads in a terminal, every line <= 120 characters: short run names,
rounded metrics, a key to the abbreviated headers, and a legend that says what each run changes
from the row above (passes added / removed, capture, compiler, scoring, dtype).
`wide_table(df)`: every column with full pass lists (written to results.md; `graphopt report --wide`)."""
from __future__ import annotations

import json
import math
import textwrap

import pandas as pd

SCREEN_WIDTH = 120
MAX_RUN_NAME = 12  # longer run names show as "#<row>" in the table and are spelled out in the legend

WIDE_COLUMNS = ["run", "passes", "scoring", "dtype", "status", "acc", "acc_norm", "agree", "max_abs_dloglik",
                "within_tolerance", "latency_s", "speedup", "items_per_s", "tokens_per_s", "compile_s", "n_compiles",
                "startup_s", "load_s", "setup_s", "setup_cached", "capture_s", "passes_s", "weights_s",
                "peak_mem_mb", "n_params", "prefill_tok_s", "decode_tok_s_b1", "decode_tok_s", "best_batch", "ttft_s",
                "gen_peak_mem_mb", "gen_passes", "gen_error"]

# the settings a run is told apart by, in legend order (the passes come last, as a difference)
SETUP_FIELDS = ["capture", "compiler", "scoring", "dtype"]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Speedup = reference latency / run latency. Rows that name their reference (reference_key) already
    have it from store.load's derive_columns; older rows get it from this table's last ok reference."""
    if "reference_key" in df.columns and df["reference_key"].notna().all():
        return df
    df = df.copy()
    ref = df[(df["is_reference"] == True) & (df["status"] == "ok")]  # noqa: E712 - pandas bool column
    if len(ref):
        ref_latency = float(ref.iloc[-1]["latency_s"])
        df["speedup"] = [ref_latency / lat if s == "ok" and lat and lat > 0 else math.nan
                         for s, lat in zip(df["status"], df["latency_s"])]
    return df


# ---- markdown

def markdown_table(header: list[str], rows: list[list[str]], right: list[bool], pad: bool = True) -> str:
    """Aligned markdown table of already formatted cells; `right` marks right-aligned (numeric) columns.
    pad=False: cells as they are and rules `|---|---:|` (the benchmarks' tables, kept as RESULTS.md has them)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) if pad else 0 for i, h in enumerate(header)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) if n else v.ljust(w)  # noqa: E731
                                          for v, w, n in zip(vals, widths, right)) + " |"
    if pad:
        rules = [("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, right)]
    else:
        rules = ["---:" if n else "---" for n in right]
    return "\n".join([line(header), "|" + "|".join(rules) + "|"] + [line(r) for r in rows])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1e4):
        return f"{int(value):,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return _cell(value)


def to_markdown(df: pd.DataFrame) -> str:
    """Any frame as an aligned markdown table (numbers right-aligned, pipes escaped)."""
    cols = list(df.columns)
    rows = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    right = [all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in df[c])
             or (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])) for c in cols]
    return markdown_table([str(c) for c in cols], rows, right)


# ---- the wide table (a file, or --wide)

def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every column a person may want, full pass lists, rewrites per pass ("5/2/0")."""
    df = with_speedup(df)
    table = df[[c for c in WIDE_COLUMNS if c in df.columns]].copy()
    if "pass_records" in df:  # rewrites per pass, e.g. "5/2/0": a pass that matched nothing shows as 0
        table.insert(2, "matches", ["/".join(str(r["matches"]) for r in json.loads(v)) if isinstance(v, str) else ""
                                    for v in df["pass_records"]])
    for col in ("n_params", "n_compiles", "best_batch"):
        if col in table:
            table[col] = [int(v) if not _missing(v) else None for v in table[col]]
    return table


def wide_table(df: pd.DataFrame) -> str:
    return to_markdown(results_table(df))


# ---- the screen table

def _frac(v) -> str:
    return f"{v:.3f}"


def _drift(v) -> str:  # max |delta loglik|: two significant digits, "0" for identical
    if v == 0:
        return "0"
    return f"{v:.1e}" if v < 1e-3 else f"{v:.2g}" if v < 100 else f"{v:.0f}"


def _seconds(v) -> str:
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}" if v >= 0.01 else f"{v:.2g}"


def _times(v) -> str:
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _count(v) -> str:  # 172352 -> 172K, 58_200_000 -> 58.2M
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.0f}"


# (row column, header, what the header means, formatter, right-aligned); drop order when too wide: last first
SCREEN_COLUMNS = [
    ("acc", "acc", "", _frac, True),
    ("acc_norm", "acc_n", "acc_norm", _frac, True),
    ("agree", "agree", "", _frac, True),
    ("max_abs_dloglik", "maxΔll", "max |Δ loglik| vs reference", _drift, True),
    ("within_tolerance", "tol", "within tolerance", lambda v: "yes" if v else "no", False),
    ("latency_s", "lat_s", "latency, s", _seconds, True),
    ("speedup", "speedup", "", _times, True),
    ("compile_s", "comp_s", "compile time, s", _seconds, True),
    ("n_compiles", "#comp", "n_compiles", lambda v: f"{int(v)}", True),
    ("peak_mem_mb", "mem_MB", "peak memory, MB", lambda v: f"{v:.0f}", True),
    ("n_params", "params", "n_params", _count, True),
    ("status", "status", "", str, False),
]
DROP_FIRST = ["n_params", "n_compiles", "compile_s", "peak_mem_mb", "acc_norm"]


def short_names(names: list[str]) -> list[str]:
    """Run names for the table: a name up to MAX_RUN_NAME characters stays, a longer one becomes "#<row>"."""
    keep = {n for n in names if len(n) <= MAX_RUN_NAME}
    out = []
    for i, name in enumerate(names):
        short = name if name in keep else f"#{i}"
        while short != name and short in keep:  # a run literally named "#3"
            short += "'"
        out.append(short)
    return out


def _screen_rows(df: pd.DataFrame, columns: list) -> list[list[str]]:
    rows = []
    for short, (_, r) in zip(short_names([str(n) for n in df["run"]]), df.iterrows()):
        cells = [_cell(short)]
        for col, _, _, fmt, _ in columns:
            value = r.get(col)
            ok_metric = col == "status" or r["status"] == "ok"  # a failed run has no metrics
            cells.append("" if _missing(value) or not ok_metric else _cell(fmt(value)))
        rows.append(cells)
    return rows


def _passes(label) -> list[str]:
    return [] if _missing(label) or str(label) in ("", "-") else str(label).split(" + ")


def _changes(prev: pd.Series | None, row: pd.Series) -> str:
    """What `row` sets differently from `prev` (everything, for the first row)."""
    parts = []
    for field in SETUP_FIELDS:
        if field in row and not _missing(row[field]) and (prev is None or row[field] != prev[field]):
            parts.append(f"{field} {row[field]}")
    now = _passes(row.get("passes"))
    if prev is None:
        parts.append("passes " + (" ".join(now) if now else "none"))
    else:
        before = _passes(prev.get("passes"))
        added = [p for p in now if p not in before]
        removed = [p for p in before if p not in now]
        if added or removed:
            parts.append("passes " + " ".join([f"+{p}" for p in added] + [f"-{p}" for p in removed]))
        elif now != before:
            parts.append("passes reordered: " + " ".join(now))
    return "; ".join(parts) or "same setup as the row above"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=SCREEN_WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def legend(df: pd.DataFrame) -> list[str]:
    """One entry per run: its table name, its full name where shortened, and what it changes."""
    shorts = short_names([str(n) for n in df["run"]])
    width = max(len(s) for s in shorts)
    lines = ["Runs (what each changes from the row above):"]
    prev = None
    for short, (_, row) in zip(shorts, df.iterrows()):
        name = "" if short == row["run"] else f"{row['run']}: "
        lines += _wrap(f"  {short.ljust(width)}  {name}{_changes(prev, row)}", " " * (width + 4))
        prev = row
    return lines


def screen_table(df: pd.DataFrame) -> str:
    """The results table for a terminal: every line <= SCREEN_WIDTH characters."""
    df = with_speedup(df).reset_index(drop=True)
    columns = [c for c in SCREEN_COLUMNS if c[0] in df.columns]
    dropped = []
    while True:
        header = ["run"] + [c[1] for c in columns]
        table = markdown_table(header, _screen_rows(df, columns), [False] + [c[4] for c in columns])
        wide = max(len(line) for line in table.splitlines()) > SCREEN_WIDTH
        droppable = [c for c in columns if c[0] in DROP_FIRST]
        if not wide or not droppable:
            break
        victim = min(droppable, key=lambda c: DROP_FIRST.index(c[0]))
        columns.remove(victim)
        dropped.append(victim[1])
    key = "; ".join(f"{c[1]} = {c[2]}" for c in columns if c[2])
    notes = _wrap(f"Key: {key}.", "     ")
    if dropped:
        notes += _wrap(f"Not shown (too wide): {', '.join(dropped)}; see results.md.", "  ")
    return "\n".join([table, ""] + notes + [""] + legend(df))


# ---- the generation table (experiments with `measure: [score, generate]`)

def _rate(v) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


# (row column, header, what the header means, formatter)
GENERATION_COLUMNS = [
    ("acc", "acc", "", _frac),
    ("n_params", "params", "n_params", _count),
    ("gen_peak_mem_mb", "mem_MB", "peak memory while generating, MB", lambda v: f"{v:.0f}"),
    ("prefill_tok_s", "pre_t/s", "prefill tokens/s at batch 1", _rate),
    ("decode_tok_s_b1", "dec1_t/s", "decode tokens/s at batch 1", _rate),
    ("decode_tok_s", "dec_t/s", "decode tokens/s at the best batch", _rate),
    ("best_batch", "batch", "that batch", lambda v: f"{int(v)}"),
    ("ttft_s", "ttft_s", "time to first token at batch 1, s", _seconds),
]


def has_generation(df: pd.DataFrame) -> bool:
    return "gen_error" in df.columns and df["gen_error"].notna().any()


def generation_table(df: pd.DataFrame) -> str:
    """Accuracy next to generation speed and size, per run (the edge-compression table: accuracy, parameters,
    peak memory, tokens/s), and why generation was not measured where it was not."""
    df = df.reset_index(drop=True)
    shorts = short_names([str(n) for n in df["run"]])
    rows, notes = [], []
    for short, (_, r) in zip(shorts, df.iterrows()):
        ok = r["status"] == "ok" and not r.get("gen_error")
        rows.append([_cell(short)] + ["" if _missing(r.get(col)) or (col != "acc" and col != "n_params" and not ok)
                                      else _cell(fmt(r[col])) for col, _, _, fmt in GENERATION_COLUMNS])
        if r["status"] == "ok" and isinstance(r.get("gen_error"), str) and r["gen_error"]:
            notes += _wrap(f"- {short}: {r['gen_error']}", "  ")
    table = markdown_table(["run"] + [c[1] for c in GENERATION_COLUMNS], rows, [False] + [True] * len(GENERATION_COLUMNS))
    key = "; ".join(f"{c[1]} = {c[2]}" for c in GENERATION_COLUMNS if c[2])
    lines = [table, ""] + _wrap(f"Key: {key}.", "     ")
    return "\n".join(lines + (["", "Generation not measured:"] + notes if notes else []))
