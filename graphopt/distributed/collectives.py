"""The collectives the sharding passes insert, as functional-collective ops (traceable by export and
compile): all_reduce(x, op) = wait_tensor(_c10d_functional.all_reduce(x, op, group_name)), and
all_gather along a dim. Also `graph_collectives(gm)`: count and bytes of the collectives in a graph."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Graph, GraphModule, Node

c10d = torch.ops._c10d_functional
ALL_REDUCE = c10d.all_reduce.default
ALL_GATHER = c10d.all_gather_into_tensor.default
WAIT = c10d.wait_tensor.default
COLLECTIVES = {ALL_REDUCE, ALL_GATHER}


def all_reduce(x: Tensor, op: str, group_name: str) -> Tensor:
    """Eager form of what `insert_all_reduce` puts in a graph."""
    return WAIT(ALL_REDUCE(x, op, group_name))


def insert_all_reduce(graph: Graph, x: Node, op: str, group_name: str) -> Node:
    """Insert all_reduce + wait after node x; returns the wait node (callers redirect x's users)."""
    with graph.inserting_after(x):
        red = graph.call_function(ALL_REDUCE, (x, op, group_name))
    with graph.inserting_after(red):
        return graph.call_function(WAIT, (red,))


def insert_all_gather_last_dim(graph: Graph, x: Node, world_size: int, group_name: str) -> Node:
    """x [..., d] on every rank -> [..., world_size*d] (rank order). all_gather_into_tensor stacks
    along dim 0, so gather, chunk along dim 0 and concatenate along the last dim."""
    aten = torch.ops.aten
    with graph.inserting_after(x):
        g = graph.call_function(ALL_GATHER, (x, world_size, group_name))
    with graph.inserting_after(g):
        w = graph.call_function(WAIT, (g,))
    with graph.inserting_after(w):
        parts = graph.call_function(aten.chunk.default, (w, world_size, 0))
    last = parts
    items = []
    for i in range(world_size):
        with graph.inserting_after(last):
            last = graph.call_function(__import__("operator").getitem, (parts, i))
        items.append(last)
    with graph.inserting_after(last):
        return graph.call_function(aten.cat.default, (items, -1))


def graph_collectives(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in COLLECTIVES]
