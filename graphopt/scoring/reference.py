"""The plain batch builders (one pair per row; length-sorted right-padded rows) and the lm-eval-style
ground truth that every other strategy and every optimised graph is checked against.

A request with context c (len C) and continuation x (len X) occupies one row: input (c + x)[:-1]
(L = C + X - 1 tokens), positions 0..L-1, causal attention; the logits at positions C-1 .. C+X-2
predict x.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from graphopt.scoring.batch import Request, ScoreBatch

PAD_ID = 0


def _row_tokens(r: Request) -> list[int]:
    assert len(r.context_ids) > 0 and len(r.continuation_ids) > 0, "a request needs context and continuation tokens"
    return list(r.context_ids + r.continuation_ids)[:-1]


def pack_rows(requests: Sequence[Request], which: Sequence[int]) -> ScoreBatch:
    """One ScoreBatch with requests[i] for i in `which`, one per row, right-padded with PAD_ID.

    Real query positions attend causally (never to the padding after them); a padding query attends
    only to itself, so no softmax row is empty. Scored indices point at real tokens only.
    """
    rows = [_row_tokens(requests[i]) for i in which]
    B, T = len(rows), max(len(t) for t in rows)
    input_ids = torch.full((B, T), PAD_ID, dtype=torch.long)  # [B, T]
    lengths = torch.tensor([len(t) for t in rows])  # [B]
    for b, toks in enumerate(rows):
        input_ids[b, :len(toks)] = torch.tensor(toks, dtype=torch.long)
    positions = torch.arange(T).expand(B, T).contiguous()  # [B, T]
    i = torch.arange(T).view(1, T, 1)  # query
    j = torch.arange(T).view(1, 1, T)  # key
    real_q = i < lengths.view(B, 1, 1)  # [B, T, 1]
    mask = torch.where(real_q, j <= i, j == i)  # [B, T, T]

    score_idx, targets, owners = [], [], []
    for b, r in enumerate(which):
        C, X = len(requests[r].context_ids), len(requests[r].continuation_ids)
        score_idx.append(b * T + torch.arange(C - 1, C + X - 1))
        targets.append(torch.tensor(requests[r].continuation_ids, dtype=torch.long))
        owners.append(torch.full((X,), r, dtype=torch.long))
    return ScoreBatch(input_ids, positions, mask, torch.cat(score_idx), torch.cat(targets), torch.cat(owners))


def per_pair_batches(requests: Sequence[Request]) -> list[ScoreBatch]:
    """One request per batch (B = 1, no padding), in request order: lm-eval with batch_size 1."""
    return [pack_rows(requests, [i]) for i in range(len(requests))]


def padded_batches(requests: Sequence[Request], batch_size: int = 8) -> list[ScoreBatch]:
    """Requests sorted by length (longest first, as lm-eval), `batch_size` per batch, right-padded.
    `owners` maps every score back to its request, so the original order is restored by sum_by_owner."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(requests)), key=lambda i: (-len(_row_tokens(requests[i])), i))
    return [pack_rows(requests, order[s:s + batch_size]) for s in range(0, len(order), batch_size)]


@torch.inference_mode()
def reference_loglik(model: nn.Module, requests: Sequence[Request]) -> Tensor:
    """Ground truth, lm-eval's HFLM with batch size 1: each pair alone through the full model,
    log_softmax over the whole vocabulary at every position (upcast to float32), the continuation
    slice [inplen - contlen : inplen] gathered at the continuation tokens and summed.
    Returns float64 [len(requests)]."""
    device = next(model.parameters()).device
    out = torch.empty(len(requests), dtype=torch.float64)
    for n, r in enumerate(requests):
        inp = torch.tensor([_row_tokens(r)], dtype=torch.long, device=device)  # [1, L]
        logprobs = torch.log_softmax(model(inp).float(), dim=-1)[0]  # [L, V]
        inplen, contlen = inp.shape[1], len(r.continuation_ids)
        cont = torch.tensor(r.continuation_ids, dtype=torch.long, device=device)  # [X]
        picked = logprobs[inplen - contlen:inplen].gather(-1, cont.unsqueeze(-1)).squeeze(-1)  # [X]
        out[n] = picked.double().sum().item()
    return out
