"""prune_structured: ratio 0 is the identity; at ratio > 0 the parameter count drops by the analytic
amount, and the pruned graph equals (fp32, atol 1e-5) the ORIGINAL eager model with the pruned
channels/heads silenced (w2 columns / wo columns of the dropped units set to zero): removing a unit
and zeroing its only way into the residual stream are the same function. The units the test drops
are chosen by the test's own L1 computation."""
import copy

import pytest
import torch
from torch import nn

from graphopt.graph_capture import capture
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, PassError
from graphopt.scoring.batch import ScoreModule
from tests.test_capture import distinct_score_inputs

ATOL = 1e-5
_CAPTURED = {}


# 9 query heads in 3 kv groups of 3, tied embeddings: odd head counts
ODD = {"gqa-9-3": ModelArgs(dim=72, n_layers=2, n_heads=9, n_kv_heads=3, vocab_size=512, multiple_of=32,
                            max_seq_len=64, tie_embeddings=True),
       "gqa-6-2": ModelArgs(dim=72, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=64),
       "mha-8": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=8, vocab_size=512, multiple_of=32, max_seq_len=64)}


def _setup(preset):
    if preset not in _CAPTURED:
        args = ODD[preset] if preset in ODD else ModelArgs.from_name(preset)
        model = init_random_weights(Transformer(args)).eval()
        inputs = distinct_score_inputs(2, 8, 5)
        _CAPTURED[preset] = (args, model, inputs, capture(ScoreModule(model), inputs, method="export"))
    args, model, inputs, gm = _CAPTURED[preset]
    return args, model, inputs, copy.deepcopy(gm)


def _prune(gm, inputs, **options):
    return run_passes(gm, [{"name": "prune_structured", **options}], PassContext(example_inputs=inputs))


def _silenced(model, args, ffn_ratio=0.0, head_ratio=0.0):
    """A copy of the eager model with the lowest-L1 FFN channels / kv groups zeroed at their output."""
    m = copy.deepcopy(model)
    hd, n_rep = args.head_dim, args.n_heads // args.n_kv_heads
    with torch.no_grad():
        for layer in m.layers:
            ff, at = layer.feed_forward, layer.attention
            n = int(ffn_ratio * args.hidden_dim)
            if n:
                score = ff.w1.weight.abs().sum(1) + ff.w3.weight.abs().sum(1) + ff.w2.weight.abs().sum(0)
                ff.w2.weight[:, score.argsort()[:n]] = 0
            n = int(head_ratio * args.n_kv_heads)
            if n:
                score = torch.stack([at.wq.weight[g * n_rep * hd:(g + 1) * n_rep * hd].abs().sum()
                                     + at.wk.weight[g * hd:(g + 1) * hd].abs().sum()
                                     + at.wv.weight[g * hd:(g + 1) * hd].abs().sum()
                                     + at.wo.weight[:, g * n_rep * hd:(g + 1) * n_rep * hd].abs().sum()
                                     for g in range(args.n_kv_heads)])
                for g in score.argsort()[:n].tolist():
                    at.wo.weight[:, g * n_rep * hd:(g + 1) * n_rep * hd] = 0
    return ScoreModule(m)


def _check(gm, reference, shapes=((2, 8, 5), (3, 11, 9))):
    with torch.no_grad():
        for B, T, N in shapes:  # example shape and another one: the rewritten views stay dynamic in B, T
            inputs = distinct_score_inputs(B, T, N, seed=B + T)
            torch.testing.assert_close(gm(*inputs), reference(*inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("what", ["ffn", "heads", "both"])
def test_ratio_zero_is_identity(what):
    args, model, inputs, gm = _setup("tiny")
    code = gm.code
    with torch.no_grad():
        ref = gm(*inputs)
    gm, (rec,) = _prune(gm, inputs, ratio=0.0, what=what)
    assert (rec.modified, rec.matches, rec.stats["params_removed"]) == (False, 0, 0)
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)


def test_ffn_quarter_param_count_and_function():
    args, model, inputs, gm = _setup("tiny")
    gm, (rec,) = _prune(gm, inputs, ratio=0.25, what="ffn")
    removed_per_layer = int(0.25 * args.hidden_dim)  # 192 -> 48 channels
    assert rec.matches == args.n_layers and rec.stats["ffn_channels_removed"] == args.n_layers * removed_per_layer
    assert rec.stats["params_removed"] == args.n_layers * 3 * args.dim * removed_per_layer
    assert rec.stats["params_after"] == rec.stats["params_before"] - rec.stats["params_removed"]
    assert rec.stats["params_before"] == sum(p.numel() for p in model.parameters())
    kept = args.hidden_dim - removed_per_layer
    assert gm.get_parameter("model.layers.0.feed_forward.w1.weight").shape == (kept, args.dim)
    assert gm.get_parameter("model.layers.1.feed_forward.w2.weight").shape == (args.dim, kept)
    _check(gm, _silenced(model, args, ffn_ratio=0.25))


@pytest.mark.parametrize("preset,ratio", [("tiny", 0.25), ("tiny-gqa", 0.5), ("tiny-qwen", 0.5), ("gqa-9-3", 0.4)])
def test_heads_param_count_and_function(preset, ratio):
    args, model, inputs, gm = _setup(preset)
    gm, (rec,) = _prune(gm, inputs, ratio=ratio, what="heads")
    groups = int(ratio * args.n_kv_heads)
    n_rep, hd = args.n_heads // args.n_kv_heads, args.head_dim
    per_group = 2 * args.dim * n_rep * hd + 2 * args.dim * hd  # wq rows + wo cols, wk + wv rows
    if args.qkv_bias:
        per_group += n_rep * hd + 2 * hd
    assert groups >= 1 and rec.stats["kv_groups_removed"] == args.n_layers * groups
    assert rec.stats["params_removed"] == args.n_layers * groups * per_group
    q_view = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.view.default and n.args[0].op == "call_function"
                  and n.args[0].args[1].target == "model.layers.0.attention.wq.weight")
    assert q_view.args[1][2:] == [-1, hd]  # the model's head view follows the weights
    rope = [n for n in gm.graph.nodes if n.target is torch.ops.aten.reshape.default and len(n.args[1]) == 5]
    assert len(rope) == 2 * args.n_layers  # RoPE's [B, T, H, -1, 2] spells H out: set from its input
    assert sorted({n.args[1][2] for n in rope}) == sorted({args.n_kv_heads - groups, (args.n_kv_heads - groups) * n_rep})
    _check(gm, _silenced(model, args, head_ratio=ratio))


@pytest.mark.parametrize("preset,ratio", [("tiny-gqa", 0.5), ("gqa-9-3", 0.4)])
def test_both_on_gqa(preset, ratio):
    args, model, inputs, gm = _setup(preset)
    gm, (rec,) = _prune(gm, inputs, ratio=ratio, what="both")
    assert rec.matches == 2 * args.n_layers
    _check(gm, _silenced(model, args, ffn_ratio=ratio, head_ratio=ratio))


def test_bad_options():
    args, model, inputs, gm = _setup("tiny")
    for options, msg in [({"ratio": 1.0}, r"ratio' expects a value with 0 <= value < 1, got 1.0"), ({"ratio": -0.1}, "ratio"),
                         ({"ratio": 0.5, "what": "mlp"}, "'what' expects one of 'ffn', 'heads', 'both', got 'mlp'"),
                         ({"ratio": "0.5"}, "expects float"), ({"ration": 0.5}, "did you mean 'ratio'")]:
        with pytest.raises(PassError, match=msg):
            _prune(copy.deepcopy(gm), inputs, **options)


def test_graph_without_ffn_weights_is_an_error():
    """No Meta-named weights (e.g. after merge_gate_up/merge_qkv, or another model): a clear error."""
    x = torch.randn(2, 4)
    gm = torch.export.export(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4)), (x,)).module()
    with pytest.raises(PassError, match="run it before merge_qkv / merge_gate_up"):
        _prune(gm, (x,), ratio=0.5, what="ffn")
