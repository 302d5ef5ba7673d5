"""The model's KV cache: a forward over new tokens that reads the K/V of an already computed prefix
equals the full forward (fp32, 1e-5) on tiny GQA / tied / Qwen3 (q/k norms) / sliding-window models,
eager and captured + optimised by the exact and exact-cpu pipelines; the same captured graph fills a
cache, reads it under packed rows, and runs decode steps over a static cache whose unused slots the
mask hides (the shape a generation loop uses)."""
import copy

import pytest
import torch

from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.optimize_model import optimize, optimize_graph
from graphopt.pipeline import PassContext
from graphopt.scoring.batch import Request, ScoreModule
from graphopt.scoring.prefix_cache import (KVLayout, PrefillModule, cached_example_inputs, cached_mask,
                                           cached_score_module, hidden_slots, rows_under_prefix)
from graphopt.scoring.reference import reference_loglik
from tests._family_models import qwen3_score_module

ATOL = 1e-5
FAMILIES = ["tiny-gqa", "tiny-tied", "tiny-qwen3", "tiny-window"]
SDPA = torch.ops.aten.scaled_dot_product_attention.default


def family_model(name):
    if name == "tiny-qwen3":  # random q/k norm weights (init_random_weights sets norms to 1)
        return qwen3_score_module().model
    return init_random_weights(Transformer(ModelArgs.from_name(name)), seed=3).eval()


def ids_of(B, T, seed=0):
    return torch.randint(0, 512, (B, T), generator=torch.Generator().manual_seed(seed))


def empty_cache(model, B):
    return KVLayout.of_args(model.args).empty(B, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_reading_forward_equals_the_full_forward(family):
    """Chunks of 7, 13 and 10 tokens (the window, 8, is crossed inside and across chunks), each
    reading the K/V of the chunks before it, give the full forward's logits; the caches returned,
    laid end to end, are the whole sequence's."""
    model = family_model(family)
    ids = ids_of(2, 30)
    with torch.no_grad():
        full = model(ids)
        cache, outs = empty_cache(model, 2), []
        for lo, hi in ((0, 7), (7, 20), (20, 30)):
            out, new = model(ids[:, lo:hi], cache=cache)
            assert new.shape == (2, model.args.n_layers, 2, model.args.n_kv_heads, hi - lo, model.args.head_dim)
            cache = torch.cat([cache, new], dim=4)
            outs.append(out)
        _, whole = model(ids, cache=empty_cache(model, 2))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=0)
    torch.testing.assert_close(cache, whole, atol=ATOL, rtol=0)


def test_sliding_window_masks_cached_keys_by_their_positions():
    """With a window of 8 and a cache of 20 tokens, a query at position 20 must not see slots 0..12:
    dropping the window changes the cached forward, as it changes the full one."""
    model = family_model("tiny-window")
    ids = ids_of(1, 24, seed=4)
    with torch.no_grad():
        _, cache = model(ids[:, :20], cache=empty_cache(model, 1))
        out, _ = model(ids[:, 20:], cache=cache)
        model.args.sliding_window = None
        out_unwindowed, _ = model(ids[:, 20:], cache=cache)
    assert (out - out_unwindowed).abs().max() > 1e-3


def test_cache_of_the_wrong_shape_is_a_clear_error():
    model = family_model("tiny-gqa")
    with pytest.raises(ValueError, match=r"cache of shape .* expected \[2, n_layers, B, Hkv, P, head_dim\]"):
        model(ids_of(2, 4), cache=torch.zeros(2, 1, 2, 2, 3, 16))


def test_packed_rows_under_a_cached_prefix_equal_each_pair_alone():
    """A prefix of 12 tokens computed once (PrefillModule); two questions packed in one row after it,
    each context then its endings (positions from 12, endings restarting after their context), every
    token reading the cache: each request's log-likelihood equals the per-pair reference on the whole
    (prefix + context, continuation)."""
    model = family_model("tiny-window")
    prefix = ids_of(1, 12, seed=5)[0].tolist()
    tails = [[7, 8, 9], [10, 11]]
    endings = [[[20, 21], [22], [23, 24, 25]], [[30], [31, 32]]]
    full = [Request(q, c, tuple(prefix + tails[q]), tuple(e), 1) for q in range(2) for c, e in enumerate(endings[q])]
    tail = [Request(r.question, r.choice, r.context_ids[12:], r.continuation_ids, 1) for r in full]
    batch, = rows_under_prefix(tail, 12, max_tokens=4096)
    with torch.no_grad():
        causal = torch.ones(1, 12, 12, dtype=torch.bool).tril()
        cache = PrefillModule(model)(torch.tensor([prefix]), torch.arange(12)[None], causal, empty_cache(model, 1))
        out = ScoreModule(model)(batch.input_ids, batch.positions, cached_mask(batch, 12), batch.score_idx,
                                 batch.targets, None, None, cache.expand(-1, -1, batch.input_ids.shape[0], -1, -1, -1))
    got = torch.zeros(len(full), dtype=torch.float64).index_add_(0, batch.owners, out.double())
    torch.testing.assert_close(got, reference_loglik(model, full), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- captured and optimised

@pytest.fixture(scope="module")
def optimised():
    """{family: (model, {pipeline: runnable})}: ScoreModule(greedy, return_cache) with a cache captured
    once and optimised by exact; exact-cpu = the same graph + mkldnn_linear (exact-cpu's last pass)."""
    out = {}
    for family in FAMILIES:
        model = family_model(family)
        module = cached_score_module(model, return_cache=True)
        example = cached_example_inputs(KVLayout.of_args(model.args), vocab_size=model.args.vocab_size)
        exact = optimize(module, example, "exact")
        names = [r.name for r in exact.records]
        fn, _, _ = optimize_graph(copy.deepcopy(exact.graph), ["mkldnn_linear"],
                                  ctx=PassContext(example, model.args))
        out[family] = model, {"exact": exact, "exact-cpu": fn}, names
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pipeline", ["exact", "exact-cpu"])
def test_optimised_graph_fills_and_reads_a_cache(optimised, family, pipeline):
    """The one optimised graph: a 9-token prefix computed with hidden slots (B=1), its cache returned;
    then 3 rows of 6 tokens reading that cache (expanded, no copy), scoring every position: log-probs
    and greedy flags equal the eager full forward over prefix + row, within 1e-5."""
    model, fns, names = optimised[family]
    assert names == ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up",
                                  "sdpa_attention", "prune_lm_head", "fused_logprob", "cse", "dce"]
    if pipeline == "exact":  # the attention is SDPA over [cache | row] keys
        targets = [n.target for n in fns["exact"].graph.graph.nodes]
        assert targets.count(SDPA) == model.args.n_layers and torch.ops.aten.softmax.int not in targets
    fn, layout = fns[pipeline], KVLayout.of_args(model.args)
    prefix, rows = ids_of(1, 9, seed=6), ids_of(3, 6, seed=7)
    with torch.no_grad():
        mask = torch.cat([torch.zeros(1, 9, 2, dtype=torch.bool), torch.ones(9, 9).tril().bool()[None]], -1)
        one = torch.zeros(1, dtype=torch.long)
        _, _, cache = fn(prefix, torch.arange(9)[None], mask, one, one, None, None, hidden_slots(layout, 1))
        N = rows.numel()
        targets = ids_of(1, N, seed=8)[0]
        mask = torch.ones(6, 15).tril(9).bool().expand(3, 6, 15)
        logprobs, greedy, new = fn(rows, torch.arange(9, 15).expand(3, 6), mask, torch.arange(N), targets, None,
                                   None, cache.expand(-1, -1, 3, -1, -1, -1))
        full = model(torch.cat([prefix.expand(3, 9), rows], 1)).float()[:, 9:].reshape(N, -1)
    want = full.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(logprobs, want, atol=ATOL, rtol=0)
    assert torch.equal(greedy, full.argmax(-1) == targets)
    assert new.shape[2:5] == (3, layout.n_kv_heads, 6)


def test_one_capture_serves_every_size_a_call_needs(optimised):
    """Captured on cached_example_inputs (B=2, T=2, P=1): rows of 1 or more tokens, 1 or more rows,
    over MIN_SLOTS = 2 cache slots or more (a 1-token row after a 1-token prefix + a hidden slot)."""
    model, fns, _ = optimised["tiny-gqa"]
    layout = KVLayout.of_args(model.args)
    for B, T, P in [(1, 1, 2), (3, 1, 2), (1, 2, 2), (2, 5, 7), (4, 1, 9)]:
        ids, cache = ids_of(B, T, seed=B + T + P), torch.randn(2, 2, B, layout.n_kv_heads, P, layout.head_dim)
        mask = torch.ones(B, T, P + T, dtype=torch.bool).tril(P)
        idx = torch.arange(B * T)
        with torch.no_grad():
            got = fns["exact-cpu"](ids, torch.arange(P, P + T).expand(B, T), mask, idx, idx % 7, None, None, cache)
            want = cached_score_module(model, return_cache=True)(ids, torch.arange(P, P + T).expand(B, T), mask, idx,
                                                                  idx % 7, None, None, cache)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["tiny-gqa", "tiny-window"])
def test_decode_steps_over_a_static_cache(optimised, family):
    """Generation's shape: a static cache of 16 slots per row, one new token per step (T = 1), the
    unfilled slots hidden by the mask, the returned K/V written into the next slot: each step's
    log-probs equal the full forward's at that position (two rows of different lengths decoding
    together)."""
    model, fns, _ = optimised[family]
    fn, layout = fns["exact-cpu"], KVLayout.of_args(model.args)
    S, seq = 16, ids_of(2, 12, seed=9)
    lengths = [3, 5]  # row b starts with lengths[b] tokens already cached
    with torch.no_grad():
        full = model(seq).float().log_softmax(-1)
        static = layout.empty(2, S)
        for b, n in enumerate(lengths):
            _, new = model(seq[b:b + 1, :n], cache=layout.empty(1, 0))
            static[:, :, b:b + 1, :, :n] = new
        filled = torch.tensor(lengths)
        for step in range(6):
            pos = filled.clone()  # [B]
            token = seq[torch.arange(2), pos][:, None]  # [B, 1]
            mask = torch.cat([torch.arange(S)[None] < filled[:, None], torch.ones(2, 1, dtype=torch.bool)], -1)
            target = seq[torch.arange(2), pos + 1]
            logprobs, _, new = fn(token, pos[:, None], mask[:, None], torch.arange(2), target, None, None, static)
            torch.testing.assert_close(logprobs, full[torch.arange(2), pos, target], atol=ATOL, rtol=0)
            for b in range(2):
                static[:, :, b, :, pos[b]] = new[:, :, b, :, 0]
            filled += 1
