"""The scoring loop: a runnable over batches -> per-request log-likelihoods (and lm-eval's is_greedy),
with a progress bar. The Scorer calls it; so do tests and benchmarks that time one runnable."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphopt.scoring.batch import ScoreBatch, all_by_owner, sum_by_owner


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_requests(fn: Callable[..., Tensor], batches: Sequence[ScoreBatch], n_requests: int,
                   progress: bool = True, device="cpu", desc: str = "scoring") -> Tensor:
    """Log-likelihood of every request, float64 [n_requests].

    fn(input_ids, positions, mask, score_idx, targets) -> [N] token log-probs (a ScoreModule, its
    captured graph, or a compiled one); each batch is moved to `device` first. Per-token scores are
    summed per request by `owners` (entries with owner -1 are padding). Every request must be scored.
    """
    return score_requests_greedy(fn, batches, n_requests, progress, device, desc)[0]


def score_requests_greedy(fn: Callable[..., Tensor | tuple[Tensor, Tensor]], batches: Sequence[ScoreBatch],
                          n_requests: int, progress: bool = True, device="cpu",
                          desc: str = "scoring") -> tuple[Tensor, Tensor | None]:
    """(log-likelihood [n_requests] float64, is_greedy [n_requests] bool or None) as score_requests; fn
    may return ([N] log-probs, [N] bool: target is the argmax) as ScoreModule(greedy=True) does, and a
    request is greedy when all its tokens are (lm-eval's is_greedy). None when fn returns log-probs only."""
    total = torch.zeros(n_requests, dtype=torch.float64)
    greedy = None
    seen = torch.zeros(n_requests, dtype=torch.bool)
    with torch.inference_mode(), tqdm(total=n_requests, unit="req", desc=desc, disable=not progress,
                                      leave=False) as bar:
        for batch in batches:
            out = fn(*batch.to(device).model_inputs())  # [N] or ([N], [N] bool)
            token_logprobs = out[0] if isinstance(out, (tuple, list)) else out
            assert token_logprobs.shape == batch.targets.shape, \
                f"scoring fn returned {tuple(token_logprobs.shape)}, expected {tuple(batch.targets.shape)}"
            total += sum_by_owner(token_logprobs, batch.owners, n_requests)
            if isinstance(out, (tuple, list)):
                batch_greedy = all_by_owner(out[1], batch.owners, n_requests)
                greedy = batch_greedy if greedy is None else greedy & batch_greedy
            owners = batch.owners.cpu()  # the batch may already live on `device`; `seen` stays on the host
            owners = owners[owners >= 0].unique()
            bar.update(int((~seen[owners]).sum()))
            seen[owners] = True
    missing = (~seen).nonzero().flatten()
    if len(missing):
        raise AssertionError(f"{len(missing)} requests were never scored (first: {missing[:5].tolist()}); "
                             f"the batch builder dropped them")
    return total, greedy
