"""The decode engine (graphopt.generation.engine): static-KV-cache decoding through the optimised generation
graph equals recomputing the whole sequence every step (fp32: logits within 1e-5, identical greedy
tokens) on tiny GQA / tied / Qwen3 / sliding-window models, with prompts of different lengths decoding
together; continuous batching gives the completions of one prompt at a time; stop ids, stop rules,
max_new_tokens 0, shared prompt prefixes, fixed-shape steps."""
import pytest
import torch

from graphopt.generation.engine import DecodeEngine
from graphopt.generation.requests import GenerationRequest
from graphopt.generation.step import build_generation_graph
from tests._builders import random_model
from tests._family_models import qwen3_score_module

ATOL = 1e-5
FAMILIES = ["tiny-gqa", "tiny-tied", "tiny-qwen3", "tiny-window"]
ops = torch.ops.graphopt


def family_model(name):
    if name == "tiny-qwen3":  # random q/k norm weights
        return qwen3_score_module().model
    return random_model(name, seed=3)


def prompts(spec, seed=1, vocab=512):
    """[(prompt length, max_new_tokens)] -> GenerationRequests of random prompts."""
    g = torch.Generator().manual_seed(seed)
    return [GenerationRequest(tuple(torch.randint(0, vocab, (n,), generator=g).tolist()), k) for n, k in spec]


def recompute(model, request):
    """The whole sequence through the eager model at every step: (new ids, logits [k, V] of each)."""
    ids, new, logits = list(request.prompt_ids), [], []
    with torch.no_grad():
        for _ in range(request.max_new_tokens):
            row = model(torch.tensor([ids]))[0, -1].float()
            logits.append(row)
            new.append(int(row.argmax()))
            ids.append(new[-1])
    return new, logits


# lengths cross the window (8) and the width step; 5 prompts over 3 slots: slots are reused
SPEC = [(5, 7), (12, 3), (1, 9), (30, 12), (3, 5)]


@pytest.fixture(scope="module")
def graphs():
    """{family: (model, generation graph with logits, optimised by exact)}."""
    out = {}
    for family in FAMILIES:
        model = family_model(family)
        out[family] = model, build_generation_graph(model, "exact", with_logits=True)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_decode_equals_recomputation_step_by_step(graphs, family):
    model, graph = graphs[family]
    requests = prompts(SPEC)
    seen = {}
    engine = DecodeEngine(model, slots=3, width_step=16, graph=graph)
    out = engine.generate(requests, on_logits=lambda i, k, row: seen.__setitem__((i, k), row.clone()))
    for i, r in enumerate(requests):
        want, logits = recompute(model, r)
        assert out[i].ids == want and out[i].finish == "length" and out[i].steps == r.max_new_tokens
        for k, row in enumerate(logits):
            torch.testing.assert_close(seen[i, k], row, atol=ATOL, rtol=0)
    assert engine.stats["decode_tokens"] == sum(k - 1 for _, k in SPEC)
    assert engine.stats["prefill_tokens"] == sum(n for n, _ in SPEC)
    assert engine.stats["mean_batch"] > 1  # rows of different lengths decoded together


def test_prefill_in_padded_groups_and_in_chunks(graphs):
    """prefill_chunk 8: a 30-token prompt is prefilled alone in 4 chunks (the window, 8, crossed between
    chunks), short ones together in right-padded groups of at most 8 tokens; logits within 1e-5."""
    model, graph = graphs["tiny-window"]
    requests = prompts([(30, 4), (3, 3), (1, 5), (2, 2), (6, 3), (2, 4)], seed=11)
    seen = {}
    engine = DecodeEngine(model, slots=4, graph=graph, prefill_chunk=8)
    out = engine.generate(requests, on_logits=lambda i, k, row: seen.__setitem__((i, k), row.clone()))
    for i, r in enumerate(requests):
        want, logits = recompute(model, r)
        assert out[i].ids == want
        for k, row in enumerate(logits):
            torch.testing.assert_close(seen[i, k], row, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["tiny-gqa", "tiny-window"])
def test_argmax_graph_through_exact_cpu_gives_the_same_tokens(family):
    """exact-cpu's generation graph: the LM head is one packed-argmax tail (no log-softmax), every
    attention reads the cache in place (no cat of it): tokens equal the recomputation's."""
    model = family_model(family)
    graph = build_generation_graph(model, "exact-cpu")
    nodes = list(graph.optimized.graph.graph.nodes)
    targets = [n.target for n in nodes]
    assert targets.count(ops.cache_attention.default) == model.args.n_layers
    assert not [n for n in nodes if n.target is torch.ops.aten.cat.default and n.meta["val"].dim() == 4]  # K/V
    assert torch.ops.aten.log_softmax.int not in targets
    assert [r.name for r in graph.optimized.records][-2:] == ["cache_attention", "lean_graph"]
    requests = prompts(SPEC, seed=2)
    out = DecodeEngine(model, slots=2, graph=graph).generate(requests)
    assert [o.ids for o in out] == [recompute(model, r)[0] for r in requests]


def test_continuous_batching_equals_one_prompt_at_a_time():
    model = family_model("tiny-gqa")
    graph = build_generation_graph(model, "exact")
    requests = prompts([(4, 3), (9, 11), (2, 1), (17, 6), (6, 9), (11, 2), (3, 7)], seed=3)
    one = DecodeEngine(model, slots=1, graph=graph)
    many = DecodeEngine(model, slots=3, graph=graph)
    alone = [o.ids for o in one.generate(requests)]
    together = many.generate(requests)
    assert [o.ids for o in together] == alone
    assert one.stats["mean_batch"] == 1 and many.stats["mean_batch"] > 2
    # a finished row's slot is taken by the next prompt: fewer steps than the longest answer per batch of 3
    assert many.stats["decode_steps"] < one.stats["decode_steps"] / 2


def test_stop_ids_stop_rules_and_zero_new_tokens():
    model = family_model("tiny-tied")
    graph = build_generation_graph(model, "exact")
    base = prompts([(6, 10)], seed=4)[0]
    free = DecodeEngine(model, slots=2, graph=graph).generate([base])[0].ids
    stop_id = free[3]
    first = free.index(stop_id)
    requests = [GenerationRequest(base.prompt_ids, 10, stop_ids=(stop_id,)),
                GenerationRequest(base.prompt_ids, 10, stop_at=lambda ids: 2 if len(ids) == 4 else None),
                GenerationRequest(base.prompt_ids, 0),
                GenerationRequest(base.prompt_ids, 1)]
    eos, rule, zero, one = DecodeEngine(model, slots=2, graph=graph).generate(requests)
    assert (eos.ids, eos.finish, eos.steps) == (free[:first], "eos", first + 1)
    assert (rule.ids, rule.finish, rule.steps) == (free[:2], "stop", 4)
    assert (zero.ids, zero.finish, zero.steps) == ([], "length", 0)
    assert (one.ids, one.finish) == (free[:1], "length")


def test_shared_prompt_prefix_is_prefilled_once():
    """Six prompts behind one 40-token prefix (and two without it): the prefix is computed once and
    copied into each slot; completions equal those of each prompt prefilled whole."""
    model = family_model("tiny-window")
    graph = build_generation_graph(model, "exact")
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, 512, (40,), generator=g).tolist()
    tails = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (3, 7, 1, 5, 9, 2)]
    requests = [GenerationRequest(tuple(prefix + t), 5) for t in tails] + prompts([(8, 4), (4, 6)], seed=6)
    shared = DecodeEngine(model, slots=3, graph=graph, min_shared_tokens=16)
    whole = DecodeEngine(model, slots=3, graph=graph, share_prefix=False)
    assert [o.ids for o in shared.generate(requests)] == [o.ids for o in whole.generate(requests)]
    assert shared.stats["shared_prefix_tokens"] == 6 * 40
    assert shared.stats["prefill_tokens"] == whole.stats["prefill_tokens"] - 5 * 40


def test_fixed_shape_steps_give_the_same_completions():
    """static_shapes (what a CUDA graph replays; here the same buffers and body without the capture):
    every step runs all slots over the whole cache, writing each row's K/V itself; logits within 1e-5."""
    model = family_model("tiny-qwen3")
    graph = build_generation_graph(model, "exact", with_logits=True)
    requests = prompts(SPEC, seed=7)
    seen = {}
    fixed = DecodeEngine(model, slots=4, graph=graph, static_shapes=True, width_step=16)
    out = fixed.generate(requests, on_logits=lambda i, k, row: seen.__setitem__((i, k), row.clone()))
    for i, r in enumerate(requests):
        want, logits = recompute(model, r)
        assert out[i].ids == want
        for k, row in enumerate(logits):
            torch.testing.assert_close(seen[i, k], row, atol=ATOL, rtol=0)
    assert fixed.stats["slots"] == 4 and fixed._fixed is not None and fixed._fixed.graph is None
    steps, step = fixed.stats["decode_steps"], fixed._fixed
    fixed.generate(requests[:2])  # the cache and the fixed step (a CUDA graph on GPU) serve the next call too
    assert fixed._fixed is step and fixed.stats["decode_steps"] < steps


def test_eager_engine_and_too_long_prompt():
    model = family_model("tiny-gqa")
    engine = DecodeEngine(model, pipeline=None, slots=2)
    requests = prompts([(7, 4), (2, 6)], seed=8)
    assert [o.ids for o in engine.generate(requests)] == [recompute(model, r)[0] for r in requests]
    too_long = GenerationRequest(tuple(range(250)), 8)  # 250 + 8 - 1 positions > max_seq_len 256
    with pytest.raises(ValueError, match=r"request 1: 250 prompt tokens \+ 8 new tokens need 257 positions, more "
                                         r"than the model's max_seq_len 256"):
        engine.generate([requests[0], too_long])


def test_automatic_slots_fill_the_kv_budget_up_to_the_most():
    """slots=None: as many rows as the KV budget holds at the call's cache width (1 .. AUTO_MAX_SLOTS); the
    completions are the one-at-a-time ones."""
    from graphopt.generation.engine import AUTO_MAX_SLOTS, auto_slots
    assert auto_slots(1000, 100, 10**9) == AUTO_MAX_SLOTS and auto_slots(1000, 100, 250_000) == 2
    assert auto_slots(10**6, 4096, 1) == 1
    model = family_model("tiny-gqa")
    graph = build_generation_graph(model, "exact")
    requests = prompts([(4, 3), (9, 11), (2, 1), (17, 6), (6, 9)], seed=4)
    auto = DecodeEngine(model, graph=graph)
    got = auto.generate(requests)
    assert auto.stats["slots"] == len(requests)  # every prompt at once (the budget holds far more)
    one = DecodeEngine(model, slots=1, graph=graph)
    assert [o.ids for o in got] == [o.ids for o in one.generate(requests)]
    tight = DecodeEngine(model, graph=graph)
    tight.kv_budget = 2 * tight.layout.bytes_per_token * 64  # two rows of a 64-wide cache
    assert [o.ids for o in tight.generate(requests)] == [o.ids for o in got] and tight.stats["slots"] == 2
