"""graphopt.int8_linear: a linear as an int8 x int8 matmul with int32 accumulation (W8A8).

    x [..., K] float -> per-row scale s = max|x_row| / 127, q = round(x / s) int8    [M, K]
    acc = q @ Wq                                       int32 [M, N]   (torch._int_mm: oneDNN VNNI on
                                                                       CPU, int8 tensor cores on CUDA)
    y = acc * s * w_scale (+ bias)                     [..., N] in x's dtype

Wq [K, N] int8 (column-major: a transposed view of [N, K]) and w_scale [N] float32 are the weight
quantised per output channel (`quantize_weight`). The op has no Triton kernel: it is registered as a
CompositeImplicitAutograd op, so the graph shows ONE node (countable in tests, readable in
`graphopt passes`) while torch.compile traces through it and inductor fuses the quantisation and the
dequantisation around the matmul.
"""
from __future__ import annotations

import torch
from torch import Tensor

QMAX = 127  # symmetric: int8 values in [-127, 127]
_EPS = 1e-12  # a row of zeros gets this scale (its q is 0 and so is its output)

_lib = torch.library.Library("graphopt", "FRAGMENT")
_lib.define("int8_linear(Tensor x, Tensor weight_int8, Tensor weight_scale, Tensor? bias=None) -> Tensor")


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [N, K] float -> (Wq [K, N] int8, w_scale [N] float32), per output channel. Wq is the
    transposed view of the contiguous [N, K] codes (column-major), the layout cuBLASLt's int8 matmul
    takes without a copy (a row-major [K, N] is several times slower on CUDA); on CPU, oneDNN runs
    both layouts at the same rate."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(_EPS) / QMAX  # [N]
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)  # [N, K]
    return q.t(), scale


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (q [M, K] int8, s [M, 1] float32): one symmetric scale per row (per token)."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS) / QMAX  # [M, 1]
    return torch.round(xf / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def _int8_matmul(q: Tensor, weight_int8: Tensor) -> Tensor:
    """[M, K] int8 @ [K, N] int8 -> [M, N] int32 (torch._int_mm). On CUDA through padded_int_mm."""
    if q.is_cuda:
        return padded_int_mm(q, weight_int8)
    return torch._int_mm(q, weight_int8)


def padded_int_mm(q: Tensor, weight_int8: Tensor) -> Tensor:
    """torch._int_mm within cuBLASLt's int8 limits: more than 16 rows, K and N multiples of 8. What
    falls short is zero-padded (q gets rows up to 17 and columns up to the multiple of 8; the weight,
    for an odd K or N, a padded copy in its own column-major layout), then cut off again: zeros add
    nothing to the int32 sums. Shapes within the limits run with no copy. Device-independent, so CPU
    tests check it."""
    M, K = q.shape
    N = weight_int8.shape[1]
    m_pad, k_pad, n_pad = max(17 - M, 0), -K % 8, -N % 8
    if m_pad or k_pad:
        q = torch.nn.functional.pad(q, (0, k_pad, 0, m_pad))  # [M + m_pad, K + k_pad]
    if k_pad or n_pad:  # pad the [N, K] codes, then view them as [K + k_pad, N + n_pad] again
        weight_int8 = torch.nn.functional.pad(weight_int8.t(), (0, k_pad, 0, n_pad)).t()
    return torch._int_mm(q, weight_int8)[:M, :N]


def int8_linear(x: Tensor, weight_int8: Tensor, weight_scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., K], weight_int8 [K, N] int8, weight_scale [N] float32, bias [N] | None -> [..., N] in x's dtype."""
    K, N = weight_int8.shape
    q, scale = quantize_rows(x.reshape(-1, K))  # [M, K] int8, [M, 1]
    y = _int8_matmul(q, weight_int8).float() * scale * weight_scale  # [M, N] float32
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


_lib.impl("int8_linear", int8_linear, "CompositeImplicitAutograd")
