"""The collectives the sharding passes insert, as functional-collective ops (traceable by export and
compile): all_reduce(x, op) = wait_tensor(_c10d_functional.all_reduce(x, op, group_name)), all_gather
along a dim, and the vocab-parallel log-prob and embedding lookup built from all-reduces. Also `graph_collectives(gm)`: the
collectives in a graph."""
from __future__ import annotations

import operator

import torch
from torch import Tensor
from torch.fx import Graph, GraphModule, Node

aten = torch.ops.aten
c10d = torch.ops._c10d_functional
ALL_REDUCE = c10d.all_reduce.default
ALL_GATHER = c10d.all_gather_into_tensor.default
WAIT = c10d.wait_tensor.default
COLLECTIVES = {ALL_REDUCE, ALL_GATHER}


def all_reduce(x: Tensor, op: str, group_name: str) -> Tensor:
    """Eager form of what `insert_all_reduce` puts in a graph."""
    return WAIT(ALL_REDUCE(x, op, group_name))


def insert_all_reduce(graph: Graph, x: Node, op: str, group_name: str) -> Node:
    """Insert all_reduce + wait after node x; x's users read the wait node, which is returned."""
    with graph.inserting_before(x.next):  # (inserting_after(x) would put each new node right after x)
        red = graph.call_function(ALL_REDUCE, (x, op, group_name))
        wait = graph.call_function(WAIT, (red,))
    x.replace_all_uses_with(wait, delete_user_cb=lambda u: u is not red)
    return wait


def insert_all_gather_last_dim(graph: Graph, x: Node, world_size: int, group_name: str) -> Node:
    """x [..., d] on every rank -> [..., world_size*d] (rank order), read by x's users; returns the cat.
    all_gather_into_tensor stacks along dim 0, so gather, chunk along dim 0, concatenate along -1."""
    with graph.inserting_before(x.next):
        gathered = graph.call_function(ALL_GATHER, (x, world_size, group_name))
        wait = graph.call_function(WAIT, (gathered,))
        parts = graph.call_function(aten.chunk.default, (wait, world_size, 0))
        items = [graph.call_function(operator.getitem, (parts, i)) for i in range(world_size)]
        cat = graph.call_function(aten.cat.default, (items, -1))
    x.replace_all_uses_with(cat, delete_user_cb=lambda u: u is not gathered)
    return cat


def insert_vocab_parallel_logprob(graph: Graph, site: Node, x: Node, tgt: Node, rank: int, v_local: int,
                                  group_name: str, squeeze: bool = False) -> Node:
    """Before `site`: x [N, V_local] float32 logits of this rank's vocab slice, tgt [N, 1] global
    target ids -> log p(target) [N, 1] ([N] when squeeze) from all_reduce(max), all_reduce(sum exp)
    and all_reduce(target logit): no rank holds the full logits. Returns the result node."""
    with graph.inserting_before(site):
        c = lambda f, *a: graph.call_function(f, a)
        m = c(WAIT, c(ALL_REDUCE, c(aten.amax.default, x, [-1], True), "max", group_name))  # [N, 1] global max
        s = c(aten.sum.dim_IntList, c(aten.exp.default, c(aten.sub.Tensor, x, m)), [-1], True)
        s = c(WAIT, c(ALL_REDUCE, s, "sum", group_name))  # [N, 1] global sum of exp
        lse = c(aten.add.Tensor, m, c(aten.log.default, s))
        local = c(aten.sub.Tensor, tgt, rank * v_local)  # target id within this rank's vocab slice
        valid = c(aten.logical_and.default, c(aten.ge.Scalar, local, 0), c(aten.lt.Scalar, local, v_local))
        picked = c(aten.gather.default, x, -1, c(aten.clamp.default, local, 0, v_local - 1))
        picked = c(aten.where.ScalarOther, valid, picked, 0.0)
        picked = c(WAIT, c(ALL_REDUCE, picked, "sum", group_name))  # [N, 1] target logit (one rank had it)
        out = c(aten.sub.Tensor, picked, lse)
        return c(aten.squeeze.dim, out, -1) if squeeze else out


def insert_vocab_parallel_lookup(graph: Graph, lookup: Node, start: int, v_local: int, group_name: str) -> Node:
    """lookup = embedding(table [V_local, D], ids [B, T]) reading rows [start, start + V_local) of the
    vocab: ids are shifted into the slice (clamped), rows of ids outside it zeroed, then
    all_reduce(sum) gives every rank the [B, T, D] embeddings (exactly one rank adds each row).
    lookup's users read the result, which is returned."""
    ids = lookup.args[1]
    c = lambda f, *a: graph.call_function(f, a)
    with graph.inserting_before(lookup):
        local = c(aten.sub.Tensor, ids, start)  # [B, T] id within this rank's slice
        valid = c(aten.logical_and.default, c(aten.ge.Scalar, local, 0), c(aten.lt.Scalar, local, v_local))
        lookup.args = (lookup.args[0], c(aten.clamp.default, local, 0, v_local - 1), *lookup.args[2:])
    with graph.inserting_before(lookup.next):
        mine = c(aten.where.ScalarOther, c(aten.unsqueeze.default, valid, -1), lookup, 0.0)  # [B, T, D]
    lookup.replace_all_uses_with(mine, delete_user_cb=lambda u: u is not mine)
    return insert_all_reduce(graph, mine, "sum", group_name)


def graph_collectives(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in COLLECTIVES]
