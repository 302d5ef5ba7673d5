"""swiglu Triton kernel, run for real under the Triton interpreter on CPU, against the reference."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import pytest
import torch

from graphopt.kernels._triton import as_rows
from graphopt.kernels.swiglu import swiglu_reference, swiglu_triton

TOL = {torch.float32: (1e-6, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(3, 37, 213), (1, 5, 1000)])
def test_swiglu_kernel_matches_reference(shape, dtype):
    torch.manual_seed(0)
    gate = torch.randn(shape, dtype=dtype) * 4
    up = torch.randn(shape, dtype=dtype)
    out = swiglu_triton(gate, up)
    ref = swiglu_reference(gate, up)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def test_swiglu_kernel_small_block_non_contiguous():
    torch.manual_seed(1)
    gate_up = torch.randn(3, 7, 2 * 45)
    gate, up = gate_up[..., :45], gate_up[..., 45:]  # halves of a merged gate/up projection
    out = swiglu_triton(gate, up, block=64)  # 945 elements: 15 programs, the last one partly masked
    torch.testing.assert_close(out, swiglu_reference(gate, up), atol=1e-6, rtol=1e-5)


def test_swiglu_kernel_reads_split_halves_in_place():
    # merge_gate_up's halves are row-strided views of one [M, 2F] tensor: read as they are, no copy
    torch.manual_seed(2)
    gate_up = torch.randn(2, 6, 2 * 40)
    gate, up = gate_up.split(40, dim=-1)
    rows = as_rows(gate)
    assert rows.shape == (12, 40) and rows.stride() == (80, 1) and rows.data_ptr() == gate.data_ptr()
    torch.testing.assert_close(swiglu_triton(gate, up, block=16), swiglu_reference(gate, up), atol=1e-6, rtol=1e-5)


def test_swiglu_kernel_copies_what_cannot_be_read_by_rows():
    torch.manual_seed(3)
    gate = torch.randn(5, 7, 3).transpose(0, 1)  # [7, 5, 3], unit column stride, rows not one stride apart
    up = torch.randn(7, 3, 5).transpose(1, 2)  # [7, 5, 3], column stride 5
    for t in (gate, up):
        rows = as_rows(t)
        assert rows.shape == (35, 3) and rows.is_contiguous() and rows.data_ptr() != t.data_ptr()
    torch.testing.assert_close(swiglu_triton(gate, up), swiglu_reference(gate, up), atol=1e-6, rtol=1e-5)
