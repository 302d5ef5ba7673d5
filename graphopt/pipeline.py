"""The pass protocol and registry (the manager that runs pipelines: graphopt.pass_manager). graphopt never imports a particular pass: the pass
library (`graphopt.passes`, the repository's `passes/` folder) registers itself on import, and so do
a user's own pass modules (`load_pass_modules`, or the `graphopt.passes` entry-point group).

A pass is `fn(gm, ctx) -> PassResult(gm, modified, stats)`; `ctx.options` holds its validated
options. `stats["matches"]` is how many places it rewrote (0 means it found nothing to do).

What a caller needs to know about a pass is declared when it registers, not found out by running it:
its options (type, default, allowed values), its order rules (`before`, `after`, `requires`: checked
for a whole pipeline before the first pass runs), the dtype it makes the model compute in, and
whether it shards the model over ranks. A pipeline is a list of `PassSpec`s, parsed once
(`parse_pipeline`) from names, `{name: ..., option: value}` mappings or named pipelines (`exact`,
`fast`, ...: `register_pipeline`).
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.fx import GraphModule

from graphopt.blockwise import ASSEMBLED


class PassError(Exception):
    """A pass could not be run or broke the graph; the message names the pass and those before it."""


@dataclass
class PassResult:
    gm: GraphModule
    modified: bool
    stats: dict = field(default_factory=dict)


@dataclass
class PassContext:
    example_inputs: tuple = ()  # inputs the graph can be run on (shape propagation, verification)
    model_args: Any = None  # graphopt.model.ModelArgs of the captured model, when known
    rank: int = 0
    world_size: int = 1
    options: dict = field(default_factory=dict)  # this pass's options, filled by the manager
    tokenizer: Any = None  # the model's tokenizer, when known (prune_structured's calibration text)
    part: str = "whole"  # what the graph is: "whole", "outer" (around the blocks) or "block" (graphopt.optimize_blocks)


@dataclass(frozen=True)
class PassOption:
    type: type
    default: Any
    help: str
    choices: tuple = ()  # allowed values (empty: any value of `type`)
    min: float | None = None  # inclusive lower bound of a number
    max: float | None = None  # upper bound of a number (exclusive when open_max)
    open_max: bool = False

    def check(self, value) -> str | None:
        """None when `value` is allowed, else what was expected."""
        if self.choices and value not in self.choices:
            return f"one of {', '.join(map(repr, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low = self.min is not None and value < self.min
            high = self.max is not None and (value >= self.max if self.open_max else value > self.max)
            if low or high:
                lo = "" if self.min is None else f"{self.min:g} <= "
                hi = "" if self.max is None else f" {'<' if self.open_max else '<='} {self.max:g}"
                return f"a value with {lo}value{hi}"
        return None


@dataclass(frozen=True)
class OrderRule:
    """`first` must run before `then` when both are in a pipeline; with required=True, `then` needs
    `first` earlier in the pipeline. first == "*" means every other pass (then runs last)."""
    first: str
    then: str
    why: str
    required: bool = False


def before(other: str, why: str) -> tuple:
    """Order rule for register_pass: this pass must run before `other` when both are present."""
    return ("before", other, why)


def after(other: str, why: str) -> tuple:
    """This pass must run after `other` when both are present ("*": after every other pass)."""
    return ("after", other, why)


def requires(other: str, why: str) -> tuple:
    """This pass needs `other` earlier in the same pipeline."""
    return ("requires", other, why)


@dataclass
class PassInfo:
    name: str
    fn: Callable[[GraphModule, PassContext], PassResult]
    description: str
    options: dict[str, PassOption]
    exact: bool  # True: must keep outputs equal within fp tolerance; False: changes numerics by design
    rules: tuple[OrderRule, ...] = ()
    dtype: Callable[[dict, str], str] | None = None  # (options, dtype before) -> dtype the model computes in after
    shards: str | None = None  # "tensor" | "pipeline": splits the model over ctx.world_size ranks
    compilers: tuple[str, ...] | None = None  # the compilers its output can run under (None: any)
    # True (or a function of its options giving True): its rewrites are local, so running it on each distinct
    # decoder block's graph and on the graph around the blocks builds the model it builds on the whole graph;
    # ASSEMBLED: it runs once on the graph the blocks were spliced into (after every per-block pass)
    blockwise: bool | str | Callable[[dict], bool] = False


_REGISTRY: dict[str, PassInfo] = {}
_PIPELINES: dict[str, tuple[str, list]] = {}  # name -> (description, raw specs)


def register_pass(name: str, description: str, options: dict[str, PassOption] | None = None, exact: bool = True,
                  order: tuple | list = (), dtype: Callable[[dict, str], str] | None = None,
                  shards: str | None = None, compilers: tuple[str, ...] | None = None,
                  blockwise: bool | str | Callable[[dict], bool] = False):
    """Decorator: register `fn(gm, ctx) -> PassResult` under `name` with a one-line description,
    its options, its order rules (`before(...)`, `after(...)`, `requires(...)`), the dtype it makes
    the model compute in (a function of its options and the dtype before it), what it shards and
    whether it may run block by block (graphopt.optimize_blocks; the default, False, keeps a pass
    nobody has checked on the whole graph; ASSEMBLED: once, on the assembled graph)."""
    if isinstance(blockwise, str) and blockwise != ASSEMBLED:
        raise ValueError(f"pass {name!r}: blockwise must be a bool, a function or {ASSEMBLED!r}, got {blockwise!r}")
    if shards not in (None, "tensor", "pipeline"):
        raise ValueError(f"pass {name!r}: shards must be None, 'tensor' or 'pipeline', got {shards!r}")
    rules = []
    for kind, other, why in order:
        if kind == "before":
            rules.append(OrderRule(name, other, why))
        elif kind == "after":
            rules.append(OrderRule(other, name, why))
        elif kind == "requires":
            rules.append(OrderRule(other, name, why, required=True))
        else:
            raise ValueError(f"pass {name!r}: unknown order rule kind {kind!r}")

    def wrap(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"pass {name!r} registered twice")
        if name in _PIPELINES:
            raise ValueError(f"pass {name!r} has the name of a named pipeline")
        _REGISTRY[name] = PassInfo(name, fn, description, dict(options or {}), exact, tuple(rules), dtype, shards,
                                   compilers, blockwise)
        return fn
    return wrap


def register_pipeline(name: str, description: str, specs: list) -> None:
    """A named pipeline: usable wherever a pass list is (`passes: exact`, `[exact, cast_dtype]`,
    `graphopt eval --pipeline exact`). Its specs are checked when it is used."""
    if name in _REGISTRY:
        raise ValueError(f"pipeline {name!r} has the name of a pass")
    if name in _PIPELINES and _PIPELINES[name][1] != list(specs):
        raise ValueError(f"pipeline {name!r} registered twice")
    _PIPELINES[name] = (description, list(specs))


# ------------------------------------------------------------------------------------ the library

_loaded_modules: set[str] = set()


def load_pass_library() -> None:
    """Import graphopt's pass library and every module registered in the `graphopt.passes`
    entry-point group (a package's own passes)."""
    if "graphopt.passes" in _loaded_modules:
        return
    importlib.import_module("graphopt.passes")
    _loaded_modules.add("graphopt.passes")
    from importlib.metadata import entry_points
    for ep in entry_points(group="graphopt.passes"):
        try:
            ep.load()
        except Exception as e:
            raise PassError(f"pass plugin {ep.name!r} ({ep.value}, entry point group graphopt.passes) failed "
                            f"to load: {type(e).__name__}: {e}") from e


def load_pass_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import a user's pass modules (dotted module paths, or .py files) so their passes and pipelines
    register; each is imported once per process."""
    load_pass_library()
    for module in modules:
        if module in _loaded_modules:
            continue
        try:
            if module.endswith(".py"):
                path = Path(module).resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"no such file {str(path)!r}")
                spec = importlib.util.spec_from_file_location(f"graphopt_user_passes_{path.stem}", path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = mod
                spec.loader.exec_module(mod)
            else:
                importlib.import_module(module)
        except Exception as e:
            raise PassError(f"pass module {module!r} could not be imported: {type(e).__name__}: {e}") from e
        _loaded_modules.add(module)


def list_passes() -> list[PassInfo]:
    load_pass_library()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def list_pipelines() -> dict[str, tuple[str, list["PassSpec"]]]:
    """name -> (description, its passes) for every named pipeline."""
    load_pass_library()
    return {name: (desc, parse_pipeline(specs)) for name, (desc, specs) in sorted(_PIPELINES.items())}


def get_pass(name: str) -> PassInfo:
    load_pass_library()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY) + list(_PIPELINES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PassError(f"unknown pass {name!r}{hint} (run `graphopt passes` to list passes and named pipelines)")
    return _REGISTRY[name]


# ------------------------------------------------------------------------------------ pass specs

@dataclass(frozen=True)
class PassSpec:
    """One pass of a pipeline with all its options resolved (defaults filled, values checked)."""
    name: str
    options: tuple[tuple[str, Any], ...] = ()  # (key, value) in the pass's declared order

    @property
    def info(self) -> PassInfo:
        return get_pass(self.name)

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def given(self) -> dict:
        """The options that differ from their defaults (what identifies the spec)."""
        declared = self.info.options
        return {k: v for k, v in self.options if k not in declared or v != declared[k].default}

    def to_dict(self) -> dict:
        """{"name": ..., **options that differ from the defaults}: the canonical, JSON-able form."""
        return {"name": self.name, **dict(sorted(self.given().items()))}

    def label(self) -> str:
        given = self.given()
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in sorted(given.items()))})" if given else "")


def _resolve_options(info: PassInfo, given: dict) -> tuple:
    """Fill defaults, check every option's type and allowed values."""
    unknown = [k for k in given if k not in info.options]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), info.options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(info.options) or "none"
        raise PassError(f"pass {info.name!r} has no option {unknown[0]!r}{hint} (valid options: {valid})")
    out = []
    for key, opt in info.options.items():
        value = given.get(key, opt.default)
        if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = value is None or (isinstance(value, opt.type) and not (opt.type is not bool and isinstance(value, bool)))
        if not ok:
            raise PassError(f"pass {info.name!r} option {key!r} expects {opt.type.__name__}, got {value!r}")
        problem = opt.check(value) if value is not None else None
        if problem:
            raise PassError(f"pass {info.name!r} option {key!r} expects {problem}, got {value!r}")
        out.append((key, value))
    return tuple(out)


def _is_pair(spec) -> bool:
    """("name", {options}): a tuple whose mapping is options, not a second spec {name: ...}."""
    return (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict)
            and "name" not in spec[1])


def parse_pass_spec(spec) -> PassSpec:
    """"name", {"name": ..., **options}, ("name", {options}) or a PassSpec -> a checked PassSpec."""
    if isinstance(spec, PassSpec):
        return spec
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, dict):
        given = dict(spec)
        name = given.pop("name", None)
        if not isinstance(name, str):
            raise PassError(f"pass spec {spec!r} has no 'name'")
    elif _is_pair(spec):
        name, given = spec[0], dict(spec[1])
    else:
        raise PassError(f"pass spec {spec!r} is not a name, a {{name: ..., options}} mapping or a (name, options) pair")
    info = get_pass(name)
    return PassSpec(name, _resolve_options(info, given))


def parse_pipeline(value) -> list[PassSpec]:
    """A pipeline as users write it -> [PassSpec]. Accepts None, a named pipeline or pass name, a
    comma-separated string of them, or a list whose items are names (of passes or pipelines),
    {name: ..., option: value} mappings, (name, options) pairs or PassSpecs."""
    load_pass_library()
    if value is None:
        return []
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, (list, tuple)) and not _is_pair(value):
        items = list(value)
    else:
        items = [value]
    out: list[PassSpec] = []
    for item in items:
        if isinstance(item, str) and item in _PIPELINES:
            out += parse_pipeline(_PIPELINES[item][1])
        else:
            out.append(parse_pass_spec(item))
    return out


def check_order(specs: list[PassSpec], applied: list[str] | tuple = ()) -> None:
    """Raise a PassError naming the rule when `applied` (passes already run on the graph) followed by
    `specs` breaks an order rule a pass declared."""
    seq = list(applied) + [s.name for s in specs]
    rules = {r for name in dict.fromkeys(seq) for r in get_pass(name).rules}
    for r in sorted(rules, key=lambda r: (r.then, r.first)):
        then_at = [i for i, n in enumerate(seq) if n == r.then]
        if not then_at:
            continue
        if r.first == "*":
            later = [n for n in seq[then_at[0] + 1:] if n != r.then]
            if later:
                raise PassError(f"{r.then} must run after every other pass: {r.why} (pipeline: {seq}; "
                                f"{later[0]} comes after it)")
            continue
        first_at = [i for i, n in enumerate(seq) if n == r.first]
        if r.required and (not first_at or first_at[0] > then_at[0]):
            raise PassError(f"{r.then} requires {r.first} earlier in the pipeline: {r.why} (pipeline: {seq})")
        if first_at and first_at[-1] > then_at[0]:
            raise PassError(f"{r.first} must run before {r.then}: {r.why} (pipeline: {seq}; use the order "
                            f"[..., {r.first}, ..., {r.then}, ...])")


def check_compiler_fits(specs: list[PassSpec], compiler: str) -> None:
    """Raise a PassError when a pass of the pipeline declared that its output cannot run under `compiler`."""
    for spec in specs:
        allowed = spec.info.compilers
        if allowed is not None and compiler not in allowed:
            raise PassError(f"pass {spec.name!r} runs only with compiler {' or '.join(allowed)}, not {compiler!r}")


@dataclass(frozen=True)
class CheckedPipeline:
    """A pipeline parsed and checked once (pass options, pass order, fit with the compiler): optimize(),
    the compile backend and the Scorer take it as it is instead of checking it again."""
    specs: tuple[PassSpec, ...]
    compiler: str

    def labels(self) -> list[str]:
        return [s.label() for s in self.specs]


def check_pipeline(pipeline, compiler: str = "none") -> CheckedPipeline:
    """Anything parse_pipeline accepts -> a CheckedPipeline for `compiler` (PassError naming the problem).
    A CheckedPipeline comes back as it is when its compiler is `compiler`."""
    if isinstance(pipeline, CheckedPipeline) and pipeline.compiler == compiler:
        return pipeline
    specs = parse_pipeline(pipeline.specs if isinstance(pipeline, CheckedPipeline) else pipeline)
    check_order(specs)
    check_compiler_fits(specs, compiler)
    return CheckedPipeline(tuple(specs), compiler)


def pipeline_dtype(specs: list[PassSpec], load_dtype: str) -> str:
    """The dtype a model loaded in `load_dtype` computes in after the pipeline (as its passes declare)."""
    dtype = load_dtype
    for spec in specs:
        if spec.info.dtype is not None:
            dtype = spec.info.dtype(spec.opts, dtype)
    return dtype



def pipeline_shards(specs: list[PassSpec]) -> set[str]:
    """What the pipeline splits over ranks: a subset of {"tensor", "pipeline"}."""
    return {s.info.shards for s in specs if s.info.shards}
