"""graphopt::rms_norm and graphopt::add_rms_norm — RMSNorm (optionally fused with the residual add).
One program per row; the whole row sits in registers (LLaMA dims <= 8192)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import as_rows, for_device, num_warps_for, triton_op, wrap_triton

MAX_BLOCK = 65536  # one row per program: wider rows would spill registers


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, x_row_stride, out_row_stride, n_cols, eps,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)  # accumulate in float32
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * rstd).to(x_ptr.dtype.element_ty)  # Meta semantics: round to x's dtype, then scale
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr, x_row_stride, r_row_stride, n_cols, eps,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * r_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    summed = (x + r).to(sum_ptr.dtype.element_ty)  # the residual stream keeps its dtype
    tl.store(sum_ptr + row * n_cols + cols, summed, mask=mask)
    s = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(s * s, axis=0) / n_cols + eps)
    normed = (s * rstd).to(sum_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> int:
    block = triton.next_power_of_2(n_cols)
    assert block <= MAX_BLOCK, f"rms_norm: rows of {n_cols} elements exceed the one-block limit {MAX_BLOCK}"
    return block


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x [..., D], weight [D] -> [..., D] in promote(x, weight) dtype. Runs the Triton kernel on CUDA
    and under the Triton interpreter on CPU."""
    D = x.shape[-1]
    assert weight.shape == (D,), f"rms_norm: weight {tuple(weight.shape)} does not match x [..., {D}]"
    x2 = as_rows(x)  # [R, D]
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x2.shape[0] > 0:
        block = _block(D)
        kernel = for_device(_rms_norm_kernel, x.device)
        wrap_triton(kernel)[(x2.shape[0],)](x2, weight.contiguous(), out, x2.stride(0), out.stride(0), D, eps,
                                           BLOCK=block, num_warps=num_warps_for(block))
    return out.view(x.shape)


def add_rms_norm_triton(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x, residual [..., D], weight [D] -> (rms_norm(x + residual), x + residual)."""
    D = x.shape[-1]
    assert x.shape == residual.shape, f"add_rms_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ"
    assert weight.shape == (D,), f"add_rms_norm: weight {tuple(weight.shape)} does not match x [..., {D}]"
    x2, r2 = as_rows(x), as_rows(residual)  # [R, D]
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    summed = torch.empty(x2.shape, dtype=sum_dtype, device=x.device)
    out = torch.empty(x2.shape, dtype=torch.promote_types(sum_dtype, weight.dtype), device=x.device)
    if x2.shape[0] > 0:
        block = _block(D)
        kernel = for_device(_add_rms_norm_kernel, x.device)
        wrap_triton(kernel)[(x2.shape[0],)](x2, r2, weight.contiguous(), out, summed, x2.stride(0), r2.stride(0),
                                           D, eps, BLOCK=block, num_warps=num_warps_for(block))
    return out.view(x.shape), summed.view(x.shape)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # normalise in float32, scale in the input dtype (Meta LLaMA semantics)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def add_rms_norm_reference(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors, the reference elsewhere.
@triton_op("graphopt::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if x.is_cuda:
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


@triton_op("graphopt::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Returns (rms_norm(x + residual), x + residual)."""
    if x.is_cuda and x.shape == residual.shape:
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)
