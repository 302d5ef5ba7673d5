"""prune_structured: L1-magnitude structured pruning of FFN channels and attention heads (exact=False).

FFN (per layer): channel j of the SwiGLU is row j of w1 (gate) and w3 (up) and column j of w2 (down);
its score is |w1[j]|_1 + |w3[j]|_1 + |w2[:, j]|_1. The int(ratio * hidden_dim) lowest are dropped.

Attention (per layer): heads are pruned by kv GROUP: a group is one kv head (rows of wk, wv) with the
n_rep query heads that share it (rows of wq, columns of wo); its score is the L1 of all of those.
int(ratio * n_kv_heads) groups are dropped (at least one is always kept), so n_rep and the
repeat_interleave in the graph stay valid; with MHA (n_kv_heads == n_heads) this is per-head pruning.
With GQA and few kv heads the granularity is coarse (tiny-gqa: 2 groups, ratio < 0.5 drops none).

Weights are replaced by smaller tensors (qkv biases too) and the graph's view/reshape sizes that
carry the head count are rewritten: the [B, T, H, Dh] views after wq/wk/wv, and then any
reshape downstream whose input changed size in one dim and that spells that dim out (RoPE's
[B, T, H, Dh/2, 2]). Shapes are re-propagated; an inconsistent graph is a PassError.
Weights are found by their Meta checkpoint names (layers.N.attention.wq.weight, ...), so this must
run before merge_qkv / merge_gate_up, which replace them.
stats: params_before, params_after, params_removed, ffn_channels_removed, kv_groups_removed.
"""
from __future__ import annotations

import re

import torch
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr, set_attr
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, before, register_pass
from ._edit import set_val
from ._ops import LINEAR, RESHAPE, val
from ._weights import param_count

_NEEDS_NAMES = "it finds the weights by their checkpoint names, which the merge replaces"

_NAME = re.compile(r"^(?P<layer>.*layers\.\d+)\.(?P<block>attention|feed_forward)\.(?P<w>w[qkvo123])\.(?P<kind>weight|bias)$")


def _weights(gm: GraphModule) -> dict[str, dict[str, str]]:
    """{layer prefix: {"wq.weight": target, ...}} from the get_attr targets."""
    layers: dict[str, dict[str, str]] = {}
    for n in gm.graph.nodes:
        m = _NAME.match(n.target) if n.op == "get_attr" else None
        if m:
            layers.setdefault(m["layer"], {})[f"{m['w']}.{m['kind']}"] = n.target
    return layers


def _get_attr_node(gm: GraphModule, target: str) -> Node:
    return next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == target)


def _head_views(gm: GraphModule, weight_target: str) -> list[Node]:
    """The view/reshape nodes [B, T, H, Dh] right after the linears that read this weight."""
    out = []
    for lin in _get_attr_node(gm, weight_target).users:
        if lin.target not in LINEAR:
            raise PassError(f"{weight_target} is read by {lin.target}, not a linear (run prune_structured before "
                            f"the fusion passes)")
        out += [u for u in lin.users if u.op == "call_function" and u.target in RESHAPE and len(u.args[1]) == 4]
    return out


def _take(gm: GraphModule, target: str, keep: torch.Tensor, dim: int) -> None:
    t = attr(gm, target)
    set_attr(gm, target, t.detach().index_select(dim, keep.to(t.device)).contiguous())


def _keep_lowest_dropped(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Indices (sorted) of all but the n_remove lowest scores."""
    order = torch.argsort(scores, stable=True)
    return torch.sort(order[n_remove:]).values


def _prune_ffn(gm: GraphModule, w: dict[str, str], ratio: float) -> int:
    w1, w2, w3 = (attr(gm, w[f"{k}.weight"]) for k in ("w1", "w2", "w3"))
    hidden = w1.shape[0]
    n_remove = min(int(ratio * hidden), hidden - 1)
    if n_remove == 0:
        return 0
    scores = w1.abs().sum(1).float() + w3.abs().sum(1).float() + w2.abs().sum(0).float()  # [hidden]
    keep = _keep_lowest_dropped(scores, n_remove)
    _take(gm, w["w1.weight"], keep, 0)
    _take(gm, w["w3.weight"], keep, 0)
    _take(gm, w["w2.weight"], keep, 1)
    return n_remove


def _prune_heads(gm: GraphModule, w: dict[str, str], ratio: float) -> int:
    q_views, k_views, v_views = (_head_views(gm, w[f"{k}.weight"]) for k in ("wq", "wk", "wv"))
    if not (q_views and k_views and v_views):
        raise PassError(f"no [B, T, H, Dh] view after the wq/wk/wv linears of {w['wq.weight']}")
    n_heads, head_dim = q_views[0].args[1][2], q_views[0].args[1][3]
    n_kv = k_views[0].args[1][2]
    assert isinstance(n_heads, int) and isinstance(head_dim, int) and isinstance(n_kv, int)
    wq, wk, wv, wo = (attr(gm, w[f"{k}.weight"]) for k in ("wq", "wk", "wv", "wo"))
    assert wq.shape[0] == n_heads * head_dim and wk.shape[0] == n_kv * head_dim, "head view does not match weights"
    n_rep = n_heads // n_kv
    n_remove = min(int(ratio * n_kv), n_kv - 1)
    if n_remove == 0:
        return 0
    # L1 per kv group: [n_kv]
    q_l1 = wq.abs().float().reshape(n_kv, n_rep * head_dim, -1).sum((1, 2))
    k_l1 = wk.abs().float().reshape(n_kv, head_dim, -1).sum((1, 2))
    v_l1 = wv.abs().float().reshape(n_kv, head_dim, -1).sum((1, 2))
    o_l1 = wo.abs().float().reshape(wo.shape[0], n_kv, n_rep * head_dim).sum((0, 2))
    groups = _keep_lowest_dropped(q_l1 + k_l1 + v_l1 + o_l1, n_remove)  # kept kv groups
    kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
    q_rows = (groups[:, None] * (n_rep * head_dim) + torch.arange(n_rep * head_dim)).flatten()
    for key, rows, dim in (("wq", q_rows, 0), ("wk", kv_rows, 0), ("wv", kv_rows, 0), ("wo", q_rows, 1)):
        _take(gm, w[f"{key}.weight"], rows, dim)
        if dim == 0 and f"{key}.bias" in w:
            _take(gm, w[f"{key}.bias"], rows, 0)
    kept = len(groups)
    for views, new_h in ((q_views, kept * n_rep), (k_views, kept), (v_views, kept)):
        for view in views:
            shape = list(view.args[1])
            shape[2] = new_h
            view.args = (view.args[0], shape, *view.args[2:])
    return n_remove


def _repropagate(gm: GraphModule, old_shapes: dict) -> None:
    """Re-run shape propagation; a reshape whose input shrank in one dim that it spells out follows it."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in RESHAPE and isinstance(n.args[0], Node):
            inp, shape = n.args[0], list(n.args[1])
            old, new = old_shapes.get(inp), tuple(val(inp).shape) if val(inp) is not None else None
            if old is not None and new is not None and len(old) == len(new):
                diff = [i for i, (a, b) in enumerate(zip(old, new)) if isinstance(a, int) and isinstance(b, int) and a != b]
                p = diff[0] if len(diff) == 1 else None
                if p is not None and p < len(shape) and shape[p] == old[p] and _same_prefix(shape, old, p):
                    shape[p] = new[p]
                    n.args = (inp, shape, *n.args[2:])
        if n.op in ("get_attr", "call_function"):
            try:
                set_val(gm, n)
            except Exception as e:
                raise PassError(f"after pruning, node {n.name} ({n.target}) no longer fits its input shapes: {e}") from e


def _same_prefix(shape, old, upto: int) -> bool:
    """The reshape keeps the first `upto` dims (literally or as symbolic sizes taken from the input)."""
    return all(not isinstance(s, int) or s == o for s, o in zip(shape[:upto], old[:upto]))


@register_pass("prune_structured", "L1-magnitude structured pruning of FFN channels and/or attention heads "
               "(kv groups); rewrites weights and the graph's head-count view sizes",
               options={"ratio": PassOption(float, 0.0, "fraction of FFN channels / kv groups to remove, in [0, 1)",
                                            min=0.0, max=1.0, open_max=True),
                        "what": PassOption(str, "ffn", "what to prune: ffn, heads or both",
                                           choices=("ffn", "heads", "both"))},
               exact=False, order=[before("merge_qkv", _NEEDS_NAMES), before("merge_gate_up", _NEEDS_NAMES)])
def prune_structured(gm: GraphModule, ctx: PassContext) -> PassResult:
    ratio, what = ctx.options["ratio"], ctx.options["what"]
    layers = _weights(gm)
    need = ([("w1", "w2", "w3")] if what in ("ffn", "both") else []) + \
           ([("wq", "wk", "wv", "wo")] if what in ("heads", "both") else [])
    for keys in need:
        if not any(all(f"{k}.weight" in w for k in keys) for w in layers.values()):
            raise PassError(f"prune_structured found no {'/'.join(keys)} weights named like Meta checkpoint keys "
                            f"(layers.N.feed_forward.w1/w2/w3, layers.N.attention.wq/wk/wv/wo): run it before "
                            f"merge_qkv / merge_gate_up, which replace them")
    params_before = param_count(gm)
    old_shapes = {n: tuple(val(n).shape) for n in gm.graph.nodes if val(n) is not None}
    ffn_removed = groups_removed = matches = 0
    for prefix, w in sorted(layers.items()):
        if what in ("ffn", "both") and all(f"{k}.weight" in w for k in ("w1", "w2", "w3")):
            removed = _prune_ffn(gm, w, ratio)
            ffn_removed += removed
            matches += removed > 0
        if what in ("heads", "both") and all(f"{k}.weight" in w for k in ("wq", "wk", "wv", "wo")):
            removed = _prune_heads(gm, w, ratio)
            groups_removed += removed
            matches += removed > 0
    if matches:
        _repropagate(gm, old_shapes)
    params_after = param_count(gm)
    return PassResult(gm, matches > 0, {"matches": matches, "params_before": params_before, "params_after": params_after,
                                        "params_removed": params_before - params_after,
                                        "ffn_channels_removed": ffn_removed, "kv_groups_removed": groups_removed})
