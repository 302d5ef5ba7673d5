"""prune_structured: L1-magnitude structured pruning of FFN channels and attention heads (exact=False).

FFN (per layer): channel j of the SwiGLU is row j of w1 (gate) and w3 (up) and column j of w2 (down);
its score is |w1[j]|_1 + |w3[j]|_1 + |w2[:, j]|_1. The int(ratio * hidden_dim) lowest are dropped.

Attention (per layer): heads are pruned by kv GROUP: a group is one kv head (rows of wk, wv) with the
n_rep query heads that share it (rows of wq, columns of wo); its score is the L1 of all of those.
int(ratio * n_kv_heads) groups are dropped (at least one is always kept), so n_rep and the
repeat_interleave in the graph stay valid; with MHA (n_kv_heads == n_heads) this is per-head pruning.
With GQA and few kv heads the granularity is coarse (tiny-gqa: 2 groups, ratio < 0.5 drops none).
Head counts come from the weights (wq rows / head_dim, head_dim from ctx.model_args or the q view).

Only weights (qkv biases too) are replaced: the model's head views are [B, T, -1, D], so they follow.
The one head count export records as a literal, RoPE's [B, T, H, -1, 2] reshape, takes its input's
new size when fake values are re-propagated (_edit.refit_vals); a graph that no longer fits is a PassError.
Weights are found by their Meta checkpoint names (layers.N.attention.wq.weight, ...), so this must
run before merge_qkv / merge_gate_up, which replace them. The embedding table and the LM head are
not touched (a tied table stays one tensor).
stats: params_before, params_after, params_removed, ffn_channels_removed, kv_groups_removed.
"""
from __future__ import annotations

import re

import torch
from torch.fx import GraphModule

from graphopt.graph_attrs import attr, set_attr
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, before, register_pass
from ._edit import refit_vals, splits_last_dim
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


def _head_dim(gm: GraphModule, wq_target: str) -> int:
    """D of the [B, T, H, D] view right after the linear that reads wq."""
    for wq in (n for n in gm.graph.nodes if n.op == "get_attr" and n.target == wq_target):
        for lin in wq.users:
            if lin.target not in LINEAR:
                raise PassError(f"{wq_target} is read by {lin.target}, not a linear (run prune_structured before "
                                f"the fusion passes)")
            views = [val(u) for u in lin.users if u.target in RESHAPE and val(u) is not None and val(u).dim() == 4]
            if views:
                return int(views[0].shape[-1])
    raise PassError(f"no [B, T, H, D] view after the linear reading {wq_target}; pass ctx.model_args")


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


def _prune_heads(gm: GraphModule, w: dict[str, str], ratio: float, head_dim: int) -> int:
    wq, wk, wv, wo = (attr(gm, w[f"{k}.weight"]) for k in ("wq", "wk", "wv", "wo"))
    n_kv = wk.shape[0] // head_dim
    n_rep = wq.shape[0] // (n_kv * head_dim)
    assert n_kv * head_dim == wk.shape[0] and n_rep * n_kv * head_dim == wq.shape[0], (wq.shape, wk.shape, head_dim)
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
    return n_remove


@register_pass("prune_structured", "L1-magnitude structured pruning of FFN channels and/or attention heads "
               "(kv groups); rewrites weights, the graph's head views follow them",
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
    splits = [n for n in gm.graph.nodes if splits_last_dim(n)]  # RoPE's [B, T, H, -1, 2], before H changes
    ffn_removed = groups_removed = matches = 0
    for prefix, w in sorted(layers.items()):
        if what in ("ffn", "both") and all(f"{k}.weight" in w for k in ("w1", "w2", "w3")):
            removed = _prune_ffn(gm, w, ratio)
            ffn_removed += removed
            matches += removed > 0
        if what in ("heads", "both") and all(f"{k}.weight" in w for k in ("wq", "wk", "wv", "wo")):
            head_dim = ctx.model_args.head_dim if ctx.model_args else _head_dim(gm, w["wq.weight"])
            removed = _prune_heads(gm, w, ratio, head_dim)
            groups_removed += removed
            matches += removed > 0
    if matches:
        try:
            refit_vals(gm, splits)
        except Exception as e:
            raise PassError(f"after pruning, {e}") from e
    params_after = param_count(gm)
    return PassResult(gm, matches > 0, {"matches": matches, "params_before": params_before, "params_after": params_after,
                                        "params_removed": params_before - params_after,
                                        "ffn_channels_removed": ffn_removed, "kv_groups_removed": groups_removed})
