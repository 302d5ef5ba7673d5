"""dce: remove nodes whose values nobody uses (side-effect-free ones only: asserts, guards and
in-place ops stay), then drop parameters/buffers no get_attr reads any more."""
from __future__ import annotations

from torch.fx import GraphModule

from graphopt.pipeline import PassContext, PassResult, count_nodes, register_pass
from passes._graphutil import record_pass


def _drop_unused_attrs(gm: GraphModule) -> int:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    dropped = 0
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name in used or any(name.startswith(m + ".") for m in modules):
            continue
        *path, leaf = name.split(".")
        owner = gm
        for part in path:
            owner = getattr(owner, part)
        owner._parameters.pop(leaf, None)
        owner._buffers.pop(leaf, None)
        dropped += 1
    return dropped


@register_pass("dce", "dead-code elimination: remove unused side-effect-free nodes and the parameters "
               "no node reads any more")
def dce(gm: GraphModule, ctx: PassContext) -> PassResult:
    before = count_nodes(gm)
    gm.graph.eliminate_dead_code()
    removed = before - count_nodes(gm)
    dropped = _drop_unused_attrs(gm) if removed else 0
    record_pass(gm, "dce")
    return PassResult(gm, removed > 0, {"matches": removed, "nodes_removed": removed, "attrs_dropped": dropped})
