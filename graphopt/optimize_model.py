"""`optimize(module, example_inputs, pipeline, compiler)`: the one place where a model is captured, its
pass pipeline run and the result compiled. Every caller goes through it: `graphopt run` workers,
`graphopt eval`, `graphopt inspect`, the benchmarks, and the torch.compile backend (which hands
dynamo's graph to graphopt.optimize_graph, the passes + compile half).

    opt = graphopt.optimize(ScoreModule(model), batch.model_inputs(), pipeline="exact", compiler="inductor")
    logprobs = opt(*batch.model_inputs())     # opt.records: what each pass did; opt.graph: the FX graph

capture: "export" (torch.export, dynamic B/T/N), "dynamo" (torch.compile with graphopt's backend:
the passes run on dynamo's graph on the first call) or "none" (the module itself, compiled or not).
A module on the meta device is captured weightless and `load_weights(gm)` fills the optimised graph
afterwards (a tensor-parallel rank reads only its shard of a checkpoint).
"""
from __future__ import annotations

import time
from typing import Callable

from torch import nn
from torch.fx import GraphModule

from graphopt.blockwise import NotBlockwise
from graphopt.compilers import check_compiler, compile_for
from graphopt.optimize_blocks import assemble, assembled_tail, blockwise_reason, plan_blocks
from graphopt.optimize_graph import optimize_graph
from graphopt.optimized_cache import load_plan, plan_key, store_plan
from graphopt.pass_manager import PassRecord, run_passes
from graphopt.pipeline import PassContext, PassError, check_pipeline
from graphopt.weight_program import release_unheld

CAPTURES = ("export", "dynamo", "none")


class Optimized:
    """The runnable an optimize() call built, with what its passes reported. Call it like the module."""

    def __init__(self, fn, graph: GraphModule | None = None, records=(), seconds: float = 0.0, backend=None,
                 module: nn.Module | None = None, setup: dict | None = None):
        self.fn, self._graph, self._records, self.seconds = fn, graph, list(records), seconds
        self.backend, self.module = backend, module  # backend: dynamo capture, filled on the first call
        # where the setup time went (seconds = all of it, host time):
        #   path        "blocks" (per distinct decoder block), "whole" (the whole graph, why_whole says why)
        #               or "none" (no capture)
        #   cached      blocks: the capture and passes came from graphopt's cache folder (load_s: reading them)
        #   capture_s, passes_s, weights_s (blocks: every layer's weights made, its block graph put in place),
        #   compile_s   wrapping the graph for the compiler; torch.compile compiles on the first call:
        #   first_call_s  the first call's time (a compile, cached or not, included), once it happened
        #   layers, distinct_blocks   blocks: the model's depth and how many block graphs it took
        self.setup = dict(setup or {"path": "none", "capture_s": 0.0, "passes_s": 0.0, "weights_s": 0.0,
                                    "compile_s": seconds})
        self.setup.setdefault("cached", False)
        self.setup["first_call_s"] = None

    def __call__(self, *args):
        if self.setup["first_call_s"] is not None:
            return self.fn(*args)
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.setup["first_call_s"] = time.perf_counter() - t0
        return out

    def setup_summary(self) -> str:
        """One line: where the setup time went, e.g. "setup 0.6s (kept graph 0.1s, weights 0.5s, compile
        0.0s; 30 layers, 1 block graph)"."""
        s = self.setup
        parts = ([f"kept graph {s.get('load_s', 0.0):.1f}s"] if s["cached"]
                 else [f"capture {s['capture_s']:.1f}s", f"passes {s['passes_s']:.1f}s"])
        parts += [f"weights {s['weights_s']:.1f}s", f"compile {s['compile_s']:.1f}s"]
        if s.get("first_call_s") is not None:
            parts.append(f"first call {s['first_call_s']:.1f}s")
        shape = (f"; {s['layers']} layers, {s['distinct_blocks']} block graph{'s' * (s['distinct_blocks'] != 1)}"
                 if s["path"] == "blocks" else f"; {s['path']} graph" if s["path"] == "whole" else "")
        return f"setup {self.seconds:.1f}s ({', '.join(parts)}{shape})"

    @property
    def records(self) -> list[PassRecord]:
        return list(self.backend.records) if self.backend is not None else self._records

    @property
    def graph(self) -> GraphModule | None:
        """The optimised FX graph (dynamo: the last one the backend built; none: no graph)."""
        if self.backend is not None:
            return self.backend.graphs[-1] if self.backend.graphs else None
        return self._graph

    @property
    def compiles(self) -> int:
        """Graphs the passes ran on (dynamo: one per dynamo recompilation)."""
        return self.backend.compiles if self.backend is not None else int(self._graph is not None)


def optimize(module: nn.Module, example_inputs: tuple, pipeline=(), compiler: str = "none", *,
             capture: str = "export", rank: int = 0, world_size: int = 1, model_args=None,
             load_weights: Callable[[GraphModule], None] | None = None, device=None, verify: bool = False,
             after_each: Callable | None = None, dynamic: bool | None = True, tokenizer=None,
             keep_module_weights: bool = True, cache: bool = True) -> Optimized:
    """Capture `module` on `example_inputs`, run `pipeline` (a named pipeline, pass names or specs:
    graphopt.pipeline.parse_pipeline, or a CheckedPipeline), compile with `compiler`
    (graphopt.compilers.COMPILERS). The pipeline is parsed and its order checked before any capture work
    starts (a CheckedPipeline for this compiler was checked by the caller: it is taken as it is).

    dynamic=True (default): the capture is symbolic in B, T and N, and so is the compile (torch.compile
    dynamic=True): one compilation serves every batch shape. None leaves it to torch (a static
    compile first, a dynamic one on the first new shape).

    keep_module_weights=False: the module's weights that the optimised graph holds in another form
    (packed for oneDNN, cast) are freed as soon as that form exists (block by block: layer by layer),
    so the weights are in memory once; the module can no longer run eagerly (its freed weights are
    empty: a call fails). Pass it when nothing runs the module itself afterwards.

    cache=True: a block-by-block optimisation is kept in graphopt's cache folder and a later run of a
    model of the same structure, pipeline and shape class loads it instead of capturing and running
    the passes (graphopt.optimized_cache; the weights are always made afresh from the module's)."""
    from graphopt.graph_capture import capture as capture_graph

    check_compiler(compiler)
    specs = list(check_pipeline(pipeline, compiler).specs)  # as it is when the caller checked it already
    if capture not in CAPTURES:
        raise ValueError(f"unknown capture {capture!r}; expected one of {', '.join(CAPTURES)}")
    if model_args is None:
        model_args = getattr(getattr(module, "model", module), "args", None)
    if compiler != "none" or capture == "dynamo":
        from graphopt.compile_cache import configure
        configure()  # compiled artifacts go to graphopt's cache folder, reused by the next run
    t0 = time.perf_counter()
    if capture == "none":
        if specs:
            raise PassError(f"passes need a captured graph (capture export or dynamo); got capture none with "
                            f"{[s.name for s in specs]}")
        return Optimized(compile_for(module, compiler, dynamic=dynamic), module=module)
    if capture == "dynamo":
        import torch
        from graphopt.compile_backend import backend
        be = backend(specs, compiler, PassContext((), model_args, rank, world_size), verify=verify,
                     after_each=after_each)
        return Optimized(torch.compile(module, backend=be, dynamic=dynamic), backend=be, module=module)
    weightless = load_weights is not None
    ctx = PassContext(() if weightless else tuple(example_inputs), model_args, rank, world_size, tokenizer=tokenizer)
    why_whole = blockwise_reason(specs, capture=capture, verify=verify, after_each=after_each,
                                 load_weights=load_weights)
    if why_whole is None:
        key = plan_key(module, example_inputs, specs, ctx) if cache else None
        plan = load_plan(key, module) if key else None  # kept by an earlier run: no capture, no passes
        cached = plan is not None
        try:
            tail = assembled_tail(specs)
            if plan is None:
                plan = plan_blocks(module, example_inputs, specs[:len(specs) - len(tail)], ctx)
                if key and store_plan(key, plan) and compiler != "none":
                    # compile the graph as later runs will read it back: the same code, so the compile
                    # cache's key is the same and the next run hits it
                    plan = load_plan(key, module) or plan
        except NotBlockwise as e:
            why_whole = str(e)
        else:
            t1 = time.perf_counter()
            gm = assemble(plan, module, keep_module_weights)
            gm, tail_records = run_passes(gm, tail, ctx) if tail else (gm, [])
            t2 = time.perf_counter()
            fn = compile_for(gm, compiler, dynamic=dynamic)
            tail_s = sum(r.seconds for r in tail_records)
            setup = {"path": "blocks", "cached": cached, **plan.split, "weights_s": t2 - t1 - tail_s,
                     "compile_s": time.perf_counter() - t2}
            setup["passes_s"] = setup.get("passes_s", 0.0) + tail_s
            return Optimized(fn, gm, plan.records + tail_records, time.perf_counter() - t0, module=module,
                             setup=setup)
    if weightless:  # the module is on the meta device: capture and rewrite without weights, then fill them
        from graphopt.distributed.load_shard import retarget_device
        gm = capture_graph(module, tuple(t.to("meta") for t in example_inputs))
        retarget_device(gm, device)
    else:
        gm = capture_graph(module, example_inputs)
    t1 = time.perf_counter()
    fn, gm, records = optimize_graph(gm, specs, compiler, ctx, verify=verify, after_each=after_each,
                                     load_weights=load_weights, device=device, dynamic=dynamic)
    if not keep_module_weights:
        release_unheld(module, [*gm.parameters(), *gm.buffers()])
    passes_s = sum(r.seconds for r in records)
    setup = {"path": "whole", "why_whole": why_whole, "capture_s": t1 - t0, "passes_s": passes_s,
             "weights_s": 0.0, "compile_s": max(0.0, time.perf_counter() - t1 - passes_s)}
    return Optimized(fn, gm, records, time.perf_counter() - t0, module=module, setup=setup)
