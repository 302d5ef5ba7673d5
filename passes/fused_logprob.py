"""fused_logprob: log_softmax + gather at the targets -> one graphopt.logprob node; and, when the
logits come straight from the LM-head linear (i.e. after prune_lm_head), linear + logprob ->
graphopt.linear_logprob(hidden, weight, target), so the [N, V] logits are never materialised.

Before:  logits [N, V] -> [to(float32)] -> log_softmax(-1) -> gather(-1, targets.unsqueeze(-1)) -> squeeze(-1)
After:   graphopt.logprob(logits, targets) [N] float32   (accumulates in float32 itself, so the cast goes)
         graphopt.linear_logprob(hidden [N, D], weight [V, D], targets) when logits = linear(hidden, weight)
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.pipeline import PassContext, PassOption, PassResult, register_pass
from ._edit import remove_dead, set_val
from ._ops import ASSERT_META, GATHER, LINEAR, LOG_SOFTMAX, SQUEEZE, UNSQUEEZE, aten, val

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt.*)

_FLOAT_CAST = {aten.to.dtype, aten._to_copy.default}


def _last_dim(dim, ndim: int) -> bool:
    return dim in (-1, ndim - 1)


def _float_cast_input(node: Node) -> Node | None:
    """x when node is x.float() / x.to(float32) of a floating x, else None."""
    if node.op != "call_function" or node.target not in _FLOAT_CAST or len(node.users) != 1:
        return None
    dtype = node.args[1] if node.target is aten.to.dtype else node.kwargs.get("dtype")
    src = node.args[0]
    if dtype is not torch.float32 or not isinstance(src, Node) or val(src) is None or not val(src).is_floating_point():
        return None
    return src


def _match(gm: GraphModule):
    """Yield (log_softmax, logits, squeeze, targets)."""
    for ls in gm.graph.nodes:
        if ls.op != "call_function" or ls.target not in LOG_SOFTMAX or len(ls.users) != 1:
            continue
        x, dim = ls.args[0], ls.args[1] if len(ls.args) > 1 else ls.kwargs.get("dim")
        if val(x) is None or val(x).dim() != 2 or not _last_dim(dim, 2):
            continue
        if ls.target is aten._log_softmax.default and ls.args[2]:  # half_to_float
            continue
        if ls.target is aten.log_softmax.int and len(ls.args) > 2 and ls.args[2] not in (None, torch.float32):
            continue
        gather = next(iter(ls.users))
        if gather.op != "call_function" or gather.target not in GATHER or gather.args[0] is not ls:
            continue
        if not _last_dim(gather.args[1], 2) or len(gather.users) != 1:
            continue
        unsq = gather.args[2]
        if not (isinstance(unsq, Node) and unsq.op == "call_function" and unsq.target in UNSQUEEZE
                and _last_dim(unsq.args[1], 2)):
            continue
        sq = next(iter(gather.users))
        if sq.op != "call_function" or sq.target not in SQUEEZE:
            continue
        sq_dim = sq.args[1] if len(sq.args) > 1 else None
        if sq_dim not in (-1, 1, [-1], [1]):
            continue
        logits = _float_cast_input(x) or x
        if val(logits).dtype not in (torch.float32, torch.float16, torch.bfloat16) and logits is x:
            continue
        yield ls, logits, sq, unsq.args[0]


def _head_linear(logits: Node) -> tuple[Node, Node] | None:
    """(hidden [N, D], weight [V, D]) when logits = linear(hidden, weight) with no bias and no other user."""
    real_users = [u for u in logits.users if u.target not in ASSERT_META]
    if logits.op != "call_function" or logits.target not in LINEAR or len(real_users) != 1:
        return None
    bias = logits.args[2] if len(logits.args) > 2 else logits.kwargs.get("bias")
    hidden, weight = logits.args[0], logits.args[1]
    if bias is not None or val(hidden) is None or val(hidden).dim() != 2:
        return None
    return hidden, weight


@register_pass("fused_logprob", "log_softmax + gather -> graphopt.logprob; with the LM head right before it "
               "(after prune_lm_head) linear + log-prob -> graphopt.linear_logprob (no [N, V] logits)",
               options={"with_linear": PassOption(bool, True, "also fuse the LM-head linear into the log-prob "
                                                  "(graphopt.linear_logprob) when it feeds the log-softmax directly")})
def fused_logprob(gm: GraphModule, ctx: PassContext) -> PassResult:
    g = gm.graph
    matches, linear_fused = 0, 0
    for ls, logits, sq, targets in list(_match(gm)):
        head = _head_linear(logits) if ctx.options.get("with_linear", True) else None
        with g.inserting_before(sq):
            if head is not None:
                new = g.call_function(torch.ops.graphopt.linear_logprob.default, (head[0], head[1], targets))
                linear_fused += 1
            else:
                new = g.call_function(torch.ops.graphopt.logprob.default, (logits, targets))
        set_val(gm, new)
        new.meta["stack_trace"] = ls.meta.get("stack_trace")
        chain = ([logits] if head is not None else []) + [ls.args[0], ls, sq.args[0], sq.args[0].args[2]]
        sq.replace_all_uses_with(new)
        g.erase_node(sq)
        remove_dead(gm, [n for n in chain if isinstance(n, Node)])
        matches += 1
    return PassResult(gm, matches > 0, {"matches": matches, "linear_fused": linear_fused})
