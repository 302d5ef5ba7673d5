"""cse: common-subexpression elimination. Two call_function nodes with the same target and the
same (already deduplicated) arguments compute the same value; the later one is replaced by the
earlier. Impure nodes (asserts, in-place ops) and random ops are never merged."""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.pipeline import PassContext, PassResult, register_pass


def _key(node: Node, canon: dict):
    def freeze(a):
        if isinstance(a, Node):
            return ("node", canon.get(a, a))
        if isinstance(a, (list, tuple)):
            return (type(a).__name__, tuple(freeze(x) for x in a))
        if isinstance(a, dict):
            return ("dict", tuple(sorted((k, freeze(v)) for k, v in a.items())))
        if isinstance(a, torch.Tensor):
            return ("tensor", id(a))
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ("sym", id(a))
        return (type(a).__name__, a)
    return (node.op, node.target, freeze(node.args), freeze(node.kwargs))


def _mergeable(node: Node) -> bool:
    if node.op not in ("call_function", "get_attr") or node.is_impure():
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
            return False
    return True


@register_pass("cse", "common-subexpression elimination: merge nodes computing the same op on the same inputs",
               blockwise=True)
def cse(gm: GraphModule, ctx: PassContext) -> PassResult:
    seen: dict = {}
    canon: dict = {}
    removed = 0
    for node in list(gm.graph.nodes):
        if not _mergeable(node):
            continue
        try:
            key = _key(node, canon)
            hash(key)
        except TypeError:  # unhashable argument: leave the node alone
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
            gm.graph.erase_node(node)
            removed += 1
        else:
            seen[key] = node
    return PassResult(gm, removed > 0, {"matches": removed, "nodes_removed": removed})
