"""graphopt::cache_attention — attention of new tokens over a KV cache and their own keys, without
concatenating the two: a decode step reads its static cache in place (no [B, Hkv, P + T, D] copy per
layer per step, no repeat_interleave of the cache for GQA).

    q [B, H, T, D]; cache_k, cache_v [B, Hkv, P, D] (P cached positions; may be a strided view of a
    larger static cache); k, v [B, Hkv, T, D] (the new tokens'); mask bool [B | 1, 1, T, P + T]
    (keys: the P cache slots, then the T new tokens; True = may attend) -> [B, H, T, D]

Equal to softmax(q [cache_k | k]^T * scale + mask) [cache_v | v] (query head h reading kv head
h // (H / Hkv), as repeat_interleave does): the scores of the two key blocks are computed apart and
only they ([.., T, P + T], small) are joined for one softmax in float32; the two value blocks are
weighted apart and summed. The query heads of one kv head are folded into the rows of one matmul
([B, Hkv, n_rep * T, D]), so the cache is read once per kv head, as a view.

Plain torch on every device (cuBLAS / oneDNN batched matmuls; on GPU a split-K decode kernel would be
the next step). A row must see at least one key (padding queries see themselves), as for SDPA."""
from __future__ import annotations

import torch
from torch import Tensor


def _one_token(q: Tensor, cache_k: Tensor, cache_v: Tensor, k: Tensor, v: Tensor, mask: Tensor,
               scale: float) -> Tensor:
    """T = 1 (a decode step): the same sums with fewer, in-place ops (per-op cost dominates at this size)."""
    B, H, _, D = q.shape
    Hkv, P = k.shape[1], cache_k.shape[2]
    dt = q.dtype
    qg = q.reshape(B, Hkv, H // Hkv, D)  # [B, Hkv, r, D]: a view
    scores = torch.cat([torch.matmul(qg, cache_k.to(dt).transpose(2, 3)), torch.matmul(qg, k.to(dt).transpose(2, 3))],
                       dim=-1).float()  # [B, Hkv, r, P + 1]
    scores.mul_(scale).masked_fill_(~mask.reshape(mask.shape[0], 1, 1, P + 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(dt)
    out = torch.matmul(probs[..., :P], cache_v.to(dt)).add_(probs[..., P:] * v.to(dt))  # [B, Hkv, r, D]
    return out.reshape(B, H, 1, D)


def cache_attention_reference(q: Tensor, cache_k: Tensor, cache_v: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                              scale: float) -> Tensor:
    if q.shape[2] == 1:
        return _one_token(q, cache_k, cache_v, k, v, mask, scale)
    B, H, T, D = q.shape
    Hkv, P = k.shape[1], cache_k.shape[2]
    r = H // Hkv  # query heads per kv head
    dt = q.dtype
    qg = q.reshape(B, Hkv, r * T, D)  # [B, Hkv, r*T, D]: row i*T + t is head kv*r + i, token t (a view when T = 1)
    s_cache = torch.matmul(qg, cache_k.to(dt).transpose(2, 3))  # [B, Hkv, r*T, P]
    s_new = torch.matmul(qg, k.to(dt).transpose(2, 3))  # [B, Hkv, r*T, T]
    scores = torch.cat([s_cache, s_new], dim=-1).float() * scale  # [B, Hkv, r*T, P + T] float32
    m = mask.expand(B, 1, T, P + T).unsqueeze(2).expand(B, 1, r, T, P + T).reshape(B, 1, r * T, P + T)
    probs = torch.softmax(scores.masked_fill(~m, float("-inf")), dim=-1).to(dt)
    out = torch.matmul(probs[..., :P], cache_v.to(dt)) + torch.matmul(probs[..., P:], v.to(dt))  # [B, Hkv, r*T, D]
    return out.reshape(B, H, T, D)


@torch.library.custom_op("graphopt::cache_attention", mutates_args=())
def cache_attention(q: Tensor, cache_k: Tensor, cache_v: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                    scale: float) -> Tensor:
    return cache_attention_reference(q, cache_k, cache_v, k, v, mask, scale)


@cache_attention.register_fake
def _(q, cache_k, cache_v, k, v, mask, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
