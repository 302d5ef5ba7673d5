"""Multiple-choice metrics from per-request log-likelihoods, as lm-evaluation-harness computes them:
acc = argmax of the summed log-likelihoods is the label; acc_norm = argmax of log-likelihood divided
by the ending's length in characters (len(ending), without the " " delimiter). Ties go to the first
ending, as np.argmax."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from graphopt.scoring.batch import Request


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))  # first of equal maxima


def per_row_loglik(n_rows: int, requests: Sequence[Request], loglik: Tensor | Sequence[float]) -> list[list[float]]:
    """loglik [n_requests] -> one list per row, indexed by ending."""
    assert len(requests) == len(loglik), f"{len(requests)} requests but {len(loglik)} log-likelihoods"
    values = [float(v) for v in loglik]
    table: list[dict[int, float]] = [{} for _ in range(n_rows)]
    for r, v in zip(requests, values):
        assert 0 <= r.question < n_rows, f"request for row {r.question}, but only {n_rows} rows"
        assert r.choice not in table[r.question], f"row {r.question} ending {r.choice} scored twice"
        table[r.question][r.choice] = v
    out = []
    for q, d in enumerate(table):
        assert sorted(d) == list(range(len(d))) and d, f"row {q}: endings scored {sorted(d)}"
        out.append([d[c] for c in range(len(d))])
    return out


def choice_metrics(rows: Sequence, requests: Sequence[Request], loglik: Tensor | Sequence[float]) -> dict:
    """acc, acc_norm (means over rows), the chosen ending per row for each, and the per-row table."""
    table = per_row_loglik(len(rows), requests, loglik)
    chars: list[dict[int, int]] = [{} for _ in rows]
    for r in requests:
        chars[r.question][r.choice] = r.continuation_chars
    choices, choices_norm = [], []
    for q, lls in enumerate(table):
        choices.append(_argmax(lls))
        lens = [chars[q][c] for c in range(len(lls))]
        assert all(n > 0 for n in lens), f"row {q}: an ending has length 0"
        choices_norm.append(_argmax([ll / n for ll, n in zip(lls, lens)]))
    labels = [row.label for row in rows]
    if any(label < 0 for label in labels):
        raise ValueError("rows without labels (label -1, e.g. the HellaSwag test split) cannot be scored for "
                         "accuracy; use the validation split")
    n = len(rows)
    acc = sum(c == y for c, y in zip(choices, labels)) / n if n else float("nan")
    acc_norm = sum(c == y for c, y in zip(choices_norm, labels)) / n if n else float("nan")
    return {"acc": acc, "acc_norm": acc_norm, "choices": choices, "choices_norm": choices_norm,
            "loglik": table, "n_items": n}


def same_choices(a: dict, b: dict) -> list[bool]:
    """Per row of two choice_metrics results: both its acc choice and its acc_norm choice agree."""
    assert len(a["choices"]) == len(b["choices"]), f"{len(a['choices'])} rows against {len(b['choices'])}"
    return [x == y and xn == yn for x, y, xn, yn in zip(a["choices"], b["choices"], a["choices_norm"],
                                                        b["choices_norm"])]
