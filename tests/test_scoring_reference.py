"""Requests (lm-eval _encode_pair), per-pair / padded batches vs the lm-eval-style reference,
acc / acc_norm by hand, evaluate() end to end on a tiny model."""
from __future__ import annotations

import pytest
import torch

from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.data import HellaSwagRow, synthetic_hellaswag
from graphopt.scoring import (STRATEGIES, Request, ScoreBatch, ScoreModule, build_batches, build_requests, choice_metrics, evaluate,
                              reference_loglik, same_choices, score_requests)
from graphopt.scoring.reference import PAD_ID, padded_batches, per_pair_batches
from graphopt.scoring.requests import encode_pair
from tests._builders import random_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    model = random_model("tiny-gqa", seed=1)
    return model, WordHashTokenizer(model.args.vocab_size)


@pytest.fixture(scope="module")
def rows():
    return synthetic_hellaswag(5, seed=4)


class SpaceSplitTokenizer:
    """Whitespace pieces as their own tokens, so a trailing space changes the tokenisation."""
    bos_id, eos_id = 1, 2

    def encode(self, text: str) -> list[int]:
        import re

        return [3 + sum(map(ord, p)) % 500 for p in re.findall(r"\S+|\s+", text)]


def test_encode_pair_moves_trailing_space_and_splits_whole():
    tok = SpaceSplitTokenizer()
    ctx, cont = encode_pair(tok, "The cat sat ", "down")
    assert ctx == tok.encode("The cat sat")
    assert cont == tok.encode("The cat sat down")[len(ctx):] == tok.encode(" down")
    # without moving the space, "sat " + "down" would tokenise the space into the context
    assert tok.encode("The cat sat ") != ctx
    # a token straddling the boundary goes to the continuation (whole[len(ctx):])
    word = WordHashTokenizer(512)
    ctx, cont = encode_pair(word, "pre", "fix ending")
    assert ctx == word.encode("pre") and cont == word.encode("prefix ending")[1:]
    assert encode_pair(tok, "", "abc") == ([tok.bos_id], tok.encode("abc"))  # empty context -> [BOS]


def test_build_requests(tiny, rows):
    _, tok = tiny
    reqs = build_requests(rows, tok)
    assert len(reqs) == 4 * len(rows)
    for k, r in enumerate(reqs):
        row = rows[k // 4]
        ending = row.endings[k % 4]
        assert (r.question, r.choice) == (k // 4, k % 4)
        assert list(r.context_ids) == tok.encode(row.query)  # no BOS: the word-hash tokenizer adds none by default
        assert list(r.context_ids + r.continuation_ids) == tok.encode(row.query + " " + ending)
        assert r.continuation_chars == len(ending)  # lm-eval: len(choice), without the " " delimiter
    with_bos = build_requests(rows, tok, add_bos=True)
    assert all(b.context_ids == (tok.bos_id,) + r.context_ids and b.continuation_ids == r.continuation_ids
               for b, r in zip(with_bos, reqs))
    # left truncation to the context window, as lm-eval's (context + continuation)[-(max_length + 1):]
    cut = build_requests(rows, tok, max_length=48)
    assert any(len(c.context_ids) < len(r.context_ids) for c, r in zip(cut, reqs)), "nothing was truncated"
    for c, r in zip(cut, reqs):
        whole = r.context_ids + r.continuation_ids
        assert c.continuation_ids == r.continuation_ids
        assert c.context_ids + c.continuation_ids == whole[-49:]
    with pytest.raises(ValueError, match="more than the model.s context window of 3 tokens"):
        build_requests(rows, tok, max_length=3)


def _score(model, batches, n):
    return score_requests(ScoreModule(model).eval(), batches, n, progress=False)


def test_per_pair_and_padded_equal_reference(tiny, rows):
    model, tok = tiny
    reqs = build_requests(rows, tok)
    ref = reference_loglik(model, reqs)
    assert ref.dtype == torch.float64 and torch.isfinite(ref).all() and (ref < 0).all()

    per_pair = per_pair_batches(reqs)
    assert len(per_pair) == len(reqs) and all(b.input_ids.shape[0] == 1 for b in per_pair)
    torch.testing.assert_close(_score(model, per_pair, len(reqs)), ref, atol=ATOL, rtol=0)

    for bs in (3, 8):
        padded = padded_batches(reqs, bs)
        assert len(padded) == -(-len(reqs) // bs)
        assert any((b.input_ids == PAD_ID).any() for b in padded), "no padding: the test would test nothing"
        torch.testing.assert_close(_score(model, padded, len(reqs)), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(_score(model, build_batches(reqs, "padded", batch_size=5), len(reqs)), ref,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_registered_strategy_equals_reference(tiny, rows, strategy):
    model, tok = tiny
    reqs = build_requests(rows, tok)
    batches = build_batches(reqs, strategy)
    assert batches and all(isinstance(b, ScoreBatch) for b in batches)
    torch.testing.assert_close(_score(model, batches, len(reqs)), reference_loglik(model, reqs), atol=ATOL, rtol=0)


def test_padded_layout(tiny, rows):
    model, tok = tiny
    reqs = build_requests(rows, tok)
    batches = padded_batches(reqs, 6)
    lengths = [len(r.context_ids) + len(r.continuation_ids) - 1 for r in reqs]
    seen = []
    for b in batches:
        B, T = b.input_ids.shape
        owners = b.owners.unique().tolist()
        seen += owners
        assert T == max(lengths[o] for o in owners)
        for row, o in enumerate(sorted(owners, key=lambda o: (-lengths[o], o))):
            L = lengths[o]
            assert b.input_ids[row, :L].tolist() == list(reqs[o].context_ids + reqs[o].continuation_ids)[:-1]
            assert (b.input_ids[row, L:] == PAD_ID).all()
            causal = torch.ones(L, L, dtype=torch.bool).tril()
            assert torch.equal(b.mask[row, :L, :L], causal) and not b.mask[row, :L, L:].any()
            assert torch.equal(b.mask[row, L:], torch.eye(T, dtype=torch.bool)[L:])  # pads see only themselves
            mine = b.owners == o
            assert torch.equal(b.score_idx[mine] // T, torch.full((int(mine.sum()),), row))
            assert (b.score_idx[mine] % T < L).all()  # only real tokens are scored
            assert b.targets[mine].tolist() == list(reqs[o].continuation_ids)
    # longest first across batches, every request exactly once
    assert sorted(seen) == list(range(len(reqs)))
    firsts = [max(lengths[o] for o in b.owners.unique().tolist()) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    # the pad token's value cannot leak into real scores
    ref = _score(model, batches, len(reqs))
    for b in batches:
        b.input_ids[b.input_ids == PAD_ID] = 77
    torch.testing.assert_close(_score(model, batches, len(reqs)), ref, atol=ATOL, rtol=0)


def test_strategy_errors(tiny, rows):
    reqs = build_requests(rows[:1], tiny[1])
    with pytest.raises(KeyError, match="unknown scoring strategy 'paded'.*did you mean padded"):
        build_batches(reqs, "paded")
    with pytest.raises(ValueError, match="no option 'row_len'.*options: batch_size"):
        build_batches(reqs, "padded", row_len=3)
    with pytest.raises(ValueError, match="no option 'batch_size'"):
        build_batches(reqs, "per_pair", batch_size=3)
    with pytest.raises(AssertionError, match="never scored"):
        score_requests(ScoreModule(tiny[0]), per_pair_batches(reqs)[1:], len(reqs), progress=False)


def _row(label: int) -> HellaSwagRow:
    return HellaSwagRow(index=0, query="q", endings=["a", "b", "c", "d"], label=label, activity_label="x")


def test_choice_metrics_by_hand():
    lls = [[-10.0, -12.0, -30.0, -11.0],  # label 1: acc picks 0 (wrong); per char [-1, -.6, -1, -2.2] -> 1 (right)
           [-5.0, -6.0, -4.0, -9.0]]  # label 2: acc picks 2 (right); per char [-1, -1, -2, -1] -> tie, first: 0 (wrong)
    chars = [[10, 20, 30, 5], [5, 6, 2, 9]]
    reqs = [Request(q, c, (1,), (2,), chars[q][c]) for q in range(2) for c in range(4)]
    order = [5, 2, 7, 0, 1, 6, 3, 4]  # metrics must not depend on request order
    out = choice_metrics([_row(1), _row(2)], [reqs[i] for i in order],
                         torch.tensor([lls[i // 4][i % 4] for i in order], dtype=torch.float64))
    assert out["choices"] == [0, 2] and out["choices_norm"] == [1, 0]
    assert out["acc"] == 0.5 and out["acc_norm"] == 0.5 and out["n_items"] == 2
    assert out["loglik"] == lls
    out = choice_metrics([_row(3), _row(0)], reqs, torch.tensor(sum(lls, []), dtype=torch.float64))
    assert out["acc"] == 0.0 and out["acc_norm"] == 0.5
    with pytest.raises(ValueError, match="without labels"):
        choice_metrics([_row(-1), _row(0)], reqs, torch.tensor(sum(lls, [])))


def test_same_choices_needs_acc_and_acc_norm_choices_to_agree():
    ref = {"choices": [0, 2, 1], "choices_norm": [1, 0, 3]}
    other = {"choices": [0, 2, 3], "choices_norm": [1, 2, 3]}  # row 1: only acc_norm differs; row 2: only acc
    assert same_choices(ref, other) == [True, False, False]
    assert same_choices(ref, ref) == [True, True, True]
    with pytest.raises(AssertionError, match="3 rows against 2"):
        same_choices(ref, {"choices": [0, 2], "choices_norm": [1, 0]})


def test_evaluate_end_to_end(tiny, rows):
    model, tok = tiny
    ref = reference_loglik(model, build_requests(rows, tok)).view(len(rows), 4)
    base = evaluate(model, tok, rows, progress=False)
    assert base["strategy"] == "per_pair" and base["n_items"] == len(rows) and base["n_requests"] == 4 * len(rows)
    torch.testing.assert_close(torch.tensor(base["loglik"], dtype=torch.float64), ref, atol=ATOL, rtol=0)
    assert base["choices"] == ref.argmax(1).tolist()
    assert base["acc"] == sum(c == r.label for c, r in zip(base["choices"], rows)) / len(rows)
    reqs = build_requests(rows, tok)
    assert base["tokens_processed"] == sum(len(q.context_ids) + len(q.continuation_ids) - 1 for q in reqs)
    assert base["tokens_scored"] == sum(len(q.continuation_ids) for q in reqs)
    assert base["seconds"] > 0

    padded = evaluate(model, tok, rows, batch_size=4, progress=False)
    assert padded["strategy"] == "padded" and padded["tokens_processed"] > base["tokens_processed"]
    torch.testing.assert_close(torch.tensor(padded["loglik"]), torch.tensor(base["loglik"]), atol=ATOL, rtol=0)
    assert (padded["acc"], padded["acc_norm"]) == (base["acc"], base["acc_norm"])
    with pytest.raises(ValueError, match="takes no batch_size"):
        evaluate(model, tok, rows, batch_size=4, strategy="per_pair", progress=False)
    with pytest.raises(ValueError, match="without labels"):
        evaluate(model, tok, [_row(-1)], progress=False)
