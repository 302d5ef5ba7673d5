"""Shared-prefix scoring: each question's context is run once, its endings follow in the same row.

Row of one question (context c of length C, endings x_1..x_k):
    tokens    c_0 .. c_{C-1} | x_1[0 .. X_1-2] | x_2[0 .. X_2-2] | ...
    positions 0 .. C-1       | C .. C+X_1-2    | C .. C+X_2-2    | ...   (restart after the context)
    seg       0 ...          | 1 ...           | 2 ...           | ...
An ending's last token is only a target, so it is not fed. Ending k sees the context and itself.
Saves (k - 1) * C tokens per question against scoring each pair alone.
"""
from __future__ import annotations

from torch import Tensor

from graphopt.scoring.batch import Request, ScoreBatch
from graphopt.scoring.pack_layout import PackedScoreBatch, assemble, group_rows, layout_ids, shared_prefix_segments


def shared_prefix_batches(requests: list[Request], max_tokens: int = 4096) -> list[PackedScoreBatch]:
    """One row per (question, context); rows sorted by length and stacked into batches with
    B * T <= max_tokens (padded to the batch's longest row). Each batch carries doc_ids/seg_ids."""
    rows = [[s] for s in shared_prefix_segments(requests)]
    return [assemble(batch) for batch in group_rows(rows, max_tokens)]


def shared_prefix_layout(batch: ScoreBatch) -> tuple[Tensor, Tensor]:
    """(doc_ids, seg_ids) [B, T] of a batch from this module (doc -1 = padding, seg 0 = context,
    k = ending k); `prefix_mask(doc_ids, seg_ids)` equals batch.mask on real tokens."""
    return layout_ids(batch)
