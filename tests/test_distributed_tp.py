"""tensor_parallel on spawned gloo worlds of 2, 3 and 4 CPU processes: the sharded graph's log-probs
equal the unsharded graph's (1e-5, fp32), on a second batch shape too (dynamic graph); all-reduce
counts, rewrite counts and per-rank parameter bytes are asserted; the DTensor peer
(parallelize_module with Colwise/RowwiseParallel) gives the same numbers.

Spawning is slow on a loaded 2-core machine, so each world runs many checks (tests/_dist_workers.py), in
the session's worlds (conftest `world`), the tests of one size together."""
from __future__ import annotations

import pytest
import torch

from graphopt.distributed.plan import head_layout, shard_slice
from graphopt.model.args import ModelArgs
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError, get_pass
from tests import _dist_workers as W
from tests._builders import model_args

TOL = 1e-5


def _merge_cases(ws: int) -> list:
    """merge_qkv / merge_gate_up before sharding, when those passes exist in the library."""
    from graphopt.pipeline import _REGISTRY, load_pass_library
    load_pass_library()
    names = [n for n in ("merge_qkv", "merge_gate_up") if n in _REGISTRY]
    return [("tiny-gqa1", {}, tuple(names))] if names else []


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
    args = model_args("tiny")
    gm = torch.fx.symbolic_trace(torch.nn.Linear(2, 2))  # never reached: the check comes first
    with pytest.raises(PassError, match="torch.distributed initialised"):
        run_passes(gm, ["tensor_parallel"], PassContext(model_args=args, rank=0, world_size=2))
    assert not get_pass("tensor_parallel").fn(gm, PassContext(world_size=1)).modified


def test_tp_world4_gqa_replicated_kv_heads(world):
    # GQA with 2 kv heads on 4 ranks: each kv head kept by the two ranks whose query heads read it
    cases = [("tiny-gqa", {"vocab_parallel": True}, ()), ("tiny-gqa", {}, ("fuse_rope", "sdpa_attention"))]
    res = world(4).run(W.tp_worker, cases, timeout_s=240)
    W.check_tp_results(res, 4)


def test_tp_world3_odd_gqa_tied(world):
    # 9 query / 3 kv heads on 3 ranks (3 query heads and 1 kv head each), tied embeddings: the LM head and
    # the embedding read one table, whole, or with vocab_parallel one vocab slice (embedding_parallel moot)
    p = "gqa-9-3-tied"
    cases = [(p, {}, ()), (p, {"vocab_parallel": True, "embedding_parallel": True}, ()),
             (p, {"vocab_parallel": True}, ("merge_qkv", "merge_gate_up"))]
    res = world(3).run(W.tp_worker, cases, timeout_s=300)
    W.check_tp_results(res, 3)


def test_tp_world2_matches_unsharded_and_dtensor_peer(world):
    # MHA, and GQA with one kv head (< world size: replicated)
    cases = [("tiny", {}, ()), ("tiny", {"vocab_parallel": True}, ("prune_lm_head", "fused_logprob")),
             ("tiny-gqa1", {"vocab_parallel": True}, ())] + _merge_cases(2)
    res = world(2).run(W.tp_and_peer_worker, cases, ["tiny", "tiny-gqa"], timeout_s=240)
    W.check_tp_results([r["tp"] for r in res], 2)
    for r in res:
        assert [p["preset"] for p in r["peer"]] == ["tiny", "tiny-gqa"]
        for p in r["peer"]:
            # the tensor_parallel graphs match the same eager reference within TOL (diff_eager above)
            assert p["diff"] <= TOL, f"DTensor peer differs from the eager reference by {p['diff']} ({p['preset']})"


def test_tp_on_a_per_pair_capture(world):
    """A sharded per-pair reference (the 30B experiment's) captures with batch 1: sharding it used to fail
    with 'node mul_2 no longer fits its input shapes' (RoPE's [B, T, H, -1, 2] split left symbolic)."""
    res = world(2).run(W.tp_per_pair_worker, ["tiny", "tiny-gqa"], timeout_s=240)
    for per_rank in res:
        assert [p for p, _ in per_rank] == ["tiny", "tiny-gqa"]
        assert all(d <= TOL for _, d in per_rank), per_rank
