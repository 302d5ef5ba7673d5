"""graphopt::logprob — log_softmax(logits)[i, target[i]] without materialising the log-softmax."""
from __future__ import annotations

import torch
from torch import Tensor


def logprob_reference(logits: Tensor, target: Tensor) -> Tensor:
    """logits [N, V], target [N] int64 -> [N] float32 (accumulated in float32)."""
    lf = logits.float()
    return lf.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lf, dim=-1)


@torch.library.custom_op("graphopt::logprob", mutates_args=())
def logprob(logits: Tensor, target: Tensor) -> Tensor:
    return logprob_reference(logits, target)


@logprob.register_fake
def _(logits, target):
    return logits.new_empty(logits.shape[:-1], dtype=torch.float32)
