"""fuse_rmsnorm: graphopt.model.llama.RMSNorm.forward, as export records it ->
torch.ops.graphopt.rms_norm(x, weight, eps), eps read from the matched graph. With fuse_residual, a
norm whose input s = a + b is also read elsewhere (the residual stream) becomes
(out, s) = graphopt.add_rms_norm(a, b, weight, eps). (In float32 export returns s as the norm's
s.float(), so the pattern's s output is that no-op cast: its readers then read the fused sum.)"""
from types import SimpleNamespace

import torch

from graphopt.model.llama import RMSNorm
from graphopt.pipeline import PassOption, PassResult, register_pass
from ._ops import val
from ._patterns import replace_all, same_meta

EPS = 1.2345e-6  # marker: the pattern is traced with it, and then matches any eps
# float32: x.float() is a no-op cast (one per user); lower dtypes: a real one (bfloat16 stands for float16)
DTYPES = (torch.float32, torch.bfloat16)


def _pattern_1(x, weight, eps):
    return RMSNorm.forward(SimpleNamespace(weight=weight, eps=eps), x)


def _replacement_1(x, weight, eps):
    return torch.ops.graphopt.rms_norm(x, weight, eps)


def _pattern_2(a, b, weight, eps):
    s = a + b
    return _pattern_1(s, weight, eps), s


def _replacement_2(a, b, weight, eps):
    out, s = torch.ops.graphopt.add_rms_norm(a, b, weight, eps)
    return out, s


def _norm_ok(m, match) -> bool:
    return isinstance(m["eps"], (int, float)) and val(m["weight"]) is not None and val(m["weight"]).dim() == 1


def _residual_ok(m, match) -> bool:  # a + b of one shape and dtype, the sum read outside the norm too
    inside = set(match.nodes_map.values())
    return (_norm_ok(m, match) and same_meta(m["a"], m["b"])
            and any(u not in inside for u in match.returning_nodes[1].users))


@register_pass("fuse_rmsnorm", "decomposed RMSNorm -> graphopt.rms_norm (optionally add_rms_norm with the residual add)",
               options={"fuse_residual": PassOption(bool, False, "fuse the residual add feeding a norm: graphopt.add_rms_norm")},
               blockwise=lambda options: not options["fuse_residual"])  # the residual add feeding a block's
# first norm is the previous block's output: a whole-graph match
def fuse_rmsnorm(gm, ctx):
    matches = residual = 0
    for dtype in DTYPES:
        x, weight = ((2, 3, 8), dtype), ((8,), dtype)  # [B, T, D], [D]
        if ctx.options.get("fuse_residual"):
            residual += replace_all(gm, _pattern_2, _replacement_2, (x, x, weight, EPS), _residual_ok)
        matches += replace_all(gm, _pattern_1, _replacement_1, (x, weight, EPS), _norm_ok)
    return PassResult(gm, matches + residual > 0, {"matches": matches + residual, "residual_matches": residual})
