"""Loading an experiment: `load_config(path, overrides=["runs.0.dtype=bfloat16", ...]) -> ExperimentConfig`
(the dataclasses of graphopt.runner.schema), through one validator.

Every unknown key or value of the wrong type raises `ConfigError` naming the key, the file, the line and
the closest valid key. Pass lists (`passes`, `sweep.base`, each item of `sweep.over`) are parsed once,
here, into `graphopt.pipeline.PassSpec`s (a named pipeline such as `exact` expands to its passes), and
the order rules of every run the sweep will make (graphopt.runner.sweep) are checked before anything
runs. `load_config` then makes the checks that need the model's sizes or the machine
(graphopt.runner.preflight: sharding divisibility, pipeline stages, CUDA devices), so a mistake is
reported before the reference runs. The YAML reading, `--set` overrides and key locations (`Where`)
live in graphopt.runner.yaml_source.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from graphopt.runner.preflight import preflight
from graphopt.runner.schema import CHOICES, ExperimentConfig, ScoringConfig
from graphopt.runner.sweep import expand
from graphopt.runner.yaml_source import ConfigError, Where, apply_override, load_yaml


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(value, tp, path: tuple, where: Where):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, tp
        return _convert(value, inner[0], path, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, where)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where(path)}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, path + (i,), where) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(path)}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where(path)}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, raw, path: tuple, where: Where):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(path)}: expected a mapping of {cls.__name__} keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in raw.items():
        key_path = path + (str(key),)
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {where(key_path)}{hint} (valid keys here: {', '.join(valid)})")
        value = _convert(value, hints[key], key_path, where)
        if key in CHOICES and value is not None and value not in CHOICES[key]:
            close = difflib.get_close_matches(str(value), CHOICES[key], n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where(key_path)}: {value!r} is not one of {', '.join(CHOICES[key])}{hint}")
        kwargs[key] = value
    return cls(**kwargs)


def _parse_passes(passes, path: tuple, where: Where) -> list:
    """A pipeline name, or a list of pass / pipeline names and {name: ..., option: value} mappings
    -> [PassSpec] (options resolved and checked)."""
    from graphopt.pipeline import PassError, PassSpec, parse_pipeline

    if isinstance(passes, str):
        passes = [passes]
    if not isinstance(passes, list):
        raise ConfigError(f"{where(path)}: expected a pipeline name or a list of passes, got {passes!r}")
    out = []
    for i, spec in enumerate(passes):
        ok = isinstance(spec, (str, PassSpec)) or (isinstance(spec, dict) and isinstance(spec.get("name"), str))
        if not ok:
            raise ConfigError(f"{where(path + (i,))}: a pass is a name or a mapping {{name: ..., option: value}}, "
                              f"got {spec!r}")
        try:
            out += parse_pipeline([spec])
        except PassError as e:
            raise ConfigError(f"{where(path + (i,))}: {e}") from None
    return out


def _check_order(cfg: ExperimentConfig, where: Where) -> None:
    """Every run the sweep makes (generated ones too) keeps its passes' declared order rules."""
    from graphopt.pipeline import PassError, check_compiler_fits, check_order

    for run in expand(cfg):
        try:
            check_order(run.passes)
            check_compiler_fits(run.passes, run.compiler)
        except PassError as e:
            raise ConfigError(f"{where(run.where)}: run {run.name!r}: {e}") from None


def _check_scoring(scoring: ScoringConfig | None, path: tuple, where: Where) -> None:
    if scoring is None:
        return
    from graphopt.scoring.scorer import layout_names, options_of

    names = layout_names()
    if scoring.strategy not in names:
        close = difflib.get_close_matches(scoring.strategy, names, n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where(path + ('strategy',))}: unknown scoring strategy {scoring.strategy!r}{hint} "
                          f"(strategies: {', '.join(names)})")
    allowed = options_of(scoring.strategy)
    for key in scoring.options:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where(path + ('options', key))}: scoring strategy {scoring.strategy!r} has no "
                              f"option {key!r}{hint} (options: {', '.join(allowed) or 'none'})")


def _check_semantics(cfg: ExperimentConfig, where: Where) -> None:
    from graphopt.model.args import PRESETS

    if cfg.model.lower() not in PRESETS and not Path(cfg.model).exists():
        raise ConfigError(f"{where(('model',))}: {cfg.model!r} is neither a model preset "
                          f"({', '.join(PRESETS)}) nor an existing checkpoint path")
    if cfg.data.path is not None and not Path(cfg.data.path).exists():
        raise ConfigError(f"{where(('data', 'path'))}: data path {cfg.data.path!r} does not exist "
                          f"(use null for synthetic data)")
    from graphopt.data.hellaswag import split_problem
    split_error = split_problem(cfg.data.path, cfg.data.split)
    if split_error:
        raise ConfigError(f"{where(('data', 'split'))}: {split_error}")
    for key in ("world_size", "repeats"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where((key,))}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.warmup < 0:
        raise ConfigError(f"{where(('warmup',))}: must be >= 0, got {cfg.warmup}")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"{where(('data', 'limit'))}: must be >= 1 or null, got {cfg.data.limit}")
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"{where(('device',))}: 'cuda' asked for but torch sees no CUDA device")
    from graphopt.pipeline import PassError, load_pass_modules
    base = Path(cfg.source).parent if Path(cfg.source).is_file() else Path.cwd()
    cfg.pass_modules = [str((base / m).resolve()) if m.endswith(".py") else m for m in cfg.pass_modules]
    try:
        load_pass_modules(cfg.pass_modules)
    except PassError as e:
        raise ConfigError(f"{where(('pass_modules',))}: {e}") from None
    cfg.reference.passes = _parse_passes(cfg.reference.passes, ("reference", "passes"), where)
    _check_scoring(cfg.reference.scoring, ("reference", "scoring"), where)
    _check_scoring(cfg.scoring, ("scoring",), where)
    _check_scoring(cfg.sweep.scoring, ("sweep", "scoring"), where)
    for i, run in enumerate(cfg.runs):
        _check_scoring(run.scoring, ("runs", i, "scoring"), where)
        if not run.name:
            raise ConfigError(f"{where(('runs', i))}: every run needs a 'name'")
        run.passes = _parse_passes(run.passes, ("runs", i, "passes"), where)
        if run.capture == "none" and run.passes:
            raise ConfigError(f"{where(('runs', i, 'passes'))}: passes need a captured graph "
                              f"(capture: export or dynamo), run {run.name!r} has capture: none")
    names = [r.name for r in cfg.runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where(('runs',))}: run names must be unique, repeated: {', '.join(dup)}")
    cfg.sweep.base = _parse_passes(cfg.sweep.base, ("sweep", "base"), where)
    cfg.sweep.over = [_parse_passes(item, ("sweep", "over", i), where) for i, item in enumerate(cfg.sweep.over)]
    if cfg.sweep.mode in ("ablation", "cumulative") and not cfg.sweep.base:
        raise ConfigError(f"{where(('sweep', 'mode'))}: mode {cfg.sweep.mode!r} needs a non-empty sweep.base")
    if cfg.sweep.mode == "powerset" and not cfg.sweep.over:
        raise ConfigError(f"{where(('sweep', 'mode'))}: mode 'powerset' needs a non-empty sweep.over")
    if cfg.sweep.mode == "powerset" and len(cfg.sweep.over) > 8:
        raise ConfigError(f"{where(('sweep', 'over'))}: powerset of {len(cfg.sweep.over)} passes is "
                          f"{2 ** len(cfg.sweep.over)} runs; keep it to 8 or fewer")
    if cfg.sweep.mode != "powerset" and cfg.sweep.over:
        raise ConfigError(f"{where(('sweep', 'over'))}: only used with mode: powerset")
    if cfg.sweep.mode == "listed" and cfg.sweep.base:
        raise ConfigError(f"{where(('sweep', 'base'))}: not used with mode: listed (list the runs under 'runs')")
    if cfg.sweep.mode == "listed" and not cfg.runs:
        raise ConfigError(f"{where(('runs',))}: mode 'listed' needs at least one run under 'runs'")


# ------------------------------------------------------------------------------------------- loading


def config_from_dict(raw: dict, source: str = "<dict>", lines: dict | None = None,
                     overrides: list[str] = ()) -> ExperimentConfig:
    import copy
    raw = copy.deepcopy(raw)
    overridden = set()
    for item in overrides:
        overridden.add(apply_override(raw, item))
    where = Where(source, lines or {}, overridden)
    cfg = _build(ExperimentConfig, raw, (), where)
    cfg.source, cfg.where = source, where
    _check_semantics(cfg, where)
    _check_order(cfg, where)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    raw, lines = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file is a mapping of keys (name, model, runs, ...)")
    cfg = config_from_dict(raw, str(path), lines, list(overrides))
    preflight(cfg)
    return cfg
