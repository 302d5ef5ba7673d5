"""prefix_attention on tiny / tiny-gqa graphs captured with packed batches (doc_ids / seg_ids inputs):
every SDPA becomes graphopt::prefix_attention, the [B,T,T] mask is no longer read, log-likelihoods
equal the unrewritten graph (fp32, 1e-5) on batches of other shapes and the HellaSwag choices equal the
eager per-pair reference; without SDPA nodes it changes nothing; without the layout inputs it is a
clear error."""
import pytest
import torch

import graphopt
from graphopt.graph_capture import capture
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from graphopt.scoring import ScoreModule, build_batches, build_requests, choice_metrics, score_requests

ATOL = 1e-5
BEFORE = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention",
          "prune_lm_head", "fused_logprob"]


def _setup(preset, strategy="packed", **options):
    model, tokenizer = graphopt.load_model(preset, seed=5)
    rows = graphopt.load_hellaswag(None, limit=8)
    requests = build_requests(rows, tokenizer)
    batches = build_batches(requests, strategy, **options)
    return model, rows, requests, batches


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_sdpa_becomes_prefix_attention_and_scores_match(preset):
    model, rows, requests, batches = _setup(preset, row_len=48, max_tokens=96)
    assert len({tuple(b.input_ids.shape) for b in batches}) >= 2  # dynamic shapes exercised
    example = batches[0].model_inputs()
    gm = capture(ScoreModule(model).eval(), example)
    gm, _ = run_passes(gm, BEFORE, PassContext(example_inputs=example))
    before = score_requests(gm, batches, len(requests), progress=False)
    n_sdpa = _targets(gm).count(torch.ops.aten.scaled_dot_product_attention.default)
    assert n_sdpa == model.args.n_layers

    gm, records = run_passes(gm, ["prefix_attention"], PassContext(example_inputs=example))
    targets = _targets(gm)
    assert records[-1].matches == n_sdpa and records[-1].modified
    assert targets.count(torch.ops.graphopt.prefix_attention.default) == n_sdpa
    assert torch.ops.aten.scaled_dot_product_attention.default not in targets
    mask = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "mask")
    # the [B, T, T] mask is no longer read: only its sizes are (and export's input guard)
    assert all(u.target in (torch.ops.aten.sym_size.int, "_guards_fn") for u in mask.users), list(mask.users)

    after = score_requests(gm, batches, len(requests), progress=False)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=0)
    reference = score_requests(ScoreModule(model).eval(), build_batches(requests, "per_pair"), len(requests),
                               progress=False)
    torch.testing.assert_close(after, reference, atol=1e-4, rtol=0)
    want, have = choice_metrics(rows, requests, reference), choice_metrics(rows, requests, after)
    assert have["choices"] == want["choices"] and have["choices_norm"] == want["choices_norm"]


def test_without_sdpa_attention_first_the_order_is_refused_before_anything_runs():
    model, _, _, batches = _setup("tiny")
    example = batches[0].model_inputs()
    gm = capture(ScoreModule(model).eval(), example)
    before = str(gm.graph)
    with pytest.raises(PassError, match="prefix_attention requires sdpa_attention earlier in the pipeline"):
        run_passes(gm, ["fuse_rmsnorm", "prefix_attention"], PassContext(example_inputs=example))
    assert str(gm.graph) == before


def test_dynamo_capture_drops_the_ids_clear_error():
    model, _, requests, batches = _setup("tiny")
    be = graphopt.backend(pipeline=["sdpa_attention", "prefix_attention"], compiler="none")
    compiled = torch.compile(ScoreModule(model).eval(), backend=be, dynamic=True)
    with pytest.raises(Exception, match="dynamo drops inputs"):
        score_requests(compiled, batches, len(requests), progress=False)


def test_padded_batches_carry_no_layout_ids_clear_error():
    model, _, _, batches = _setup("tiny", "padded", batch_size=4)
    example = batches[0].model_inputs()
    gm = capture(ScoreModule(model).eval(), example)
    with pytest.raises(PassError, match="doc_ids and seg_ids"):
        run_passes(gm, ["sdpa_attention", "prefix_attention"], PassContext(example_inputs=example))
