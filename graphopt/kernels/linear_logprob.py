"""graphopt::linear_logprob — log-prob of target ids from hidden states and the LM head weight,
without materialising [N, V] logits (chunked over the vocabulary with an online log-sum-exp).

Each program owns BLOCK_N rows and one slice of the vocabulary (split-V, so that few scored rows
still fill the GPU); it computes logits tiles [BLOCK_N, BLOCK_V] with tl.dot (float32 accumulation),
keeps a running max / sum per row, and picks the target's logit out of the tile that holds it.
A tiny torch epilogue merges the per-slice log-sum-exps."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import dot_precision, for_device, upcast_dot, triton_op, wrap_triton


@triton.jit
def _linear_logprob_kernel(h_ptr, w_ptr, target_ptr, lse_ptr, tlogit_ptr, N, V, D, sh_n, sw_v, cols_per_split,
                           BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                           UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    target = tl.load(target_ptr + rows, mask=row_mask, other=-1)
    d_offs = tl.arange(0, BLOCK_D)
    v_offs = tl.arange(0, BLOCK_V)
    v_begin = split * cols_per_split
    v_end = tl.minimum(v_begin + cols_per_split, V)
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    t_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * sh_n  # [BLOCK_N, 1]
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + v_offs
        col_mask = cols < v_end
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * sw_v  # [1, BLOCK_V]
        acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + d_offs
            h = tl.load(h_rows + d[None, :], mask=row_mask[:, None] & (d[None, :] < D), other=0.0)  # [BLOCK_N, BLOCK_D]
            w = tl.load(w_cols + d[:, None], mask=col_mask[None, :] & (d[:, None] < D), other=0.0)  # [BLOCK_D, BLOCK_V]
            if UPCAST_DOT:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)  # accumulate in float32
        logits = tl.where(col_mask[None, :], acc, float("-inf"))
        t_i += tl.sum(tl.where(cols[None, :] == target[:, None], acc, 0.0), axis=1)
        # every tile has a valid column (v0 < v_end), so m_new is finite after the first tile
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m_i = m_new
    tl.store(lse_ptr + split * N + rows, m_i + tl.log(l_i), mask=row_mask)
    tl.store(tlogit_ptr + split * N + rows, t_i, mask=row_mask)


def linear_logprob_triton(hidden: Tensor, weight: Tensor, target: Tensor, block_n: int = 64, block_v: int = 128,
                          block_d: int = 64, split_cols: int = 2048) -> Tensor:
    """hidden [N, D], weight [V, D], target [N] -> [N] float32 log-prob of target under
    log_softmax(hidden @ weight.T). The vocabulary is cut into slices of `split_cols` columns (rounded up
    to a multiple of block_v), one program per (block of rows, slice): a fixed number of slices keeps
    the launch independent of N (no guards on a dynamic N) and fills the GPU when few rows are scored.
    Runs the Triton kernel on CUDA and under the Triton interpreter on CPU. Targets must lie in [0, V)
    (not checked: that would sync the device)."""
    N, D = hidden.shape
    V = weight.shape[0]
    assert weight.shape == (V, D), f"linear_logprob: weight {tuple(weight.shape)} does not match hidden [{N}, {D}]"
    assert target.shape == (N,), f"linear_logprob: target {tuple(target.shape)} does not match hidden [{N}, {D}]"
    assert hidden.dtype == weight.dtype, f"linear_logprob: hidden {hidden.dtype} and weight {weight.dtype} differ"
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    cols_per_split = triton.cdiv(min(split_cols, V), block_v) * block_v
    n_splits = triton.cdiv(V, cols_per_split)  # every slice holds at least one column
    lse = torch.empty((n_splits, N), dtype=torch.float32, device=hidden.device)  # per-slice log-sum-exp
    tlogit = torch.empty((n_splits, N), dtype=torch.float32, device=hidden.device)  # target logit or 0
    if N > 0:
        kernel = for_device(_linear_logprob_kernel, hidden.device)
        wrap_triton(kernel)[(triton.cdiv(N, block_n), n_splits)](
            hidden, weight, target.contiguous(), lse, tlogit, N, V, D, hidden.stride(0), weight.stride(0),
            cols_per_split, BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d,
            UPCAST_DOT=upcast_dot(hidden.device, hidden.dtype), DOT_PRECISION=dot_precision(hidden.dtype),
            num_warps=4 if block_n * block_v <= 64 * 128 else 8, num_stages=3)
    return tlogit.sum(0) - torch.logsumexp(lse, dim=0)  # [N]


def linear_logprob_reference(hidden: Tensor, weight: Tensor, target: Tensor, chunk: int = 8192) -> Tensor:
    """hidden [N, D], weight [V, D], target [N] -> [N] float32."""
    N, V = hidden.shape[0], weight.shape[0]
    lse = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    for start in range(0, V, chunk):
        logits = (hidden @ weight[start:start + chunk].t()).float()  # [N, chunk]
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
    target_logit = (hidden.float() * weight[target].float()).sum(-1)  # [N], float32
    return target_logit - lse


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors, the reference elsewhere.
@triton_op("graphopt::linear_logprob", mutates_args=())
def linear_logprob(hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    if hidden.is_cuda and hidden.dtype == weight.dtype:
        return linear_logprob_triton(hidden, weight, target)
    return linear_logprob_reference(hidden, weight, target)


def linear_logprob_greedy_reference(hidden: Tensor, weight: Tensor, target: Tensor,
                                    chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """hidden [N, D], weight [V, D], target [N] -> (log-prob of target [N] float32, is the target the
    argmax of the logits [N] bool), chunked over the vocabulary like linear_logprob_reference. The argmax
    is torch's (first index among equal maxima), taken over the logits as this matmul computes them."""
    N, V = hidden.shape[0], weight.shape[0]
    lse = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    best = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    best_idx = torch.zeros((N,), dtype=torch.int64, device=hidden.device)
    for start in range(0, V, chunk):
        logits = (hidden @ weight[start:start + chunk].t()).float()  # [N, chunk]
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        value, idx = logits.max(dim=-1)  # [N], [N]
        better = value > best  # strictly: an equal maximum in a later chunk keeps the earlier index
        best, best_idx = torch.where(better, value, best), torch.where(better, idx + start, best_idx)
    target_logit = (hidden.float() * weight[target].float()).sum(-1)  # [N], float32
    return target_logit - lse, best_idx == target


# one node with two outputs (export and compile see the head once); plain torch on every device: the
# chunked matmuls are cuBLAS / oneDNN calls, and the [N, V] logits still never exist at once.
@torch.library.custom_op("graphopt::linear_logprob_greedy", mutates_args=())
def linear_logprob_greedy(hidden: Tensor, weight: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    return linear_logprob_greedy_reference(hidden, weight, target)


@linear_logprob_greedy.register_fake
def _(hidden, weight, target):
    n = hidden.shape[0]
    return hidden.new_empty((n,), dtype=torch.float32), hidden.new_empty((n,), dtype=torch.bool)
