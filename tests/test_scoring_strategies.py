"""Fast scoring layouts (shared prefix, row packing, buckets) against per-request ground truth."""
import random

import pytest
import torch

from graphopt.kernels.prefix_attention import prefix_mask
from graphopt.scoring.batch import Request, ScoreModule, sum_by_owner
from graphopt.scoring.buckets import DEFAULT_N_FRACTIONS, batch_shapes, bucketed_batches
from graphopt.scoring.pack_layout import layout_stats, pair_segments
from graphopt.scoring.row_packing import packed_batches
from graphopt.scoring.shared_prefix import shared_prefix_batches, shared_prefix_layout
from tests._builders import random_model

ATOL = 1e-4
BUCKETS = (16, 32, 64, 128)


@pytest.fixture(scope="module", params=["tiny", "tiny-gqa"])
def model(request):
    torch.manual_seed(0)
    return random_model(request.param, seed=1)


def make_requests(spec, seed=0, vocab=512):
    """spec: list of (context_len, [ending_len, ...]) per question."""
    rng = random.Random(seed)
    out = []
    for q, (C, endings) in enumerate(spec):
        ctx = tuple(rng.randrange(vocab) for _ in range(C))
        for c, X in enumerate(endings):
            cont = tuple(rng.randrange(vocab) for _ in range(X))
            out.append(Request(q, c, ctx, cont, X * 4))
    return out


def ground_truth(model, requests):
    out = []
    with torch.no_grad():
        for r in requests:
            ids = torch.tensor(r.context_ids + r.continuation_ids).unsqueeze(0)
            logp = torch.log_softmax(model(ids).float(), dim=-1)[0]  # [L, V]
            C = len(r.context_ids)
            out.append(sum(float(logp[C - 1 + j, t]) for j, t in enumerate(r.continuation_ids)))
    return torch.tensor(out, dtype=torch.float64)


def score(model, requests, batches):
    total = torch.zeros(len(requests), dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            total += sum_by_owner(ScoreModule(model)(*b.model_inputs()), b.owners, len(requests))
    return total


def check_masks(batches):
    for b in batches:
        doc, seg = shared_prefix_layout(b)
        real = doc >= 0  # [B, T]
        pm = prefix_mask(doc, seg)
        both = real.unsqueeze(-1) & real.unsqueeze(-2)
        assert torch.equal(b.mask[both], pm[both])
        assert not b.mask[real.unsqueeze(-1) & ~real.unsqueeze(-2)].any()  # real queries never see pads
        pad_rows = b.mask[~real]  # [P, T]
        assert torch.equal(pad_rows, torch.eye(b.mask.shape[-1], dtype=torch.bool).expand(b.mask.shape)[~real])
        assert (b.positions[~real] == 0).all()
        flat_real = real.reshape(-1)
        assert flat_real[b.score_idx[b.owners >= 0]].all()  # nothing scored on a pad


SPECS = {
    "mixed": [(20, [3, 17, 1, 9]), (5, [30, 2, 2, 2]), (40, [6, 6, 7, 8]), (2, [11, 4, 25, 3])],
    "one_token_context": [(1, [5, 1, 12, 3]), (9, [4, 4, 4, 4])],
    "single": [(7, [6])],
    "five_by_four": [(8 + 3 * q, [3 + q, 5, 2 + 2 * q, 7]) for q in range(5)],
    "three_endings": [(12, [4, 9, 2]), (6, [3, 3, 3, 3])],
    "empty_ending": [(6, [0, 4, 1, 3])],
}

BUILDERS = {
    "shared_prefix": lambda rs: shared_prefix_batches(rs, max_tokens=96),
    "packed": lambda rs: packed_batches(rs, max_tokens=128),
    "bucketed_shared": lambda rs: bucketed_batches(rs, buckets=BUCKETS, batch_size=2, layout="shared_prefix"),
    "bucketed_pair": lambda rs: bucketed_batches(rs, buckets=BUCKETS, batch_size=3, layout="pair"),
    "bucketed_packed": lambda rs: bucketed_batches(rs, buckets=BUCKETS, batch_size=2, layout="packed"),
}


_TRUTH = {}


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_loglik_matches_ground_truth(model, spec, builder):
    requests = make_requests(SPECS[spec], seed=len(spec))
    key = (repr(model.args), spec)
    if key not in _TRUTH:  # one ground truth per (model, spec), shared by the builders
        _TRUTH[key] = ground_truth(model, requests)
    batches = BUILDERS[builder](requests)
    check_masks(batches)
    # every non-empty continuation token is scored exactly once
    owners = torch.cat([b.owners for b in batches])
    assert int((owners >= 0).sum()) == sum(len(r.continuation_ids) for r in requests)
    got, want = score(model, requests, batches), _TRUTH[key]
    assert torch.allclose(got, want, atol=ATOL, rtol=0), (got - want).abs().max()


def test_shared_context_groups_by_question_and_context(model):
    # two contexts under one question id, and requests given out of order
    a = make_requests([(10, [3, 4])], seed=1)
    b = [Request(0, 2 + r.choice, (1, 2, 3), r.continuation_ids, 0) for r in make_requests([(3, [5, 2])], seed=2)]
    requests = [a[1], b[0], a[0], b[1]]
    batches = shared_prefix_batches(requests)
    doc, seg = shared_prefix_layout(batches[0])
    assert batches[0].input_ids.shape[0] == 2  # one row per (question, context)
    assert int(seg.max()) == 2
    assert torch.allclose(score(model, requests, batches), ground_truth(model, requests), atol=ATOL, rtol=0)


def test_layout_of_one_question():
    requests = make_requests([(3, [2, 3, 1])])
    (b,) = shared_prefix_batches(requests)
    doc, seg = shared_prefix_layout(b)
    # context 3 tokens, endings feed 1 + 2 + 0 tokens
    assert b.input_ids.shape == (1, 6)
    assert b.positions[0].tolist() == [0, 1, 2, 3, 3, 4]
    assert seg[0].tolist() == [0, 0, 0, 1, 2, 2]
    assert doc[0].tolist() == [0] * 6
    assert b.input_ids[0].tolist() == list(requests[0].context_ids) + [requests[0].continuation_ids[0]] + \
        list(requests[1].continuation_ids[:2])
    # first token of every ending is predicted by the last context token (index 2)
    assert b.score_idx.tolist() == [2, 3, 2, 4, 5, 2]
    assert b.owners.tolist() == [0, 0, 1, 1, 1, 2]


def test_packing_puts_several_questions_in_a_row(model):
    requests = make_requests([(30, [5, 5, 5, 5]), (4, [2, 3, 2, 2]), (5, [3, 2, 2, 3]), (3, [2, 2, 2, 2])], seed=3)
    batches = packed_batches(requests, max_tokens=10_000)
    doc, _ = shared_prefix_layout(batches[0])
    assert int(doc.max()) >= 1  # more than one question in some row
    assert batches[0].input_ids.shape[0] < 4  # fewer rows than questions
    assert layout_stats(batches)["tokens_processed"] < layout_stats(shared_prefix_batches(requests, 10_000))["tokens_processed"]
    pos = batches[0].positions
    assert int(pos.max()) < 30 + 5  # positions restart per question
    assert torch.allclose(score(model, requests, batches), ground_truth(model, requests), atol=ATOL, rtol=0)


def test_buckets_bound_shapes():
    rng = random.Random(5)
    spec = [(rng.randrange(1, 60), [rng.randrange(1, 20) for _ in range(rng.choice([3, 4, 5]))]) for _ in range(30)]
    requests = make_requests(spec)
    for layout in ("shared_prefix", "pair", "packed"):
        batches = bucketed_batches(requests, buckets=BUCKETS, batch_size=4, layout=layout)
        shapes = batch_shapes(batches)
        assert len(shapes) <= len(BUCKETS) * len(DEFAULT_N_FRACTIONS)
        for B, T, N in shapes:
            assert B == 4 and T in BUCKETS
            assert N in {int(-(-f * B * T // 1)) for f in DEFAULT_N_FRACTIONS}, (B, T, N)
        check_masks(batches)
        owners = torch.cat([b.owners for b in batches])
        assert int((owners >= 0).sum()) == sum(len(r.continuation_ids) for r in requests)


def test_bucket_too_long_names_the_question():
    requests = make_requests([(5, [3]), (100, [20, 4])])
    with pytest.raises(ValueError, match=r"question 1 needs a row of 122 tokens.*largest bucket 64"):
        bucketed_batches(requests, buckets=(32, 64))
    with pytest.raises(ValueError, match=r"question 1 choice 0 needs a row of 119 tokens"):
        bucketed_batches(requests, buckets=(32, 64), layout="pair")


def test_empty_context_is_a_clear_error():
    with pytest.raises(ValueError, match="question 0 choice 0: empty context"):
        shared_prefix_batches([Request(0, 0, (), (1, 2), 2)])


def test_token_counts():
    spec = [(20 + 4 * q, [5 + q, 9, 12, 6]) for q in range(10)]
    requests = make_requests(spec)
    pair_real = sum(s.length for s in pair_segments(requests))
    sp = layout_stats(shared_prefix_batches(requests, max_tokens=10_000))
    # per question, shared prefix saves (k - 1) * C context tokens
    assert sp["tokens_real"] == pair_real - sum(3 * C for C, _ in spec)
    assert sp["tokens_real"] < pair_real
    assert sp["tokens_scored"] == sum(len(r.continuation_ids) for r in requests)
    bk = layout_stats(bucketed_batches(requests, batch_size=4))
    assert bk["tokens_real"] == sp["tokens_real"] and bk["tokens_processed"] >= bk["tokens_real"]
    assert 0 <= bk["padding_fraction"] < 1
    assert bk["padding_fraction"] == pytest.approx(1 - bk["tokens_real"] / bk["tokens_processed"])


def test_layout_drives_prefix_attention_op():
    import math

    import graphopt.kernels  # noqa: F401 (registers graphopt::prefix_attention)

    requests = make_requests(SPECS["mixed"] + SPECS["three_endings"], seed=7)
    (b,) = packed_batches(requests, max_tokens=10_000)[:1]
    b = b.to("cpu")  # PackedScoreBatch.to keeps the layout ids
    doc, seg = shared_prefix_layout(b)
    B, T = doc.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, 8, generator=g) for h in (4, 2, 2))
    out = torch.ops.graphopt.prefix_attention(q, k, v, doc, seg, 1 / math.sqrt(8))  # [B, H, T, D]
    scores = q @ k.repeat_interleave(2, 1).transpose(2, 3) / math.sqrt(8)
    want = torch.softmax(scores.masked_fill(~b.mask.unsqueeze(1), float("-inf")), -1) @ v.repeat_interleave(2, 1)
    real = (doc >= 0).unsqueeze(1).expand(B, 4, T)
    assert torch.allclose(out[real], want[real], atol=1e-5)
