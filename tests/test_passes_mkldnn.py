"""mkldnn_linear: every graph linear and the LM head inside graphopt.linear_logprob run as oneDNN
linears on weights packed once; outputs within fp32 rounding of the graph before it (1e-4), choices
unchanged; tied weights packed once; the order rule refuses it before a pass that looks for linears."""
import copy

import pytest
import torch

from graphopt.passes.mkldnn_linear import bf16_packable
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError, parse_pipeline
from tests._builders import call_nodes, chosen_endings

LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default
TOL = {torch.float32: 1e-4, torch.bfloat16: 0.3}  # bf16: against the fp32 graph, as cast_dtype's tests
EXACT = [p.name for p in parse_pipeline("exact")]


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied", "tiny-gqa"])
@pytest.mark.parametrize("low", [False, True])
def test_linears_and_head_become_packed_onednn_calls(choice_captures, preset, low):
    """float32 always; bfloat16 where the CPU has oneDNN's bf16 path (else: the next test)."""
    args, score, inputs, owners, nq, nc, captured = choice_captures(preset)
    with torch.no_grad():
        ref = captured(*inputs)
    pipeline = EXACT + (["cast_dtype"] if low else [])
    gm, _ = run_passes(copy.deepcopy(captured), pipeline, PassContext(example_inputs=inputs))
    n_linears = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.linear.default)
    assert n_linears == 4 * args.n_layers  # merged qkv, wo, merged gate/up, w2
    if low and not bf16_packable():
        with pytest.warns(UserWarning, match=r"no oneDNN bfloat16 path .* bfloat16 linears stay ATen linears"):
            gm, (rec,) = run_passes(gm, ["mkldnn_linear"], PassContext(example_inputs=inputs))
        assert rec.matches == 0 and rec.stats["kept_bf16"] == n_linears + 1  # + the head
        assert len(call_nodes(gm, torch.ops.aten.linear.default)) == n_linears and not call_nodes(gm, LINEAR_POINTWISE)
    else:
        gm, (rec,) = run_passes(gm, ["mkldnn_linear"], PassContext(example_inputs=inputs))
        assert rec.matches == n_linears + 1  # + the head inside linear_logprob
        assert len(call_nodes(gm, LINEAR_POINTWISE)) == n_linears + (args.vocab_size + 8191) // 8192
        assert not call_nodes(gm, torch.ops.aten.linear.default)
        assert not call_nodes(gm, torch.ops.graphopt.linear_logprob.default)
    with torch.no_grad():
        got = gm(*inputs)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= TOL[torch.bfloat16 if low else torch.float32]
    assert torch.equal(chosen_endings(got, owners, nq, nc), chosen_endings(ref, owners, nq, nc))


def test_bf16_linears_stay_aten_where_the_cpu_has_no_onednn_bf16(choice_captures, monkeypatch):
    """On an AVX2-only CPU oneDNN refuses bf16 weights ('bf16 path needs the cpu support avx512...'): the pass
    leaves them as ATen linears with a warning instead of failing the pipeline (the quickstart's bf16 row)."""
    import graphopt.passes.mkldnn_linear as mod
    monkeypatch.setattr(mod, "bf16_packable", lambda: False)
    args, score, inputs, owners, nq, nc, captured = choice_captures("tiny-tied")
    gm, _ = run_passes(copy.deepcopy(captured), EXACT + ["cast_dtype"], PassContext(example_inputs=inputs))
    with pytest.warns(UserWarning, match="bfloat16 linears stay ATen linears"):
        gm, (rec,) = run_passes(gm, ["mkldnn_linear"], PassContext(example_inputs=inputs))
    assert rec.matches == 0 and rec.stats["kept_bf16"] == 4 * args.n_layers + 1
    assert not call_nodes(gm, LINEAR_POINTWISE) and len(call_nodes(gm, torch.ops.aten.linear.default)) == 4 * args.n_layers
    with torch.no_grad():
        assert torch.isfinite(gm(*inputs)).all()


@pytest.mark.parametrize("head", [["prune_lm_head"], ["prune_lm_head", "fused_logprob"]])
def test_a_tied_head_reads_the_embedding_table_as_it_is(choice_captures, head):
    """The lookup needs the plain table, so the head (a linear, or inside linear_logprob) runs oneDNN on
    it as it is: one table in memory, no packed copy."""
    args, score, inputs, owners, nq, nc, captured = choice_captures("tiny-tied")
    with torch.no_grad():
        ref = captured(*inputs)
    gm, _ = run_passes(copy.deepcopy(captured), head + ["mkldnn_linear"], PassContext(example_inputs=inputs))
    packed = [n.target for n in gm.graph.nodes if n.op == "get_attr" and n.target.endswith("_mkldnn")]
    assert len(packed) == len(set(packed)) == 7 * args.n_layers  # the layers' 7 linears only, each packed once
    assert not [b for b in gm.buffers() if b.is_mkldnn and b.shape[0] == args.vocab_size]  # no packed head
    plain = [n for n in call_nodes(gm, LINEAR_POINTWISE) if n.args[1].op != "get_attr" or not n.args[1].target.endswith("_mkldnn")]
    assert plain  # the head: oneDNN on the table (a view of it per vocabulary chunk, or the table itself)
    lookup = [n.args[0].target for n in call_nodes(gm, torch.ops.aten.embedding.default)]
    assert len(lookup) == 1 and torch.equal(gm.get_parameter(lookup[0]), score.model.tok_embeddings.weight)
    assert len({t.untyped_storage().data_ptr() for t in gm.parameters() if t.shape[0] == args.vocab_size}) == 1
    with torch.no_grad():
        assert (gm(*inputs) - ref).abs().max().item() <= TOL[torch.float32]


def test_an_untied_head_is_held_once_packed(choice_captures):
    """fused_logprob's head: packed in chunks, the target's logit taken from the chunk logits, so no
    plain [V, D] copy of W stays for W[t]."""
    args, score, inputs, owners, nq, nc, captured = choice_captures("tiny")
    with torch.no_grad():
        ref = captured(*inputs)
    gm, _ = run_passes(copy.deepcopy(captured), EXACT + ["mkldnn_linear"], PassContext(example_inputs=inputs))
    assert "model.output.weight" not in dict(gm.named_parameters())
    assert not [n for n in call_nodes(gm, torch.ops.aten.embedding.default) if n.args[0].target == "model.output.weight"]
    heads = [b for name, b in gm.named_buffers() if name.startswith("model.output.weight_mkldnn_")]
    assert sum(b.shape[0] for b in heads) == args.vocab_size
    with torch.no_grad():
        got = gm(*inputs)
    assert (got - ref).abs().max().item() <= TOL[torch.float32]
    assert torch.equal(chosen_endings(got, owners, nq, nc), chosen_endings(ref, owners, nq, nc))


def test_before_a_linear_pass_is_refused_up_front(choice_captures):
    args, score, inputs, owners, nq, nc, captured = choice_captures("tiny")
    with pytest.raises(PassError, match="merge_qkv must run before mkldnn_linear"):
        run_passes(copy.deepcopy(captured), ["mkldnn_linear", "merge_qkv"], PassContext(example_inputs=inputs))


def test_a_compiler_that_cannot_run_it_is_refused_up_front(choice_captures):
    """inductor (unfrozen) cannot lower the oneDNN-packed weights; the pass says so when it registers."""
    import graphopt
    args, score, inputs, owners, nq, nc, captured = choice_captures("tiny")
    with pytest.raises(PassError, match="mkldnn_linear' runs only with compiler none or inductor-frozen, not 'inductor'"):
        graphopt.optimize(score, inputs, "exact-cpu", compiler="inductor")
