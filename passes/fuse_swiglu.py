"""fuse_swiglu: silu(a) * b -> torch.ops.graphopt.swiglu(a, b) (same shapes, no broadcasting)."""
from __future__ import annotations

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt)
import torch
from graphopt.pipeline import PassResult, register_pass
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import aten, is_op, only_user, other_arg, val


@register_pass("fuse_swiglu", "silu(gate) * up -> graphopt.swiglu(gate, up)")
def fuse_swiglu(gm, ctx):
    mode = fake_mode(gm)
    matches = 0
    for silu in list(gm.graph.nodes):
        if not is_op(silu, aten.silu.default):
            continue
        mul = only_user(silu)
        if not is_op(mul, aten.mul.Tensor) or silu not in mul.args[:2]:
            continue
        up = other_arg(mul, silu)
        gate = silu.args[0]
        vg, vu = val(gate), val(up)
        if not isinstance(up, torch.fx.Node) or vg is None or vu is None or vg.shape != vu.shape or vg.dtype != vu.dtype:
            continue
        fused = insert_call(gm, mul, torch.ops.graphopt.swiglu.default, (gate, up), mode=mode)
        mul.replace_all_uses_with(fused)
        matches += 1
    if matches:
        remove_dead(gm)
    return PassResult(gm, matches > 0, {"matches": matches})
