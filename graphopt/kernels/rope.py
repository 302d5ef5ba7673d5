"""graphopt::rope — rotary position embedding on interleaved pairs (Meta LLaMA layout)."""
from __future__ import annotations

import torch
from torch import Tensor


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, T, H, D]; cos, sin [B, T, D/2] float32. Computed in float32, returned in x's dtype."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(3).type_as(x)


@torch.library.custom_op("graphopt::rope", mutates_args=())
def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return rope_reference(x, cos, sin)


@rope.register_fake
def _(x, cos, sin):
    return torch.empty_like(x)
