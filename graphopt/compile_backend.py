"""graphopt as a torch.compile backend:

    torch.compile(model, backend="graphopt")                                   # exact pipeline, inductor
    torch.compile(model, backend="graphopt", options={"pipeline": "fast", "compiler": "none"})
    torch.compile(model, backend=graphopt.backend(pipeline=["fuse_rmsnorm", ...], compiler="inductor"))

Dynamo's graph is normalised to the export IR (graphopt.graph_capture.normalise_dynamo_graph: weights
become parameters, symbolic sizes become shared Dims), then graphopt.optimize_graph.optimize_graph runs
the pipeline and the compiler, as for every other caller. `fn.records` holds the pass records of the
last compilation, `fn.graphs` every optimised GraphModule, `fn.compiles` the count.
The name "graphopt" is registered through the `torch_dynamo_backends` entry point (pyproject.toml).
"""
from __future__ import annotations

import time

from torch.fx import GraphModule

from graphopt.compilers import check_compiler
from graphopt.graph_capture import normalise_dynamo_graph
from graphopt.optimize_graph import optimize_graph
from graphopt.pipeline import PassContext, check_pipeline


def backend(pipeline="exact", compiler: str = "inductor", ctx: PassContext | None = None, verify: bool = False,
            atol: float = 1e-4, after_each=None):
    """-> a torch.compile backend `fn(gm, example_inputs) -> callable` running `pipeline` then `compiler`."""
    check_compiler(compiler)
    specs = list(check_pipeline(pipeline, compiler).specs)

    def compile_graph(gm: GraphModule, example_inputs, **_):
        # Normalising re-exports the graph; torch.export cannot run nested in dynamo's compilation (the
        # frame's guards then fail), so the work happens on the first call, with that call's real inputs.
        compiled = {}

        def build(args):
            t0 = time.perf_counter()
            norm = normalise_dynamo_graph(gm, list(args), dynamic=True)
            user_inputs = tuple(norm.user_args(list(args)))
            base = ctx or PassContext()
            pass_ctx = PassContext(user_inputs, base.model_args, base.rank, base.world_size)
            run, optimised, records = optimize_graph(norm.gm, specs, compiler, pass_ctx, verify=verify,
                                                     atol=atol, after_each=after_each, inside_backend=True)
            compile_graph.records = records
            compile_graph.graphs.append(optimised)
            compile_graph.compiles += 1
            compile_graph.seconds += time.perf_counter() - t0
            compiled.update(norm=norm, run=run)

        def call(*args):
            if not compiled:
                build(args)
            norm = compiled["norm"]
            for i, w in norm.weights.items():  # weights were captured by reference; a swapped tensor is stale
                if args[i] is not w:
                    raise RuntimeError("graphopt backend: a weight tensor of the compiled model was replaced after "
                                       "compilation; call torch._dynamo.reset() and compile again")
            return compiled["run"](*norm.user_args(args))
        return call

    compile_graph.records, compile_graph.graphs, compile_graph.compiles, compile_graph.seconds = [], [], 0, 0.0
    return compile_graph


def graphopt_backend(gm: GraphModule, example_inputs, options: dict | None = None, **_):
    """The registered backend "graphopt": options {"pipeline": ..., "compiler": ...} (default: the
    exact pipeline, then inductor)."""
    options = dict(options or {})
    unknown = set(options) - {"pipeline", "compiler"}
    if unknown:
        raise ValueError(f"backend 'graphopt' has no option {sorted(unknown)[0]!r} (options: pipeline, compiler)")
    be = backend(options.get("pipeline", "exact"), options.get("compiler", "inductor"))
    graphopt_backend.last = be  # what the latest graph went through (records, graphs), for inspection
    return be(gm, example_inputs)
