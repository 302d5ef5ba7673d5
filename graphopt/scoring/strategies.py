"""Batching strategies by name: requests -> list[ScoreBatch]. Every builder takes the request list
first and its options as keyword arguments; new builders are added to STRATEGIES."""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Sequence

from graphopt.scoring.batch import Request, ScoreBatch
from graphopt.scoring.buckets import bucketed_batches
from graphopt.scoring.reference import padded_batches, per_pair_batches
from graphopt.scoring.row_packing import packed_batches
from graphopt.scoring.shared_prefix import shared_prefix_batches

STRATEGIES: dict[str, Callable[..., list[ScoreBatch]]] = {
    "per_pair": per_pair_batches,  # one (context, ending) pair per forward: lm-eval batch size 1
    "padded": padded_batches,  # length-sorted, right-padded rows of pairs
    "shared_prefix": shared_prefix_batches,  # one question per row: context once, its endings after it
    "packed": packed_batches,  # questions packed first-fit-decreasing into rows
    "bucketed": bucketed_batches,  # static (B, T, N) shapes for torch.compile
}


def strategy_options(strategy: str) -> list[str]:
    """The keyword options a strategy accepts (its builder's parameters after `requests`)."""
    params = list(inspect.signature(_builder(strategy)).parameters.values())[1:]
    assert not any(p.kind == p.VAR_KEYWORD for p in params), f"builder of {strategy!r} must name its options"
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _builder(strategy: str) -> Callable[..., list[ScoreBatch]]:
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(strategy, STRATEGIES, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"unknown scoring strategy {strategy!r}{hint} (strategies: {', '.join(STRATEGIES)})")
    return STRATEGIES[strategy]


def build_batches(requests: Sequence[Request], strategy: str = "per_pair", **options) -> list[ScoreBatch]:
    """Batches for `requests` built by the named strategy with its options, e.g.
    build_batches(reqs, "padded", batch_size=16)."""
    fn = _builder(strategy)
    allowed = strategy_options(strategy)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"scoring strategy {strategy!r} has no option {', '.join(map(repr, unknown))} "
                         f"(options: {', '.join(allowed) or 'none'})")
    if not requests:
        return []
    return fn(requests, **options)
