"""Sweep expansion: an ExperimentConfig -> the concrete runs it asks for, each with a stable run key
(a hash of everything that determines its result: model, data, dtype, passes and options, capture,
compiler, scoring, timing protocol)."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from graphopt.runner.schema import ExperimentConfig, RunConfig, ScoringConfig, to_dict


@dataclass
class ResolvedRun:
    name: str
    capture: str
    passes: list  # normalised specs: [{"name": ..., **options}]
    compiler: str
    scoring: ScoringConfig
    dtype: str
    is_reference: bool = False
    key: str = ""
    config: dict | None = None  # everything hashed into `key`

    @property
    def pass_names(self) -> list[str]:
        return [p["name"] for p in self.passes]

    def passes_label(self) -> str:
        def one(p):
            opts = {k: v for k, v in p.items() if k != "name"}
            return p["name"] + (f"({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else "")
        return " + ".join(one(p) for p in self.passes) or "-"


def normalise_pass(spec) -> dict:
    if isinstance(spec, str):
        return {"name": spec}
    assert isinstance(spec, dict) and "name" in spec, spec
    return {"name": spec["name"], **{k: spec[k] for k in sorted(spec) if k != "name"}}


def _pass_name(spec) -> str:
    return spec if isinstance(spec, str) else spec["name"]


def run_key(cfg: ExperimentConfig, run: ResolvedRun) -> tuple[str, dict]:
    resolved = {
        "model": cfg.model, "device": cfg.device, "world_size": cfg.world_size, "seed": cfg.seed,
        "data": to_dict(cfg.data), "warmup": cfg.warmup, "repeats": cfg.repeats,
        "dtype": run.dtype, "capture": run.capture, "passes": run.passes, "compiler": run.compiler,
        "scoring": to_dict(run.scoring),
    }
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16], resolved


def _resolve(cfg: ExperimentConfig, name: str, capture: str, passes: list, compiler: str,
             scoring: ScoringConfig | None, dtype: str | None, is_reference: bool = False) -> ResolvedRun:
    run = ResolvedRun(name, capture, [normalise_pass(p) for p in passes], compiler,
                      scoring if scoring is not None else cfg.scoring, dtype or cfg.dtype, is_reference)
    run.key, run.config = run_key(cfg, run)
    return run


def reference_run(cfg: ExperimentConfig) -> ResolvedRun:
    r = cfg.reference
    return _resolve(cfg, r.name, r.capture, r.passes, r.compiler, r.scoring, r.dtype, is_reference=True)


def _generated(cfg: ExperimentConfig) -> list[tuple[str, list]]:
    """(name, passes) pairs of the sweep mode (not the listed runs)."""
    s = cfg.sweep
    if s.mode == "listed":
        return []
    if s.mode == "ablation":
        out = [("all", list(s.base))]
        for i, spec in enumerate(s.base):
            out.append((f"-{_pass_name(spec)}", s.base[:i] + s.base[i + 1:]))
        return out
    if s.mode == "cumulative":
        out = [("+" + _pass_name(s.base[k - 1]) if k else "no passes", s.base[:k]) for k in range(len(s.base) + 1)]
        return out
    if s.mode == "powerset":
        out = []
        for r in range(len(s.over) + 1):
            for subset in itertools.combinations(s.over, r):
                label = " + ".join(_pass_name(p) for p in subset)
                out.append(((f"base + {label}" if s.base else label) if subset else ("base" if s.base else "no passes"),
                            list(s.base) + list(subset)))
        return out
    raise AssertionError(s.mode)


def expand(cfg: ExperimentConfig) -> list[ResolvedRun]:
    """All runs of the experiment, reference first; a run whose key repeats an earlier one is dropped."""
    s = cfg.sweep
    runs = [reference_run(cfg)]
    for name, passes in _generated(cfg):
        runs.append(_resolve(cfg, name, s.capture, passes, s.compiler, s.scoring, s.dtype))
    for r in cfg.runs:
        runs.append(_resolve(cfg, r.name, r.capture, r.passes, r.compiler, r.scoring, r.dtype))
    out, seen, names = [], {}, set()
    for run in runs:
        if run.key in seen:
            continue  # same resolved config as an earlier run: measured once
        seen[run.key] = run.name
        if run.name in names:  # a listed run named like a generated one: keep both, tell them apart
            run.name = f"{run.name} ({run.key[:6]})"
        names.add(run.name)
        out.append(run)
    return out


def count_runs(cfg: ExperimentConfig) -> int:
    return len(expand(cfg))


__all__ = ["ResolvedRun", "expand", "reference_run", "run_key", "count_runs", "RunConfig"]
