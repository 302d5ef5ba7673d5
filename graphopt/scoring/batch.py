"""The unit of scoring work: a batch of token rows and the positions in them whose next-token
log-probabilities are wanted. Every scoring strategy (per-pair, padded, shared-prefix packed) builds
`ScoreBatch`es; every executor (eager, captured graph, compiled) runs `ScoreModule` on them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Request:
    """One (context, ending) pair to score, as lm-evaluation-harness's loglikelihood request."""
    question: int  # index of the row in the dataset
    choice: int  # index of the ending
    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    continuation_chars: int  # len(ending) without the leading space, as lm-eval's acc_norm divides by


@dataclass
class ScoreBatch:
    input_ids: Tensor  # [B, T] int64
    positions: Tensor  # [B, T] int64 (RoPE positions; restart after a shared context)
    mask: Tensor  # [B, T, T] bool, True = may attend; padding queries attend to themselves only (no NaN rows)
    score_idx: Tensor  # [N] int64, flat indices into B*T of the positions whose next token is scored
    targets: Tensor  # [N] int64, the token that follows each scored position
    owners: Tensor  # [N] int64, the request (index into the request list) each score belongs to; -1 = padding

    def model_inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.input_ids, self.positions, self.mask, self.score_idx, self.targets

    def to(self, device) -> "ScoreBatch":
        return ScoreBatch(*(t.to(device) for t in (self.input_ids, self.positions, self.mask, self.score_idx,
                                                     self.targets, self.owners)))

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()


class ScoreModule(nn.Module):
    """What gets captured: model + LM head + log-softmax + gather at the scored positions.

    forward(input_ids [B,T], positions [B,T], mask [B,T,T], score_idx [N], targets [N],
            doc_ids [B,T] = None, seg_ids [B,T] = None, cache = None) -> [N] float32
    With greedy=True it returns ([N] float32, [N] bool): the log-probs, and whether each target is the
    argmax of its logits (lm-eval's is_greedy, per token); fused_logprob makes the two one head node.
    doc_ids / seg_ids describe the packed layouts' rows (see graphopt.scoring.pack_layout); the module
    itself attends by `mask`, which those layouts build from them. They are inputs so that a captured
    graph carries them: the prefix_attention pass drives graphopt::prefix_attention from them.

    cache [2, n_layers, B, Hkv, P, head_dim]: the K/V of P tokens before every row (a shared prefix,
    see graphopt.model.llama.Transformer.forward); mask is then [B, T, P + T]. With return_cache=True
    the K/V of the row's own tokens [2, n_layers, B, Hkv, T, head_dim] come last in the result
    (log-probs[, greedy], cache): the form a decode step reads and extends.
    """

    def __init__(self, model: nn.Module, greedy: bool = False, return_cache: bool = False):
        super().__init__()
        self.model = model
        self.greedy = greedy
        self.return_cache = return_cache

    def forward(self, input_ids: Tensor, positions: Tensor, mask: Tensor, score_idx: Tensor, targets: Tensor,
                doc_ids: Tensor | None = None, seg_ids: Tensor | None = None,
                cache: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        new_cache = None
        if cache is None:
            logits = self.model(input_ids, positions, mask)  # [B, T, V]
        else:
            logits, new_cache = self.model(input_ids, positions, mask, cache)
        flat = logits.reshape(-1, logits.shape[-1])[score_idx]  # [N, V]
        flat = flat.float()
        logprobs = torch.log_softmax(flat, dim=-1)  # [N, V], float32
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]
        out = (picked, flat.argmax(-1) == targets) if self.greedy else (picked,)  # [N], [N] bool
        if self.return_cache and new_cache is not None:
            out += (new_cache,)
        return out if len(out) > 1 else out[0]


def sum_by_owner(token_logprobs: Tensor, owners: Tensor, n_requests: int) -> Tensor:
    """Sum per-token log-probs into per-request log-likelihoods [n_requests] (float64); owners < 0
    mark padding entries (added to keep shapes static) and are dropped."""
    owners, values = owners.cpu(), token_logprobs.detach().double().cpu()
    keep = owners >= 0
    out = torch.zeros(n_requests, dtype=torch.float64)
    return out.index_add_(0, owners[keep], values[keep])


def all_by_owner(token_flags: Tensor, owners: Tensor, n_requests: int) -> Tensor:
    """Per request, whether every one of its tokens' flags is set: [n_requests] bool (owners < 0 dropped)."""
    owners, misses = owners.cpu(), (~token_flags.detach().cpu()).long()
    keep = owners >= 0
    return torch.zeros(n_requests, dtype=torch.long).index_add_(0, owners[keep], misses[keep]) == 0


def example_inputs(vocab_size: int, B: int, T: int):
    """A small scoring batch: causal rows, every position scored; one document per row (doc_ids,
    seg_ids all 0: the layout ids of a causal row), so layout-driven passes (prefix_attention) apply."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (B, T), generator=g)
    positions = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    score_idx = torch.arange(B * T)
    targets = torch.randint(0, vocab_size, (B * T,), generator=g)
    doc_ids = torch.zeros(B, T, dtype=torch.long)
    seg_ids = torch.zeros(B, T, dtype=torch.long)
    return ids, positions, mask, score_idx, targets, doc_ids, seg_ids
