"""lean_graph: fewer Python-level calls per forward of a graph run as it is (compiler none), for forwards so
small that the calls are the cost (a decode step: one token per row). Exact: nothing it removes computes.

- export's checks: every aten._assert_tensor_metadata node and the input guard (`_guards_fn`): the
  caller builds the inputs (graphopt.generation's engine) and the passes already checked the graph;
- casts that change nothing: aten.to.dtype / aten.type_as whose input has the output's dtype already;
- weight reads: each get_attr of a nested name (model.layers.3.attention.wo.weight, four
  Module.__getattr__ calls per read in the generated code) reads a root attribute instead (the same
  tensor, registered on the root module under a flat name; its old name stays registered unless
  nothing reads it and a later dce drops it).
On SmolLM2-135M's decode-step graph (30 layers, ~2,400 nodes) this is about a quarter of the time
spent outside the matmuls (measured with the weights shrunk to dim 64: 15.8 -> 12.0 ms per step).
Run it last: it renames weights other passes look for by name. stats: matches (nodes removed),
asserts, casts, attrs_flattened.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule

from graphopt.blockwise import ASSEMBLED
from graphopt.graph_attrs import attr
from graphopt.pipeline import PassContext, PassResult, after, register_pass
from ._ops import ASSERT_META, aten, val

_NOOP_CASTS = {aten.to.dtype, aten.type_as.default}
_FLAT = "_lean_"  # prefix of the flat names


def _is_noop_cast(node) -> bool:
    if node.op != "call_function" or node.target not in _NOOP_CASTS:
        return False
    src, out = val(node.args[0]), val(node)
    if node.target is aten.to.dtype and (len(node.args) != 2 or node.kwargs):
        return False  # (copy=, memory_format=: not a plain cast)
    return src is not None and out is not None and src.dtype == out.dtype and src.device == out.device


@register_pass("lean_graph", "drop export's asserts and input guard and casts that change nothing, read weights "
               "by flat root names: fewer Python calls per forward (a decode step's cost besides its matmuls)",
               order=[after(p, "it renames the weights other passes find by name") for p in
                      ("mkldnn_linear", "quantize_int8", "cast_dtype", "tensor_parallel", "prune_structured",
                       "merge_qkv", "merge_gate_up", "cache_attention", "dce")],
               blockwise=ASSEMBLED)  # (block by block: once, on the graph the blocks were spliced into)
def lean_graph(gm: GraphModule, ctx: PassContext) -> PassResult:
    g = gm.graph
    asserts = casts = 0
    for node in list(g.nodes):
        if (node.op == "call_function" and node.target in ASSERT_META) or \
                (node.op == "call_module" and node.target == "_guards_fn"):
            g.erase_node(node)
            asserts += 1
    for node in list(g.nodes):
        if _is_noop_cast(node):
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            casts += 1
    flat: dict[str, str] = {}
    for node in g.find_nodes(op="get_attr"):
        if "." not in node.target:
            continue
        if node.target not in flat:
            tensor = attr(gm, node.target)
            name = f"{_FLAT}{len(flat)}"
            while hasattr(gm, name):
                name += "_"
            if isinstance(tensor, torch.nn.Parameter):
                gm.register_parameter(name, tensor)
            else:
                gm.register_buffer(name, tensor)
            flat[node.target] = name
        node.target = flat[node.target]
    gm.recompile()
    removed = asserts + casts
    return PassResult(gm, bool(removed or flat), {"matches": removed, "asserts": asserts, "casts": casts,
                                                  "attrs_flattened": len(flat)})
