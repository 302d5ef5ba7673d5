"""prefix_attention Triton kernel, run for real under the Triton interpreter on CPU, against an explicit
masked softmax built entry by entry from the segment rule: a context and its endings, two questions in
one row, padding (doc -1), GQA / MQA / MHA, head_dim 64 and 128, T not a multiple of the block."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import math

import pytest
import torch

from graphopt.kernels.prefix_attention import (doc_starts, prefix_attention_reference, prefix_attention_sdpa,
                                               prefix_attention_triton, prefix_mask)

TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
T = 37


def _layout():
    """doc_ids, seg_ids [2, T]. Row 0: context 0..9, endings 1 (10..19) and 2 (20..29), padding 30..36.
    Row 1: question A (context 0..7, endings 8..12, 13..17), question B (context 18..24, endings 25..29,
    30..36)."""
    doc = torch.zeros(2, T, dtype=torch.long)
    seg = torch.zeros(2, T, dtype=torch.long)
    seg[0, 10:20], seg[0, 20:30], doc[0, 30:] = 1, 2, -1
    seg[1, 8:13], seg[1, 13:18] = 1, 2
    doc[1, 18:] = 1
    seg[1, 25:30], seg[1, 30:] = 1, 2
    return doc, seg


def _explicit_mask(doc, seg):
    """The rule, written out entry by entry (independent of prefix_mask's tensor algebra)."""
    B, T_ = doc.shape
    mask = torch.zeros(B, T_, T_, dtype=torch.bool)
    for b in range(B):
        for i in range(T_):
            for j in range(i + 1):
                mask[b, i, j] = bool(doc[b, j] == doc[b, i] and (seg[b, j] == 0 or seg[b, j] == seg[b, i]))
    return mask


def _explicit_attention(q, k, v, mask, scale):
    """Masked softmax attention in float64 with kv head h // n_rep for query head h."""
    B, H, T_, D = q.shape
    n_rep = H // k.shape[1]
    out = torch.empty(B, H, T_, D, dtype=torch.float64)
    for h in range(H):
        kh, vh = k[:, h // n_rep].double(), v[:, h // n_rep].double()  # [B, T, D]
        scores = q[:, h].double() @ kh.transpose(1, 2) * scale  # [B, T, T]
        scores = scores.masked_fill(~mask, float("-inf"))
        out[:, h] = torch.softmax(scores, dim=-1) @ vh
    return out


def test_layout_mask_matches_prefix_mask_and_has_skippable_blocks():
    doc, seg = _layout()
    mask = _explicit_mask(doc, seg)
    assert torch.equal(mask, prefix_mask(doc, seg))
    assert not mask[1, 18:, :18].any()  # question B never sees question A: key block 0..15 is skipped
    assert mask[0, 30:, 30:].any() and not mask[0, 30:, :30].any()  # padding sees only padding


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefix_attention_kernel_gqa_matches_explicit_masked_softmax(dtype, head_dim):
    torch.manual_seed(0)
    B, H, Hkv = 2, 4, 2
    q = torch.randn(B, H, T, head_dim, dtype=dtype)
    k = torch.randn(B, Hkv, T, head_dim, dtype=dtype)
    v = torch.randn(B, Hkv, T, head_dim, dtype=dtype)
    doc, seg = _layout()
    scale = 1.0 / math.sqrt(head_dim)
    out = prefix_attention_triton(q, k, v, doc, seg, scale)  # blocks of 16: T = 37 -> 3 query blocks
    assert out.shape == q.shape and out.dtype == dtype
    atol, rtol = TOL[dtype]
    expected = _explicit_attention(q, k, v, _explicit_mask(doc, seg), scale)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(out, prefix_attention_reference(q, k, v, doc, seg, scale), atol=atol, rtol=rtol)


@pytest.mark.parametrize("Hkv", [1, 3])
def test_prefix_attention_kernel_mqa_mha_strided_views(Hkv):
    torch.manual_seed(1)
    B, H, D = 2, 3, 64
    # the model's layout: projections viewed [B, T, H, D] and transposed to [B, H, T, D] (not contiguous)
    q = torch.randn(B, T, H, D).transpose(1, 2)
    k = torch.randn(B, T, Hkv, D).transpose(1, 2)
    v = torch.randn(B, T, Hkv, D).transpose(1, 2)
    doc, seg = _layout()
    out = prefix_attention_triton(q, k, v, doc, seg, 0.125, block_m=32, block_n=16)
    assert out.transpose(1, 2).is_contiguous()  # written as [B, T, H, D]: back to tokens x heads with no copy
    expected = _explicit_attention(q, k, v, _explicit_mask(doc, seg), 0.125)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


def test_doc_starts_is_the_first_position_of_each_doc():
    doc, _ = _layout()
    starts = doc_starts(doc)
    assert starts.dtype == torch.int32  # the kernel's key loop then counts in int32 (int64: ~12% slower on an H100)
    assert starts[0].tolist() == [0] * 30 + [30] * 7  # padding (doc -1) starts where it starts
    assert starts[1].tolist() == [0] * 18 + [18] * 19  # question B's queries need no key before 18
    odd = torch.tensor([[5, 5, 900, 900, 5, -1, 7]])  # a doc in two runs; ids beyond T are clamped
    assert doc_starts(odd).tolist() == [[0, 0, 2, 2, 0, 5, 2]]  # 900 and 7 share slot T: min(2, 6) = 2


def test_prefix_attention_kernel_starts_at_the_block_questions_and_stays_exact():
    # rows of 96 with questions of 24 tokens: with blocks of 16, a late query block starts its key loop
    # at its question's first block; a doc split in two runs and out-of-range ids must stay exact too
    torch.manual_seed(4)
    B, H, Tn, D = 3, 2, 96, 64
    doc = torch.arange(Tn).div(24, rounding_mode="floor").expand(B, Tn).clone()  # 4 questions a row
    seg = (torch.arange(Tn) % 24).div(8, rounding_mode="floor").expand(B, Tn).clone()  # context 8, 2 endings
    doc[1, 48:72] = 0  # row 1: doc 0 again after docs 1 and 2
    doc[2] = doc[2] * 1000  # row 2: ids far beyond T (clamped into one slot: coarser skipping)
    q, k, v = (torch.randn(B, H, Tn, D) for _ in range(3))
    out = prefix_attention_triton(q, k, v, doc, seg, 0.125, block_m=16, block_n=16)
    expected = _explicit_attention(q, k, v, _explicit_mask(doc, seg), 0.125)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", list(TOL))
def test_prefix_attention_cpu_path_matches_explicit_masked_softmax(dtype):
    """The op's CPU path (SDPA on the ids' mask, GQA without copies) against the same explicit rule."""
    torch.manual_seed(2)
    q = torch.randn(2, 6, T, 64, dtype=dtype)
    k, v = torch.randn(2, 2, T, 64, dtype=dtype), torch.randn(2, 2, T, 64, dtype=dtype)
    doc, seg = _layout()
    out = prefix_attention_sdpa(q, k, v, doc, seg, 0.125)
    assert out.shape == q.shape and out.dtype == dtype
    atol, rtol = TOL[dtype]
    expected = _explicit_attention(q, k, v, _explicit_mask(doc, seg), 0.125)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(torch.ops.graphopt.prefix_attention(q, k, v, doc, seg, 0.125), out, atol=0, rtol=0)
