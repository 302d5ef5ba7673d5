"""A torch.compile backend that runs graphopt's pass pipeline:

    compiled = torch.compile(model, backend=graphopt.backend(passes=["fuse_rmsnorm", ...]))

Dynamo's graph is normalised to the export IR (graphopt.graph_capture.normalise_dynamo_graph: weights become
parameters, symbolic sizes become shared Dims), the passes run (graphopt.pipeline.run_passes), then
the result goes to inductor (compile_fx; "inductor-frozen" folds the weights in as constants, see
graphopt.compilers) or runs as the FX graph ("eager"). `fn.records` holds the
pass records of the last compilation, `fn.graphs` every optimised GraphModule, `fn.compiles` the count.
"""
from __future__ import annotations

import time

import torch
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from graphopt.graph_capture import normalise_dynamo_graph
from graphopt.compilers import inductor_options
from graphopt.pipeline import PassContext, run_passes

THEN = ("inductor", "inductor-frozen", "eager")


def backend(passes=(), then: str = "inductor", ctx: PassContext | None = None, verify: bool = False,
            atol: float = 1e-4):
    """-> a torch.compile backend `fn(gm, example_inputs) -> callable` running `passes` then `then`."""
    if then not in THEN:
        raise ValueError(f"backend then= must be one of {', '.join(THEN)}, got {then!r}")
    passes = list(passes)

    def compile_graph(gm: GraphModule, example_inputs):
        # Normalising re-exports the graph; torch.export cannot run nested in dynamo's compilation (the
        # frame's guards then fail), so the work happens on the first call, with that call's real inputs.
        compiled = {}

        def build(args):
            t0 = time.perf_counter()
            norm = normalise_dynamo_graph(gm, list(args), dynamic=True)
            user_inputs = tuple(norm.user_args(list(args)))
            base = ctx or PassContext()
            pass_ctx = PassContext(user_inputs, base.model_args, base.rank, base.world_size)
            optimised, records = run_passes(norm.gm, passes, pass_ctx, verify=verify, atol=atol)
            if then != "eager":
                from torch._inductor import config as inductor_config
                from torch._inductor.compile_fx import compile_fx
                flat = flat_graph(optimised)
                # the placeholders' fake values carry export's symbolic B/T/N: inductor compiles dynamic
                fakes = [n.meta["val"] for n in flat.graph.nodes if n.op == "placeholder"]
                with inductor_config.patch(inductor_options(then)):
                    run = compile_fx(flat, fakes)
            else:
                run = optimised
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
                    raise RuntimeError("graphopt.backend: a weight tensor of the compiled model was replaced after "
                                       "compilation; call torch._dynamo.reset() and compile again")
            return compiled["run"](*norm.user_args(args))
        return call

    compile_graph.records, compile_graph.graphs, compile_graph.compiles, compile_graph.seconds = [], [], 0, 0.0
    return compile_graph


def flat_graph(gm: GraphModule) -> GraphModule:
    """An exported GraphModule with plain codegen (flat inputs, outputs as the graph returns them) and
    without export's input-guard call, as inductor's compile_fx wants it. Shares gm's weights."""
    return GraphModule(gm, _copy_graph(gm))


def _copy_graph(gm: GraphModule):
    graph = torch.fx.Graph()
    env = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.set_codegen(CodeGen())
    out = [n for n in graph.nodes if n.op == "output"][0]
    # export's output is the unflattened structure; plain codegen returns exactly the flat output args
    flat_out, _ = torch.utils._pytree.tree_flatten(out.args[0])
    out.args = (tuple(flat_out),)
    return graph

