"""`load_hellaswag`: the one entry to HellaSwag rows, from local files (graphopt.data.hellaswag's
readers) or, without a path, the embedded synthetic set (graphopt.data.synthetic)."""
from __future__ import annotations

from pathlib import Path

from graphopt.data.hellaswag import DEFAULT_SPLIT, HellaSwagRow, format_row, read_source, split_problem
from graphopt.data.synthetic import DEFAULT_N, synthetic_hellaswag


def load_hellaswag(path: str | Path | None = None, split: str = DEFAULT_SPLIT, limit: int | None = None,
                   *, allow_unlabelled: bool = False) -> list[HellaSwagRow]:
    """HellaSwag rows of `split` from `path`, formatted as lm-evaluation-harness does.

    path None -> the embedded synthetic set (graphopt.data.synthetic, 200 rows; no files, no network).
    limit -> the first `limit` rows. `split` picks the split in a directory; for one file or the synthetic
    set any split but the default is refused (split_problem). A split without answers (the test split: label "") raises
    ValueError unless allow_unlabelled=True, which gives label -1. A malformed row raises ValueError
    naming the file, the row index and the field.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    problem = split_problem(path, split)
    if problem:
        raise ValueError(problem)
    if path is None:
        return synthetic_hellaswag(n=DEFAULT_N if limit is None else limit)
    path = Path(path).expanduser()
    docs, where = read_source(path, split, limit)
    if limit is not None:
        docs = docs[:limit]
    return [format_row(doc, i, where, allow_unlabelled) for i, doc in enumerate(docs)]
