"""Where a run's time went, as a user sees it: one line and the same figures as result columns.

    startup   process start -> the model's load is called (imports, arguments, data)
    load      reading the checkpoint / building the model
    setup     capture + passes + weights + compile of the optimised graph(s), or the kept graph read
              from graphopt's cache folder (cached)
    scoring   the scoring itself, setup excluded; its first call said apart (a lazy compile, as
              torch.compile's, happens there; a small run may be that one call)
    generation  generated text (lm-eval's generate_until), its graph's setup counted in setup; said only
              where the run generated

    columns = time_columns(startup_s, load_s, scorer.setup_split(), scoring_s)
    print(time_line(columns), file=sys.stderr)
    # time: startup 1.9s, load 0.6s, setup 0.4s cached (kept graph 0.1s, weights 0.3s, compile 0.0s),
    #       scoring 9.8s (first call 0.2s); total 12.7s
"""
from __future__ import annotations

import os
import time

# Optimized.setup's seconds, summed over a Scorer's runnables
SETUP_PARTS = ("capture_s", "passes_s", "weights_s", "compile_s", "load_s", "first_call_s")


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc: its start in clock ticks since boot), else 0."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def merge_setups(setups: list[dict]) -> dict:
    """Optimized.setup dicts (one per runnable) -> one: seconds summed, cached only when every graph
    came from the cache folder, path the first one's ("none" for no runnable)."""
    merged = {part: sum(float(s.get(part) or 0.0) for s in setups) for part in SETUP_PARTS}
    merged["cached"] = bool(setups) and all(s.get("cached") for s in setups)
    merged["path"] = setups[0].get("path", "none") if setups else "none"
    merged["graphs"] = len(setups)
    return merged


def time_columns(startup_s: float, load_s: float, setup: dict, setup_s: float, scoring_s: float,
                 generation_s: float = 0.0) -> dict:
    """The time line's figures as result columns. setup: merge_setups(...); setup_s: the setup's own
    wall time (capture .. compile, or the kept graph's load); scoring_s: the scoring's (its first call
    included; first_call_s says how much of it that call took); generation_s: generating text, its
    graph's setup excluded (that is in setup_s)."""
    first = float(setup.get("first_call_s") or 0.0)
    return {
        "startup_s": startup_s, "load_s": load_s, "setup_s": setup_s,
        "setup_cached": bool(setup.get("cached")), "setup_path": setup.get("path", "none"),
        "capture_s": setup.get("capture_s", 0.0), "passes_s": setup.get("passes_s", 0.0),
        "weights_s": setup.get("weights_s", 0.0), "graph_compile_s": setup.get("compile_s", 0.0),
        "kept_graph_load_s": setup.get("load_s", 0.0), "first_call_s": first, "scoring_s": scoring_s,
        "generation_s": generation_s,
    }


def time_line(c: dict) -> str:
    """One line from time_columns(): startup, load, setup (its split, cached or not), scoring, total."""
    if c["setup_path"] == "none":
        split = "no graph"
    elif c["setup_cached"]:
        split = (f"kept graph {c['kept_graph_load_s']:.1f}s, weights {c['weights_s']:.1f}s, "
                 f"compile {c['graph_compile_s']:.1f}s")
    else:
        split = (f"capture {c['capture_s']:.1f}s, passes {c['passes_s']:.1f}s, weights {c['weights_s']:.1f}s, "
                 f"compile {c['graph_compile_s']:.1f}s")
    cached = " cached" if c["setup_cached"] else (" not cached" if c["setup_path"] != "none" else "")
    generation = c.get("generation_s", 0.0)
    total = c["startup_s"] + c["load_s"] + c["setup_s"] + c["scoring_s"] + generation
    said = f", generation {generation:.1f}s" if generation else ""
    return (f"time: startup {c['startup_s']:.1f}s, load {c['load_s']:.1f}s, setup {c['setup_s']:.1f}s{cached} "
            f"({split}), scoring {c['scoring_s']:.1f}s (first call {c['first_call_s']:.1f}s){said}; "
            f"total {total:.1f}s")


class Clock:
    """Made right before the model's load is called: startup_s is the process's age then; loaded()
    marks the load's end."""

    def __init__(self):
        self.startup_s = process_age_s()
        self._t = time.perf_counter()
        self.load_s = 0.0

    def loaded(self) -> float:
        """The load took since Clock() was made: call right after the model is loaded."""
        self.load_s = time.perf_counter() - self._t
        return self.load_s
