"""graphopt::swiglu — silu(gate) * up, elementwise over the flattened tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from graphopt.kernels._triton import for_device, wrap_triton


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # silu in float32
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    act = (g * tl.sigmoid(g)).to(gate_ptr.dtype.element_ty)  # eager rounds silu(gate) to gate's dtype
    tl.store(out_ptr + offs, (act.to(tl.float32) * u).to(out_ptr.dtype.element_ty), mask=mask)


def swiglu_triton(gate: Tensor, up: Tensor, block: int = 1024) -> Tensor:
    """gate, up [...] (same shape) -> silu(gate) * up in promote(gate, up) dtype. Runs the Triton kernel
    on CUDA and under the Triton interpreter on CPU."""
    assert gate.shape == up.shape, f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ"
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    n = out.numel()
    if n > 0:
        kernel = for_device(_swiglu_kernel, gate.device)
        wrap_triton(kernel)[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4)
    return out


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors (same shapes), the reference elsewhere.
@triton_op("graphopt::swiglu", mutates_args=())
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    if gate.is_cuda and gate.shape == up.shape:
        return swiglu_triton(gate, up)
    return swiglu_reference(gate, up)
