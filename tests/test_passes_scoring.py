"""prune_lm_head and fused_logprob on tiny captured ScoreModule graphs: the rewrite happens (node
targets, LM-head output shape [N, V]), outputs equal the unrewritten graph (fp32, atol 1e-5), graphs
without the pattern are left unchanged, wrong order / bad options are clear errors."""
import copy

import pytest
import torch
from torch import nn

import graphopt.kernels  # noqa: F401
from graphopt.graph_capture import capture
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from graphopt.scoring.batch import ScoreModule
from tests.test_capture import distinct_score_inputs

ATOL = 1e-5
aten = torch.ops.aten
_CAPTURED = {}


def _setup(preset):
    """(args, score module, example inputs, captured graph); captured once per preset (capture is the slow
    part), every test works on a deep copy."""
    if preset not in _CAPTURED:
        args = ModelArgs.from_name(preset)
        score = ScoreModule(init_random_weights(Transformer(args)).eval())
        inputs = distinct_score_inputs(2, 8, 5)
        _CAPTURED[preset] = (args, score, inputs, capture(score, inputs, method="export"))
    return _CAPTURED[preset]


@pytest.fixture(params=["tiny"])
def setup(request):
    return _setup(request.param)


def _fresh(setup):
    args, _, inputs, captured = setup
    return copy.deepcopy(captured), PassContext(example_inputs=inputs, model_args=args)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _head_linears(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten.linear.default
            and n.args[1].op == "get_attr" and n.args[1].target in ("model.output.weight", "model.tok_embeddings.weight")]


def _check_same(gm, score, shapes=((2, 8, 5), (3, 11, 9))):
    with torch.no_grad():
        for B, T, N in shapes:  # the example shape and another one (dynamic B, T, N)
            inputs = distinct_score_inputs(B, T, N, seed=B * 100 + T)
            torch.testing.assert_close(gm(*inputs), score(*inputs), atol=ATOL, rtol=0)


def test_prune_lm_head_computes_head_only_at_scored_positions(setup):
    gm, ctx = _fresh(setup)
    (head,) = _head_linears(gm)
    assert tuple(head.meta["val"].shape[-1:]) == (512,) and head.meta["val"].dim() == 3  # [B, T, V] before
    gm, (rec,) = run_passes(gm, ["prune_lm_head"], ctx, verify=True, atol=ATOL)
    assert rec.modified and rec.matches == 1
    (head,) = _head_linears(gm)
    val = head.meta["val"]
    assert val.dim() == 2 and val.shape[1] == 512  # [N, V]
    n_sym = next(n for n in gm.graph.nodes if n.name == "score_idx").meta["val"].shape[0]
    assert str(val.shape[0]) == str(n_sym)  # N rows, not B*T
    # the final norm moved below the indexing too: its rsqrt works on [N, 1]
    rsqrt = [n for n in gm.graph.nodes if n.target is aten.rsqrt.default][-1]
    assert rsqrt.meta["val"].dim() == 2
    # the real run: the head sees N rows
    seen = []
    with torch.no_grad():
        inputs = distinct_score_inputs(2, 8, 5)
        interp = torch.fx.Interpreter(gm)
        orig = interp.run_node

        def run_node(n):
            out = orig(n)
            if n is head:
                seen.append(tuple(out.shape))
            return out
        interp.run_node = run_node
        interp.run(*inputs)
    assert seen == [(5, 512)]
    _check_same(gm, setup[1])


def test_fused_logprob_alone_replaces_log_softmax(setup):
    gm, ctx = _fresh(setup)
    gm, (rec,) = run_passes(gm, ["fused_logprob"], ctx, verify=True, atol=ATOL)
    targets = _targets(gm)
    assert rec.matches == 1 and rec.stats["linear_fused"] == 0
    assert aten.log_softmax.int not in targets and aten._log_softmax.default not in targets
    assert aten.gather.default not in targets
    assert targets.count(torch.ops.graphopt.logprob.default) == 1
    assert torch.ops.graphopt.linear_logprob.default not in targets
    _check_same(gm, setup[1])


@pytest.mark.parametrize("setup", ["tiny", "tiny-tied"], indirect=True)
def test_prune_then_fuse_gives_linear_logprob(setup):
    gm, ctx = _fresh(setup)
    gm, recs = run_passes(gm, ["prune_lm_head", "fused_logprob"], ctx, verify=True, atol=ATOL)
    targets = _targets(gm)
    assert [r.matches for r in recs] == [1, 1] and recs[1].stats["linear_fused"] == 1
    assert targets.count(torch.ops.graphopt.linear_logprob.default) == 1
    assert torch.ops.graphopt.logprob.default not in targets and aten.log_softmax.int not in targets
    assert _head_linears(gm) == []  # no [N, V] logits materialised
    lp = next(n for n in gm.graph.nodes if n.target is torch.ops.graphopt.linear_logprob.default)
    assert lp.args[1].op == "get_attr" and lp.meta["val"].dtype == torch.float32
    _check_same(gm, setup[1])


def test_with_linear_false_keeps_head(setup):
    gm, ctx = _fresh(setup)
    gm, recs = run_passes(gm, ["prune_lm_head", {"name": "fused_logprob", "with_linear": False}], ctx)
    targets = _targets(gm)
    assert targets.count(torch.ops.graphopt.logprob.default) == 1
    assert torch.ops.graphopt.linear_logprob.default not in targets
    assert len(_head_linears(gm)) == 1
    _check_same(gm, setup[1])


def test_wrong_order_is_a_clear_error(setup):
    gm, ctx = _fresh(setup)
    with pytest.raises(PassError, match=r"prune_lm_head must run before fused_logprob"):
        run_passes(gm, ["fused_logprob", "prune_lm_head"], ctx)


def test_bad_option_and_unknown_pass():
    gm = torch.fx.symbolic_trace(nn.Linear(4, 4))
    with pytest.raises(PassError, match="with_linear.*expects bool"):
        run_passes(gm, [{"name": "fused_logprob", "with_linear": "yes"}])
    with pytest.raises(PassError, match="has no option 'linear'"):
        run_passes(gm, [{"name": "fused_logprob", "linear": True}])
    with pytest.raises(PassError, match="unknown pass 'prune_lm_heads'.*prune_lm_head"):
        run_passes(gm, ["prune_lm_heads"])


class _HiddenOnly(nn.Module):
    """A model returning hidden states: no LM head, no log-softmax."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, mask):
        return self.model(input_ids, positions, mask, return_hidden=True)


class _AllPositions(nn.Module):
    """log-probs of every position: log_softmax over [B, T, V] (3-D), no score_idx indexing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, mask):
        return torch.log_softmax(self.model(input_ids, positions, mask).float(), dim=-1)


@pytest.mark.parametrize("wrapper", [_HiddenOnly, _AllPositions])
def test_graph_without_pattern_is_unchanged(setup, wrapper):
    module = wrapper(setup[1].model)
    inputs = distinct_score_inputs(2, 8, 5)[:3]
    gm = capture(module, inputs, method="export", dynamic=False)
    code = gm.code
    with torch.no_grad():
        ref = gm(*inputs)
    gm, recs = run_passes(gm, ["prune_lm_head", "fused_logprob"], PassContext(example_inputs=inputs))
    assert [(r.modified, r.matches) for r in recs] == [(False, 0), (False, 0)]
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)
