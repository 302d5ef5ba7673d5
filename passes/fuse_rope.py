"""fuse_rope: the interleaved-pair rotation -> torch.ops.graphopt.rope(x, cos, sin).

Pattern (export IR of graphopt.model.llama.apply_rope; x [B, T, H, D], cos/sin [B, T, D/2]):
    r = reshape(to(x, float32), [B, T, H, -1, 2]); x0 = select(r, -1, 0); x1 = select(r, -1, 1)
    c = unsqueeze(cos, 2); s = unsqueeze(sin, 2)
    out = type_as(flatten(stack([x0*c - x1*s, x0*s + x1*c], -1), 3), x)
"""
from __future__ import annotations

import torch

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt)
from graphopt.pipeline import PassResult, register_pass
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import aten, cast_target_dtype, is_dim, is_op, only_user, other_arg, strip_float, val

RESHAPE = (aten.reshape.default, aten.view.default)


def _mul_pair(node):
    """a * b -> {a, b} (None when node is not a tensor mul)."""
    return set(node.args[:2]) if is_op(node, aten.mul.Tensor) and len(node.args) == 2 else None


def _unsqueezed(node):
    """unsqueeze(t, 2) with t [B, T, D/2] -> t, else None."""
    if is_op(node, aten.unsqueeze.default) and node.args[1] in (2, -2):
        return node.args[0]
    return None


def match_rope(stack):
    """stack node -> (x, cos, sin, out node) or None."""
    if not is_op(stack, aten.stack.default) or len(stack.args[0]) != 2:
        return None
    dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    sub, add = stack.args[0]
    if not (is_op(sub, aten.sub.Tensor) and len(sub.args) == 2 and not sub.kwargs and is_op(add, aten.add.Tensor)
            and len(add.args) == 2 and not add.kwargs):
        return None
    m_a, m_b = sub.args
    if _mul_pair(m_a) is None or _mul_pair(m_b) is None:
        return None
    selects = [n for n in _mul_pair(m_a) if is_op(n, aten.select.int)]
    if len(selects) != 1:
        return None
    x0 = selects[0]
    r = x0.args[0]
    if not (is_op(r, *RESHAPE) and x0.args[2] == 0 and is_dim(x0.args[1], val(r).dim() if val(r) is not None else 5, -1)):
        return None
    c = other_arg(m_a, x0)
    x1 = [n for n in _mul_pair(m_b) if is_op(n, aten.select.int) and n.args[0] is r and n.args[2] == 1
          and is_dim(n.args[1], val(r).dim() if val(r) is not None else 5, -1)]
    if len(x1) != 1:
        return None
    x1 = x1[0]
    s = other_arg(m_b, x1)
    if _mul_pair(add.args[0]) is None or _mul_pair(add.args[1]) is None:
        return None
    if {frozenset(_mul_pair(add.args[0])), frozenset(_mul_pair(add.args[1]))} != {frozenset({x0, s}), frozenset({x1, c})}:
        return None
    cos, sin = _unsqueezed(c), _unsqueezed(s)
    if cos is None or sin is None or not is_dim(dim, 5, -1):
        return None
    shape = r.args[1]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 5 and shape[-1] == 2):
        return None
    flat = only_user(stack)
    if not (is_op(flat, aten.flatten.using_ints) and flat.args[1] == 3 and flat.args[2:] in ((), (-1,), (4,))):
        return None
    out = only_user(flat)
    x = strip_float(r.args[0])
    if not (is_op(out, aten.type_as.default, aten.to.dtype) and out.args[0] is flat):
        return None
    vx, vc = val(x), val(cos)
    if vx is None or vc is None or vx.dim() != 4 or vc.dim() != 3 or cast_target_dtype(out) != vx.dtype:
        return None
    return x, cos, sin, out


@register_pass("fuse_rope", "interleaved-pair rotary embedding subgraph -> graphopt.rope(x, cos, sin)")
def fuse_rope(gm, ctx):
    mode = fake_mode(gm)
    matches = 0
    for node in list(gm.graph.nodes):
        if node.graph is None or not is_op(node, aten.stack.default):
            continue
        found = match_rope(node)
        if found is None:
            continue
        x, cos, sin, out = found
        fused = insert_call(gm, out, torch.ops.graphopt.rope.default, (x, cos, sin), mode=mode)
        out.replace_all_uses_with(fused)
        matches += 1
    if matches:
        remove_dead(gm)
    return PassResult(gm, matches > 0, {"matches": matches})
