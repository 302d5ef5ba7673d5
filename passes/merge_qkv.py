"""merge_qkv: wq/wk/wv linears on one input -> one linear on the concatenated weights, then a split.

    q = linear(x, Wq[, bq]); k = linear(x, Wk[, bk]); v = linear(x, Wv[, bv])
->  q, k, v = split(linear(x, cat([Wq, Wk, Wv])[, cat(b)]), [H*D, Hkv*D, Hkv*D], -1)
The merged weight is registered next to the old ones (<attention>.wqkv_weight); the old weights are
deleted from the module once nothing reads them. GQA: the split sizes are the weights' row counts.
"""
from __future__ import annotations

from graphopt.pipeline import PassResult, register_pass
from passes._match import delete_unused_attrs, find_linear_groups, merge_linears, remove_dead

ROLES = {"q": ("wq", "q_proj"), "k": ("wk", "k_proj"), "v": ("wv", "v_proj")}


@register_pass("merge_qkv", "wq/wk/wv linears sharing an input -> one linear on concatenated weights + split")
def merge_qkv(gm, ctx):
    old = []
    groups = find_linear_groups(gm, ROLES)
    for group in groups:
        old += merge_linears(gm, group, "wqkv")
    if groups:
        remove_dead(gm)
        delete_unused_attrs(gm, old)
    return PassResult(gm, bool(groups), {"matches": len(groups)})
