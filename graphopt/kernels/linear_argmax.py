"""graphopt::linear_argmax — the greedy next token from hidden states and the LM head weight: argmax of
hidden @ weight.T, without log-probs and without the [N, V] logits at once (chunked over the
vocabulary, as linear_logprob_greedy does). Ties: the first index among equal maxima (torch.argmax),
across chunks too (a later chunk must be strictly greater to win).

    hidden [N, D], weight [V, D] -> [N] int64"""
from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 8192  # vocabulary rows per matmul


def linear_argmax_reference(hidden: Tensor, weight: Tensor, chunk: int = CHUNK) -> Tensor:
    N, V = hidden.shape[0], weight.shape[0]
    if V <= chunk:
        return torch.matmul(hidden, weight.t()).float().argmax(-1)
    best = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    best_idx = torch.zeros((N,), dtype=torch.int64, device=hidden.device)
    for start in range(0, V, chunk):
        value, idx = torch.matmul(hidden, weight[start:start + chunk].t()).float().max(dim=-1)  # [N], [N]
        better = value > best  # strictly: an equal maximum in a later chunk keeps the earlier index
        best, best_idx = torch.where(better, value, best), torch.where(better, idx + start, best_idx)
    return best_idx


@torch.library.custom_op("graphopt::linear_argmax", mutates_args=())
def linear_argmax(hidden: Tensor, weight: Tensor) -> Tensor:
    return linear_argmax_reference(hidden, weight)


@linear_argmax.register_fake
def _(hidden, weight):
    return hidden.new_empty((hidden.shape[0],), dtype=torch.int64)
