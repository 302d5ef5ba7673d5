"""graphopt::rope — rotary position embedding on interleaved pairs (Meta LLaMA layout).
cos/sin are inputs, so any rope_theta or scaling works; any head count (GQA k has fewer heads)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import for_device, triton_op, wrap_triton


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, T, H, P,
                 sx_b, sx_t, sx_h, sc_b, sc_t, ss_b, ss_t,
                 BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    # one program per (token, block of heads); pairs (2p, 2p+1) rotate by angle p. Each head's row is
    # read and written whole (contiguous, vectorised) and split into its even/odd halves in registers.
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    pairs = tl.arange(0, BLOCK_P)
    pmask = pairs < P
    cols = tl.arange(0, 2 * BLOCK_P)
    mask = (heads[:, None] < H) & (cols[None, :] < 2 * P)  # [BLOCK_H, 2 * BLOCK_P]
    c = tl.load(cos_ptr + b * sc_b + t * sc_t + pairs, mask=pmask, other=0.0).to(tl.float32)  # [BLOCK_P]
    s = tl.load(sin_ptr + b * ss_b + t * ss_t + pairs, mask=pmask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * sx_b + t * sx_t + heads[:, None] * sx_h + cols[None, :], mask=mask, other=0.0)
    x0, x1 = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_H, BLOCK_P, 2)))  # rotate in float32
    o0 = x0 * c[None, :] - x1 * s[None, :]
    o1 = x0 * s[None, :] + x1 * c[None, :]
    o = tl.reshape(tl.join(o0, o1), (BLOCK_H, 2 * BLOCK_P))
    o_ptr = out_ptr + (pid * H + heads[:, None]) * (2 * P) + cols[None, :]  # out is contiguous
    tl.store(o_ptr, o.to(out_ptr.dtype.element_ty), mask=mask)


def rope_triton(x: Tensor, cos: Tensor, sin: Tensor, block_h: int | None = None) -> Tensor:
    """x [B, T, H, D]; cos, sin broadcastable to [B, T, D/2] -> [B, T, H, D] in x's dtype (contiguous).
    Runs the Triton kernel on CUDA and under the Triton interpreter on CPU."""
    B, T, H, D = x.shape
    assert D % 2 == 0, f"rope: head_dim {D} must be even"
    P = D // 2
    cos, sin = cos.expand(B, T, P), sin.expand(B, T, P)  # [B, T, P] (stride 0 where broadcast)
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    out = torch.empty((B, T, H, D), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_p = triton.next_power_of_2(P)
    block_h = block_h or min(triton.next_power_of_2(H), max(1, 4096 // block_p))
    grid = (B * T, triton.cdiv(H, block_h))
    kernel = for_device(_rope_kernel, x.device)
    wrap_triton(kernel)[grid](x, cos, sin, out, T, H, P,
                              x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(1),
                              sin.stride(0), sin.stride(1),
                              BLOCK_H=block_h, BLOCK_P=block_p, num_warps=4 if block_h * block_p >= 2048 else 2)
    return out


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, T, H, D]; cos, sin [B, T, D/2] float32. Computed in float32, returned in x's dtype."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(3).type_as(x)


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors, the reference elsewhere.
@triton_op("graphopt::rope", mutates_args=())
def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    if x.is_cuda:
        return rope_triton(x, cos, sin)
    return rope_reference(x, cos, sin)
