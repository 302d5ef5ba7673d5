"""merge_gate_up: the FFN's w1 (gate) / w3 (up) linears on one input -> one linear + split.

    g = linear(x, W1); u = linear(x, W3)  ->  g, u = split(linear(x, cat([W1, W3])), [hidden, hidden], -1)
The merged weight is registered as <feed_forward>.w13_weight; the old weights are deleted when unused.
"""
from __future__ import annotations

from graphopt.pipeline import PassResult, register_pass
from ._weights import merge_linear_groups

ROLES = {"gate": ("w1", "gate_proj"), "up": ("w3", "up_proj")}


@register_pass("merge_gate_up", "FFN gate (w1) and up (w3) linears sharing an input -> one linear + split",
               blockwise=True)
def merge_gate_up(gm, ctx):
    modified, stats = merge_linear_groups(gm, ROLES, "w13")
    return PassResult(gm, modified, stats)
