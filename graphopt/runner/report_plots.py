"""Plots of an experiment directory (matplotlib, Agg), laid out so no text leaves the canvas
(constrained layout, legends outside the axes) and no two point labels overlap.

drift_vs_speedup.png: max |Δ loglik| and answer agreement against speed-up, the tolerance drawn;
speedup.png: speed-up per run. Points and bars carry the short run names of the screen table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from graphopt.runner.report_table import short_names, with_speedup

PLOT_FILES = ("drift_vs_speedup.png", "speedup.png")
DPI = 120
COLORS = {"within": "tab:blue", "outside": "tab:red", "error": "tab:gray"}
LEADER = dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=1, shrinkB=3)  # label far from its point
TICK_NAME_CHARS = 40  # speedup.png y labels: "#3 exact passes + packed ro…"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tolerance(root: str | Path) -> dict:
    """The experiment's tolerance {acc_points, max_abs_dloglik} from root/experiment.json ({} if absent)."""
    path = Path(root) / "experiment.json"
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("tolerance") or {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not an experiment record written by `graphopt run` ({e})") from None


# ---- point labels that do not overlap

def _candidates():
    """Text offsets in points around a point, nearest first: (dx, dy, ha, va)."""
    for r in (5, 9, 14, 20, 28, 38, 50, 65, 85):
        for k in range(16):
            a = 2 * math.pi * k / 16 + math.pi / 16  # start just above the right-hand side
            c, s = math.cos(a), math.sin(a)
            yield (r * c, r * s, "left" if c > 0.3 else "right" if c < -0.3 else "center",
                   "bottom" if s > 0.3 else "top" if s < -0.3 else "center")


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _inside(inner, outer) -> bool:
    return inner.x0 >= outer.x0 and inner.x1 <= outer.x1 and inner.y0 >= outer.y0 and inner.y1 <= outer.y1


def label_points(ax, xs, ys, texts, fontsize=8) -> list:
    """Annotate each (x, y) with its text at the nearest offset where the label stays inside the axes
    and clear of every marker and every label placed before it (labels far out get a leader line)."""
    from matplotlib.transforms import Bbox

    fig = ax.get_figure()
    fig.canvas.draw()  # settle the layout: positions below are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 4 * fig.dpi / 72  # marker radius, px
    to_px = ax.transData.transform
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in map(to_px, zip(xs, ys))]
    labels = []
    for x, y, text in zip(xs, ys, texts):
        ann = None
        for dx, dy, ha, va in _candidates():
            if ann is not None:
                ann.remove()
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, arrowprops=LEADER if math.hypot(dx, dy) > 12 else None)
            ann.set_in_layout(False)  # placed after layout: it must not move the axes
            box = ann.get_window_extent(renderer)  # text and leader line
            if _inside(box, frame) and not any(_overlaps(box, t) for t in taken):
                break
        taken.append(box)
        labels.append(ann)
    return labels


# ---- figures

def _drift_panel(ax, speed, drift, colors, limit) -> list[float]:
    """max |Δ loglik| on a log axis; identical log-likelihoods (0) one decade below the smallest drift,
    labelled "0"; the tolerance as a dashed line. -> the y values drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    positive = [v for v in drift + ([limit] if limit else []) if v > 0]
    zero = 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1e-6
    drawn = [v if v > 0 else zero for v in drift]
    ax.set_yscale("log")
    ax.set_ylim(zero / 2, max(drawn + [limit or 0.0, zero * 10]) * 2)
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=30))  # every decade, so "0" is a tick
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: "0" if math.isclose(v, zero) else f"$10^{{{math.log10(v):.0f}}}$"))
    if limit is not None:
        ax.axhline(limit, color=COLORS["outside"], ls="--", lw=1)
    ax.scatter(speed, drawn, c=colors, s=30, zorder=3)
    ax.set_ylabel("max |Δ loglik| vs reference")
    return drawn


def drift_figure(df: pd.DataFrame, tol: dict):
    """max |Δ loglik| (top) and agreement with the reference (bottom) against speed-up, one point per
    finished run (a run without the value is left out of that panel), the max_abs_dloglik tolerance
    as a dashed line."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    df = with_speedup(df).reset_index(drop=True)
    df["short"] = short_names([str(n) for n in df["run"]])
    ok = df[(df["status"] == "ok") & df["speedup"].notna()]
    color = {i: COLORS["within"] if w else COLORS["outside"] for i, w in zip(ok.index, ok["within_tolerance"])}
    limit = float(tol["max_abs_dloglik"]) if tol.get("max_abs_dloglik") is not None else None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), dpi=DPI, sharex=True, layout="constrained",
                                      height_ratios=[3, 2])
    d = ok[ok["max_abs_dloglik"].notna()]
    a = ok[ok["agree"].notna()]
    drawn = _drift_panel(top, list(d["speedup"]), [float(v) for v in d["max_abs_dloglik"]],
                         [color[i] for i in d.index], limit)
    agree = [float(v) * 100 for v in a["agree"]]
    bottom.scatter(list(a["speedup"]), agree, c=[color[i] for i in a.index], s=30, zorder=3)
    lo = min(agree + [100.0])
    bottom.set_ylim(min(lo - 0.05 * (100 - lo) - 0.5, 99.0), 100.5 + 0.02 * (100 - lo))
    bottom.set_ylabel("answers as reference, %")
    for ax in (top, bottom):
        ax.axvline(1.0, color="black", lw=0.6)
    speed = list(ok["speedup"])
    if speed and max(speed) / max(min(speed), 1e-12) > 4:
        top.set_xscale("log")
        times = FuncFormatter(lambda v, _: f"{v:g}x" if f"{v:g}"[0] in "125" else "")
        bottom.xaxis.set_major_formatter(times)  # the axes share x
        bottom.xaxis.set_minor_formatter(times)
    bottom.set_xlabel("speed-up vs reference (reference latency / run latency)")
    top.set_title("drift and agreement against speed-up")
    handles = [Line2D([], [], ls="", marker="o", color=COLORS["within"], label="within tolerance"),
               Line2D([], [], ls="", marker="o", color=COLORS["outside"], label="outside tolerance"),
               Line2D([], [], color=COLORS["outside"], ls="--", label=f"max_abs_dloglik tolerance {limit:g}")
               if limit is not None else Line2D([], [], ls="", label="tolerance not recorded (experiment.json)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    label_points(top, list(d["speedup"]), drawn, list(d["short"]))
    label_points(bottom, list(a["speedup"]), agree, list(a["short"]))
    return fig


def _tick_name(short: str, name: str) -> str:
    text = name if short == name else f"{short} {name}"
    return text if len(text) <= TICK_NAME_CHARS else text[:TICK_NAME_CHARS - 1] + "…"


def speedup_figure(df: pd.DataFrame):
    """Horizontal bar per run: speed-up vs the reference, its value at the bar's end."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    df = with_speedup(df).reset_index(drop=True)
    shorts = short_names([str(n) for n in df["run"]])
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.32 * max(len(df), 2)), dpi=DPI, layout="constrained")
    ok = [st == "ok" and s == s for s, st in zip(df["speedup"], df["status"])]
    values = [float(s) if good else 0.0 for s, good in zip(df["speedup"], ok)]
    colors = [COLORS["error"] if st != "ok" else COLORS["within"] if w else COLORS["outside"]
              for st, w in zip(df["status"], df["within_tolerance"])]
    y = list(range(len(df)))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels([_tick_name(s, str(n)) for s, n in zip(shorts, df["run"])], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlim(0, max(values + [1.0]) * 1.18)  # room for the value labels
    for yi, v, good in zip(y, values, ok):
        ax.annotate(f"{v:.2f}x" if good else "error", (v, yi), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7).set_in_layout(False)
    ax.set_xlabel("speed-up vs reference (reference latency / run latency)")
    ax.set_title("speed-up per run")
    fig.legend(handles=[Patch(color=COLORS[k], label=t) for k, t in
                        (("within", "within tolerance"), ("outside", "outside tolerance"), ("error", "error"))],
               loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def write_plots(df: pd.DataFrame, root: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write PLOT_FILES for the results of `root` into out_dir (default root); -> their paths.
    An OSError (read-only folder, full disk) propagates to the caller."""
    plt = _pyplot()
    out = Path(out_dir if out_dir is not None else root)
    paths = []
    for name, make in zip(PLOT_FILES, (lambda: drift_figure(df, tolerance(root)), lambda: speedup_figure(df))):
        fig = make()
        try:
            fig.savefig(out / name, dpi="figure", bbox_inches="tight", pad_inches=0.05)
        finally:
            plt.close(fig)
        paths.append(out / name)
    return paths
