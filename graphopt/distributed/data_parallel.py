"""Data-parallel scoring: replicas split the questions balanced by token count, score their share,
and rank 0 gathers the per-request log-likelihoods back into the original order.

A question's requests (its endings) stay on one replica, so shared-prefix / packed batching still
sees whole questions. Balance: questions by decreasing token count, each to the replica with the
fewest tokens so far (longest-processing-time first); ties go to the lower replica, so every rank
computes the same split without talking.
"""
from __future__ import annotations

import hashlib
import heapq

import numpy as np
import torch
import torch.distributed as dist


def request_tokens(r) -> int:
    """Tokens a request puts through the model (context + continuation)."""
    return len(r.context_ids) + len(r.continuation_ids)


def split_by_tokens(requests, n_replicas: int) -> list[list[int]]:
    """[replica] -> indices into `requests` (ascending), whole questions, token counts balanced."""
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1, got {n_replicas}")
    by_question: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
        by_question.setdefault(r.question, []).append(i)
    if len(by_question) < n_replicas:
        raise ValueError(f"data_parallel {n_replicas} is more than the {len(by_question)} questions to score: "
                         f"a replica would have nothing to do; lower data_parallel or score more questions")
    cost = {q: sum(request_tokens(requests[i]) for i in idx) for q, idx in by_question.items()}
    heap = [(0, k) for k in range(n_replicas)]  # (tokens so far, replica)
    share: list[list[int]] = [[] for _ in range(n_replicas)]
    for q in sorted(cost, key=lambda q: (-cost[q], q)):
        tokens, k = heapq.heappop(heap)
        share[k] += by_question[q]
        heapq.heappush(heap, (tokens + cost[q], k))
    return [sorted(s) for s in share]


def share_tokens(requests, share: list[list[int]]) -> list[int]:
    return [sum(request_tokens(requests[i]) for i in s) for s in share]


def gather_loglik(local: np.ndarray | None, indices: list[int] | None, n_requests: int) -> np.ndarray | None:
    """Every rank calls it; ranks that hold a replica's scores pass (local [len(indices)], indices),
    the others (None, None). Rank 0 gets the [n_requests] log-likelihoods in request order, the
    others None. Raises if some request was scored by no replica or by two."""
    part = None if local is None else (np.asarray(indices, dtype=np.int64), np.asarray(local))
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    return assemble(parts, n_requests)[0]


def check_same_requests(requests) -> None:
    """Every rank must hold the same requests before they are split (each builds them itself): one
    all_gather of a digest; raises naming the ranks that differ."""
    digest = hashlib.sha256()
    for r in requests:
        digest.update(np.asarray(r.context_ids, dtype=np.int64).tobytes() + b"|")
        digest.update(np.asarray(r.continuation_ids, dtype=np.int64).tobytes() + b";")
    mine = (len(requests), digest.hexdigest())
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    differ = [r for r, d in enumerate(everyone) if d != everyone[0]]
    if differ:
        raise RuntimeError(f"ranks {differ} were given other requests than rank 0 ({everyone[0][0]} requests): "
                           f"every rank must run the same command on the same data")


def gather_everywhere(mine: list[int], loglik: torch.Tensor, greedy: torch.Tensor | None, n_requests: int,
                      sends: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every rank gets (log-likelihood float64 [n_requests], is_greedy bool [n_requests] or None) in request
    order from the replicas' shares; one rank of each replica `sends` (its model rank 0). Raises if a
    request was scored by no replica or by two."""
    part = None
    if sends:
        part = (np.asarray(mine, dtype=np.int64), loglik.double().cpu().numpy(),
                *(() if greedy is None else (greedy.cpu().numpy().astype(bool),)))
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    values = assemble(parts, n_requests)
    return torch.from_numpy(values[0]), (torch.from_numpy(values[1]) if len(values) > 1 else None)


def assemble(parts, n_requests: int) -> list[np.ndarray]:
    """parts: (indices, values, ...) per rank, None for a rank that sent nothing -> each values array in
    request order, [n_requests]. Raises if some request was scored by no replica or by two."""
    count = np.zeros(n_requests, dtype=np.int64)
    outs: list[np.ndarray] = []
    for part in parts:
        if part is None:
            continue
        idx, *values = part
        if not outs:
            outs = [np.zeros(n_requests, dtype=np.asarray(v).dtype) for v in values]
        for out, v in zip(outs, values):
            out[idx] = v
        count[idx] += 1
    if (count != 1).any():
        bad = np.nonzero(count != 1)[0][:5].tolist()
        raise RuntimeError(f"data-parallel gather: requests {bad} were scored {count[bad].tolist()} times "
                           f"(each must be scored by exactly one replica)")
    return outs
