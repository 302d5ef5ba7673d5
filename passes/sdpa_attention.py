"""sdpa_attention: the written-out attention -> aten.scaled_dot_product_attention with the bool mask.

Pattern (export IR of graphopt.model.llama.Attention; q [B, H, T, D], k/v [B, Hkv, T, D]):
    k' = repeat_interleave(k, n_rep, 1); v' = repeat_interleave(v, n_rep, 1)      (GQA; optional)
    scores = matmul(q, transpose(k', 2, 3)) / c                                   (or * c)
    scores = masked_fill(scores, ~m, -inf)                                        (m: [B, 1, T, T] bool)
    out = matmul(type_as(softmax(to(scores, float32), -1), q), v')
->  out = scaled_dot_product_attention(q, k, v, attn_mask=m, scale=1/c, enable_gqa=n_rep > 1)
With option keep_repeat the repeat_interleave stays and enable_gqa is False.
"""
from __future__ import annotations

import math

import torch

from graphopt.pipeline import PassOption, PassResult, register_pass
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import aten, is_dim, is_op, only_user, val

SOFTMAX = (aten.softmax.int, aten._softmax.default)
NOT = (aten.bitwise_not.default, aten.logical_not.default)


def _unrepeat(node):
    """repeat_interleave(t, n, 1) -> (t, n); anything else -> (node, 1)."""
    if is_op(node, aten.repeat_interleave.self_int) and isinstance(node.args[1], int):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        if dim == 1:
            return node.args[0], node.args[1]
    return node, 1


def match_attention(softmax):
    """softmax node -> dict(q, k, v, mask, scale, n_rep, k_rep, v_rep, out) or None."""
    if not is_dim(softmax.args[1], 4, -1) or (len(softmax.args) > 2 and softmax.args[2] is True):
        return None
    src = softmax.args[0]
    if is_op(src, aten.to.dtype) and src.args[1] == torch.float32:
        src = src.args[0]
    if not (is_op(src, aten.masked_fill.Scalar) and src.args[2] == float("-inf") and is_op(src.args[1], *NOT)):
        return None
    mask = src.args[1].args[0]
    scaled = src.args[0]
    if is_op(scaled, aten.div.Tensor) and isinstance(scaled.args[1], (int, float)) and scaled.args[1] != 0:
        scale, mm = 1.0 / scaled.args[1], scaled.args[0]
    elif is_op(scaled, aten.mul.Tensor) and isinstance(scaled.args[1], (int, float)):
        scale, mm = float(scaled.args[1]), scaled.args[0]
    else:
        return None
    if not is_op(mm, aten.matmul.default) or only_user(mm) is not scaled:
        return None
    q, kt = mm.args
    if not (is_op(kt, aten.transpose.int) and {kt.args[1] % 4, kt.args[2] % 4} == {2, 3}):
        return None
    k, n_rep_k = _unrepeat(kt.args[0])
    probs = only_user(softmax)
    if is_op(probs, aten.type_as.default, aten.to.dtype) and probs.args[0] is softmax:
        cast = probs
        probs = only_user(cast)
    else:
        cast = None
    if not (is_op(probs, aten.matmul.default) and probs.args[0] in (softmax, cast)):
        return None
    v, n_rep_v = _unrepeat(probs.args[1])
    vq, vk, vv, vm = val(q), val(k), val(v), val(mask)
    if any(t is None for t in (vq, vk, vv, vm)) or vq.dim() != 4 or vk.dim() != 4 or vv.dim() != 4:
        return None
    if n_rep_k != n_rep_v or vm.dtype != torch.bool or vm.dim() != 4 or val(probs).dtype != vq.dtype:
        return None
    return dict(q=q, k=k, v=v, mask=mask, scale=scale, n_rep=n_rep_k, k_rep=kt.args[0], v_rep=probs.args[1],
                out=probs)


@register_pass("sdpa_attention", "written-out softmax(QK^T*scale + mask)V -> aten.scaled_dot_product_attention",
               options={"keep_repeat": PassOption(bool, False, "keep repeat_interleave of k/v instead of enable_gqa")},
               blockwise=True)
def sdpa_attention(gm, ctx):
    mode = fake_mode(gm)
    matches = 0
    for node in list(gm.graph.nodes):
        if node.graph is None or not is_op(node, *SOFTMAX):
            continue
        m = match_attention(node)
        if m is None:
            continue
        q, k, v = m["q"], m["k"], m["v"]
        gqa = m["n_rep"] > 1 and not ctx.options.get("keep_repeat")
        if ctx.options.get("keep_repeat"):
            k, v = m["k_rep"], m["v_rep"]
        assert math.isfinite(m["scale"]), m["scale"]
        kwargs = {"attn_mask": m["mask"], "scale": m["scale"]}
        if gqa:
            kwargs["enable_gqa"] = True
        fused = insert_call(gm, m["out"], aten.scaled_dot_product_attention.default, (q, k, v), kwargs, mode=mode)
        m["out"].replace_all_uses_with(fused)
        matches += 1
    if matches:
        remove_dead(gm)
    return PassResult(gm, matches > 0, {"matches": matches})
