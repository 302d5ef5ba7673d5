"""tensor_parallel on spawned gloo worlds of 2 and 4 CPU processes: the sharded graph's log-probs
equal the unsharded graph's (1e-5, fp32), on a second batch shape too (dynamic graph); all-reduce
counts, rewrite counts and per-rank parameter bytes are asserted; the DTensor peer
(parallelize_module with Colwise/RowwiseParallel) gives the same numbers.

Spawning is slow on a loaded 2-core machine, so each world runs many checks (tests/_dist_workers.py)."""
from __future__ import annotations

import pytest
import torch

from graphopt.distributed.launch import launch
from graphopt.distributed.plan import head_layout, shard_slice
from graphopt.model.args import ModelArgs
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError, get_pass
from tests import _dist_workers as W

TOL = 1e-5


def _merge_cases(ws: int) -> list:
    """merge_qkv / merge_gate_up before sharding, when those passes exist in the library."""
    from graphopt.pipeline import _REGISTRY, load_pass_library
    load_pass_library()
    names = [n for n in ("merge_qkv", "merge_gate_up") if n in _REGISTRY]
    return [("tiny-gqa1", {}, tuple(names))] if names else []


def _expected_layer_bytes(args: ModelArgs, ws: int) -> int:
    lay = head_layout(args, ws, 0)
    D, kvl = args.head_dim, lay.kv_heads[1] - lay.kv_heads[0]
    per_layer = (2 * args.dim * args.n_heads * D // ws  # wq, wo
                 + 2 * args.dim * kvl * D  # wk, wv (kv heads replicated when n_kv_heads < ws)
                 + 3 * args.dim * args.hidden_dim // ws)  # w1, w3, w2
    return 4 * args.n_layers * per_layer


def _expected_views(args: ModelArgs, ws: int, before) -> int:
    """Literals tensor_parallel sets: RoPE's [B, T, H, -1, 2] head counts that change (q always, k
    unless its one kv head is replicated) and repeat_interleave's n_rep for k and v where the local
    ratio differs. The model's own head views are [B, T, -1, D] and stay as they are."""
    lay = head_layout(args, ws, 0)
    rope = 0 if "fuse_rope" in before else 1 + (lay.kv_heads[1] - lay.kv_heads[0] != args.n_kv_heads)
    repeat = 0 if "sdpa_attention" in before else 2 * (lay.n_rep != args.n_heads // args.n_kv_heads)
    return args.n_layers * (rope + repeat)


def _check(results: list, ws: int) -> None:
    assert len(results) == ws
    for rank_results in results:
        for r in rank_results:
            args = W.model_args(r["preset"])
            where = f"rank of {ws}, {r['preset']} {r['options']} after {r['before']}"
            assert r["diff"] <= TOL, f"{where}: sharded vs unsharded graph differ by {r['diff']}"
            assert r["diff_eager"] <= TOL, f"{where}: sharded graph vs eager differ by {r['diff_eager']}"
            assert r["diff2"] <= TOL, f"{where}: second batch shape differs by {r['diff2']}"
            vp = r["options"].get("vocab_parallel", False)
            tied_vp = vp and args.tie_embeddings  # the lookup reads the head's vocab slice: one more all-reduce
            lookup_cut = tied_vp or (r["options"].get("embedding_parallel", False) and not args.tie_embeddings)
            st = r["stats"]
            merged = "merge" in str(r["before"])
            assert st["column"] == (5 - (1 if "qkv" in str(r["before"]) else 0) * 2
                                    - (1 if "gate_up" in str(r["before"]) else 0)) * args.n_layers, (where, st)
            assert (st["merged"] > 0) == merged, (where, st)
            assert st["row"] == 2 * args.n_layers, (where, st)
            assert r["n_all_reduce"] == 2 * args.n_layers + (3 if vp else 0) + tied_vp, (where, r["n_all_reduce"])
            assert st["vocab_logprob"] == (1 if vp else 0), (where, st)
            assert st["embedding"] == lookup_cut, (where, st)
            assert st["views"] == _expected_views(args, ws, r["before"]), (where, st)
            assert r["layer_bytes_full"] == 4 * args.n_layers * (2 * args.dim * args.n_heads * args.head_dim
                                                                  + 2 * args.dim * args.n_kv_heads * args.head_dim
                                                                  + 3 * args.dim * args.hidden_dim)
            assert r["layer_bytes_shard"] == _expected_layer_bytes(args, ws), (where, r["layer_bytes_shard"])
            if args.n_kv_heads >= ws:  # nothing replicated: exactly 1/ws of the sharded layers
                assert r["layer_bytes_shard"] * ws == r["layer_bytes_full"]
            if vp:  # the head's table cut along the vocab (tied: the lookup reads that one slice too)
                assert st["param_bytes_after"] < st["param_bytes_before"] - 4 * args.dim * args.vocab_size // 2


def test_head_layout_gqa_replication():
    a = ModelArgs.from_name("tiny-gqa1")  # 4 query heads, 1 kv head
    assert [head_layout(a, 4, r).kv_heads for r in range(4)] == [(0, 1)] * 4
    assert head_layout(a, 2, 1) == head_layout(a, 2, 1).__class__((2, 4), (0, 1), 2)
    g = ModelArgs.from_name("tiny-gqa")  # 4 query heads, 2 kv heads
    assert [head_layout(g, 4, r).kv_heads for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [head_layout(g, 4, r).n_rep for r in range(4)] == [1, 1, 1, 1]
    assert shard_slice("layers.0.attention.wo.weight", g, 2, 1) == (1, 32, 64)
    assert shard_slice("output.weight", g, 2, 1) is None
    assert shard_slice("output.weight", g, 2, 1, vocab_parallel=True) == (0, 256, 512)
    with pytest.raises(ValueError, match="n_heads 4 is not divisible by world_size 3"):
        head_layout(g, 3, 0)


def test_tensor_parallel_needs_a_process_group():
    args, sm = W.build_score_module("tiny")
    gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))  # never reached: the check comes first
    with pytest.raises(PassError, match="torch.distributed initialised"):
        run_passes(gm, ["tensor_parallel"], PassContext(model_args=args, rank=0, world_size=2))
    assert not get_pass("tensor_parallel").fn(gm, PassContext(world_size=1)).modified


def test_tp_world2_matches_unsharded_and_dtensor_peer():
    # MHA, and GQA with one kv head (< world size: replicated)
    cases = [("tiny", {}, ()), ("tiny", {"vocab_parallel": True}, ("prune_lm_head", "fused_logprob")),
             ("tiny-gqa1", {"vocab_parallel": True}, ())] + _merge_cases(2)
    res = launch(W.tp_and_peer_worker, 2, args=(cases, ["tiny", "tiny-gqa"]), timeout_s=240)
    _check([r["tp"] for r in res], 2)
    for r in res:
        assert [p["preset"] for p in r["peer"]] == ["tiny", "tiny-gqa"]
        for p in r["peer"]:
            # the tensor_parallel graphs match the same eager reference within TOL (diff_eager above)
            assert p["diff"] <= TOL, f"DTensor peer differs from the eager reference by {p['diff']} ({p['preset']})"


def test_tp_world4_gqa_replicated_kv_heads():
    # GQA with 2 kv heads on 4 ranks: each kv head kept by the two ranks whose query heads read it
    cases = [("tiny-gqa", {"vocab_parallel": True}, ()), ("tiny-gqa", {}, ("fuse_rope", "sdpa_attention"))]
    res = launch(W.tp_worker, 4, args=(cases,), timeout_s=240)
    _check(res, 4)


def test_tp_world3_odd_gqa_tied():
    # 9 query / 3 kv heads on 3 ranks (3 query heads and 1 kv head each), tied embeddings: the LM head and
    # the embedding read one table, whole, or with vocab_parallel one vocab slice (embedding_parallel moot)
    p = "gqa-9-3-tied"
    cases = [(p, {}, ()), (p, {"vocab_parallel": True, "embedding_parallel": True}, ()),
             (p, {"vocab_parallel": True}, ("merge_qkv", "merge_gate_up"))]
    res = launch(W.tp_worker, 3, args=(cases,), timeout_s=300)
    _check(res, 3)


def test_tp_on_a_per_pair_capture():
    """A sharded per-pair reference (the 30B experiment's) captures with batch 1: sharding it used to fail
    with 'node mul_2 no longer fits its input shapes' (RoPE's [B, T, H, -1, 2] split left symbolic)."""
    res = launch(W.tp_per_pair_worker, 2, args=(["tiny", "tiny-gqa"],), timeout_s=240)
    for per_rank in res:
        assert [p for p, _ in per_rank] == ["tiny", "tiny-gqa"]
        assert all(d <= TOL for _, d in per_rank), per_rank
