"""fuse_rope: graphopt.model.llama.apply_rope, as export records it -> torch.ops.graphopt.rope(x, cos, sin)
(x [B, T, H, D], cos/sin [B, T, D/2]). B, T, H are traced symbolic: the reshape to [B, T, H, -1, 2]
matches any sizes."""
import torch

from graphopt.model.llama import apply_rope
from graphopt.pipeline import PassResult, register_pass
from ._ops import val
from ._patterns import replace_all

# float32: x.float() is a no-op cast (one per user); lower dtypes: a real one (bfloat16 stands for float16)
DTYPES = (torch.float32, torch.bfloat16)


def _pattern_1(x, cos, sin):
    return apply_rope(x, cos, sin)


def _replacement_1(x, cos, sin):
    return torch.ops.graphopt.rope(x, cos, sin)


def _shapes_ok(m, match) -> bool:
    vx, vc, vs = val(m["x"]), val(m["cos"]), val(m["sin"])
    return None not in (vx, vc, vs) and (vx.dim(), vc.dim(), vs.dim()) == (4, 3, 3)


@register_pass("fuse_rope", "interleaved-pair rotary embedding subgraph -> graphopt.rope(x, cos, sin)",
               blockwise=True)
def fuse_rope(gm, ctx):
    matches = 0
    for dtype in DTYPES:
        inputs = (((2, 3, 5, 8), dtype), ((2, 3, 4), torch.float32), ((2, 3, 4), torch.float32))
        matches += replace_all(gm, _pattern_1, _replacement_1, inputs, _shapes_ok, dynamic=("BTH", "BT", "BT"))
    return PassResult(gm, matches > 0, {"matches": matches})
