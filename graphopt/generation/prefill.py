"""Prefill: prompt tokens through the generation graph, their K/V written where the decode steps read them.

Two forms, both reading the K/V of the `start` positions before the tokens (a shared prefix, or
nothing):
- `prefill_rows`: several prompts at once, right-padded to the longest (B rows of T tokens; padding
  queries see only themselves, no real token sees padding), the greedy next token at each row's
  last real token. Prompts admitted together under the same shared prefix read it as one expanded
  view of the path cache.
- `fill_chunked`: one long sequence in chunks of at most `chunk` tokens, each chunk reading the K/V of
  everything before it (a shared prefix node computed into the path cache, a prompt longer than a chunk).

A graph reads at least MIN_KEYS cache positions (`keys_at_least`): the capture's example sizes leave
export's input guard asking P + T >= 4 of the mask's key dim, so fewer real positions are padded with
hidden ones (zeros, masked), slot j still holding position j.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

MIN_KEYS = 4


def keys_at_least(cache: Tensor | None, hidden: Tensor, rows: int) -> Tensor:
    """cache [2, L, rows, Hkv, P, D] (None: P = 0) -> the same with positions P .. MIN_KEYS - 1 added from
    `hidden` ([2, L, 1, Hkv, MIN_KEYS, D] zeros) when P < MIN_KEYS (a small copy); else cache itself."""
    P = 0 if cache is None else cache.shape[4]
    if P >= MIN_KEYS:
        return cache
    pad = hidden[..., P:, :].expand(-1, -1, rows, -1, -1, -1)
    return pad if cache is None else torch.cat([cache, pad], 4)


def prefill_rows(run, tails: Sequence[Sequence[int]], start: int, prefix: Tensor, device) -> tuple:
    """tails: B token lists (>= 1 token each) at positions start ..; prefix [2, L, B, Hkv, P >= MIN_KEYS, D]:
    positions < start real, the rest hidden -> run's outputs: (next id of each row [B], K/V of the rows'
    tokens [2, L, B, Hkv, T, D] (padding included: keep each row's first len(tail)), [logits [B, V]])."""
    B, T = len(tails), max(len(t) for t in tails)
    lens = torch.tensor([len(t) for t in tails])
    ids = torch.zeros(B, T, dtype=torch.long)
    for b, t in enumerate(tails):
        ids[b, :len(t)] = torch.tensor(list(t))
    real = torch.arange(T)[None] < lens[:, None]  # [B, T]
    own = torch.ones(T, T, dtype=torch.bool).tril()[None] & real[:, None, :]  # causal, real keys only
    own |= torch.eye(T, dtype=torch.bool)[None]  # a padding query sees itself (no empty softmax row)
    seen = (torch.arange(prefix.shape[4]) < start)[None, None] & real[:, :, None]  # [B, T, P]
    mask = torch.cat([seen, own], -1)
    positions = (start + torch.arange(T)).expand(B, T)
    score_idx = torch.arange(B) * T + lens - 1
    return run(ids.to(device), positions.to(device), mask.to(device), score_idx.to(device), prefix)


def fill_chunked(run, tokens: Sequence[int], start: int, read: Callable[[int], Tensor],
                 write: Callable[[int, Tensor], None], chunk: int, hidden: Tensor, device) -> tuple:
    """tokens at positions start .. in chunks of `chunk`; read(lo) = the cache of positions [0, lo) (lo > 0),
    write(lo, kv) stores a chunk's K/V. Returns the last chunk's outputs (its next id after the last token)."""
    out = None
    for lo in range(start, start + len(tokens), chunk):
        hi = min(lo + chunk, start + len(tokens))
        prefix = keys_at_least(read(lo) if lo else None, hidden, 1)
        out = prefill_rows(run, [tokens[lo - start:hi - start]], lo, prefix, device)
        write(lo, out[1])
    return out
