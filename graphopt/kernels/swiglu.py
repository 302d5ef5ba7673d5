"""graphopt::swiglu — silu(gate) * up."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


@torch.library.custom_op("graphopt::swiglu", mutates_args=())
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return swiglu_reference(gate, up)


@swiglu.register_fake
def _(gate, up):
    return torch.empty_like(gate + up)
