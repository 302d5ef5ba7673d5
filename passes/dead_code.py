"""dce: remove nodes whose values nobody uses (side-effect-free ones only: asserts, guards and
in-place ops stay), then drop parameters/buffers no get_attr reads any more."""
from __future__ import annotations

from torch.fx import GraphModule

from graphopt.pass_manager import count_nodes
from graphopt.pipeline import PassContext, PassResult, register_pass
from ._edit import drop_unused_attrs


@register_pass("dce", "dead-code elimination: remove unused side-effect-free nodes and the parameters "
               "no node reads any more", blockwise=True)
def dce(gm: GraphModule, ctx: PassContext) -> PassResult:
    before = count_nodes(gm)
    gm.graph.eliminate_dead_code()
    removed = before - count_nodes(gm)
    dropped = len(drop_unused_attrs(gm)) if removed else 0
    return PassResult(gm, removed > 0, {"matches": removed, "nodes_removed": removed, "attrs_dropped": dropped})
