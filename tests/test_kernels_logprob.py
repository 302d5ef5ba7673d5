"""logprob and linear_logprob Triton kernels, run for real under the Triton interpreter on CPU:
online log-sum-exp over vocabulary chunks that do not divide the vocabulary."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import pytest
import torch

from graphopt.kernels.linear_logprob import linear_logprob_reference, linear_logprob_triton
from graphopt.kernels.logprob import logprob_reference, logprob_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# linear_logprob_reference rounds half-precision logits to the input dtype before the log-sum-exp,
# the kernel keeps them in float32: they differ by about one rounding of a logit
REF_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 1e-3), torch.bfloat16: (1.5e-1, 1e-2)}


def _exact_logprob(logits_fp32, target):
    return torch.log_softmax(logits_fp32, dim=-1).gather(-1, target[:, None])[:, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,block", [(1000, 128), (77, 128), (256, 64)])
def test_logprob_kernel_matches_log_softmax_gather(dtype, V, block):
    torch.manual_seed(0)
    N = 7
    logits = (torch.randn(N, V) * 4).to(dtype)
    target = torch.randint(0, V, (N,))
    target[0] = logits[0].float().argmax()  # the max column too
    out = logprob_triton(logits, target, block=block)
    assert out.dtype == torch.float32 and out.shape == (N,)
    # the kernel reads the half-precision values exactly and works in float32: tight tolerance
    torch.testing.assert_close(out, _exact_logprob(logits.float(), target), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out, logprob_reference(logits, target), atol=2e-5, rtol=1e-5)


def test_logprob_kernel_strided_rows():
    torch.manual_seed(1)
    logits = torch.randn(8, 300)[:, :263]  # rows 300 apart: a strided view
    target = torch.randint(0, 263, (8,))
    out = logprob_triton(logits, target, block=64)
    torch.testing.assert_close(out, _exact_logprob(logits, target), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_cols", [64, 4096])
def test_linear_logprob_kernel_matches_log_softmax_gather(dtype, split_cols):
    torch.manual_seed(0)
    N, D, V = 20, 48, 203  # none a multiple of the blocks (16, 32, 32)
    hidden = torch.randn(N, D).to(dtype)
    weight = (torch.randn(V, D) * 0.3).to(dtype)
    target = torch.randint(0, V, (N,))
    # split_cols 64: 4 vocabulary slices merged by the epilogue; 4096: one slice
    out = linear_logprob_triton(hidden, weight, target, block_n=16, block_v=32, block_d=32, split_cols=split_cols)
    assert out.dtype == torch.float32 and out.shape == (N,)
    # exact products of the stored values, float32 accumulation: what the kernel computes
    exact = _exact_logprob(hidden.float() @ weight.float().t(), target)
    torch.testing.assert_close(out, exact, atol=1e-4, rtol=1e-5)
    atol, rtol = REF_TOL[dtype]
    torch.testing.assert_close(out, linear_logprob_reference(hidden, weight, target), atol=atol, rtol=rtol)


def test_linear_logprob_kernel_single_row_and_wide_vocab_slices():
    torch.manual_seed(2)
    hidden, weight = torch.randn(1, 40), torch.randn(333, 40) * 0.2
    target = torch.tensor([332])  # the last vocabulary id, in the last, partial, tile
    out = linear_logprob_triton(hidden, weight, target, block_n=16, block_v=64, block_d=16, split_cols=100)
    torch.testing.assert_close(out, _exact_logprob(hidden @ weight.t(), target), atol=1e-4, rtol=1e-5)
