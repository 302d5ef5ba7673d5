"""rms_norm / add_rms_norm Triton kernels, run for real under the Triton interpreter on CPU, against the
plain-torch references over odd shapes and every dtype."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import pytest
import torch

from graphopt.kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton, rms_norm_reference, rms_norm_triton

# dtype -> (atol, rtol): float32 only differs by summation order; half types by one rounding of the output
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
SHAPES = [(3, 37, 213), (5, 64), (2, 1, 1000)]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_kernel_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype) * 3
    weight = torch.randn(shape[-1], dtype=dtype)
    out = rms_norm_triton(x, weight, 1e-5)
    ref = rms_norm_reference(x, weight, 1e-5)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", list(TOL))
def test_add_rms_norm_kernel_matches_reference(dtype):
    torch.manual_seed(1)
    x = torch.randn(3, 37, 213, dtype=dtype)
    residual = torch.randn(3, 37, 213, dtype=dtype)
    weight = torch.randn(213, dtype=dtype)
    normed, summed = add_rms_norm_triton(x, residual, weight, 1e-6)
    ref_normed, ref_summed = add_rms_norm_reference(x, residual, weight, 1e-6)
    # one rounding of a float32 add: exact, except that the triton 3.9 interpreter truncates float32 ->
    # bfloat16 casts (the GPU rounds to nearest even), which costs up to one bf16 ulp (2**-7 relative)
    torch.testing.assert_close(summed, ref_summed, atol=0, rtol=2 ** -7 if dtype == torch.bfloat16 else 0)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(normed, ref_normed, atol=atol, rtol=rtol)


def test_rms_norm_kernel_strided_rows_and_mixed_weight_dtype():
    torch.manual_seed(2)
    big = torch.randn(4, 9, 300)
    x = big[:, 2:7, :213]  # rows with a stride of 300, not contiguous
    weight = torch.randn(213, dtype=torch.bfloat16)  # fp32 x, bf16 weight -> fp32 out (type promotion)
    out = rms_norm_triton(x, weight, 1e-5)
    ref = rms_norm_reference(x, weight, 1e-5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
