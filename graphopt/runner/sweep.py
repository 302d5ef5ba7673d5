"""Sweep expansion: an ExperimentConfig -> the concrete runs it asks for, each with a stable run key
(a hash of everything that determines its result: model, data, dtype, passes and options, capture,
compiler, scoring, timing protocol)."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

from graphopt.pipeline import PassSpec, parse_pipeline
from graphopt.runner.schema import ExperimentConfig, RunConfig, ScoringConfig, to_dict


@dataclass
class ResolvedRun:
    name: str
    capture: str
    passes: list[PassSpec]
    compiler: str
    scoring: ScoringConfig
    dtype: str
    is_reference: bool = False
    key: str = ""
    config: dict | None = None  # everything hashed into `key`
    where: tuple = field(default=(), compare=False)  # the config key it came from (for error messages)

    @property
    def pass_names(self) -> list[str]:
        return [p.name for p in self.passes]

    def passes_label(self) -> str:
        return " + ".join(p.label() for p in self.passes) or "-"

    def to_dict(self) -> dict:
        """JSON-able form (what a worker process receives)."""
        return {"name": self.name, "capture": self.capture, "passes": [p.to_dict() for p in self.passes],
                "compiler": self.compiler, "scoring": to_dict(self.scoring), "dtype": self.dtype,
                "is_reference": self.is_reference, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> "ResolvedRun":
        return cls(d["name"], d["capture"], parse_pipeline(d["passes"]), d["compiler"], ScoringConfig(**d["scoring"]),
                   d["dtype"], d.get("is_reference", False), d.get("key", ""))


def _group_label(group: list[PassSpec]) -> str:
    """One sweep unit (a pass, or the passes of a named pipeline) as a run-name part."""
    names = [p.name for p in group]
    return "+".join(names) if len(names) <= 3 else f"{names[0]}..{names[-1]} ({len(names)} passes)"


def run_key(cfg: ExperimentConfig, run: ResolvedRun) -> tuple[str, dict]:
    resolved = {
        "model": cfg.model, "device": cfg.device, "world_size": cfg.world_size, "seed": cfg.seed,
        "data": to_dict(cfg.data), "warmup": cfg.warmup, "repeats": cfg.repeats,
        "dtype": run.dtype, "capture": run.capture, "passes": [p.to_dict() for p in run.passes],
        "compiler": run.compiler,
        "scoring": to_dict(run.scoring),
    }
    mesh = {k: getattr(cfg, k) for k in ("data_parallel", "tensor_parallel", "pipeline_parallel")
            if getattr(cfg, k) != (1 if k == "data_parallel" else 0)}
    if mesh:  # only when set, so the keys of runs stored before these YAML keys existed stay the same
        resolved["mesh"] = mesh
    if "generate" in cfg.measure:  # (likewise: a scoring-only run keeps its key)
        resolved["generate"] = to_dict(cfg.generate)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16], resolved


def _resolve(cfg: ExperimentConfig, name: str, capture: str, passes: list, compiler: str,
             scoring: ScoringConfig | None, dtype: str | None, is_reference: bool = False,
             where: tuple = ()) -> ResolvedRun:
    run = ResolvedRun(name, capture, parse_pipeline(passes), compiler,
                      scoring if scoring is not None else cfg.scoring, dtype or cfg.dtype, is_reference, where=where)
    run.key, run.config = run_key(cfg, run)
    return run


def reference_run(cfg: ExperimentConfig) -> ResolvedRun:
    r = cfg.reference
    return _resolve(cfg, r.name, r.capture, r.passes, r.compiler, r.scoring, r.dtype, is_reference=True,
                    where=("reference",))


def _generated(cfg: ExperimentConfig) -> list[tuple[str, list]]:
    """(name, passes) pairs of the sweep mode (not the listed runs)."""
    s = cfg.sweep
    if s.mode == "listed":
        return []
    if s.mode == "ablation":
        out = [("all", list(s.base))]
        for i, spec in enumerate(s.base):
            out.append((f"-{spec.name}", s.base[:i] + s.base[i + 1:]))
        return out
    if s.mode == "cumulative":
        out = [("+" + s.base[k - 1].name if k else "no passes", s.base[:k]) for k in range(len(s.base) + 1)]
        return out
    if s.mode == "powerset":
        out = []
        for r in range(len(s.over) + 1):
            for subset in itertools.combinations(s.over, r):
                label = " + ".join(_group_label(g) for g in subset)
                out.append(((f"base + {label}" if s.base else label) if subset else ("base" if s.base else "no passes"),
                            list(s.base) + [p for g in subset for p in g]))
        return out
    raise AssertionError(s.mode)


def expand(cfg: ExperimentConfig) -> list[ResolvedRun]:
    """All runs of the experiment, reference first; a run whose key repeats an earlier one is dropped."""
    s = cfg.sweep
    runs = [reference_run(cfg)]
    for name, passes in _generated(cfg):
        runs.append(_resolve(cfg, name, s.capture, passes, s.compiler, s.scoring, s.dtype, where=("sweep",)))
    for i, r in enumerate(cfg.runs):
        runs.append(_resolve(cfg, r.name, r.capture, r.passes, r.compiler, r.scoring, r.dtype, where=("runs", i)))
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
