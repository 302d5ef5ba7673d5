"""The KV-cache input of a captured graph, for the passes that change what it holds.

A graph captured from a module called with a cache (graphopt.model.llama.Transformer.forward) has a
placeholder `cache` [2, n_layers, B, Hkv, P, head_dim]: per layer the keys (after RoPE) and values of
P earlier tokens, concatenated in front of the row's own (aten.cat along dim 2 of [B, Hkv, ., D]).
A pass that changes the kv heads a graph computes (tensor_parallel keeps a rank's, prune_structured
drops groups) changes the heads the cache must hold: `set_cache_heads` gives the placeholder the new
count before the fake values are propagated again, and drops export's input guard, which checks the
captured count. The caller then feeds the cache this graph itself returned (same heads).
"""
from __future__ import annotations

from torch.fx import GraphModule, Node

from ._edit import fake_mode
from ._ops import val

CACHE = "cache"  # the placeholder's name: the forward argument of Transformer / ScoreModule
HEAD_DIM = 3  # [2, n_layers, B, Hkv, P, head_dim]


def cache_input(gm: GraphModule) -> Node | None:
    """The graph's KV-cache placeholder, or None when it reads no cache."""
    return next((n for n in gm.graph.find_nodes(op="placeholder") if n.target == CACHE), None)


def set_cache_heads(gm: GraphModule, n_kv: int) -> bool:
    """Give the cache input n_kv kv heads (its fake value reshaped; export's input guard, which checks
    the captured count, removed). True when it changed; False when there is no cache or no change."""
    node = cache_input(gm)
    v = val(node) if node is not None else None
    if v is None or v.shape[HEAD_DIM] == n_kv:
        return False
    shape = list(v.shape)
    shape[HEAD_DIM] = n_kv
    with fake_mode(gm):
        node.meta["val"] = v.new_empty(shape)
    for guard in [n for n in gm.graph.find_nodes(op="call_module") if n.target == "_guards_fn"]:
        gm.graph.erase_node(guard)
    return True
