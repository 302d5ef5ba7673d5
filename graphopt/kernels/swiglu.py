"""graphopt::swiglu — silu(gate) * up, row by row.

gate and up may be row-strided views (the two halves of merge_gate_up's merged projection, [M, 2F]
split in two): the kernel reads them in place, so no copy of either half is made first."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import as_rows, for_device, num_warps_for, triton_op, wrap_triton


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n_cols, s_gate, s_up, BLOCK: tl.constexpr):
    # one program per (row, block of columns); rows of gate/up are s_gate/s_up elements apart, out is contiguous
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gate_ptr + row * s_gate + cols, mask=mask, other=0.0).to(tl.float32)  # silu in float32
    u = tl.load(up_ptr + row * s_up + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g * tl.sigmoid(g)).to(gate_ptr.dtype.element_ty)  # eager rounds silu(gate) to gate's dtype
    tl.store(out_ptr + row * n_cols + cols, (act.to(tl.float32) * u).to(out_ptr.dtype.element_ty), mask=mask)


def swiglu_triton(gate: Tensor, up: Tensor, block: int = 1024) -> Tensor:
    """gate, up [..., F] (same shape, any row strides) -> silu(gate) * up [..., F] contiguous, in
    promote(gate, up) dtype. Runs the Triton kernel on CUDA and under the Triton interpreter on CPU."""
    assert gate.shape == up.shape, f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ"
    out = torch.empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if out.numel() == 0:
        return out
    g2, u2 = as_rows(gate), as_rows(up)  # [rows, F]
    rows, n_cols = g2.shape
    block = min(block, triton.next_power_of_2(n_cols))
    kernel = for_device(_swiglu_kernel, gate.device)
    wrap_triton(kernel)[(rows, triton.cdiv(n_cols, block))](g2, u2, out, n_cols, g2.stride(0), u2.stride(0),
                                                            BLOCK=block, num_warps=num_warps_for(block))
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
