"""The pass manager: run_passes runs a parsed pipeline on a captured graph (order checked first, lint
and recompile after each pass, optional output verification) and records what each pass did. The
protocol and registry it runs are in graphopt.pipeline."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch.fx import GraphModule

from graphopt.blockwise import NotBlockwise
from graphopt.pipeline import PassContext, PassError, check_order, parse_pipeline

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

    def summary(self) -> dict:
        return {"name": self.name, "matches": self.matches, "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after, "seconds": self.seconds}


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


def applied_passes(gm: GraphModule) -> list[str]:
    """The passes run_passes has applied to gm so far, in order."""
    return list(gm.meta.get("graphopt_passes", []))


def run_passes(gm: GraphModule, pipeline, ctx: PassContext | None = None, verify: bool = False,
               atol: float = 1e-4, after_each: Callable[[PassRecord, GraphModule], None] | None = None,
               ) -> tuple[GraphModule, list[PassRecord]]:
    """Run the pipeline (anything parse_pipeline accepts) in order; lint and recompile after each pass.
    Every spec and the order rules (with the passes already applied to gm) are checked before the first
    pass runs. With verify=True, run the graph on ctx.example_inputs before and after every exact pass
    and fail on the first that moves outputs by more than atol. after_each(record, gm) sees each step."""
    ctx = ctx or PassContext()
    specs = parse_pipeline(pipeline)
    check_order(specs, applied_passes(gm))
    if verify and not ctx.example_inputs:
        raise PassError("verify=True needs ctx.example_inputs")
    reference = _run(gm, ctx.example_inputs) if verify else None
    records: list[PassRecord] = []
    for spec in specs:
        info = spec.info
        before_n = count_nodes(gm)
        ran = [r.name for r in records]
        history = applied_passes(gm)
        t0 = time.perf_counter()
        try:
            result = info.fn(gm, _with_options(ctx, spec.opts))
            gm = result.gm
            gm.graph.lint()
            gm.recompile()
        except PassError as e:
            raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}): {e}") from e
        except NotBlockwise as e:  # (a block graph: the caller optimises the whole graph instead)
            raise NotBlockwise(f"pass {info.name!r}: {e}") from e
        except Exception as e:
            raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}) failed: {type(e).__name__}: {e}") from e
        gm.meta["graphopt_passes"] = history + [info.name]
        seconds = time.perf_counter() - t0
        record = PassRecord(info.name, spec.opts, result.modified, int(result.stats.get("matches", 0)), before_n,
                            count_nodes(gm), seconds, stats=dict(result.stats))
        if verify:
            got = _run(gm, ctx.example_inputs)
            record.max_abs_diff = max_output_diff(reference, got)
            if info.exact and not record.max_abs_diff <= atol:
                raise PassError(f"pass {info.name!r} (after {ran or 'no passes'}) changed the outputs by "
                                f"{record.max_abs_diff:.3g} > atol {atol:g}")
            reference = got  # next pass is compared with this one's output
        records.append(record)
        if after_each is not None:
            after_each(record, gm)
    return gm, records


def _with_options(ctx: PassContext, options: dict) -> PassContext:
    return replace(ctx, options=options)


def _run(gm: GraphModule, inputs: tuple):
    with torch.no_grad():
        return gm(*inputs)
