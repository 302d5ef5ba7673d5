"""graphopt.optimize: the one path from a module to a runnable (capture -> passes -> compile), for every
capture method; a bad pipeline is refused before any capture work."""
import pytest
import torch

import graphopt
from graphopt.pipeline import PassError, parse_pipeline
from tests._builders import score_inputs, score_module

ATOL = 1e-4


@pytest.mark.parametrize("capture", ["export", "dynamo"])
def test_exact_pipeline_rewrites_and_matches(capture):
    torch._dynamo.reset()
    module = score_module("tiny-gqa")
    x = score_inputs(2, 8, 5, seed=2)
    opt = graphopt.optimize(module, x, "exact", capture=capture)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 11, 7)]:
            y = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(opt(*y), module(*y), atol=ATOL, rtol=0)
    assert [r.name for r in opt.records] == [p.name for p in parse_pipeline("exact")]
    assert all(r.matches > 0 for r in opt.records if r.name not in ("cse", "dce"))
    targets = [n.target for n in opt.graph.graph.nodes]
    assert targets.count(torch.ops.graphopt.rms_norm.default) == 2 * 2 + 1  # tiny-gqa: 2 layers + final norm
    assert torch.ops.aten.softmax.int not in targets
    assert opt.compiles == 1


def test_capture_none_is_the_module_and_refuses_passes():
    module = score_module("tiny")
    opt = graphopt.optimize(module, (), capture="none")
    assert opt.fn is module and opt.graph is None and opt.records == []
    with pytest.raises(PassError, match="passes need a captured graph"):
        graphopt.optimize(module, (), ["cse"], capture="none")


class _Untraceable(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("captured: the pipeline should have been refused first")


@pytest.mark.parametrize("pipeline, match", [
    (["fused_logprob", "prune_lm_head"], "prune_lm_head must run before fused_logprob"),
    (["prefix_attention"], "prefix_attention requires sdpa_attention"),
    (["exact", "pipeline_split", "cse"], "pipeline_split must run after every other pass"),
    ([{"name": "cast_dtype", "dtype": "float8"}], "expects one of 'bfloat16', 'float16'"),
    (["exactt"], "unknown pass 'exactt'.*exact"),
])
def test_bad_pipeline_is_refused_before_capture(pipeline, match):
    with pytest.raises(PassError, match=match):
        graphopt.optimize(_Untraceable(), score_inputs(2, 8, 5), pipeline)


def test_unknown_compiler_and_capture():
    with pytest.raises(ValueError, match="inductor-frozen"):
        graphopt.optimize(_Untraceable(), (), compiler="tvm")
    with pytest.raises(ValueError, match="export, dynamo, none"):
        graphopt.optimize(_Untraceable(), (), capture="jit")


def test_merged_weights_share_storage_with_the_callers_model():
    """merge_qkv / merge_gate_up point the caller's q/k/v and gate/up weights at rows of the merged weight:
    model + optimised graph hold the parameters once (they held 1.4x before), and the model computes as before."""
    from graphopt.graph_attrs import held_numel
    from graphopt.scoring import ScoreModule

    model, _ = graphopt.load_model("tiny-gqa")
    x = score_inputs(2, 8, 5, vocab=model.args.vocab_size, seed=0)
    with torch.no_grad():
        want = ScoreModule(model)(*x)
    own = held_numel(list(model.parameters()))
    opt = graphopt.optimize(ScoreModule(model), x, "exact")
    assert {r.name: r.matches for r in opt.records}["merge_qkv"] == model.args.n_layers
    assert held_numel(list(model.parameters()) + list(opt.graph.parameters())) == own
    attn = model.layers[0].attention
    assert attn.wk.weight.untyped_storage().data_ptr() == attn.wq.weight.untyped_storage().data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(ScoreModule(model)(*x), want, atol=0, rtol=0)
        torch.testing.assert_close(opt(*x), want, atol=1e-5, rtol=0)

