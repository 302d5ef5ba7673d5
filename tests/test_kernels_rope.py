"""rope Triton kernel, run for real under the Triton interpreter on CPU, against the reference:
head_dim 64 and 128, GQA k with fewer heads, any theta (cos/sin are inputs), odd sequence lengths."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import pytest
import torch

from graphopt.kernels.rope import rope_reference, rope_triton

TOL = {torch.float32: (1e-6, 1e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def _cos_sin(B, T, D, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)  # [D/2]
    positions = torch.stack([torch.arange(T), torch.arange(T).flip(0)])[:B].float()  # [B, T], rows differ
    angles = positions[..., None] * inv_freq  # [B, T, D/2]
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("head_dim,theta", [(64, 10000.0), (96, 10000.0), (128, 500000.0)])
def test_rope_kernel_matches_reference_q_and_gqa_k(dtype, head_dim, theta):
    torch.manual_seed(0)
    B, T, H, Hkv = 2, 37, 5, 2
    cos, sin = _cos_sin(B, T, head_dim, theta)
    atol, rtol = TOL[dtype]
    for heads in (H, Hkv):
        x = torch.randn(B, T, heads, head_dim, dtype=dtype)
        out = rope_triton(x, cos, sin)
        ref = rope_reference(x, cos, sin)
        assert out.shape == x.shape and out.dtype == dtype
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def test_rope_kernel_strided_input_broadcast_cos_and_head_blocks():
    torch.manual_seed(1)
    B, T, H, D = 2, 11, 6, 64
    qkv = torch.randn(B, T, 3 * H * D)  # a fused projection: q is a strided view
    q = qkv[..., : H * D].view(B, T, H, D)
    cos, sin = _cos_sin(1, T, D, 10000.0)  # [1, T, D/2] broadcast over the batch
    out = rope_triton(q, cos, sin, block_h=4)  # 2 head blocks, the second one partly masked
    ref = rope_reference(q, cos.expand(B, T, D // 2), sin.expand(B, T, D // 2))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert not torch.equal(out, q.contiguous())  # the rotation did something
