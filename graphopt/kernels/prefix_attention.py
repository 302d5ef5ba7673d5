"""graphopt::prefix_attention — attention for packed scoring rows: one context followed by its
endings. Query i sees key j iff j <= i, doc[j] == doc[i] and (seg[j] == 0 or seg[j] == seg[i]).
seg 0 is the shared context, 1..k the endings; doc tells questions packed in one row apart.

The kernel is FlashAttention-style: one program per (block of queries, batch x head), an online
softmax over key blocks from the first token of the block's questions up to the causal limit (a query
block late in a long row does not walk the row's earlier questions), the mask built in-kernel from
doc/seg ids, key blocks that no query of the block can see skipped, and query head h reading kv head
h // n_rep (GQA)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import dot_precision, for_device, upcast_dot, triton_op, wrap_triton

LOG2E = 1.4426950408889634


@triton.jit
def _prefix_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, doc_ptr, seg_ptr, start_ptr,
                             sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
                             sd_b, sd_t, ss_b, ss_t, H, T, D, n_rep, qk_scale,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    kv_h = (h // n_rep).to(tl.int64)  # repeat_interleave layout: heads [r*n_rep, (r+1)*n_rep) share kv head r
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < T
    d_valid = offs_d < D
    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :],
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    doc_q = tl.load(doc_ptr + b * sd_b + offs_m * sd_t, mask=m_valid, other=-2)
    seg_q = tl.load(seg_ptr + b * ss_b + offs_m * ss_t, mask=m_valid, other=-2)
    k_base = k_ptr + b * sk_b + kv_h * sk_h
    v_base = v_ptr + b * sv_b + kv_h * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)  # causal: no key after the block's last query
    # no key before the first token of the block's questions (start_ptr: contiguous [B, T], doc_starts)
    first = tl.min(tl.load(start_ptr + b * T + offs_m, mask=m_valid, other=T))
    lo = (first // BLOCK_N) * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < T
        doc_k = tl.load(doc_ptr + b * sd_b + offs_n * sd_t, mask=n_valid, other=-3)
        seg_k = tl.load(seg_ptr + b * ss_b + offs_n * ss_t, mask=n_valid, other=-3)
        visible = ((offs_n[None, :] <= offs_m[:, None]) & n_valid[None, :]
                   & (doc_k[None, :] == doc_q[:, None])
                   & ((seg_k[None, :] == 0) | (seg_k[None, :] == seg_q[:, None])))  # [BLOCK_M, BLOCK_N]
        if tl.max(visible.to(tl.int32)) > 0:  # skip key blocks that no query of this block can see
            k = tl.load(k_base + offs_n[None, :] * sk_t + offs_d[:, None],
                        mask=n_valid[None, :] & d_valid[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            if UPCAST_DOT:
                k = k.to(tl.float32)
            s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # log2 units, float32
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet: avoid inf - inf
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + offs_n[:, None] * sv_t + offs_d[None, :],
                        mask=n_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            p_v = p.to(v.dtype)  # probabilities in v's dtype for the tensor-core dot
            if UPCAST_DOT:
                p_v = p_v.to(tl.float32)
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=DOT_PRECISION)
            m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=m_valid[:, None] & d_valid[None, :])


def _blocks(device: torch.device, D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for head_dim D."""
    if device.type != "cuda":
        return 16, 16, 4
    return (128, 64, 8) if D > 64 else (128, 64, 4)


def prefix_attention_triton(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, seg_ids: Tensor, scale: float,
                            block_m: int | None = None, block_n: int | None = None) -> Tensor:
    """q [B, H, T, D]; k, v [B, Hkv, T, D] (any strides with unit stride along D); doc_ids, seg_ids [B, T]
    -> [B, H, T, D] in q's dtype, laid out in memory as [B, T, H, D]: the transpose back to tokens x heads
    that follows (before the output projection) is then a view, not a copy. Runs the Triton kernel on
    CUDA and under the Triton interpreter on CPU."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    assert k.shape == (B, Hkv, T, D) and v.shape == k.shape, \
        f"prefix_attention: k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}"
    assert H % Hkv == 0, f"prefix_attention: {H} query heads are not a multiple of {Hkv} kv heads"
    assert doc_ids.shape == (B, T) and seg_ids.shape == (B, T), \
        f"prefix_attention: doc_ids {tuple(doc_ids.shape)} / seg_ids {tuple(seg_ids.shape)} are not [{B}, {T}]"
    assert q.dtype == k.dtype == v.dtype, f"prefix_attention: q/k/v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)  # [B, H, T, D] view
    if out.numel() == 0:
        return out
    launch_prefix_attention(q, k, v, out, doc_ids, seg_ids, doc_starts(doc_ids), scale, block_m, block_n)
    return out


def launch_prefix_attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor, doc_ids: Tensor, seg_ids: Tensor,
                            starts: Tensor, scale: float, block_m: int | None = None,
                            block_n: int | None = None) -> None:
    """The kernel launch alone, into `out` [B, H, T, D] (any strides with unit stride along D); starts
    [B, T] contiguous (doc_starts, or any lower bound of it: zeros walk every key block from the row's
    start). q, k, v as prefix_attention_triton takes them."""
    B, H, T, D = q.shape
    bm, bn, warps = _blocks(q.device, D)
    block_m, block_n = block_m or bm, block_n or bn
    grid = (triton.cdiv(T, block_m), B * H)
    kernel = for_device(_prefix_attention_kernel, q.device)
    wrap_triton(kernel)[grid](
        q, k, v, out, doc_ids, seg_ids, starts,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        doc_ids.stride(0), doc_ids.stride(1), seg_ids.stride(0), seg_ids.stride(1),
        H, T, D, H // k.shape[1], scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(D)),  # tl.dot needs >= 16
        UPCAST_DOT=upcast_dot(q.device, q.dtype), DOT_PRECISION=dot_precision(q.dtype),
        num_warps=warps, num_stages=3)


def doc_starts(doc_ids: Tensor) -> Tensor:
    """doc_ids [B, T] -> [B, T] int32: for each token, the first position of its doc id in its row (no
    key before it can be visible). Ids outside [-1, T) are clamped into that range: ids that then
    share a slot get the smaller first position, which is still a lower bound, so the kernel stays
    exact for any ids; only the skipping gets coarser. No host sync (the kernel runs per layer). int32, so
    that the kernel's key loop counts in 32-bit integers as it did from 0."""
    B, T = doc_ids.shape
    slot = (doc_ids + 1).clamp(0, T)  # [B, T] in [0, T]; padding (-1) -> 0
    pos = torch.arange(T, device=doc_ids.device).expand(B, T)
    first = torch.full((B, T + 1), T, dtype=torch.long, device=doc_ids.device)
    first = first.scatter_reduce(1, slot, pos, reduce="amin")  # [B, T + 1]: first position of each slot
    return first.gather(1, slot).to(torch.int32)


def prefix_mask(doc_ids: Tensor, seg_ids: Tensor) -> Tensor:
    """doc_ids, seg_ids [B, T] -> bool [B, T, T], True = query (row) may attend key (column)."""
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)
    key_visible = (seg_ids.unsqueeze(-2) == 0) | (seg_ids.unsqueeze(-1) == seg_ids.unsqueeze(-2))
    return causal & same_doc & key_visible


def prefix_attention_reference(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, seg_ids: Tensor,
                               scale: float) -> Tensor:
    """q [B, H, T, D]; k, v [B, Hkv, T, D] -> [B, H, T, D]; softmax in float32."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * scale
    scores = scores.masked_fill(~prefix_mask(doc_ids, seg_ids).unsqueeze(1), float("-inf"))
    return torch.matmul(F.softmax(scores, dim=-1), v.float()).to(q.dtype)


def prefix_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, seg_ids: Tensor, scale: float) -> Tensor:
    """The same attention through aten's SDPA with the mask built from the ids (the CPU path: SDPA's
    CPU flash kernel, float32 accumulation, GQA without copying k/v)."""
    mask = prefix_mask(doc_ids, seg_ids).unsqueeze(1)  # [B, 1, T, T]
    # enable_gqa=True also serves H == Hkv (and stays a plain bool when the head counts are symbolic)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors, SDPA on the ids' mask elsewhere.
@triton_op("graphopt::prefix_attention", mutates_args=())
def prefix_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, seg_ids: Tensor, scale: float) -> Tensor:
    if q.is_cuda and q.dtype == k.dtype == v.dtype:
        return prefix_attention_triton(q, k, v, doc_ids, seg_ids, scale)
    return prefix_attention_sdpa(q, k, v, doc_ids, seg_ids, scale)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
