"""`optimize_graph`: the passes + compile half of optimize(), on a graph already captured. optimize()
(graphopt.optimize_model) calls it after capturing a module; the torch.compile backend
(graphopt.compile_backend) calls it on dynamo's graph."""
from __future__ import annotations

from typing import Callable

from torch.fx import GraphModule

from graphopt.compilers import compile_for, compile_inside_backend
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext


def optimize_graph(gm: GraphModule, pipeline=(), compiler: str = "none", ctx: PassContext | None = None,
                   verify: bool = False, atol: float = 1e-4, after_each: Callable | None = None,
                   inside_backend: bool = False,
                   load_weights: Callable[[GraphModule], None] | None = None, device=None,
                   dynamic: bool | None = None):
    """A captured graph -> (runnable, optimised graph, pass records): the pipeline, then the weights
    (load_weights, for a graph captured weightless), then the compiler. after_each(None, gm) sees the
    captured graph, then after_each(record, gm) the graph after each pass."""
    if after_each is not None:
        after_each(None, gm)
    gm, records = run_passes(gm, pipeline, ctx, verify=verify, atol=atol, after_each=after_each)
    if load_weights is not None:
        load_weights(gm)
        gm = gm.to(device) if device is not None else gm
    fn = compile_inside_backend(gm, compiler) if inside_backend else compile_for(gm, compiler, dynamic=dynamic)
    return fn, gm, records
