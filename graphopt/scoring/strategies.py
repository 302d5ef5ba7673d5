"""Batching strategies by name: requests -> list[ScoreBatch]. Every builder takes the request list
first and its options as keyword arguments; new builders are added to STRATEGIES."""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Sequence

from graphopt.scoring.batch import Request, ScoreBatch
from graphopt.scoring.reference import padded_batches, per_pair_batches

STRATEGIES: dict[str, Callable[..., list[ScoreBatch]]] = {
    "per_pair": per_pair_batches,
    "padded": padded_batches,
}


def strategy_options(strategy: str) -> list[str]:
    """The keyword options a strategy accepts (its builder's parameters after `requests`)."""
    params = list(inspect.signature(_builder(strategy)).parameters.values())[1:]
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
