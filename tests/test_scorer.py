"""The Scorer: one object every caller's requests go through (graphopt eval / evaluate, the runner's worker,
the lm-eval backend): the pipeline chosen for the device and compiler, one optimised runnable built once,
answers equal to the per-pair eager reference, and no other module doing its steps."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt.data import load_hellaswag
from graphopt.pipeline import PassError
from graphopt.scoring import build_requests, reference_loglik
from graphopt.scoring.scorer import Scorer, auto_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    model, tok = graphopt.load_model("tiny")
    return model.eval(), tok, build_requests(load_hellaswag(None, limit=4), tok)


def _calls(path: Path) -> set[str]:
    """Names of the functions a file calls (f(...) or x.f(...)), read with ast."""
    return {getattr(n.func, "id", None) or getattr(n.func, "attr", None)
            for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}


def test_the_scoring_steps_are_called_from_the_scorer_only():
    """first_identical, build_batches and auto_pipeline have one caller module in the package and the
    benchmarks: the Scorer (benchmarks that time their own runnables take the Scorer's batches)."""
    files = [p for d in ("graphopt", "passes", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    for name in ("first_identical", "build_batches", "auto_pipeline"):
        callers = {str(p.relative_to(ROOT)) for p in files if name in _calls(p)}
        assert callers == {"graphopt/scoring/scorer.py"}, (name, sorted(callers))


def test_auto_fits_the_compiler_and_the_layout():
    """exact-cpu's packed oneDNN weights run uncompiled or under inductor-frozen only: another compiler gets
    exact (graphopt eval --compiler inductor used to be refused over a pass the user never named); CUDA's
    block-skipping kernel needs the packed layout's ids and has no sliding window."""
    assert auto_pipeline("cpu") == ("exact-cpu", "none")
    assert auto_pipeline("cpu", compiler="inductor") == ("exact", "inductor")
    assert auto_pipeline("cpu", compiler="eager-fx") == ("exact", "eager-fx")
    assert auto_pipeline("cpu", compiler="inductor-frozen") == ("exact-cpu", "inductor-frozen")
    windowed = graphopt.ModelArgs.from_name("tiny")
    windowed.sliding_window = 8
    assert auto_pipeline("cuda") == ("gpu", "none")
    assert auto_pipeline("cuda", windowed) == ("exact", "none")
    assert auto_pipeline("cuda", layout="padded") == ("exact", "none")


def test_eval_with_a_compiler_picks_the_pipeline_that_compiles(capsys):
    from graphopt.cli import main

    assert main(["eval", "--model", "tiny", "--limit", "2", "--compiler", "eager-fx", "--output", "json",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"compiler": "eager-fx"' in out and '"fuse_rope"' in out and "mkldnn_linear" not in out


def test_one_runnable_built_once_answers_as_the_reference(tiny, monkeypatch):
    """Two score() calls share the runnable (optimize called once); log-likelihoods equal the per-pair eager
    reference within 1e-4 (fp32 rounding of sums near -200) and the exact-cpu rewrite really happened."""
    import graphopt.optimize_model as om

    model, _, requests = tiny
    calls = []
    real = om.optimize
    monkeypatch.setattr(om, "optimize", lambda *a, **k: calls.append(1) or real(*a, **k))
    scorer = Scorer(model, "auto", greedy=True)
    first, second = scorer.score(requests[:8], progress=False), scorer.score(requests, progress=False)
    assert len(calls) == 1 and scorer.labels[-1] == "mkldnn_linear"
    targets = {str(n.target) for n in scorer.runnable.graph.graph.nodes if n.op == "call_function"}
    assert "mkldnn._linear_pointwise.default" in targets
    want = reference_loglik(model, requests)
    assert torch.allclose(second.loglik, want, atol=1e-4, rtol=0) and torch.allclose(first.loglik, second.loglik[:8], atol=1e-4, rtol=0)
    assert second.greedy.dtype == torch.bool and second.greedy.shape == (len(requests),)


def test_eager_reference_and_batch_size(tiny):
    """No pipeline: lm-eval's own ways (each pair alone; padded rows at a batch size other than 1)."""
    model, _, requests = tiny
    assert Scorer(model, None).layout == "per_pair" and Scorer(model, "none", batch_size=4).layout == "padded"
    assert Scorer(model, "exact", batch_size=4).layout == "padded"
    got = Scorer(model, None, batch_size=4).score(requests, progress=False)
    assert got.greedy is None and torch.allclose(got.loglik, reference_loglik(model, requests), atol=1e-4, rtol=0)


def test_bad_options_are_refused_before_any_work(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match="scoring strategy 'tree' has no option 'batch'"):
        Scorer(model, "exact", layout_options={"batch": 3})
    with pytest.raises(ValueError, match="takes no batch_size"):
        Scorer(model, "exact", layout="packed", batch_size=4)
    with pytest.raises(PassError, match="mkldnn_linear' runs only with compiler"):
        Scorer(model, "exact-cpu", "inductor")


def _few_shot(n_subjects=2, n_questions=5, shots=120, seed=0) -> list:
    """Requests shaped like a first_n few-shot suite: per subject one long shared prefix, questions after it,
    4 endings; the last ending of each question a copy of its first (identical requests)."""
    import random

    from graphopt.scoring import Request

    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(1, 500) for _ in range(n)]  # noqa: E731
    out = []
    for s in range(n_subjects):
        prefix = tok(shots)
        for q in range(n_questions):
            ctx = tuple(prefix + tok(rng.randrange(5, 15)))
            endings = [tuple(tok(rng.randrange(1, 5))) for _ in range(3)]
            out += [Request(s * n_questions + q, c, ctx, e, 4) for c, e in enumerate(endings + endings[:1])]
    return out


def test_tree_by_default_computes_shared_prefixes_once_and_answers_as_the_reference(tiny):
    """The default layout with a pipeline is the prefix tree: few-shot-shaped requests go through the one
    graph that reads (and fills) a KV cache, each distinct request is scored once (a copy takes the first's
    value bit for bit), log-likelihoods within 1e-4 of each pair alone (fp32) and is_greedy as the eager
    model's."""
    model = tiny[0]
    requests = _few_shot()
    scorer = Scorer(model, "exact-cpu", greedy=True, layout_options={"min_shared_tokens": 64})
    assert scorer.layout == "tree"
    prepared = scorer.prepare(requests)
    assert prepared.plan.stats["cached_nodes"] == 2 and len(prepared.unique) == len(requests) * 3 // 4
    got = scorer.score_prepared(prepared, progress=False)
    assert scorer.cache_runnable is not None and scorer.runnable is None
    assert prepared.counts["prefills"] == 2  # one forward per subject's prefix
    torch.testing.assert_close(got.loglik, reference_loglik(model, requests), atol=1e-4, rtol=0)
    copies = [i for i, r in enumerate(requests) if r.choice == 3]
    assert torch.equal(got.loglik[copies], got.loglik[[i - 3 for i in copies]])
    eager = Scorer(model, None, greedy=True).score(requests, progress=False)
    assert torch.equal(got.greedy, eager.greedy)
