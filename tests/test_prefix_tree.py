"""The prefix tree over all requests: its shape (radix nodes, cached nodes within the budget, token ids
deciding sharing), and scores equal to the per-pair reference (fp32, 1e-5) and lm-eval's is_greedy on
few-shot-shaped requests (a long shared prefix, several questions, 4-10 endings, identical requests),
a prefix longer than the memory budget, and a tokenizer that merges across the prefix / question
boundary; eager runners on GQA / tied / Qwen3 / sliding-window models, optimised ones (exact-cpu)."""
import random

import pytest
import torch

from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.optimize_model import optimize
from graphopt.scoring.batch import Request, ScoreModule
from graphopt.scoring.prefix_cache import KVLayout, PrefillModule, cached_example_inputs, cached_score_module
from graphopt.scoring.prefix_tree import TreeRunners, build_tree, plan_tree, row_groups, score_tree
from graphopt.scoring.reference import reference_loglik
from graphopt.scoring.shared_prefix import shared_prefix_batches
from tests._family_models import qwen3_score_module

ATOL = 1e-5


def model_of(preset):
    if preset == "tiny-qwen3":
        return qwen3_score_module().model
    return init_random_weights(Transformer(ModelArgs.from_name(preset)), seed=3).eval()


def few_shot_requests(model, seed=0, n_subjects=2, n_questions=4, shots=70):
    """Subjects sharing a 6-token header, each with its own `shots`-token examples; questions of 5-20
    tokens after them; 4-10 endings of 1-5 tokens, the second ending a greedy continuation of the
    context and the fourth a copy of the first (identical requests)."""
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(1, 512) for _ in range(n)]  # noqa: E731
    header, requests = tok(6), []
    for s in range(n_subjects):
        prefix = header + tok(shots)
        for q in range(n_questions):
            ctx = tuple(prefix + tok(rng.randrange(5, 21)))
            endings = [tuple(tok(rng.randrange(1, 6))) for _ in range(rng.randrange(4, 11))]
            endings[1] = greedy_continuation(model, ctx, 3)
            endings[3] = endings[0]
            question = s * n_questions + q
            requests += [Request(question, c, ctx, e, 3) for c, e in enumerate(endings)]
    return requests


def greedy_continuation(model, ctx, n):
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return tuple(ids[len(ctx):])


def reference(model, requests):
    """(loglik, is_greedy) of each pair alone, as lm-eval's hf model computes them."""
    greedy = []
    with torch.no_grad():
        for r in requests:
            ids = list(r.context_ids + r.continuation_ids)[:-1]
            logits = model(torch.tensor([ids]))[0, len(r.context_ids) - 1:]
            greedy.append(bool((logits.argmax(-1) == torch.tensor(r.continuation_ids)).all()))
    return reference_loglik(model, requests), torch.tensor(greedy)


def eager_runners(model):
    return TreeRunners(cached_score_module(model), KVLayout.of_args(model.args), PrefillModule(model),
                       ScoreModule(model, greedy=True).eval())


class Counting:
    """Wraps a runner: counts the real tokens it is given (cache-filling: all; rows: doc >= 0 or mask rows)."""

    def __init__(self, fn):
        self.fn, self.tokens, self.calls = fn, 0, 0

    def __call__(self, *args):
        self.calls += 1
        self.tokens += args[0].numel()
        return self.fn(*args)


# ---------------------------------------------------------------- the tree's shape

def test_radix_tree_splits_where_token_ids_part():
    root = build_tree([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3, 4, 6), (7,), ()])
    assert root.groups == [4] and set(root.children) == {1, 7}
    a = root.children[1]
    assert (a.tokens, a.start) == ([1, 2], 0) and set(a.children) == {3, 5}
    b = a.children[3]
    assert (b.tokens, b.start, b.groups) == ([3, 4], 2, [0]) and b.children[6].tokens == [6]
    assert a.children[5].groups == [1] and root.children[7].groups == [3]


def _reqs(contexts, n_endings=4):
    return [Request(q, c, tuple(ctx), (9, 9 + c), 1) for q, ctx in enumerate(contexts) for c in range(n_endings)]


def test_plan_caches_shared_prefixes_within_the_budget():
    """Two subjects of 3 questions under a common header: the header (saves 5 x 4 tokens) and each
    subject's 40-token examples (2 x 40) are cached; a budget of 30 positions cuts the path there,
    and a budget below one token caches nothing (today's layout)."""
    header, subj = [1, 2, 3, 4], [[10 + i for i in range(40)], [60 + i for i in range(40)]]
    contexts = [header + subj[s] + [100 + 10 * s + q, 7] for s in range(2) for q in range(3)]
    plan = plan_tree(_reqs(contexts), bytes_per_token=1, budget=1000, min_shared_tokens=8)
    h = plan.root.children[1]
    assert h.tokens == header and h.cached and all(c.cached for c in h.children.values())
    assert plan.capacity == 44 and plan.stats["cached_nodes"] == 3
    assert plan.stats["tokens_prefill"] == 4 + 80 and plan.stats["tokens_rows"] == 6 * (2 + 4)
    assert plan.stats["tokens_packed"] == 6 * (46 + 4)
    cut = plan_tree(_reqs(contexts), bytes_per_token=10, budget=300, min_shared_tokens=8)
    assert cut.stats["limit"] == 30 and cut.capacity == 30  # header + 26 tokens of each subject
    assert cut.stats["tokens_prefill"] == 4 + 2 * 26
    none = plan_tree(_reqs(contexts), bytes_per_token=10, budget=9, min_shared_tokens=8)
    assert none.capacity == 0 and none.stats["tokens_rows"] == none.stats["tokens_packed"]
    assert row_groups(none.root) == list(range(6))


def test_small_savings_stay_in_todays_layout():
    """Contexts sharing 3 tokens (zero-shot questions with a common start) save less than
    min_shared_tokens: nothing is cached, every context is scored at the root as today."""
    contexts = [[5, 6, 7, 20 + q, 30 + q, 8] for q in range(10)]
    plan = plan_tree(_reqs(contexts), bytes_per_token=1, min_shared_tokens=512)
    assert plan.stats["cached_nodes"] == 0 and row_groups(plan.root) == list(range(10))
    assert plan_tree(_reqs(contexts), bytes_per_token=1, min_shared_tokens=27).stats["cached_nodes"] == 1


def test_nested_contexts_make_a_deep_tree():
    """1200 contexts each one token longer than the last (rolling-window-like): a chain of 1200 nodes,
    planned without recursion; the chain is cached up to the budget."""
    contexts = [list(range(1, k + 2)) for k in range(1, 1201)]
    plan = plan_tree(_reqs(contexts, n_endings=1), bytes_per_token=1, budget=600, min_shared_tokens=8)
    assert plan.capacity == 600 and plan.stats["cached_nodes"] > 500


# ---------------------------------------------------------------- scores equal the reference

@pytest.mark.parametrize("preset", ["tiny-gqa", "tiny-tied", "tiny-qwen3", "tiny-window"])
def test_tree_scores_equal_the_per_pair_reference(preset):
    """Eager runners; every shared prefix computed once (the prefill runner sees exactly the plan's
    cached tokens; the rows see the plan's row tokens), scores within 1e-5 of each pair alone,
    is_greedy identical (identical requests: tests/test_scorer.py, the Scorer scores each once)."""
    model = model_of(preset)
    requests = few_shot_requests(model)
    runners = eager_runners(model)
    runners.prefill, runners.score_cached = Counting(runners.prefill), Counting(runners.score_cached)
    plan = plan_tree(requests, runners.layout.bytes_per_token, min_shared_tokens=8)
    assert plan.stats["cached_nodes"] == 3 and plan.capacity == 76
    loglik, greedy = score_tree(requests, runners, min_shared_tokens=8, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy) and want_greedy.sum() >= 8  # the greedy endings are
    assert runners.prefill.tokens == plan.stats["tokens_prefill"] and runners.prefill.calls == 3


def test_prefix_longer_than_the_budget():
    """A budget of 20 positions for 76-token prefixes: 20 are cached, the rest is computed in every
    row (the rows are longer by it); scores equal the reference as before."""
    model = model_of("tiny-gqa")
    requests = few_shot_requests(model, seed=1)
    runners = eager_runners(model)
    budget = 20 * runners.layout.bytes_per_token + 7
    plan = plan_tree(requests, runners.layout.bytes_per_token, budget, min_shared_tokens=8)
    assert plan.capacity == 20 and plan.stats["tokens_prefill"] == 6 + 2 * 14
    loglik, greedy = score_tree(requests, runners, budget=budget, min_shared_tokens=8, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy)


def test_one_graph_fills_and_reads_and_the_root_without_a_plain_graph():
    """Only score_cached (with return_cache): it computes the cached nodes (one scored dummy entry)
    and contexts with no cached prefix read a hidden slot; scores as the reference."""
    model = model_of("tiny-window")
    requests = few_shot_requests(model, seed=2, n_subjects=3, n_questions=2)
    requests += [Request(99, c, (3, 4, 5), (6 + c,), 1) for c in range(4)]  # shares nothing: at the root
    runners = TreeRunners(cached_score_module(model, return_cache=True), KVLayout.of_args(model.args))
    loglik, greedy = score_tree(requests, runners, min_shared_tokens=8, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy)


def test_zero_shot_runs_only_the_plain_graph():
    """Nothing worth caching: score_cached may be None and only the plain graph runs, on today's layout;
    requests that do share a long prefix then need score_cached (a clear error)."""
    model = model_of("tiny-gqa")
    requests = [Request(q, c, (5, 6, 20 + q, 30 + q), (40 + c, 41), 1) for q in range(6) for c in range(4)]
    plain = Counting(ScoreModule(model, greedy=True).eval())
    runners = TreeRunners(None, KVLayout.of_args(model.args), score=plain)
    loglik, greedy = score_tree(requests, runners, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy) and plain.calls == 1
    with pytest.raises(ValueError, match="needs score_cached"):
        score_tree(few_shot_requests(model), runners, min_shared_tokens=8, progress=False)


def test_tokenizer_merging_across_the_boundary(tmp_path):
    """A byte-level BPE (merges whitespace runs): the few-shot prefix string ends in "\\n\\n", which
    tokenises as one token at the end of the prefix alone but splits differently before some
    questions, so the contexts' token ids do not all start with the prefix's ids. The tree shares what
    the ids share and scores equal the reference."""
    tk = pytest.importorskip("tokenizers")
    from graphopt.checkpoints.tokenizers import load_tokenizer
    from graphopt.scoring.requests import encode_pair
    text = ["Question: what is two plus two?\nAnswer: four\n\n", "The sun rises in the east.\n\n\n",
            "  indented  text  with   spaces\n \n", "Answer: B\n\nQuestion: which is larger?"] * 20
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.train_from_iterator(text, tk.trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"],
                                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    prefix = "".join(f"Question: what is {a} plus {a}?\nAnswer: {b}\n\n" for a, b in
                     [("one", "two"), ("two", "four"), ("three", "six")] * 3)
    questions = ["Question: which is larger?\nAnswer:", "\nQuestion: what is two?\nAnswer:",
                 " indented question\nAnswer:", "\n\nThe sun?\nAnswer:"]
    requests = []
    for q, question in enumerate(questions):
        for c, ending in enumerate([" four", " two", " B", " the east"]):
            ctx, cont = encode_pair(tokenizer, prefix + question, ending)
            requests.append(Request(q, c, tuple(ctx), tuple(cont), len(ending) - 1))
    alone = tuple(tokenizer.encode(prefix))
    starts = {r.context_ids[:len(alone)] == alone for r in requests}
    assert starts == {True, False}  # the boundary merges for some questions and not for others
    model = model_of("tiny-gqa")
    plan = plan_tree(requests, 1, min_shared_tokens=8)
    assert plan.stats["cached_nodes"] >= 1 and plan.capacity >= len(alone) - 2
    loglik, greedy = score_tree(requests, eager_runners(model), min_shared_tokens=8, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy)


@pytest.mark.parametrize("pipeline", ["exact-cpu"])
def test_optimised_runners_equal_the_reference(pipeline):
    """The three graphs a Scorer builds, each by one graphopt.optimize call: the cache-reading
    ScoreModule, the PrefillModule, the plain packed ScoreModule for contexts without a cached
    prefix. Scores within 1e-5 of the per-pair reference, and of the eager tree."""
    model = model_of("tiny-gqa")
    requests = few_shot_requests(model, seed=3)
    requests += [Request(99, c, (3, 4, 5), (6 + c,), 1) for c in range(4)]
    layout = KVLayout.of_args(model.args)
    V = model.args.vocab_size
    cached = optimize(cached_score_module(model), cached_example_inputs(layout, vocab_size=V), pipeline)
    prefill = optimize(PrefillModule(model), cached_example_inputs(layout, prefill=True), pipeline)
    plain = optimize(ScoreModule(model, greedy=True).eval(), shared_prefix_batches(requests[-8:])[0].model_inputs(),
                     pipeline)
    runners = TreeRunners(cached, KVLayout.of_graph(cached.graph), prefill, plain)
    loglik, greedy = score_tree(requests, runners, min_shared_tokens=8, progress=False)
    want, want_greedy = reference(model, requests)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy)
    eager, _ = score_tree(requests, eager_runners(model), min_shared_tokens=8, progress=False)
    torch.testing.assert_close(loglik, eager, atol=ATOL, rtol=0)
    # the smallest calls: a 1-token cached node at the root, rows of 1 token after a 2-token one
    small = [Request(q, c, (1, 50 + q, 7), (60 + c,), 1) for q in range(4) for c in range(3)]
    small += [Request(9 + q, c, (2, 3, 7 + q), (60 + c,), 1) for q in range(4) for c in range(3)]
    plan = plan_tree(small, runners.layout.bytes_per_token, min_shared_tokens=2)
    assert [(n.tokens, n.cached) for n in plan.root.children.values()] == [([1], True), ([2, 3], True)]
    loglik, greedy = score_tree(small, runners, min_shared_tokens=2, progress=False)
    want, want_greedy = reference(model, small)
    torch.testing.assert_close(loglik, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, want_greedy)
