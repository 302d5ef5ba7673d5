"""Reports of an experiment directory: a markdown table (pandas + a small formatter) and plots
(matplotlib, Agg): latency vs accuracy with the tolerance band, speedup per run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from graphopt.runner.store import load_results

TABLE_COLUMNS = ["run", "passes", "scoring", "dtype", "status", "acc", "acc_norm", "agree", "max_abs_dloglik",
                 "within_tolerance", "latency_s", "speedup", "items_per_s", "tokens_per_s", "compile_s", "n_compiles",
                 "peak_mem_mb", "n_params"]


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Speedup = reference latency / run latency, recomputed from this table's reference row."""
    df = df.copy()
    ref = df[(df["is_reference"] == True) & (df["status"] == "ok")]  # noqa: E712 - pandas bool column
    if len(ref):
        ref_latency = float(ref.iloc[-1]["latency_s"])
        df["speedup"] = [ref_latency / lat if s == "ok" and lat and lat > 0 else math.nan
                         for s, lat in zip(df["status"], df["latency_s"])]
    return df


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
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
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    numeric = [all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in df[c])
               or (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])) for c in cols]
    line = lambda vals: "| " + " | ".join(v.rjust(w) if n else v.ljust(w)  # noqa: E731
                                          for v, w, n in zip(vals, widths, numeric)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(cols), sep] + [line(r) for r in cells])


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    df = with_speedup(df)
    table = df[[c for c in TABLE_COLUMNS if c in df.columns]].copy()
    if "pass_records" in df:  # rewrites per pass, e.g. "5/2/0": a pass that matched nothing shows as 0
        table.insert(2, "matches", ["/".join(str(r["matches"]) for r in json.loads(v)) if isinstance(v, str) else ""
                                    for v in df["pass_records"]])
    if "passes" in table:
        table["passes"] = [p if len(p) <= 64 else p[:61] + "..." for p in table["passes"].astype(str)]
    for col in ("n_params",):
        if col in table:
            table[col] = [int(v) if v is not None and v == v else None for v in table[col]]
    return table


def _errors(df: pd.DataFrame) -> list[str]:
    out = []
    for _, r in df[df["status"] != "ok"].iterrows():
        first = (r["error"] or "").strip().splitlines()
        out.append(f"- {r['run']}: {first[0] if first else 'failed'}")
    return out


def plot_latency_vs_accuracy(df: pd.DataFrame, path: Path, acc_points: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = ok[ok["is_reference"] == True]  # noqa: E712
    if len(ref):
        ref_acc = float(ref.iloc[-1]["acc"]) * 100
        ax.axhspan(ref_acc - acc_points, ref_acc + acc_points, color="tab:green", alpha=0.15,
                   label=f"reference acc ± {acc_points:g} pt")
        ax.axhline(ref_acc, color="tab:green", lw=0.8)
    colors = ["tab:blue" if w else "tab:red" for w in ok["within_tolerance"]]
    ax.scatter(ok["latency_s"], ok["acc"] * 100, c=colors, zorder=3)
    for i, (_, r) in enumerate(ok.sort_values("latency_s").iterrows()):  # stagger labels of close points
        ax.annotate(str(r["run"]), (r["latency_s"], r["acc"] * 100), fontsize=7, xytext=(3, 3 + 9 * (i % 4)),
                    textcoords="offset points")
    ax.set_xlabel("latency over the data set, s (median of repeats)")
    ax.set_ylabel("accuracy, %")
    ax.set_title("latency vs accuracy (blue: within tolerance, red: outside)")
    if len(ok) and ok["latency_s"].max() / max(ok["latency_s"].min(), 1e-12) > 20:
        ax.set_xscale("log")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedup(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * max(len(df), 2)))
    values = [s if st == "ok" and s == s else 0.0 for s, st in zip(df["speedup"], df["status"])]
    colors = ["tab:gray" if st != "ok" else "tab:blue" if w else "tab:red"
              for st, w in zip(df["status"], df["within_tolerance"])]
    y = range(len(df))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y))
    ax.set_yticklabels([f"{r}" + (" (error)" if st != "ok" else "") for r, st in zip(df["run"], df["status"])],
                       fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speedup vs reference (reference latency / run latency)")
    ax.set_title("speedup per run (blue: within tolerance, red: outside, gray: error)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _acc_points(root: Path) -> float:
    path = root / "experiment.json"
    if path.exists():
        return float(json.loads(path.read_text()).get("tolerance", {}).get("acc_points", 0.5))
    return 0.5


def write_plots(df: pd.DataFrame, root: str | Path) -> list[Path]:
    root = Path(root)
    df = with_speedup(df)
    return [plot_latency_vs_accuracy(df, root / "latency_vs_accuracy.png", _acc_points(root)),
            plot_speedup(df, root / "speedup.png")]


def report(root: str | Path, plots: bool = True) -> str:
    """-> the markdown report of the results in `root` (and write its plots there)."""
    root = Path(root)
    df = load_results(root)
    lines = [f"## {root}", "", to_markdown(results_table(df))]
    errors = _errors(df)
    if errors:
        lines += ["", "Failed runs:"] + errors
    if plots:
        paths = write_plots(df, root)
        lines += ["", "Plots: " + ", ".join(str(p) for p in paths)]
    return "\n".join(lines)
