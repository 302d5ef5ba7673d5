"""Row packing: several questions (each in shared-prefix layout) share one row, block-diagonal
(doc id = question slot in the row), positions restarting per question. Rows are filled by
first-fit decreasing, so short questions fill the room long ones leave instead of padding.

Eager attention still costs T^2 per row whatever the mask, so packing trades padding (all the
linear layers) for some masked-out attention; on LLaMA shapes the linear layers dominate.
"""
from __future__ import annotations

from graphopt.scoring.batch import Request
from graphopt.scoring.pack_layout import (PackedScoreBatch, Segment, assemble, group_rows, row_length,
                                          shared_prefix_segments)


def pack_rows(segments: list[Segment], row_len: int) -> list[list[Segment]]:
    """First-fit decreasing: each segment (longest first) goes into the first row with room for
    it; a segment longer than row_len gets a row of its own (that row is then longer than row_len)."""
    rows: list[list[Segment]] = []
    used: list[int] = []
    for s in sorted(segments, key=lambda s: s.length, reverse=True):
        for r, u in enumerate(used):
            if u + s.length <= row_len:
                rows[r].append(s)
                used[r] += s.length
                break
        else:
            rows.append([s])
            used.append(s.length)
    return rows


def packed_batches(requests: list[Request], row_len: int | None = None,
                   max_tokens: int = 4096) -> list[PackedScoreBatch]:
    """Questions packed into rows of at most row_len tokens (default: the longest question, so no
    row grows past what plain shared-prefix batching would pad to), rows stacked into batches with
    B * T <= max_tokens. Each batch carries doc_ids/seg_ids."""
    segments = shared_prefix_segments(requests)
    if not segments:
        return []
    row_len = max(s.length for s in segments) if row_len is None else row_len
    if row_len < 1:
        raise ValueError(f"row_len must be >= 1, got {row_len}")
    rows = pack_rows(segments, row_len)
    assert sum(row_length(r) for r in rows) == sum(s.length for s in segments)
    return [assemble(batch) for batch in group_rows(rows, max_tokens)]
