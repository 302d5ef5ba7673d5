"""prune_lm_head: compute the LM head (and the final RMSNorm) only at the N scored positions.

Before:  h = norm(x) [B, T, D] -> logits = linear(h, W) [B, T, V] -> reshape(-1, V) [B*T, V]
         -> index(score_idx) [N, V]
After:   x_sel = reshape(x, -1, D)[score_idx] [N, D] -> norm(x_sel) [N, D] -> linear(., W) [N, V]

The indexing is moved up through every per-position op feeding the head (pointwise ops, casts and
reductions over the last dim: exactly the RMSNorm), which commutes with selecting rows. Must run
before fused_logprob (which consumes the log-softmax the pattern ends in).
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.pipeline import PassContext, PassResult, before, register_pass
from ._edit import remove_dead, set_val
from ._ops import ASSERT_META, INDEX, LINEAR, RESHAPE, aten, val

# ops that act on each position independently (given last-dim-only reductions)
_POINTWISE = {aten.to.dtype, aten._to_copy.default, aten.type_as.default, aten.pow.Tensor_Scalar, aten.add.Tensor,
              aten.mul.Tensor, aten.sub.Tensor, aten.div.Tensor, aten.rsqrt.default, aten.sqrt.default,
              aten.neg.default, aten.add.Scalar, aten.mul.Scalar}
try:  # a norm already fused by fuse_rmsnorm is per-position too
    import graphopt.kernels  # noqa: F401
    _POINTWISE.add(torch.ops.graphopt.rms_norm.default)
except (ImportError, AttributeError):
    pass
_LASTDIM_REDUCE = {aten.mean.dim, aten.sum.dim_IntList}


def _is_per_position(node: Node, ndim: int) -> bool:
    if node.op != "call_function":
        return False
    if node.target in _LASTDIM_REDUCE:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        return keep and list(dims or []) in ([-1], [ndim - 1])
    if node.target not in _POINTWISE:
        return False
    for a in node.args:  # other tensor inputs: per-position [.., .., *] or position-free (ndim <= 1)
        v = val(a)
        if v is not None and v.dim() not in (0, 1, ndim):
            return False
    return True


def _users_inside(node: Node, inside: set) -> bool:
    return all(u in inside or (u.op == "call_function" and u.target in ASSERT_META) for u in node.users)


def _per_position_region(head_in: Node, ndim: int) -> tuple[list[Node], list[Node]]:
    """Nodes between the head input and its per-position sources (region, topologically sorted) and
    the sources ([B, T, ...] tensors the region reads). Grows upwards only through nodes whose
    every user is inside the region, so nothing outside loses a value."""
    if not (_is_per_position(head_in, ndim) and len(head_in.users) == 1):
        return [], [head_in]
    region, frontier = {head_in}, [head_in]
    while frontier:
        n = frontier.pop()
        for a in n.all_input_nodes:
            if a in region or not _is_per_position(a, ndim) or not _users_inside(a, region):
                continue
            region.add(a)
            frontier.append(a)
    sources = []
    for n in region:
        for a in n.all_input_nodes:
            v = val(a)
            if a not in region and a not in sources and v is not None and v.dim() == ndim:
                sources.append(a)
    order = {n: i for i, n in enumerate(head_in.graph.nodes)}
    return sorted(region, key=order.get), sorted(sources, key=order.get)


def _match(gm: GraphModule):
    """Yield (linear, index) pairs: linear [B, T, V] -> reshape [B*T, V] -> index([score_idx])."""
    for idx in gm.graph.nodes:
        if idx.op != "call_function" or idx.target not in INDEX:
            continue
        flat, indices = idx.args[0], idx.args[1]
        if not (len(indices) == 1 and isinstance(indices[0], Node)):
            continue
        if not (isinstance(flat, Node) and flat.op == "call_function" and flat.target in RESHAPE
                and len(flat.users) == 1):
            continue
        lin = flat.args[0]
        if not (isinstance(lin, Node) and lin.op == "call_function" and lin.target in LINEAR and len(lin.users) == 1):
            continue
        v_lin, v_flat = val(lin), val(flat)
        if v_lin is None or v_flat is None or v_lin.dim() < 3 or v_flat.dim() != 2:
            continue
        yield lin, idx


@register_pass("prune_lm_head", "compute the final norm and LM head only at the scored positions ([N, V] "
               "logits instead of [B*T, V])",
               order=[before("fused_logprob", "fused_logprob consumes the log-softmax after the head, so the head "
                                              "can no longer be pruned")],
               blockwise=True)  # the head sits in the graph around the blocks
def prune_lm_head(gm: GraphModule, ctx: PassContext) -> PassResult:
    g = gm.graph
    matches, moved = 0, 0
    for lin, idx in list(_match(gm)):
        h, weight = lin.args[0], lin.args[1]
        bias = lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias")
        ndim = val(lin).dim()
        region, sources = _per_position_region(h, ndim)
        score_idx = idx.args[1][0]
        env = {}
        with g.inserting_before(idx):
            for s in sources:  # [B, T, ..., D] -> [B*T, ..., D] -> [N, ..., D]
                rest = list(val(s).shape[ndim - 1:])
                flat = g.call_function(aten.reshape.default, (s, [-1, *rest]))
                set_val(gm, flat)
                env[s] = g.call_function(aten.index.Tensor, (flat, [score_idx]))
                set_val(gm, env[s])
            for n in region:  # the same per-position ops, now on [N, ...]
                new = g.node_copy(n, lambda a: env.get(a, a))
                set_val(gm, new)
                env[n] = new
            new_lin = g.call_function(lin.target, (env[h], weight) + ((bias,) if bias is not None else ()))
            set_val(gm, new_lin)
        new_lin.meta["stack_trace"] = lin.meta.get("stack_trace")
        old_flat = idx.args[0]
        idx.replace_all_uses_with(new_lin)
        g.erase_node(idx)
        remove_dead(gm, [*region, lin, old_flat])  # the old [B*T] head chain
        matches += 1
        moved += len(region)
    return PassResult(gm, matches > 0, {"matches": matches, "per_position_ops_moved": moved})
