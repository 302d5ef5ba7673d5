"""optimize() block by block: capture and run the passes once per distinct decoder block, not once
per layer.

    plan = plan_blocks(module, example_inputs, specs, ctx)    # capture + passes, once per part
    gm = assemble(plan, module)                              # every layer's weights, the flat graph

1. capture: the graph around the layers (graphopt.block_capture.capture_outer: embedding, RoPE
   tables, masks, final norm, LM head, log-prob; one graphopt::decoder_block node per layer) and
   one graph per distinct block (capture_block: a 30-layer checkpoint has one, a globally pruned
   one a few).
2. passes: the whole pipeline on the outer graph and on each block graph, each under a
   WeightRecorder (graphopt.weight_program), so the weights a pass made of the first layer's
   (merged q/k/v, casts, packed oneDNN copies) can be made from any other layer's.
3. weights + splice: each layer's weights through its block's recorded steps, and the optimised
   block graph put in place of each layer's node (graphopt.block_splice): one flat GraphModule, as
   optimising the whole graph gives.

Which passes run where: a pass that declared `blockwise` (its rewrites are local: the fusions,
merges, SDPA, casts, oneDNN packing, cse, dce; prune_lm_head and fused_logprob, whose head sits in
the outer graph; cache_attention, which raises NotBlockwise for a change of the cache's dtype) runs
on every part; lean_graph, which renames weights, runs once on the assembled graph (blockwise=ASSEMBLED,
at the pipeline's end). A pipeline with any other pass (pipeline_split,
tensor_parallel, prune_structured's global budgets and calibration, prefix_attention, a plug-in's
pass) is optimised whole, as are captures that verify each pass or report each pass's whole graph
(`blockwise_reason` says why).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from torch import Tensor, nn
from torch.fx import GraphModule
from torch.utils._pytree import tree_leaves

from graphopt.block_capture import (BlockCapture, block_nodes, capture_block, capture_outer,
                                    group_layers, record_inputs, retype_inputs)
from graphopt.block_splice import splice
from graphopt.blockwise import NotBlockwise, runs_on_assembled, runs_per_block
from graphopt.graph_attrs import attr
from graphopt.pass_manager import PassRecord, run_passes
from graphopt.pipeline import PassContext, PassSpec
from graphopt.weight_program import WeightProgram, WeightRecorder, release_unheld


def blockwise_reason(specs: list[PassSpec], *, capture: str, verify: bool, after_each, load_weights) -> str | None:
    """None when optimize() may work block by block; else why it captures the whole graph."""
    if capture != "export":
        return f"capture {capture}"
    if verify or after_each is not None:
        return "each pass's whole graph is asked for (verify / after_each)"
    if load_weights is not None:
        return "the model is captured weightless (its weights are filled after the passes)"
    whole = [s.name for s in specs if not runs_per_block(s) and not runs_on_assembled(s)]
    if whole:
        return f"pass {whole[0]} needs the whole graph"
    tail = assembled_tail(specs)
    early = [s.name for s in specs[:len(specs) - len(tail)] if runs_on_assembled(s)]
    return f"pass {early[0]} runs on the assembled graph, before per-block passes" if early else None


def assembled_tail(specs: list[PassSpec]) -> list[PassSpec]:
    """The pipeline's last passes that run on the assembled graph (blockwise=ASSEMBLED: lean_graph)."""
    n = 0
    while n < len(specs) and runs_on_assembled(specs[len(specs) - 1 - n]):
        n += 1
    return specs[len(specs) - n:]


def _weights(gm: GraphModule) -> dict:
    return {name: t for name, t in [*gm.named_parameters(remove_duplicate=False),
                                    *gm.named_buffers(remove_duplicate=False)]}


def layer_sources(layer: nn.Module, prefix: str) -> dict:
    return {f"{prefix}.{name}": t for name, t in [*layer.named_parameters(remove_duplicate=False),
                                                  *layer.named_buffers(remove_duplicate=False)]}


def _run_part(gm: GraphModule, specs, ctx: PassContext, after_each=None):
    """The passes on one part, recording how its weights are made."""
    with WeightRecorder(_weights(gm)) as rec:
        gm, records = run_passes(gm, specs, ctx, after_each=after_each)
    return gm, records, rec.program(gm)


def _run_block(block, specs, ctx: PassContext, inputs: list):
    """The passes on one block graph; before pass k its inputs get the dtypes the layer call's inputs
    had after pass k ran on the outer graph (inputs[k + 1]), as in the whole graph."""
    if len(inputs) > 1:  # (no passes: nothing to retype)
        retype_inputs(block.gm, inputs[1])
    done = []

    def next_inputs(record, gm):
        done.append(record)
        if len(done) + 1 < len(inputs):
            retype_inputs(gm, inputs[len(done) + 1])
    return _run_part(block.gm, specs, ctx, next_inputs)


def check_outputs(outer, block) -> None:
    """The optimised block returns what the outer graph's layer nodes expect (dtypes, ranks): a pass
    that changed a block's outputs (a dtype) would make the splice wrong; then capture whole."""
    out = block.gm.graph.output_node()
    got = [n.meta.get("val") for n in tree_leaves(out.args[0])]
    for node in block_nodes(outer.gm):
        if node.args[0] != block.layers[0]:
            continue
        want = [u.meta.get("val") for u in sorted(node.users, key=lambda u: u.args[1])]
        same = len(got) == len(want) and all(isinstance(g, Tensor) and isinstance(w, Tensor) and g.dtype == w.dtype
                                             and g.dim() == w.dim() for g, w in zip(got, want))
        if not same:
            raise NotBlockwise(f"the passes changed what layer {node.args[0]} returns")


def merge_records(parts: list[tuple[list[PassRecord], int]]) -> list[PassRecord]:
    """One record per pass for the parts it ran on ((records, how many layers the part stands for)):
    matches, node counts and numeric stats summed as the flat graph has them (a block's once per
    layer), seconds as spent."""
    merged = []
    for recs in zip(*(r for r, _ in parts)):
        first = recs[0]
        weighted = lambda get: sum(get(r) * n for r, (_, n) in zip(recs, parts))  # noqa: E731
        stats = dict(first.stats)
        for key, value in first.stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stats[key] = weighted(lambda r: r.stats.get(key, 0))
        merged.append(replace(first, modified=any(r.modified for r in recs), matches=weighted(lambda r: r.matches),
                              nodes_before=weighted(lambda r: r.nodes_before),
                              nodes_after=weighted(lambda r: r.nodes_after),
                              seconds=sum(r.seconds for r in recs), stats=stats))
    return merged


@dataclass
class BlockPlan:
    """What the passes made, before the other layers' weights are made: the optimised graph around the
    layers (its decoder_block nodes in place, its weights made), each distinct block's optimised graph
    (holding its first layer's made weights) with the recorded steps that make any layer's, and the
    pass records. assemble() turns it into the flat graph; graphopt.optimized_cache keeps it across runs."""
    outer: GraphModule
    outer_program: WeightProgram
    layers_name: str  # the dotted name of the module's layer list
    blocks: list[BlockCapture]  # .gm optimised, .prefix, .layers, .program
    records: list[PassRecord]
    split: dict = field(default_factory=dict)  # capture_s, passes_s, layers, distinct_blocks


def plan_blocks(module: nn.Module, example_inputs: tuple, specs: list[PassSpec],
                ctx: PassContext) -> BlockPlan:
    """Capture and run the passes once per part. Raises NotBlockwise when the module has no layer list the
    capture can stand in for, or a pass made what cannot be made again from another layer."""
    t0 = time.perf_counter()
    outer = capture_outer(module, example_inputs)
    capture_s = time.perf_counter() - t0
    part_ctx = PassContext((), ctx.model_args, ctx.rank, ctx.world_size, tokenizer=ctx.tokenizer, part="outer")
    t1 = time.perf_counter()
    try:
        with outer.active():  # (a pass propagating fake values through a layer's node runs the layer on them)
            outer.gm, outer_records, outer_program = _run_part(outer.gm, specs, part_ctx,
                                                               lambda record, gm: record_inputs(outer))
        passes_s = time.perf_counter() - t1
        group_layers(outer)  # by the inputs the passes left them (cast_dtype: a bfloat16 embedding into layer 0)
        t1 = time.perf_counter()
        blocks = [capture_block(outer, sig) for sig in outer.groups]
        capture_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        parts = [(outer_records, 1)]
        for block in blocks:
            block.gm, records, block.program = _run_block(block, specs, replace(part_ctx, part="block"),
                                                          outer.history[block.layers[0]])
            check_outputs(outer, block)
            parts.append((records, len(block.layers)))
    except ValueError as e:  # a weight the recorder could not follow
        raise NotBlockwise(str(e)) from e
    passes_s += time.perf_counter() - t1
    split = {"capture_s": capture_s, "passes_s": passes_s, "layers": len(outer.layers), "distinct_blocks": len(blocks)}
    return BlockPlan(outer.gm, outer_program, outer.layers_name, blocks, merge_records(parts), split)


def assemble(plan: BlockPlan, module: nn.Module, keep_module_weights: bool = True) -> GraphModule:
    """The flat graph: each layer's weights made through its block's recorded steps (the first layer's are
    made already), its block graph in place of its node (graph, weights and all, in plan.outer).
    keep_module_weights=False: each layer's weights that the graph holds in another form (packed) are
    freed as soon as that form is made (release_unheld)."""
    layers = module.get_submodule(plan.layers_name)
    of_layer = {i: b for b in plan.blocks for i in b.layers}

    def layer_weights(index: int) -> dict:
        block = of_layer[index]
        if index == block.layers[0]:  # the layer the passes ran on: its weights are made already
            made = {t: attr(block.gm, t) for t in block.program.targets}
        else:
            made = block.program.build(layer_sources(layers[index], block.prefix))
        if not keep_module_weights:
            release_unheld(layers[index], made.values())
        return made

    name = lambda i: f"{plan.layers_name}.{i}" if plan.layers_name else str(i)  # noqa: E731
    gm = splice(plan.outer, plan.blocks, name, layer_weights)
    if not keep_module_weights:  # the graph around the layers: an untied head held packed
        release_unheld(module, [*gm.parameters(), *gm.buffers()])
    return gm
