"""Passes on a graph that reads a KV cache (ScoreModule with a `cache` input, captured once): each one
that touches attention, RoPE, the projections, the head, dtypes or sharding either rewrites it (node
targets counted, numerics against the eager model) or refuses it with a clear reason."""
import copy

import pytest
import torch

from graphopt.graph_capture import capture
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from graphopt.scoring.prefix_cache import (KVLayout, PrefillModule, cached_example_inputs, cached_score_module,
                                           hidden_slots)

ops, aten = torch.ops.graphopt, torch.ops.aten
EXACT = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
         "prune_lm_head", "fused_logprob", "cse", "dce"]


def build(preset, seed=2):
    model = init_random_weights(Transformer(ModelArgs.from_name(preset)), seed=seed).eval()
    return model, cached_score_module(model, return_cache=True)


def cached_inputs(model, B=3, T=6, P=9, seed=0, cache=None):
    """Rows of T tokens after a P-token prefix (its cache from the eager model), every position scored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.args.vocab_size, (B, P + T), generator=g)
    with torch.no_grad():
        _, full_cache = model(ids[:, :P], cache=KVLayout.of_args(model.args).empty(B, 0))
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(P).expand(B, T, P + T)
    N = B * T
    targets = torch.randint(0, model.args.vocab_size, (N,), generator=g)
    return (ids[:, P:], torch.arange(P, P + T).expand(B, T), mask, torch.arange(N), targets, None, None,
            full_cache if cache is None else cache(full_cache))


@pytest.fixture(scope="module")
def graph():
    model, module = build("tiny-gqa")
    example = cached_example_inputs(KVLayout.of_args(model.args), vocab_size=model.args.vocab_size)
    return model, module, capture(module, example), example


def run(graph, passes):
    model, module, gm, example = graph
    return run_passes(copy.deepcopy(gm), passes, PassContext(example_inputs=example, model_args=model.args))


def targets_of(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_exact_passes_rewrite_the_cached_graph(graph):
    model, module, _, _ = graph
    gm, records = run(graph, EXACT)
    t, L = targets_of(gm), model.args.n_layers
    assert t.count(ops.rope.default) == 2 * L  # q and k of each layer, before the cache is prepended
    assert t.count(aten.scaled_dot_product_attention.default) == L
    assert t.count(ops.linear_logprob_greedy.default) == 1 and aten.log_softmax.int not in t
    assert sum("wqkv_weight" in str(n.target) for n in gm.graph.nodes if n.op == "get_attr") == L
    assert sum("w13_weight" in str(n.target) for n in gm.graph.nodes if n.op == "get_attr") == L
    assert t.count(aten.cat.default) >= 2 * L  # k and v: [cache | row]
    x = cached_inputs(model)
    with torch.no_grad():
        got, want = gm(*x), module(*x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pipeline,atol", [(["cast_dtype"], 0.05), ([{"name": "cast_dtype", "attention": "float32"},
                                                                     "quantize_int8"], 0.1)])
def test_cast_dtype_and_int8_cast_the_cache_where_it_meets_the_row(graph, pipeline, atol):
    """The float32 cache is cast to bfloat16 at the cat with the row's bf16 keys (else SDPA sees mixed
    dtypes); the K/V returned are float32 again; log-probs within bf16 / int8 rounding of eager fp32."""
    model, module, _, _ = graph
    gm, records = run(graph, EXACT + pipeline)
    cats = [n for n in gm.graph.nodes if n.target is aten.cat.default and n.meta["val"].dim() == 4]
    assert cats and all(n.meta["val"].dtype == torch.bfloat16 for n in cats)
    cache = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "cache")
    assert cache.meta["val"].dtype == torch.float32
    if "quantize_int8" in str(pipeline):
        assert targets_of(gm).count(ops.int8_linear.default) == records[-1].stats["matches"] > 0
    x = cached_inputs(model)
    with torch.no_grad():
        (lp, greedy, new), (lp0, _, new0) = gm(*x), module(*x)
    assert new.dtype == torch.float32 and new.shape == new0.shape
    torch.testing.assert_close(lp, lp0, atol=atol * 10, rtol=0)  # log-probs of random targets: |lp| ~ 8
    torch.testing.assert_close(new, new0, atol=atol, rtol=0)


def test_prefill_graph_keeps_only_what_the_cache_needs():
    """PrefillModule returns the K/V only: after exact the last layer computes its k and v projections
    and nothing else (its queries, attention, wo, FFN and the final norm are dead; the merge skips the
    dead group instead of failing on it), and the cache equals the eager model's."""
    model, _ = build("tiny-gqa")
    layout = KVLayout.of_args(model.args)
    module = PrefillModule(model)
    gm, records = run_passes(capture(module, cached_example_inputs(layout, prefill=True)), EXACT,
                             PassContext(model_args=model.args))
    L = model.args.n_layers
    assert records[3].name == "merge_qkv" and records[3].stats["matches"] == L - 1
    assert targets_of(gm).count(aten.linear.default) == 4 * (L - 1) + 2
    x = cached_inputs(model)
    x = (x[0], x[1], x[2], x[7])
    with torch.no_grad():
        torch.testing.assert_close(gm(*x), module(*x), atol=1e-5, rtol=0)


def test_prefix_attention_refuses_a_cached_graph(graph):
    with pytest.raises(PassError, match=r"reads a KV cache .*use a pipeline without it"):
        run(graph, ["sdpa_attention", "prefix_attention"])


def test_prune_structured_heads_shrink_the_cache_and_stay_consistent(graph):
    """Heads pruned (l1, per layer: one of two kv groups): the cache input holds one kv head, and the
    pruned graph is consistent with itself: a prefix filled by it, then the rest reading that cache,
    equals the whole sequence through it (with hidden slots); and it differs from the unpruned model."""
    model, module, _, _ = graph
    gm, records = run(graph, [{"name": "prune_structured", "ratio": 0.5, "what": "heads"}])
    assert records[-1].stats["kv_groups_removed"] == model.args.n_layers
    layout = KVLayout.of_graph(gm)
    assert layout.n_kv_heads == 1 == model.args.n_kv_heads - 1
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 512, (1, 14), generator=g)
    targets = torch.randint(0, 512, (14,), generator=g)

    def rows(lo, hi, cache, visible):
        causal = torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril()
        mask = torch.cat([torch.full((hi - lo, cache.shape[4]), visible), causal], 1)
        return gm(ids[:, lo:hi], torch.arange(lo, hi)[None], mask[None], torch.arange(hi - lo), targets[lo:hi],
                  None, None, cache)

    with torch.no_grad():
        whole, _, _ = rows(0, 14, hidden_slots(layout, 1), False)
        first, _, cache = rows(0, 5, hidden_slots(layout, 1), False)
        rest, _, _ = rows(5, 14, cache, True)
        unpruned = module(ids, torch.arange(14)[None], torch.ones(1, 14, 14).tril().bool(), torch.arange(14),
                          targets, None, None, KVLayout.of_args(model.args).empty(1, 0))[0]
    assert cache.shape[3] == 1
    torch.testing.assert_close(torch.cat([first, rest]), whole, atol=1e-5, rtol=0)
    assert (whole - unpruned).abs().max() > 1e-3


def test_prune_structured_refuses_calibration_criteria_on_a_cached_graph(graph, tmp_path):
    (tmp_path / "calib.txt").write_text("some text\n")
    with pytest.raises(PassError, match=r"criterion wanda on a graph that reads a KV cache.*use l1"):
        run(graph, [{"name": "prune_structured", "ratio": 0.5, "criterion": "wanda",
                     "calibration": str(tmp_path / "calib.txt")}])


# ---------------------------------------------------------------- tensor_parallel (2 ranks, gloo)

def tp_cache_worker(presets):
    """Per preset: the cached ScoreModule captured, merged and sharded on this rank; fed the eager
    prefix cache cut to this rank's kv heads, it must give the eager log-probs and this rank's slice
    of the eager K/V of the row."""
    import torch.distributed as dist

    from graphopt.distributed.plan import head_layout
    rank, ws = dist.get_rank(), dist.get_world_size()
    out = []
    for preset in presets:
        model, module = build(preset)
        example = cached_example_inputs(KVLayout.of_args(model.args), vocab_size=model.args.vocab_size)
        ctx = PassContext(example_inputs=example, model_args=model.args, rank=rank, world_size=ws)
        gm, records = run_passes(capture(module, example), ["merge_qkv", "sdpa_attention", "tensor_parallel"], ctx)
        kv0, kv1 = head_layout(model.args, ws, rank).kv_heads
        x = cached_inputs(model, cache=lambda c: c[:, :, :, kv0:kv1].contiguous())
        full = cached_inputs(model)
        with torch.no_grad():
            (lp, greedy, new), (lp0, greedy0, new0) = gm(*x), module(*full)
        out.append({"preset": preset, "cache_heads": records[-1].stats["cache_heads"], "kv": (kv0, kv1),
                    "lp": (lp - lp0).abs().max().item(), "greedy": bool(torch.equal(greedy, greedy0)),
                    "new": (new - new0[:, :, :, kv0:kv1]).abs().max().item()})
    return out


@pytest.mark.distributed
def test_tensor_parallel_shards_the_cache_by_kv_heads():
    """tiny-gqa (2 kv heads: one per rank) and tiny-gqa1 (1 kv head, replicated on both ranks)."""
    from graphopt.distributed.launch import launch
    results = launch(tp_cache_worker, 2, args=(["tiny-gqa", "tiny-gqa1"],), timeout_s=240)
    for rank, per_rank in enumerate(results):
        gqa, gqa1 = per_rank
        assert gqa["kv"] == (rank, rank + 1) and gqa["cache_heads"] == 1
        assert gqa1["kv"] == (0, 1) and gqa1["cache_heads"] == 0  # one head already: the cache keeps its shape
        for r in per_rank:
            assert r["lp"] <= 1e-5 and r["new"] <= 1e-5 and r["greedy"], r
