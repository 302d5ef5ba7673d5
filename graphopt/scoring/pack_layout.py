"""The common core of the fast scoring layouts: requests -> segments -> rows -> one ScoreBatch.

A *segment* is the unit that keeps its own attention world inside a row:
- shared-prefix segment: one question's context once, then each ending's continuation tokens
  (all but the last, which is only ever a target). Ending k's tokens see the context and
  themselves, never the other endings; their positions restart at len(context).
- pair segment: one (context, ending) pair, (context + continuation)[:-1], plain causal.
A *row* holds one or more segments back to back (block-diagonal: doc id = segment slot in the row).

Scored entries: continuation token j of an ending is predicted by the last context token (j = 0,
shared by every ending of the question) or by the ending's own token j - 1.

The attention mask is exactly `prefix_mask(doc_ids, seg_ids)` (seg 0 = context, k = ending k,
doc -1 = padding) on real tokens; padding queries attend only themselves (no NaN rows).
`PackedScoreBatch` is a ScoreBatch that also carries doc_ids / seg_ids so the
`graphopt::prefix_attention` op can be driven from the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from graphopt.kernels.prefix_attention import prefix_mask
from graphopt.scoring.batch import Request, ScoreBatch


@dataclass
class PackedScoreBatch(ScoreBatch):
    doc_ids: Tensor = None  # [B, T] int64, segment slot within the row; -1 = padding
    seg_ids: Tensor = None  # [B, T] int64, 0 = context (or a whole pair), k = ending k

    def model_inputs(self) -> tuple[Tensor, ...]:
        return super().model_inputs() + (self.doc_ids, self.seg_ids)

    def to(self, device) -> "PackedScoreBatch":
        return PackedScoreBatch(*(t.to(device) for t in (self.input_ids, self.positions, self.mask, self.score_idx,
                                                           self.targets, self.owners, self.doc_ids, self.seg_ids)))


@dataclass
class Segment:
    label: str  # names the request(s) in error messages, e.g. "question 3"
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seg: list[int] = field(default_factory=list)
    score_local: list[int] = field(default_factory=list)  # index (within the segment) of the predicting token
    targets: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def n_scored(self) -> int:
        return len(self.targets)


def _check_context(r: Request) -> None:
    if len(r.context_ids) == 0:
        raise ValueError(f"question {r.question} choice {r.choice}: empty context; a continuation needs at least "
                         f"one context token to be predicted from (use the BOS/EOT token as context)")


def group_by_context(requests: list[Request]) -> list[list[int]]:
    """Request indices grouped by (question, context_ids), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        _check_context(r)
        groups.setdefault((r.question, tuple(r.context_ids)), []).append(i)
    return list(groups.values())


def shared_prefix_segments(requests: list[Request]) -> list[Segment]:
    """One segment per (question, context); groups whose endings are all empty score nothing and
    are left out (their log-likelihoods are 0)."""
    segments = []
    for idx in group_by_context(requests):
        ctx = list(requests[idx[0]].context_ids)
        C = len(ctx)
        s = Segment(label=f"question {requests[idx[0]].question}", tokens=list(ctx), positions=list(range(C)),
                    seg=[0] * C)
        for k, i in enumerate(idx, start=1):
            cont = list(requests[i].continuation_ids)
            start = s.length  # where this ending's tokens begin in the segment
            s.tokens += cont[:-1]
            s.positions += range(C, C + len(cont) - 1)
            s.seg += [k] * max(len(cont) - 1, 0)
            for j, tok in enumerate(cont):
                s.score_local.append(C - 1 if j == 0 else start + j - 1)
                s.targets.append(tok)
                s.owners.append(i)
        if s.n_scored:
            segments.append(s)
    return segments


def pair_segments(requests: list[Request]) -> list[Segment]:
    """One segment per request with a non-empty continuation: (context + continuation)[:-1], causal."""
    segments = []
    for i, r in enumerate(requests):
        _check_context(r)
        if not r.continuation_ids:
            continue
        ids = (list(r.context_ids) + list(r.continuation_ids))[:-1]
        C, X = len(r.context_ids), len(r.continuation_ids)
        segments.append(Segment(label=f"question {r.question} choice {r.choice}", tokens=ids,
                                positions=list(range(len(ids))), seg=[0] * len(ids),
                                score_local=list(range(C - 1, C + X - 1)), targets=list(r.continuation_ids),
                                owners=[i] * X))
    return segments


def row_length(row: list[Segment]) -> int:
    return sum(s.length for s in row)


def group_rows(rows: list[list[Segment]], max_tokens: int) -> list[list[list[Segment]]]:
    """Stack rows (longest first) into batches whose padded size B * T stays within max_tokens
    (a row longer than max_tokens gets a batch of its own)."""
    assert max_tokens > 0
    rows = sorted(rows, key=row_length, reverse=True)
    batches: list[list[list[Segment]]] = []
    for row in rows:
        if batches and (len(batches[-1]) + 1) * max(row_length(batches[-1][0]), 1) <= max_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def assemble(rows: list[list[Segment]], T: int | None = None, B: int | None = None,
             N: int | None = None) -> PackedScoreBatch:
    """Rows of segments -> one PackedScoreBatch, padded to T tokens per row, B rows and N scored
    entries when given (pad rows/tokens: id 0, position 0, doc -1; pad entries: score_idx 0,
    target 0, owner -1)."""
    T = max(max((row_length(r) for r in rows), default=0), 1) if T is None else T
    B = len(rows) if B is None else B
    assert len(rows) <= B, (len(rows), B)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    doc = torch.full((B, T), -1, dtype=torch.long)
    seg = torch.zeros(B, T, dtype=torch.long)
    score_idx, targets, owners = [], [], []
    for b, row in enumerate(rows):
        assert row_length(row) <= T, (row_length(row), T)
        offset = 0
        for d, s in enumerate(row):
            sl = slice(offset, offset + s.length)
            ids[b, sl] = torch.tensor(s.tokens, dtype=torch.long)
            pos[b, sl] = torch.tensor(s.positions, dtype=torch.long)
            doc[b, sl] = d
            seg[b, sl] = torch.tensor(s.seg, dtype=torch.long)
            score_idx += [b * T + offset + j for j in s.score_local]
            targets += s.targets
            owners += s.owners
            offset += s.length
    n_real = len(score_idx)
    N = n_real if N is None else N
    assert n_real <= N, (n_real, N)
    score_idx += [0] * (N - n_real)
    targets += [0] * (N - n_real)
    owners += [-1] * (N - n_real)
    pad = doc < 0  # [B, T]
    eye = torch.eye(T, dtype=torch.bool).unsqueeze(0)  # [1, T, T]
    mask = torch.where(pad.unsqueeze(-1), eye, prefix_mask(doc, seg))  # [B, T, T]
    return PackedScoreBatch(ids, pos, mask, torch.tensor(score_idx, dtype=torch.long),
                            torch.tensor(targets, dtype=torch.long), torch.tensor(owners, dtype=torch.long),
                            doc, seg)


def _real_tokens(b: ScoreBatch) -> int:
    doc = getattr(b, "doc_ids", None)
    if doc is not None:
        return int((doc >= 0).sum())
    # no layout ids: a padding token attends only itself and is attended by nobody else
    only_self = (b.mask.sum(-1) == 1) & (b.mask.sum(-2) == 1)  # [B, T]
    scored = torch.zeros(b.input_ids.numel(), dtype=torch.bool)
    scored[b.score_idx[b.owners >= 0]] = True
    return int((~only_self.reshape(-1) | scored).sum())


def layout_stats(batches: list[ScoreBatch]) -> dict:
    """Padding overhead of a list of batches: tokens_processed (B*T summed), tokens_real (non-pad),
    tokens_scored (entries with owner >= 0), padding_fraction = 1 - real / processed."""
    processed = sum(b.input_ids.numel() for b in batches)
    real = sum(_real_tokens(b) for b in batches)
    scored = sum(int((b.owners >= 0).sum()) for b in batches)
    return dict(tokens_processed=processed, tokens_real=real, tokens_scored=scored,
                padding_fraction=(1.0 - real / processed) if processed else 0.0)


def layout_ids(batch: ScoreBatch) -> tuple[Tensor, Tensor]:
    """(doc_ids, seg_ids) [B, T] of a batch built here, for graphopt::prefix_attention."""
    if getattr(batch, "doc_ids", None) is None or getattr(batch, "seg_ids", None) is None:
        raise ValueError("this ScoreBatch carries no doc_ids/seg_ids; build it with shared_prefix_batches, "
                         "packed_batches or bucketed_batches")
    return batch.doc_ids, batch.seg_ids
