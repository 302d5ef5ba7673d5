"""fuse_swiglu: silu(gate) * up (either order; same shapes and dtype, no broadcasting) ->
torch.ops.graphopt.swiglu(gate, up)."""
import torch
import torch.nn.functional as F

from graphopt.pipeline import PassResult, register_pass
from ._patterns import replace_all, same_meta


def _pattern_1(gate, up):
    return F.silu(gate) * up


def _pattern_2(gate, up):
    return up * F.silu(gate)


def _replacement_1(gate, up):
    return torch.ops.graphopt.swiglu(gate, up)


@register_pass("fuse_swiglu", "silu(gate) * up -> graphopt.swiglu(gate, up)", blockwise=True)
def fuse_swiglu(gm, ctx):
    inputs = (((2, 3, 8), torch.float32),) * 2  # gate, up [B, T, F]: no casts, so one dtype will do
    matches = sum(replace_all(gm, p, _replacement_1, inputs, lambda m, _: same_meta(m["gate"], m["up"]))
                  for p in (_pattern_1, _pattern_2))
    return PassResult(gm, matches > 0, {"matches": matches})
