"""Pruning criteria: how much each weight matters, then summed over a structure (an FFN channel, a
query head, a kv head). Higher is more important; the lowest go.

  l1      |W|                              weight magnitude alone (no data)
  wanda   |W_ij| * ||X_j||_2               Wanda: magnitude times the norm of input channel j over
                                           the calibration tokens (X: the linear's input)
  taylor  |W_ij * dL/dW_ij|                first-order Taylor estimate of the loss change when the
                                           weight is zeroed (LLM-Pruner's element-wise score), L the
                                           mean next-token NLL of the calibration text

Structures (rows are output features, columns input features of a [out, in] weight):
  FFN channel j    row j of w1 and w3, column j of w2
  query head h     rows h*D..(h+1)*D of wq, the same columns of wo
  kv head g        rows g*D..(g+1)*D of wk and wv
Scores are float64 sums, so the order of equal-looking structures does not depend on the summation order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._calibration import CalibrationStats

CRITERIA = ("l1", "wanda", "taylor")
NEEDS_CALIBRATION = ("wanda", "taylor")


def importance(criterion: str, w: Tensor, target: str, stats: CalibrationStats | None) -> Tensor:
    """[out, in] float64 importance of each weight of `w` (named `target` in the graph)."""
    w = w.detach().double()
    if criterion == "l1":
        return w.abs()
    assert stats is not None, f"criterion {criterion} needs calibration statistics"
    if criterion == "wanda":
        return w.abs() * stats.sq_norm[target].to(w.device).sqrt()[None, :]  # [out, in] * [1, in]
    if criterion == "taylor":
        return (w * stats.grad[target].to(w.device).double()).abs()
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")


def ffn_channel_scores(imp: dict[str, Tensor]) -> Tensor:
    """{"w1", "w2", "w3": [out, in] importance} -> [hidden] score per SwiGLU channel."""
    return imp["w1"].sum(1) + imp["w3"].sum(1) + imp["w2"].sum(0)


def head_scores(imp: dict[str, Tensor], head_dim: int) -> tuple[Tensor, Tensor]:
    """{"wq", "wk", "wv", "wo": importance} -> ([n_heads] per query head, [n_kv_heads] per kv head)."""
    n_heads, n_kv = imp["wq"].shape[0] // head_dim, imp["wk"].shape[0] // head_dim
    q = imp["wq"].reshape(n_heads, head_dim, -1).sum((1, 2)) + \
        imp["wo"].reshape(imp["wo"].shape[0], n_heads, head_dim).sum((0, 2))
    kv = imp["wk"].reshape(n_kv, head_dim, -1).sum((1, 2)) + imp["wv"].reshape(n_kv, head_dim, -1).sum((1, 2))
    return q, kv


def group_scores(q: Tensor, kv: Tensor) -> Tensor:
    """[n_kv] score of each kv group: its kv head and the query heads that read it."""
    n_kv = kv.shape[0]
    return kv + q.reshape(n_kv, -1).sum(1)


NORMALIZE = ("mean", "none")


def normalised(scores: list[Tensor], how: str) -> list[Tensor]:
    """Scores made comparable across layers before one global ranking. mean: each layer's scores divided
    by that layer's mean (a layer whose weights or activations are 100x larger no longer looks 100x more
    important; a layer with a few much weaker units still gives them up first); none: raw."""
    if how == "none":
        return scores
    assert how == "mean", how
    return [s / s.mean().clamp_min(torch.finfo(s.dtype).tiny) for s in scores]


def lowest_across_layers(scores: list[Tensor], n: int, caps: list[int] | None = None) -> list[int]:
    """Per layer, how many of the n lowest scores (over all layers) it gives up: each layer at most its
    cap (default: all but one). Exactly n, which the caller has checked fits under the caps."""
    caps = [s.shape[0] - 1 for s in scores] if caps is None else [min(c, s.shape[0] - 1) for c, s in zip(caps, scores)]
    assert n <= sum(caps), (n, caps)
    flat = torch.cat(scores)
    layer_of = torch.cat([torch.full((s.shape[0],), i) for i, s in enumerate(scores)])
    dropped = [0] * len(scores)
    left = n
    for i in torch.argsort(flat, stable=True).tolist():
        if left == 0:
            break
        layer = int(layer_of[i])
        if dropped[layer] < caps[layer]:
            dropped[layer] += 1
            left -= 1
    return dropped
