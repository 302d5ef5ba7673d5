"""graphopt::logprob — log_softmax(logits)[i, target[i]] without materialising the log-softmax:
one program per row streams the vocabulary in chunks with an online log-sum-exp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from graphopt.kernels._triton import for_device, triton_op, wrap_triton


@triton.jit
def _logprob_kernel(logits_ptr, target_ptr, out_ptr, V, row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    cols = tl.arange(0, BLOCK)
    # per-lane running max and sum (one reduction at the end, not one a chunk); the finite start
    # keeps exp(m - m_new) defined for lanes that have only seen masked (-inf) columns
    m = tl.full([BLOCK], -1e30, dtype=tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), axis=0))
    target = tl.load(target_ptr + row)
    tl.store(out_ptr + row, tl.load(base + target).to(tl.float32) - lse)


def logprob_triton(logits: Tensor, target: Tensor, block: int | None = None) -> Tensor:
    """logits [N, V], target [N] int -> [N] float32. Runs the Triton kernel on CUDA and under the Triton
    interpreter on CPU. Targets must lie in [0, V) (not checked: that would sync the device)."""
    N, V = logits.shape
    assert target.shape == (N,), f"logprob: target {tuple(target.shape)} does not match logits [{N}, {V}]"
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N > 0:
        block = block or min(triton.next_power_of_2(V), 4096)
        kernel = for_device(_logprob_kernel, logits.device)
        wrap_triton(kernel)[(N,)](logits, target.contiguous(), out, V, logits.stride(0), BLOCK=block,
                                  num_warps=8 if block >= 4096 else 4)
    return out


def logprob_reference(logits: Tensor, target: Tensor) -> Tensor:
    """logits [N, V], target [N] int64 -> [N] float32 (accumulated in float32)."""
    lf = logits.float()
    return lf.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, dim=-1)


# triton_op: one node for export and compile; the body is also the fake impl, so it may only branch on
# the device: the Triton kernel for CUDA tensors, the reference elsewhere.
@triton_op("graphopt::logprob", mutates_args=())
def logprob(logits: Tensor, target: Tensor) -> Tensor:
    if logits.is_cuda:
        return logprob_triton(logits, target)
    return logprob_reference(logits, target)
