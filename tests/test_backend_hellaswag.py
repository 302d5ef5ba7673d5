"""The issue's acceptance check: the compile backend with every fidelity-preserving pass scores a
synthetic HellaSwag set (shared-prefix rows) with the same choices as the eager per-pair reference,
and log-likelihoods within 1e-4 (fp32)."""
import torch

import graphopt
from graphopt.pipeline import parse_pipeline
from graphopt.scoring import ScoreModule, build_batches, build_requests, choice_metrics, score_requests

EXACT = [p.name for p in parse_pipeline("exact")]


def test_backend_all_exact_passes_same_choices_on_synthetic_hellaswag():
    model, tokenizer = graphopt.load_model("tiny-gqa", seed=3)
    rows = graphopt.load_hellaswag(None, limit=6)
    requests = build_requests(rows, tokenizer)
    module = ScoreModule(model).eval()
    reference = score_requests(module, build_batches(requests, "per_pair"), len(requests), progress=False)

    be = graphopt.backend(pipeline=EXACT, compiler="none")
    compiled = torch.compile(module, backend=be, dynamic=True)
    got = score_requests(compiled, build_batches(requests, "shared_prefix", max_tokens=256), len(requests),
                         progress=False)

    assert [r.name for r in be.records] == EXACT
    assert all(r.matches > 0 for r in be.records if r.name not in ("cse", "dce")), be.records
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)
    want, have = choice_metrics(rows, requests, reference), choice_metrics(rows, requests, got)
    assert have["choices"] == want["choices"] and have["choices_norm"] == want["choices_norm"]
