"""GQA-aware head selection for prune_structured.

A layer has n_kv kv heads, each read by n_rep query heads (its kv group). Two cuts keep the layer a
valid GQA layout: drop whole kv groups (a kv head with its n_rep query heads), and drop the same
number of query heads from every kept group (n_rep shrinks; the graph's repeat_interleave follows).

per-layer ratio r: int(r * n_heads) query heads are wanted out; the layout removes the largest count
not above that, over (g groups dropped, q query heads dropped per kept group), preferring whole
groups on a tie (they take their kv head with them). When no cut fits, a ratio > 0 is an error that
names the layout: 9 query heads in 3 groups of 3 cannot lose 2.
global budget: whole kv groups, ranked across layers by score; each layer keeps one at least.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from graphopt.pipeline import PassError
from ._ops import LINEAR
from ._prune_scores import group_scores


def describe_layout(n_heads: int, n_kv: int) -> str:
    return f"{n_heads} query heads / {n_kv} kv heads ({n_kv} kv groups of {n_heads // n_kv} query heads)"


def head_cut(n_heads: int, n_kv: int, ratio: float) -> tuple[int, int]:
    """(kv groups dropped, query heads dropped from each kept group) for a per-layer ratio of query heads."""
    n_rep = n_heads // n_kv
    assert n_rep * n_kv == n_heads, (n_heads, n_kv)
    want = min(int(ratio * n_heads), n_heads - 1)
    cuts = [(n_heads - (n_kv - g) * (n_rep - q), g, q) for g in range(n_kv) for q in range(n_rep)]
    removed, g, q = max((c for c in cuts if c[0] <= want), key=lambda c: (c[0], c[1]))
    if removed == 0 and ratio > 0:
        step = min(c[0] for c in cuts if c[0] > 0)
        raise PassError(f"heads ratio {ratio:g} of {describe_layout(n_heads, n_kv)} asks for {want} query head(s); "
                        f"the smallest cut this layout allows is {step} (one kv group, or one query head from "
                        f"every group): use ratio >= {math.ceil(step / n_heads * 1000) / 1000:g}")
    return g, q


def select_heads(q_scores: Tensor, kv_scores: Tensor, groups_dropped: int, per_group_dropped: int
                 ) -> tuple[Tensor, Tensor]:
    """(kept kv heads [n_kv'], kept query heads [n_kv' * n_rep']), both sorted: the lowest-scoring groups
    go, then the lowest-scoring query heads of each kept group."""
    n_kv = kv_scores.shape[0]
    n_rep = q_scores.shape[0] // n_kv
    groups = group_scores(q_scores, kv_scores)  # [n_kv]
    kept_kv = torch.sort(torch.argsort(groups, stable=True)[groups_dropped:]).values
    kept_q = []
    for g in kept_kv.tolist():
        in_group = torch.argsort(q_scores[g * n_rep:(g + 1) * n_rep], stable=True)[per_group_dropped:]
        kept_q.append(torch.sort(in_group).values + g * n_rep)
    return kept_kv, torch.cat(kept_q)


def global_group_budget(layouts: list[tuple[int, int]], ratio: float) -> int:
    """int(ratio * all layers' kv groups): the groups one global budget drops; none at ratio > 0 is an error."""
    total = sum(n_kv for _, n_kv in layouts)
    want = int(ratio * total)
    if want == 0 and ratio > 0:
        shapes = "; ".join(sorted({describe_layout(*lay) for lay in layouts}))
        raise PassError(f"heads ratio {ratio:g} with budget global drops whole kv groups: {ratio:g} x {total} kv groups "
                        f"({len(layouts)} layers of {shapes}) rounds to none: use ratio >= "
                        f"{math.ceil(1000 / total) / 1000:g}")
    return want


_REPEAT = {torch.ops.aten.repeat_interleave.self_int, torch.repeat_interleave}
_STOP = {torch.ops.aten.matmul.default, torch.ops.aten.bmm.default, torch.matmul,
         torch.ops.aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention}


def kv_repeats(gm, kv_weight_targets: tuple[str, ...]) -> list:
    """The repeat_interleave(kv, n_rep, 1) nodes fed by the linears reading these wk / wv weights (export
    records n_rep as a literal): followed from the weights up to the attention matmul."""
    weights = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target in kv_weight_targets]
    frontier = [lin for w in weights for lin in w.users]  # the k / v projections
    seen, found = set(frontier), []
    while frontier:
        for user in frontier.pop().users:
            if user in seen:
                continue
            seen.add(user)
            if user.target in _REPEAT or (user.op == "call_method" and user.target == "repeat_interleave"):
                found.append(user)
            elif not (user.target in _STOP or user.target in LINEAR or user.target == "matmul"
                      or not isinstance(user.meta.get("val", torch.empty(0)), torch.Tensor)):
                frontier.append(user)  # follow tensors (not sizes) up to the attention matmul / next linear
    return found


def set_repeats(nodes, old: int, new: int) -> int:
    """Set n_rep in each repeat_interleave from `old` to `new`; returns how many changed."""
    changed = 0
    for node in nodes:
        if node.args[1] == old and old != new:
            node.args = (node.args[0], new, *node.args[2:])
            changed += 1
    return changed
