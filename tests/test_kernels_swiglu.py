"""swiglu Triton kernel, run for real under the Triton interpreter on CPU, against the reference."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import pytest
import torch

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
