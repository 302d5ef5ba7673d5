"""Passes on the generation graph (NextTokenModule: the model reading a KV cache, the greedy next token at
score_idx): cache_attention reads the cache in place and gives it the attention's dtype; fused_logprob's
greedy form (graphopt.linear_argmax) and mkldnn_linear's packed argmax; quantize_int8 and
prune_structured on the step graph; tensor_parallel over 2 ranks (gloo) decoding with a sharded cache."""
import copy

import pytest
import torch

from graphopt.generation.engine import DecodeEngine
from graphopt.generation.requests import GenerationRequest
from graphopt.generation.step import NextTokenModule, build_generation_graph, step_example_inputs
from graphopt.graph_capture import capture
from graphopt.kernels.linear_argmax import linear_argmax_reference
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext
from graphopt.scoring.prefix_cache import KVLayout
from tests._builders import random_model

ops, aten = torch.ops.graphopt, torch.ops.aten
EXACT = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
         "prune_lm_head", "fused_logprob", "cse", "dce"]


def build(preset="tiny-gqa", seed=2):
    return random_model(preset, seed=seed)


@pytest.fixture(scope="module")
def graph():
    model = build()
    example = step_example_inputs(KVLayout.of_args(model.args))
    module = NextTokenModule(model, with_logits=True)
    return model, module, capture(module, example), example


def run(graph, passes):
    model, module, gm, example = graph
    return run_passes(copy.deepcopy(gm), passes, PassContext(example_inputs=example, model_args=model.args))


def decode_inputs(model, B=3, S=20, seed=0, dtype=torch.float32):
    """A decode step: B rows at positions 5, 9, 13 over a static cache of S slots (filled by the eager
    model; the slots past a row's position hold another row's values and are masked)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, model.args.vocab_size, (B, S), generator=g)
    with torch.no_grad():
        _, cache = model(seq, cache=KVLayout.of_args(model.args).empty(B, 0))
    pos = torch.tensor([5, 9, 13])[:B]
    mask = torch.cat([torch.arange(S)[None] < pos[:, None], torch.ones(B, 1, dtype=torch.bool)], 1)[:, None]
    return seq[torch.arange(B), pos][:, None], pos[:, None], mask, torch.arange(B), cache.to(dtype)


def targets_of(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def kv_cats(gm):
    return [n for n in gm.graph.nodes if n.target is aten.cat.default and n.meta["val"].dim() == 4]


@pytest.mark.parametrize("passes", [EXACT + ["cache_attention"], ["cache_attention"]])
def test_cache_attention_reads_the_cache_in_place(graph, passes):
    """After SDPA, and on the written-out attention (repeat_interleave of [cache | row] for GQA): one
    graphopt.cache_attention per layer, no K/V concatenation or repeat left; logits and new K/V equal
    the eager model's within 1e-5 on a decode step over a strided view of a larger static cache."""
    model, module, before, _ = graph
    assert len(kv_cats(before)) == 2 * model.args.n_layers
    gm, records = run(graph, passes)
    assert records[-1].stats["matches"] == model.args.n_layers == targets_of(gm).count(ops.cache_attention.default)
    assert not kv_cats(gm) and aten.repeat_interleave.self_int not in targets_of(gm)
    ids, pos, mask, idx, cache = decode_inputs(model, S=24)
    view = cache[:, :, :, :, :20]  # a static cache read up to 20 positions: strided, not copied
    with torch.no_grad():
        got, want = gm(ids, pos, mask[..., 4:], idx, view), module(ids, pos, mask[..., 4:], idx, view)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_cache_attention_gives_the_cache_the_attention_dtype(graph):
    """After cast_dtype (bfloat16 attention) the cache input is bfloat16: the casts of it per layer are
    no-ops, the caller allocates the cache in bf16 (KVLayout.of_graph). Logits stay within bf16
    rounding of the graph before the pass fed the fp32 cache; with attention float32 it stays fp32."""
    model, module, _, _ = graph
    low, _ = run(graph, EXACT + ["cast_dtype"])
    gm, records = run(graph, EXACT + ["cast_dtype", "cache_attention"])
    assert records[-1].stats["cache_dtype"] == "bfloat16" and KVLayout.of_graph(gm).dtype == torch.bfloat16
    x = decode_inputs(model)
    with torch.no_grad():
        got = gm(*x[:4], x[4].to(torch.bfloat16))
        want = low(*x)
    torch.testing.assert_close(got[2], want[2], atol=0.05, rtol=0)
    f32, records = run(graph, EXACT + [{"name": "cast_dtype", "attention": "float32"}, "cache_attention"])
    assert records[-1].stats["matches"] == model.args.n_layers and KVLayout.of_graph(f32).dtype == torch.float32


def test_greedy_head_is_linear_argmax_and_mkldnn_packs_it(monkeypatch):
    """NextTokenModule without logits: prune_lm_head + fused_logprob leave one graphopt.linear_argmax
    (no log_softmax, no [N, V] linear); mkldnn_linear runs it as oneDNN linears over vocabulary chunks
    (128 here: 4 chunks) whose best is the eager argmax. The head is tied: the embedding lookup reads the
    table, so the chunks are views of it (one table in memory, nothing packed for the head)."""
    import graphopt.passes.mkldnn_linear as mk
    monkeypatch.setattr(mk, "HEAD_CHUNK", 128)
    model = build("tiny-tied")
    example = step_example_inputs(KVLayout.of_args(model.args))
    gm, records = run_passes(capture(NextTokenModule(model), example), EXACT, PassContext(example, model.args))
    t = targets_of(gm)
    assert t.count(ops.linear_argmax.default) == 1 and aten.log_softmax.int not in t and aten.argmax.default not in t
    assert records[EXACT.index("fused_logprob")].stats["linear_fused"] == 1
    packed, _ = run_passes(copy.deepcopy(gm), ["mkldnn_linear"], PassContext(example, model.args))
    assert ops.linear_argmax.default not in targets_of(packed)
    assert not [n for n in packed.graph.nodes if n.op == "get_attr" and ".weight_mkldnn_" in str(n.target)]
    chunks = [n for n in packed.graph.nodes if n.op == "call_function"
              and n.target is torch.ops.mkldnn._linear_pointwise.default and n.args[1].target is aten.slice.Tensor]
    assert len(chunks) == 4  # views of the tied table, one per vocabulary chunk
    x = decode_inputs(model)
    with torch.no_grad():
        want = NextTokenModule(model)(*x)[0]
        assert torch.equal(gm(*x)[0], want) and torch.equal(packed(*x)[0], want)


def test_lean_graph_drops_checks_and_noop_casts_and_flattens_weight_reads(graph):
    """Outputs bit-equal; no export assert, input guard or same-dtype cast left; every get_attr reads a
    root attribute (the same tensor as before)."""
    model, module, _, example = graph
    before, _ = run(graph, EXACT + ["cache_attention"])
    after, records = run(graph, EXACT + ["cache_attention", "lean_graph"])
    stats = records[-1].stats
    assert stats["asserts"] > 0 and stats["casts"] > 0 and stats["matches"] == stats["asserts"] + stats["casts"]
    t = targets_of(after)
    assert aten._assert_tensor_metadata.default not in t and not after.graph.find_nodes(op="call_module")
    assert all(val.dtype != n.args[0].meta["val"].dtype for n in after.graph.nodes
               if n.target in (aten.to.dtype, aten.type_as.default) for val in [n.meta["val"]])
    reads = after.graph.find_nodes(op="get_attr")
    assert reads and all("." not in n.target for n in reads)
    assert all(isinstance(getattr(after, n.target), torch.Tensor) for n in reads)
    x = decode_inputs(model)
    with torch.no_grad():
        for a, b in zip(after(*x), before(*x)):
            assert torch.equal(a, b)


def test_linear_argmax_takes_the_first_of_equal_maxima_across_chunks():
    hidden = torch.ones(2, 3)
    weight = torch.zeros(10, 3)
    weight[[2, 6, 9]] = 1.0  # row 0: three equal maxima in chunks 0, 1, 2 (chunk = 4)
    hidden[1] = -1.0  # row 1: every nonzero row is -3: the first zero row (index 0) wins
    assert linear_argmax_reference(hidden, weight, chunk=4).tolist() == [2, 0]
    assert ops.linear_argmax(hidden, weight).tolist() == [2, 0]


def test_int8_pipeline_on_the_step_graph():
    """The int8 named pipeline (bf16 + W8A8 linears, attention in float32) rewrites the step graph's
    projections (the cache stays float32: its attention reads it so); logits stay within int8 rounding
    of the eager fp32 model (random weights: loose)."""
    model = build()
    graph = build_generation_graph(model, "int8", with_logits=True)
    t = targets_of(graph.optimized.graph)
    assert t.count(ops.int8_linear.default) >= 3 * model.args.n_layers and graph.layout.dtype == torch.float32
    request = GenerationRequest(tuple(range(7, 19)), 4)
    seen = []
    DecodeEngine(model, graph=graph).generate([request], on_logits=lambda i, k, row: seen.append(row))
    with torch.no_grad():
        want = model(torch.tensor([request.prompt_ids]))[0, -1]
    assert len(seen) == 4 and (seen[0] - want).abs().max() < 0.15


def test_prune_structured_model_decodes_with_its_smaller_cache():
    """prune_structured (one kv group of two per layer) on the step graph: the cache holds one kv head,
    and decoding through the pruned graph equals prefilling the whole sequence through it each step."""
    model = build()
    graph = build_generation_graph(model, [{"name": "prune_structured", "ratio": 0.5, "what": "heads"}, *EXACT])
    assert graph.layout.n_kv_heads == 1
    request = GenerationRequest(tuple(range(30, 41)), 6)
    out = DecodeEngine(model, graph=graph).generate([request])[0].ids
    ids, want = list(request.prompt_ids), []
    for _ in range(6):  # the pruned graph over the whole sequence, nothing cached (a masked hidden slot)
        n = len(ids)
        mask = torch.cat([torch.zeros(n, 4, dtype=torch.bool), torch.ones(n, n).tril().bool()], 1)[None]
        with torch.no_grad():
            nxt, _ = graph.run(torch.tensor([ids]), torch.arange(n)[None], mask, torch.tensor([n - 1]),
                               graph.layout.empty(1, 4))
        want.append(int(nxt[0]))
        ids.append(want[-1])
    assert out == want


# ---------------------------------------------------------------- tensor_parallel (2 ranks, gloo)

def tp_decode_worker(presets):
    """Per preset: the generation graph sharded on this rank (exact + tensor_parallel, the head
    replicated), decoding over this rank's kv heads: completions equal to the eager recomputation."""
    import torch.distributed as dist
    rank, ws = dist.get_rank(), dist.get_world_size()
    out = []
    for preset in presets:
        model = build(preset)
        graph = build_generation_graph(model, ["merge_qkv", "sdpa_attention", "tensor_parallel"], rank=rank,
                                       world_size=ws)
        requests = [GenerationRequest(tuple(range(3, 3 + n)), k) for n, k in ((6, 5), (11, 3))]
        got = [c.ids for c in DecodeEngine(model, graph=graph, slots=2).generate(requests)]
        want = []
        for r in requests:
            ids = list(r.prompt_ids)
            for _ in range(r.max_new_tokens):
                with torch.no_grad():
                    ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
            want.append(ids[len(r.prompt_ids):])
        out.append({"preset": preset, "kv_heads": graph.layout.n_kv_heads, "equal": got == want})
    return out


@pytest.mark.distributed
def test_tensor_parallel_decodes_with_a_sharded_cache():
    from graphopt.distributed.launch import launch
    results = launch(tp_decode_worker, 2, args=(["tiny-gqa", "tiny-gqa1"],), timeout_s=240)
    for per_rank in results:
        gqa, gqa1 = per_rank
        assert gqa["kv_heads"] == 1 and gqa1["kv_heads"] == 1 and gqa["equal"] and gqa1["equal"], per_rank
