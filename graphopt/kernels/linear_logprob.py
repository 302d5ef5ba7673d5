"""graphopt::linear_logprob — log-prob of target ids from hidden states and the LM head weight,
without materialising [N, V] logits (chunked over the vocabulary with an online log-sum-exp)."""
from __future__ import annotations

import torch
from torch import Tensor


def linear_logprob_reference(hidden: Tensor, weight: Tensor, target: Tensor, chunk: int = 8192) -> Tensor:
    """hidden [N, D], weight [V, D], target [N] -> [N] float32."""
    N, V = hidden.shape[0], weight.shape[0]
    lse = torch.full((N,), float("-inf"), dtype=torch.float32, device=hidden.device)
    for start in range(0, V, chunk):
        logits = (hidden @ weight[start:start + chunk].t()).float()  # [N, chunk]
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
    target_logit = (hidden.float() * weight[target].float()).sum(-1)  # [N], float32
    return target_logit - lse


@torch.library.custom_op("graphopt::linear_logprob", mutates_args=())
def linear_logprob(hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    return linear_logprob_reference(hidden, weight, target)


@linear_logprob.register_fake
def _(hidden, weight, target):
    return hidden.new_empty(hidden.shape[:-1], dtype=torch.float32)
