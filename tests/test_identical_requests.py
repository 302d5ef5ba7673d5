"""Identical requests (a question whose endings repeat) get one log-likelihood: the first copy's. A packed
row scores the copies at other row offsets, where fp32 rounding differs (~1e-5 on bench-100m), and that
broke a tie between two identical endings the other way from the per-pair reference and lm-eval, which
score identical inputs identically and so pick the first. Here a model whose logits depend on the row
offset makes the copies' raw scores differ for certain."""
from dataclasses import replace

import torch
from torch import nn

from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.data import synthetic_hellaswag
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.scoring import ScoreModule, build_batches, build_requests, evaluate
from graphopt.scoring.score_loop import score_requests
from graphopt.scoring.requests import first_identical


class OffsetDependent(nn.Module):
    """The model's logits plus a term that grows with the row offset (not the RoPE position) on odd
    token ids: the same tokens at another offset of a row score differently."""

    def __init__(self, model):
        super().__init__()
        self.model, self.args = model, model.args

    def forward(self, input_ids, positions, mask):
        logits = self.model(input_ids, positions, mask)  # [B, T, V]
        T, V = logits.shape[1:]
        return logits + 1e-3 * torch.arange(T)[None, :, None] * (torch.arange(V) % 2)[None, None, :]


def _rows_with_repeats():
    rows = synthetic_hellaswag(4, seed=7)
    return [replace(r, endings=[r.endings[0], r.endings[1], r.endings[0], r.endings[3]]) for r in rows]


def test_first_identical_points_at_the_first_copy():
    rows = _rows_with_repeats()
    reqs = build_requests(rows, WordHashTokenizer(512))
    assert first_identical(reqs) == [4 * q + (0 if c == 2 else c) for q in range(4) for c in range(4)]
    assert first_identical(reqs[:2]) == [0, 1]


def test_packed_rows_give_identical_endings_one_value():
    model = OffsetDependent(init_random_weights(Transformer(ModelArgs.from_name("tiny-gqa")), seed=1).eval())
    tok, rows = WordHashTokenizer(512), _rows_with_repeats()
    reqs = build_requests(rows, tok)
    raw = score_requests(ScoreModule(model).eval(), build_batches(reqs, "packed"), len(reqs), progress=False)
    assert all(raw[4 * q] != raw[4 * q + 2] for q in range(4))  # the copies really score differently packed
    # the Scorer scores each distinct request once (3 per question here) and copies the first's value
    distinct = [r for i, r in enumerate(reqs) if first_identical(reqs)[i] == i]
    once = score_requests(ScoreModule(model).eval(), build_batches(distinct, "packed"), len(distinct), progress=False)
    res = evaluate(model, tok, rows, strategy="packed", progress=False)
    for q, ll in enumerate(res["loglik"]):
        assert ll[0] == ll[2] == float(once[3 * q]), (q, ll)  # the first copy's value, exactly
        assert [ll[1], ll[3]] == [float(once[3 * q + 1]), float(once[3 * q + 2])]
