"""merge_qkv: wq/wk/wv linears on one input -> one linear on the concatenated weights, then a split.

    q = linear(x, Wq[, bq]); k = linear(x, Wk[, bk]); v = linear(x, Wv[, bv])
->  q, k, v = split(linear(x, cat([Wq, Wk, Wv])[, cat(b)]), [H*D, Hkv*D, Hkv*D], -1)
The merged weight is registered next to the old ones (<attention>.wqkv_weight); the old weights are
deleted from the module once nothing reads them. GQA: the split sizes are the weights' row counts.
"""
from __future__ import annotations

from graphopt.pipeline import PassResult, register_pass
from ._weights import merge_linear_groups

ROLES = {"q": ("wq", "q_proj"), "k": ("wk", "k_proj"), "v": ("wv", "v_proj")}


@register_pass("merge_qkv", "wq/wk/wv linears sharing an input -> one linear on concatenated weights + split",
               blockwise=True)
def merge_qkv(gm, ctx):
    modified, stats = merge_linear_groups(gm, ROLES, "wqkv")
    return PassResult(gm, modified, stats)
