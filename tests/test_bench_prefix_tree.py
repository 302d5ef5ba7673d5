"""The prefix-tree benchmark's arithmetic: what lm-eval's hf model computes (one forward per context +
continuation[:-1], so MMLU's single-letter endings share their context's forward), what the tree computes
(each cached prefix once, each context's tail once), the FLOPs of both as benchmarks.mfu counts them, and
the table built from the records. Hand-counted on small requests; nothing is run."""
from benchmarks import _prefix_tree_counts as counts
from benchmarks._common import layer_param_counts
from benchmarks.prefix_tree import compare, markdown
from graphopt.model import ModelArgs
from graphopt.scoring.batch import Request
from graphopt.scoring.prefix_tree import plan_tree

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, hidden_dim=96)


def test_flops_are_weights_head_and_attention():
    body = (64 * 64 * 2 + 64 * 32 * 2 + 64 * 96 * 3) * 2  # q, o; k, v (2 kv heads of 16); gate, up, down; 2 layers
    assert sum(layer_param_counts(ARGS)) * ARGS.n_layers == body
    assert counts.flops(ARGS, tokens=10, head_positions=3, visible_pairs=55) == \
        2 * body * 10 + 2 * 64 * 100 * 3 + 4 * 64 * 55 * 2


def test_lm_eval_shares_a_forward_only_among_single_token_endings():
    ctx = list(range(1, 21))  # 20 tokens
    letters = [(ctx, [50 + k]) for k in range(4)]  # MMLU: " A" .. " D", one token each
    words = [(ctx, [60, 61 + k]) for k in range(3)]  # two tokens each: (ctx + [60]) is one key for all three
    apart = [(ctx, [70 + k, 80]) for k in range(2)]  # different first tokens: a forward each
    c = counts.lm_eval_hf_counts(letters + words + apart, batch_size=2, max_length=1000, args=ARGS)
    assert c["requests"] == 9 and c["forwards"] == 1 + 1 + 2
    assert c["tokens"] == 20 + 21 + 21 + 21  # (ctx + cont)[:-1] of each forward
    assert c["head_positions"] == c["tokens"]  # the LM head at every position
    assert c["tokens_padded"] == 2 * 21 + 2 * 21  # two chunks of two, each padded to its longest
    cut = counts.lm_eval_hf_counts(letters, batch_size=1, max_length=8, args=ARGS)
    assert cut["tokens"] == 8  # the left-truncated window


def few_shot(n_questions, shots=600, tail=10, letters=4):
    shared = list(range(1000, 1000 + shots))
    reqs = []
    for q in range(n_questions):
        context = tuple(shared + [2000 + q] * tail)
        reqs += [Request(q, k, context, (3000 + k,), 1) for k in range(letters)]
    return reqs


def test_the_tree_computes_the_shared_shots_once_and_lm_eval_every_question():
    reqs = few_shot(5)
    plan = plan_tree(reqs, bytes_per_token=1)
    ours = counts.tree_counts(plan, reqs, ARGS)
    theirs = counts.lm_eval_hf_counts([(list(r.context_ids), list(r.continuation_ids)) for r in reqs], 4, 10_000,
                                      ARGS)
    assert ours["cached_nodes"] == 1 and ours["tokens"] == 600 + 5 * 10  # the shots once, each question's tail
    assert ours["head_positions"] == 5 * 4  # the head only where a letter is scored
    assert theirs["forwards"] == 5 and theirs["tokens"] == 5 * 610  # each question's context once
    ratio = theirs["flops"] / ours["flops"]
    assert 610 * 5 / 650 < ratio  # more than the token ratio: lm-eval also takes the head at every position
    body = sum(layer_param_counts(ARGS)) * ARGS.n_layers
    attention_ours = sum(10 * 600 + 10 * 11 // 2 for _ in range(5)) + 600 * 601 // 2
    assert ours["flops"] == 2 * body * 650 + 2 * 64 * 100 * 20 + 4 * 64 * attention_ours * ARGS.n_layers


def test_without_a_shared_prefix_the_tree_computes_what_lm_eval_does():
    reqs = [Request(q, k, tuple(range(100 * q + 1, 100 * q + 31)), (5 + k,), 1) for q in range(3) for k in range(4)]
    ours = counts.tree_counts(plan_tree(reqs, bytes_per_token=1), reqs, ARGS)
    theirs = counts.lm_eval_hf_counts([(list(r.context_ids), list(r.continuation_ids)) for r in reqs], 4, 10_000,
                                      ARGS)
    assert ours["cached_nodes"] == 0 and ours["tokens"] == theirs["tokens"] == 90
    assert ours["flops"] < theirs["flops"]  # only the head positions differ


def _results(choices, logliks, acc):
    return {"metrics": {"pt_mmlu": {"acc": acc, "acc_norm": None}}, "choices": choices, "logliks": logliks,
            "wall_s": 0.0, "peak_rss_mb": 1000.0, "error": None}


def test_compare_and_the_table():
    lm = _results({"t:0": [1, 1], "t:1": [0, 2]}, {"t:0": [-2.0, -1.0], "t:1": [-1.0, -3.0]}, 0.5)
    go = _results({"t:0": [1, 1], "t:1": [0, 0]}, {"t:0": [-2.0, -1.00002], "t:1": [-1.0, -3.0]}, 0.5)
    c = compare(lm, go)
    assert c["same_metrics"] and c["same_choices"] == 1 and c["questions"] == 2
    assert abs(c["max_abs_dloglik"] - 2e-5) < 1e-9 and c["min_margin"] == 1.0  # lm-eval's: -1 vs -2, -1 vs -3
    lm["wall_s"], go["wall_s"] = 300.0, 60.0
    row = {"model": "m", "suite": "mmlu", "batch_size": 8, "lm_eval": lm, "graphopt": go, "compare": c,
           "counts": {"n_questions": 2, "lm_eval": {"tokens": 1000, "flops": 10.0},
                      "graphopt": {"tokens": 200, "flops": 1.0}}, "metric_lm_eval": 0.5, "metric_graphopt": 0.5}
    line = markdown([row]).splitlines()[2]
    assert "| 300.0 (8) | 60.0 | 5.00 | 1,000 | 200 | 10.00 | 50% |" in line and "| 1/2 | 2.0e-05 | 1.0e+00 |" in line
