"""graphopt::prefix_attention — attention for packed scoring rows: one context followed by its
endings. Query i sees key j iff j <= i, doc[j] == doc[i] and (seg[j] == 0 or seg[j] == seg[i]).
seg 0 is the shared context, 1..k the endings; doc tells questions packed in one row apart."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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


@torch.library.custom_op("graphopt::prefix_attention", mutates_args=())
def prefix_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor, seg_ids: Tensor, scale: float) -> Tensor:
    return prefix_attention_reference(q, k, v, doc_ids, seg_ids, scale)


@prefix_attention.register_fake
def _(q, k, v, doc_ids, seg_ids, scale):
    return torch.empty_like(q)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
