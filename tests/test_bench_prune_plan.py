"""benchmarks/prune_plan.py: the plan's kept parameters are a built pruned model's exactly, the figures fall
with the ratio, a heads ratio under one kv group removes none (and the table says so), and the check's
fresh-process path loads and scores a tiny pruned model with the computed parameter count."""
import pytest
import torch

from benchmarks.prune_plan import (GIB, GRID, PRUNINGS, activation_bytes, check, markdown, param_count, plan_row,
                                   pruned_args, smallest_fitting)
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer


def built_params(args: ModelArgs) -> int:
    """sum of numel of Transformer(args)'s parameters (each tensor once: a tied head is the table)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(args).parameters())


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa", "tiny-qwen", "tiny-tied", "tiny-qwen3"])
@pytest.mark.parametrize("pruning", PRUNINGS)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.99])
def test_kept_params_are_the_built_models(preset, pruning, ratio):
    args, cut = pruned_args(ModelArgs.from_name(preset), ratio, pruning)
    assert param_count(args) == built_params(args) == plan_row(preset, ratio, pruning)["params"]
    base = ModelArgs.from_name(preset)
    assert args.hidden_dim == base.hidden_dim - cut["ffn_channels"]
    assert args.n_kv_heads == base.n_kv_heads - cut["kv_groups"] >= 1
    assert args.n_heads // args.n_kv_heads == base.n_heads // base.n_kv_heads  # whole groups: n_rep unchanged


@pytest.mark.parametrize("preset", ["llama-3.1-8b", "qwen2.5-7b"])
def test_full_shapes_match_the_built_models(preset):
    args = ModelArgs.from_name(preset)
    assert param_count(args) == built_params(args)
    pruned, _ = pruned_args(args, 0.43, "both")
    assert param_count(pruned) == built_params(pruned)


def test_published_sizes():
    assert round(param_count(ModelArgs.from_name("llama-3.1-8b")) / 1e9, 2) == 8.03
    assert round(param_count(ModelArgs.from_name("qwen2.5-7b")) / 1e9, 2) == 7.62


@pytest.mark.parametrize("preset", ["llama-3.1-8b", "qwen2.5-7b"])
@pytest.mark.parametrize("pruning", PRUNINGS)
def test_monotonic_in_the_ratio(preset, pruning):
    rows = [plan_row(preset, r, pruning) for r in GRID]
    for key in ("params", "weight_bytes", "activation_bytes", "total_bytes"):
        values = [r[key] for r in rows]
        assert all(a >= b for a, b in zip(values, values[1:])), key
    if pruning != "heads":  # every 1 % step removes FFN channels
        totals = [r["total_bytes"] for r in rows]
        assert all(a > b for a, b in zip(totals, totals[1:]))


def test_kv_group_rounding():
    # qwen2.5-7b: 28 query heads in 4 kv groups of 7; 24 % wants int(6.72) = 6 heads: less than a group
    args, cut = pruned_args(ModelArgs.from_name("qwen2.5-7b"), 0.24, "heads")
    assert (cut["kv_groups"], args.n_kv_heads, args.n_heads) == (0, 4, 28)
    assert "less than one kv group" in cut["note"] and "no heads removed" in cut["note"]
    assert plan_row("qwen2.5-7b", 0.24, "heads")["params"] == plan_row("qwen2.5-7b", 0.0, "heads")["params"]
    args, cut = pruned_args(ModelArgs.from_name("qwen2.5-7b"), 0.25, "heads")
    assert (cut["kv_groups"], args.n_kv_heads, args.n_heads) == (1, 3, 21) and "note" not in cut
    # at most n_kv - 1 groups go: one is always kept
    args, cut = pruned_args(ModelArgs.from_name("llama-3.1-8b"), 0.99, "heads")
    assert (args.n_kv_heads, args.n_heads) == (1, 4)
    rec = {**plan_row("qwen2.5-7b", 0.24, "heads"), "budget_gib": 24, "fits": True}
    assert "kv groups 4 (none removed)" in markdown([rec])


def test_smallest_fitting_is_the_first_that_fits():
    budget = 12
    r = smallest_fitting("llama-3.1-8b", "ffn", budget)
    assert r["fits"] and r["total_bytes"] <= budget * GIB
    before = plan_row("llama-3.1-8b", round(r["ratio"] - 0.01, 2), "ffn")
    assert before["total_bytes"] > budget * GIB
    # heads alone cannot bring an 8B under 12 GiB: the table says none fits, with the 99 % figure
    h = smallest_fitting("llama-3.1-8b", "heads", budget)
    assert not h["fits"] and h["total_bytes"] > budget * GIB
    assert "none fits (99 %: " in markdown([h])


def test_activations_grow_with_tokens_and_not_with_the_vocabulary():
    args = ModelArgs.from_name("llama-3.1-8b")
    small, big = activation_bytes(args, 1024, 256, 1024), activation_bytes(args, 4096, 256, 4096)
    assert big["ffn"] == 4 * small["ffn"] and big["total"] > small["total"]
    # the LM head is chunked: a 10x vocabulary costs no more activation memory
    wide = activation_bytes(ModelArgs(**{**args.to_dict(), "vocab_size": 10 * args.vocab_size}), 4096, 256, 4096)
    assert wide["lm head"] == big["lm head"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pruning 'rows' is not one of ffn, heads, both"):
        pruned_args(ModelArgs.from_name("tiny"), 0.1, "rows")
    with pytest.raises(ValueError, match=r"ratio 1.2 must be in \[0, 1\)"):
        pruned_args(ModelArgs.from_name("tiny"), 1.2, "ffn")
    with pytest.raises(KeyError, match="unknown model preset 'llama-8b'"):
        check("llama-8b", 0.4, "ffn")
    with pytest.raises(ValueError, match="removes nothing.*less than one kv group"):
        check("tiny-gqa", 0.2, "heads")  # 4 heads in 2 groups: 20 % wants 0 heads
    with pytest.raises(MemoryError, match="only 0.1 GiB available"):
        check("llama-3.1-8b", 0.4, "ffn", available=GIB // 10)


def test_check_in_a_fresh_process_loads_the_planned_shape():
    r = check("tiny-gqa", 0.5, "both", tokens=256)
    assert r["params"] == r["computed_params"] == plan_row("tiny-gqa", 0.5, "both")["params"]
    assert r["rows"] * r["row_len"] <= 256 and r["scored"] > 0
    assert r["max_logprob"] <= 0
    assert r["peak_rss_bytes"] >= r["rss_start_bytes"] > 0
    assert r["rss_growth_bytes"] == r["peak_rss_bytes"] - r["rss_start_bytes"]
