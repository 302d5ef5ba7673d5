"""Static shapes for torch.compile: every batch is padded to a bucket length T, a fixed number of
rows B and a bucketed number of scored entries N, so a compiled ScoreModule sees few shapes.

Shape bound: for one call, T is one of `buckets` and N one of ceil(f * B * T) for f in
`n_fractions`, so len(set(batch_shapes(batches))) <= len(buckets) * len(n_fractions)
(20 with the defaults; B is always batch_size). Pad rows are all padding; pad entries have
score_idx 0, target 0, owner -1 (dropped by sum_by_owner).

A row longer than the largest bucket is a ValueError naming the question and its length (add a
larger bucket); silently growing an extra shape would defeat the point.
"""
from __future__ import annotations

import math

from graphopt.scoring.batch import Request, ScoreBatch
from graphopt.scoring.pack_layout import (PackedScoreBatch, Segment, assemble, pair_segments, row_length,
                                          shared_prefix_segments)
from graphopt.scoring.row_packing import pack_rows

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)
DEFAULT_N_FRACTIONS = (0.25, 0.5, 1.0, 2.0)
LAYOUTS = ("shared_prefix", "pair", "packed")


def bucket_for(length: int, buckets: tuple[int, ...], label: str = "row") -> int:
    """The smallest bucket >= length."""
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"{label} needs a row of {length} tokens, longer than the largest bucket "
                     f"{max(buckets)}; add a bucket >= {length} (buckets={tuple(buckets)})")


def n_bucket_for(n: int, B: int, T: int, n_fractions: tuple[float, ...], label: str = "batch") -> int:
    """The smallest ceil(f * B * T) >= n."""
    for f in sorted(n_fractions):
        cap = math.ceil(f * B * T)
        if n <= cap:
            return cap
    raise ValueError(f"{label} has {n} scored tokens, more than {max(n_fractions)} * B * T = "
                     f"{math.ceil(max(n_fractions) * B * T)} (B={B}, T={T}); add a larger n_fraction")


def bucketed_batches(requests: list[Request], buckets: tuple[int, ...] = DEFAULT_BUCKETS, batch_size: int = 8,
                     layout: str = "shared_prefix",
                     n_fractions: tuple[float, ...] = DEFAULT_N_FRACTIONS) -> list[PackedScoreBatch]:
    """Requests -> batches of shape (batch_size, T in buckets, N in the n_fractions ladder).

    layout: "shared_prefix" (one question per row), "pair" (one request per row), or "packed"
    (questions packed first-fit decreasing into rows as long as the bucket of the longest question).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if batch_size < 1 or not buckets or min(buckets) < 1 or not n_fractions or min(n_fractions) <= 0:
        raise ValueError(f"need batch_size >= 1, positive buckets and n_fractions; got batch_size={batch_size}, "
                         f"buckets={tuple(buckets)}, n_fractions={tuple(n_fractions)}")
    segments = pair_segments(requests) if layout == "pair" else shared_prefix_segments(requests)
    for s in segments:  # clear error before any packing
        bucket_for(s.length, buckets, s.label)
    if layout == "packed" and segments:
        rows = pack_rows(segments, bucket_for(max(s.length for s in segments), buckets))
    else:
        rows = [[s] for s in segments]
    by_bucket: dict[int, list[list[Segment]]] = {}
    for row in sorted(rows, key=row_length, reverse=True):
        by_bucket.setdefault(bucket_for(row_length(row), buckets), []).append(row)
    batches = []
    for T in sorted(by_bucket):
        group = by_bucket[T]
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            n = sum(s.n_scored for row in chunk for s in row)
            label = "batch of " + ", ".join(s.label for row in chunk for s in row)
            batches.append(assemble(chunk, T=T, B=batch_size, N=n_bucket_for(n, batch_size, T, n_fractions, label)))
    return batches


def batch_shapes(batches: list[ScoreBatch]) -> set[tuple[int, int, int]]:
    """The distinct (B, T, N) shapes, i.e. the number of graphs a static-shape compile builds."""
    return {(b.input_ids.shape[0], b.input_ids.shape[1], b.score_idx.shape[0]) for b in batches}
