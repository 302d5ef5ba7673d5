"""graphopt::rms_norm and graphopt::add_rms_norm — RMSNorm (optionally fused with the residual add)."""
from __future__ import annotations

import torch
from torch import Tensor


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # normalise in float32, scale in the input dtype (Meta LLaMA semantics)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


@torch.library.custom_op("graphopt::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return rms_norm_reference(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))


@torch.library.custom_op("graphopt::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Returns (rms_norm(x + residual), x + residual)."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


@add_rms_norm.register_fake
def _(x, residual, weight, eps):
    summed = torch.empty_like(x + residual)
    return summed.new_empty(summed.shape, dtype=torch.promote_types(summed.dtype, weight.dtype)), summed
