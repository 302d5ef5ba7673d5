"""The transformers peer used by the benchmarks carries exactly our weights (q/k permutation included)."""
import pytest
import torch

pytest.importorskip("transformers")

from benchmarks._hf_peer import hf_batched_loglik, to_transformers  # noqa: E402
from graphopt.model import ModelArgs, Transformer, init_random_weights  # noqa: E402
from graphopt.scoring.batch import Request  # noqa: E402


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-tied"])
def test_same_logits_as_ours(name):
    ours = init_random_weights(Transformer(ModelArgs.from_name(name)), seed=1).eval()
    hf = to_transformers(ours)
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids), atol=1e-5, rtol=1e-5)


def test_batched_loglik_matches_per_pair_scoring():
    ours = init_random_weights(Transformer(ModelArgs.from_name("tiny")), seed=2).eval()
    hf = to_transformers(ours)
    reqs = [Request(0, 0, (5, 6, 7), (8, 9), 4), Request(0, 1, (5, 6, 7), (10,), 2), Request(1, 0, (1,), (2, 3, 4, 5), 9)]
    got = hf_batched_loglik(hf, reqs, batch_size=2)
    for i, r in enumerate(reqs):
        full = torch.tensor([r.context_ids + r.continuation_ids])
        with torch.no_grad():
            lp = torch.log_softmax(ours(full[:, :-1]), -1)[0]
        C = len(r.context_ids)
        want = sum(lp[C - 1 + j, t].item() for j, t in enumerate(r.continuation_ids))
        assert abs(got[i].item() - want) < 1e-4
