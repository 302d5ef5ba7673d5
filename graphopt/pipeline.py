"""The pass protocol, registry and manager. graphopt never imports a particular pass: the pass
library (top-level package `passes`) registers itself on import, see `load_pass_library`.

A pass is `fn(gm, ctx) -> PassResult(gm, modified, stats)`; `ctx.options` holds its validated
options. `stats["matches"]` is how many places it rewrote (0 means it found nothing to do).
"""
from __future__ import annotations

import difflib
import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.fx import GraphModule


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


@dataclass
class PassOption:
    type: type
    default: Any
    help: str


@dataclass
class PassInfo:
    name: str
    fn: Callable[[GraphModule, PassContext], PassResult]
    description: str
    options: dict[str, PassOption]
    exact: bool  # True: must keep outputs equal within fp tolerance; False: changes numerics by design


_REGISTRY: dict[str, PassInfo] = {}


def register_pass(name: str, description: str, options: dict[str, PassOption] | None = None, exact: bool = True):
    """Decorator: register `fn(gm, ctx) -> PassResult` under `name` with a one-line description."""
    def wrap(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = PassInfo(name, fn, description, dict(options or {}), exact)
        return fn
    return wrap


def load_pass_library() -> None:
    importlib.import_module("passes")


def list_passes() -> list[PassInfo]:
    load_pass_library()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_pass(name: str) -> PassInfo:
    load_pass_library()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PassError(f"unknown pass {name!r}{hint} (run `graphopt passes` to list them)")
    return _REGISTRY[name]


def parse_pass_spec(spec) -> tuple[str, dict]:
    """A spec is "name", {"name": ..., **options} or ("name", {options})."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        spec = dict(spec)
        if "name" not in spec:
            raise PassError(f"pass spec {spec!r} has no 'name'")
        return spec.pop("name"), spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        return spec[0], dict(spec[1])
    raise PassError(f"pass spec {spec!r} is not a name, a {{name: ..., options}} mapping or a (name, options) pair")


def resolve_options(info: PassInfo, given: dict) -> dict:
    """Fill defaults and type-check the options given for one pass."""
    unknown = [k for k in given if k not in info.options]
    if unknown:
        close = difflib.get_close_matches(unknown[0], info.options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(info.options) or "none"
        raise PassError(f"pass {info.name!r} has no option {unknown[0]!r}{hint} (valid options: {valid})")
    out = {}
    for key, opt in info.options.items():
        value = given.get(key, opt.default)
        if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = value is None or (isinstance(value, opt.type) and not (opt.type is not bool and isinstance(value, bool)))
        if not ok:
            raise PassError(f"pass {info.name!r} option {key!r} expects {opt.type.__name__}, got {value!r}")
        out[key] = value
    return out


@dataclass
class PassRecord:
    name: str
    options: dict
    modified: bool
    matches: int
    nodes_before: int
    nodes_after: int
    seconds: float
    max_abs_diff: float | None = None  # when verified
    stats: dict = field(default_factory=dict)


def count_nodes(gm: GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op not in ("placeholder", "output"))


def _flat_tensors(out) -> list[torch.Tensor]:
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def max_output_diff(ref, got) -> float:
    ref_t, got_t = _flat_tensors(ref), _flat_tensors(got)
    if len(ref_t) != len(got_t):
        return float("inf")
    diffs = [0.0]
    for a, b in zip(ref_t, got_t):
        if a.shape != b.shape:
            return float("inf")
        if a.is_floating_point():
            diffs.append((a.double() - b.double()).abs().max().item() if a.numel() else 0.0)
        elif not torch.equal(a, b):
            return float("inf")
    return max(diffs)


def run_passes(gm: GraphModule, specs: list, ctx: PassContext | None = None, verify: bool = False,
               atol: float = 1e-4) -> tuple[GraphModule, list[PassRecord]]:
    """Run the passes in order; lint and recompile after each. With verify=True, run the graph on
    ctx.example_inputs before and after every exact pass and fail on the first that moves outputs
    by more than atol."""
    ctx = ctx or PassContext()
    resolved = []
    for spec in specs:  # validate everything before running anything
        name, given = parse_pass_spec(spec)
        info = get_pass(name)
        resolved.append((info, resolve_options(info, given)))
    if verify and not ctx.example_inputs:
        raise PassError("verify=True needs ctx.example_inputs")
    reference = _run(gm, ctx.example_inputs) if verify else None
    records: list[PassRecord] = []
    for info, options in resolved:
        before = count_nodes(gm)
        ran = [r.name for r in records]
        t0 = time.perf_counter()
        try:
            result = info.fn(gm, _with_options(ctx, options))
            gm = result.gm
            gm.graph.lint()
            gm.recompile()
        except PassError as e:
            raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}): {e}") from e
        except Exception as e:
            raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}) failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        record = PassRecord(info.name, options, result.modified, int(result.stats.get("matches", 0)), before,
                            count_nodes(gm), seconds, stats=dict(result.stats))
        if verify:
            got = _run(gm, ctx.example_inputs)
            record.max_abs_diff = max_output_diff(reference, got)
            if info.exact and not record.max_abs_diff <= atol:
                raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}) changed the outputs by "
                                f"{record.max_abs_diff:.3g} > atol {atol:g}")
            reference = got  # next pass is compared with this one's output
        records.append(record)
    return gm, records


def _with_options(ctx: PassContext, options: dict) -> PassContext:
    return PassContext(ctx.example_inputs, ctx.model_args, ctx.rank, ctx.world_size, options)


def _run(gm: GraphModule, inputs: tuple):
    with torch.no_grad():
        return gm(*inputs)
