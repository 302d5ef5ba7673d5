"""pipeline_split: the graph cut at layer boundaries into 2 and 4 stages gives the unsplit graph's
log-probs (1e-5, fp32) with 1..4 micro-batches, in one process (stages on "devices", all CPU here)
and across a gloo world of 4 processes (stage = rank, send/recv between stages)."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from graphopt.distributed.launch import launch
from graphopt.distributed.pipeline_run import StagePlan, micro_batches, run_pipeline
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from tests import _dist_workers as W

TOL = 1e-5


def _stage_layers(split) -> list[set[int]]:
    plan = StagePlan(split)
    out = []
    for s in range(plan.n_stages):
        out.append({int(m.group(1)) for n in plan.nodes_of[s] if n.op == "get_attr"
                    for m in [re.search(r"layers\.(\d+)\.", n.target)] if m})
    return out


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa", "tiny-gqa1"])
def test_pipeline_split_in_process(preset):
    args, sm = W.build_score_module(preset, n_layers=4)
    inputs = W.example_batch(args, B=4, T=6)
    gm = W.capture_graph(sm, inputs)
    with torch.no_grad():
        ref = gm(*inputs)
    for n_stages in (2, 4):
        split, recs = run_passes(gm, [("pipeline_split", {"n_stages": n_stages})], PassContext(model_args=args))
        assert recs[0].matches == n_stages
        assert sorted(n for n, _ in split.named_children() if n.startswith("submod_")) == \
            [f"submod_{i}" for i in range(n_stages)]
        per = 4 // n_stages  # layers per stage, in order
        assert _stage_layers(split) == [set(range(s * per, s * per + per)) for s in range(n_stages)]
        plan = StagePlan(split)
        assert any(n.op == "get_attr" and "tok_embeddings" in n.target for n in plan.nodes_of[0])
        assert any(n.op == "get_attr" and n.target.endswith("output.weight") for n in plan.nodes_of[-1])
        with torch.no_grad():
            assert (split(*inputs) - ref).abs().max().item() <= TOL  # the split graph runs as is
        for n_micro in (1, 3, 4):
            got = run_pipeline(split, inputs, n_micro=n_micro, devices=["cpu"] * n_stages)
            assert (got - ref).abs().max().item() <= TOL, (n_stages, n_micro)
    with pytest.raises(PassError, match="n_stages 8 must be between 1 and n_layers 4"):
        run_passes(gm, [("pipeline_split", {"n_stages": 8})], PassContext(model_args=args))


@pytest.mark.parametrize("preset", ["tiny-tied", "gqa-9-3-tied"])
def test_pipeline_split_tied_table_reaches_first_and_last_stage(preset):
    """Export names a tied table model.output.weight for the lookup and the head: the lookup stays in
    stage 0 (it once dragged everything into the last stage: 'made stages [1]'), the head in the last;
    both stages get the one tensor, and a rank keeping its stage (drop_other_stages) keeps it whole."""
    from graphopt.distributed.pipeline_run import drop_other_stages
    from graphopt.graph_attrs import attr
    args, sm = W.build_score_module(preset, n_layers=4)
    inputs = W.example_batch(args, B=4, T=6)
    gm = W.capture_graph(sm, inputs)
    table = sm.model.tok_embeddings.weight
    with torch.no_grad():
        ref = gm(*inputs)
    for n_stages in (2, 4):
        split, recs = run_passes(gm, [("pipeline_split", {"n_stages": n_stages})], PassContext(model_args=args))
        plan = StagePlan(split)
        assert plan.n_stages == n_stages and _stage_layers(split)[0] == set(range(4 // n_stages))
        first, last = plan.weights(0, "cpu"), plan.weights(n_stages - 1, "cpu")
        shared = [n for n in first if n in last]  # the get_attr both stages read
        assert [n.target for n in shared] == ["model.output.weight"], [n.target for n in shared]
        assert torch.equal(first[shared[0]], table) and first[shared[0]].data_ptr() == last[shared[0]].data_ptr()
        got = run_pipeline(split, inputs, n_micro=3, devices=["cpu"] * n_stages)
        assert (got - ref).abs().max().item() <= TOL, n_stages
        for rank in (0, n_stages - 1):
            mine = copy.deepcopy(split)
            freed = drop_other_stages(mine, rank)
            assert attr(mine, "model.output.weight").shape == table.shape, rank
            assert not any(t.endswith(("output.weight", "tok_embeddings.weight")) for t in freed), (rank, freed)
            assert sum(1 for t in freed if ".layers." in f".{t}") == 9 * (4 - 4 // n_stages), (rank, freed)


def test_micro_batches_cover_every_score_once():
    args, _ = W.build_score_module("tiny")
    inputs = W.example_batch(args, B=5, T=4)
    mbs = micro_batches(inputs, 3)
    assert [mb[0].shape[0] for mb, _ in mbs] == [2, 2, 1]
    assert torch.equal(torch.cat([sel for _, sel in mbs]).sort().values, torch.arange(inputs[3].shape[0]))
    for mb, sel in mbs:
        assert mb[3].max() < mb[0].numel() and torch.equal(mb[4], inputs[4][sel])


def test_pipeline_across_4_processes():
    res = launch(W.pipeline_worker, 4, args=("tiny-gqa", 4, [1, 2, 4]), timeout_s=300)
    for rank, r in enumerate(res):
        assert r["matches"] == 4 and r["stages"] == [f"submod_{i}" for i in range(4)]
        assert max(r["diffs"]) <= TOL, (rank, r["diffs"])
        assert r["layer_bytes_mine"] * 4 == r["layer_bytes_full"], (rank, r)  # one layer of four per rank


def test_pipeline_micro_batches_carry_the_packed_layout_ids():
    """Packed batches hand doc_ids/seg_ids to the graph; micro-batches cut them by rows with the rest,
    and prefix_attention (which reads them) gives the unsplit graph's scores through 2 stages."""
    import graphopt
    from graphopt.graph_capture import capture
    from graphopt.scoring import ScoreModule, build_batches, build_requests

    model, tokenizer = graphopt.load_model("tiny-gqa", seed=1)
    requests = build_requests(graphopt.load_hellaswag(None, limit=6), tokenizer)
    batch = build_batches(requests, "packed", max_tokens=4096)[0]
    assert batch.input_ids.shape[0] >= 3 and len(batch.model_inputs()) == 7
    inputs = batch.model_inputs()
    gm = capture(ScoreModule(model).eval(), inputs)
    gm, _ = run_passes(gm, ["sdpa_attention", "prefix_attention"], PassContext(example_inputs=inputs))
    parts = micro_batches(inputs, 3)
    assert all(len(p) == 7 and p[5].shape == p[0].shape for p, _ in parts)
    split, _ = run_passes(gm, [("pipeline_split", {"n_stages": 2})], PassContext(model_args=model.args))
    with torch.no_grad():
        ref = gm(*inputs)
    got = run_pipeline(split, inputs, n_micro=3, devices=["cpu", "cpu"])
    assert (got - ref).abs().max().item() <= TOL
