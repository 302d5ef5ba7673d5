"""fuse_rmsnorm: the decomposed RMSNorm -> torch.ops.graphopt.rms_norm(x, weight, eps).

Pattern (export IR of graphopt.model.llama.RMSNorm), eps read from the add:
    xf = to(x, float32); r = rsqrt(mean(pow(xf, 2), [-1], keepdim) + eps)
    out = type_as(xf * r, x) * weight
With fuse_residual, a norm whose input is s = a + b that is also read elsewhere (the residual stream)
becomes (out, s) = graphopt.add_rms_norm(a, b, weight, eps).
"""
from __future__ import annotations

import operator

import torch

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt)
from graphopt.pipeline import PassOption, PassResult, register_pass
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import aten, cast_target_dtype, is_dim, is_op, only_user, other_arg, real_users, strip_float, val


def match_rms_norm(rsqrt):
    """rsqrt node -> dict(x, xf, weight, eps, out, chain) or None; chain = the nodes reading xf."""
    add = rsqrt.args[0]
    if not is_op(add, aten.add.Tensor) or only_user(add) is not rsqrt:
        return None
    mean, eps = add.args[0], add.args[1]
    if not isinstance(eps, (int, float)):
        mean, eps = add.args[1], add.args[0]
    if not (is_op(mean, aten.mean.dim) and isinstance(eps, (int, float)) and only_user(mean) is add):
        return None
    dims, keepdim = mean.args[1], (mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False))
    pow_ = mean.args[0]
    if not (is_op(pow_, aten.pow.Tensor_Scalar) and pow_.args[1] == 2 and only_user(pow_) is mean and keepdim):
        return None
    xf = pow_.args[0]
    ndim = val(xf).dim() if val(xf) is not None else None
    if not (isinstance(dims, (list, tuple)) and len(dims) == 1 and is_dim(dims[0], ndim, -1)):
        return None
    mul = only_user(rsqrt)
    if not is_op(mul, aten.mul.Tensor) or other_arg(mul, rsqrt) is not xf:
        return None
    cast = only_user(mul)
    x = strip_float(xf)
    if not (is_op(cast, aten.type_as.default, aten.to.dtype) and cast.args[0] is mul):
        return None
    if val(x) is not None and cast_target_dtype(cast) not in (None, val(x).dtype):
        return None  # the norm is returned in another dtype than its input: not this pattern
    out = only_user(cast)
    if not is_op(out, aten.mul.Tensor) or cast not in out.args[:2]:
        return None
    weight = other_arg(out, cast)
    if not isinstance(weight, torch.fx.Node) or (val(weight) is not None and val(weight).dim() != 1):
        return None
    return dict(x=x, xf=xf, weight=weight, eps=float(eps), out=out, chain={pow_, mul, cast})


@register_pass("fuse_rmsnorm", "decomposed RMSNorm -> graphopt.rms_norm (optionally add_rms_norm with the residual add)",
               options={"fuse_residual": PassOption(bool, False, "fuse the residual add feeding a norm: graphopt.add_rms_norm")})
def fuse_rmsnorm(gm, ctx):
    mode = fake_mode(gm)
    matches = residual = 0
    for node in list(gm.graph.nodes):
        if node.graph is None or not is_op(node, aten.rsqrt.default):
            continue  # (erased by an earlier rewrite, or not an anchor)
        m = match_rms_norm(node)
        if m is None or not _defined_before(m["weight"], m["out"]):
            continue
        x, weight, eps, out = m["x"], m["weight"], m["eps"], m["out"]
        if ctx.options.get("fuse_residual") and _residual_ok(m):
            a, b = x.args
            fused = insert_call(gm, x, torch.ops.graphopt.add_rms_norm.default, (a, b, weight, eps), mode=mode)
            normed = insert_call(gm, x, operator.getitem, (fused, 0))
            summed = insert_call(gm, x, operator.getitem, (fused, 1))
            if isinstance(fused.meta.get("val"), (tuple, list)):
                normed.meta["val"], summed.meta["val"] = fused.meta["val"][0], fused.meta["val"][1]
            out.replace_all_uses_with(normed)
            x.replace_all_uses_with(summed)
            residual += 1
        else:
            fused = insert_call(gm, out, torch.ops.graphopt.rms_norm.default, (x, weight, eps), mode=mode)
            out.replace_all_uses_with(fused)
        matches += 1
        remove_dead(gm)
    if residual:
        # the float copy of an fp32 residual is the residual itself: read the sum directly
        for node in list(gm.graph.nodes):
            src = node.args[0] if is_op(node, aten.to.dtype) else None
            if is_op(src, operator.getitem) and node.args[1] == torch.float32 and val(src) is not None \
                    and val(src).dtype == torch.float32:
                node.replace_all_uses_with(src)
        remove_dead(gm)
    return PassResult(gm, matches > 0, {"matches": matches, "residual_matches": residual})


def _residual_ok(m) -> bool:
    """The norm input is a plain a + b (same shape and dtype) that something besides the norm reads."""
    x, xf = m["x"], m["xf"]
    if not (is_op(x, aten.add.Tensor) and len(x.args) == 2 and not x.kwargs):
        return False
    a, b = x.args
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and _defined_before(m["weight"], x)):
        return False
    va, vb = val(a), val(b)
    if va is None or vb is None or va.shape != vb.shape or va.dtype != vb.dtype:
        return False
    others = [u for u in real_users(x) if u is not xf and u not in m["chain"]]
    if xf is not x:
        others += [u for u in real_users(xf) if u not in m["chain"]]
    return bool(others)


def _defined_before(a, b) -> bool:
    """a is a node that appears before b (or a non-node constant)."""
    if not isinstance(a, torch.fx.Node):
        return True
    for n in a.graph.nodes:
        if n is a:
            return True
        if n is b:
            return False
    return False
