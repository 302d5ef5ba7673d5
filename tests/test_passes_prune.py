"""prune_structured: ratio 0 is the identity; at ratio > 0 the parameter count drops by the analytic
amount, and the pruned graph equals (fp32, atol 1e-5) the ORIGINAL eager model with the pruned
channels/heads silenced (w2 columns / wo columns of the dropped units set to zero): removing a unit
and zeroing its only way into the residual stream are the same function. The units the test drops
are chosen by the test's own L1 computation."""
import copy

import pytest
import torch
from torch import nn

from graphopt.pipeline import PassError
from tests._prune_oracles import check_pruned, prune, silenced

@pytest.mark.parametrize("what", ["ffn", "heads", "both"])
def test_ratio_zero_is_identity(prune_setup, what):
    args, model, inputs, gm = prune_setup("tiny")
    code = gm.code
    with torch.no_grad():
        ref = gm(*inputs)
    gm, (rec,) = prune(gm, inputs, ratio=0.0, what=what)
    assert (rec.modified, rec.matches, rec.stats["params_removed"]) == (False, 0, 0)
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)


def test_ffn_quarter_param_count_and_function(prune_setup):
    args, model, inputs, gm = prune_setup("tiny")
    gm, (rec,) = prune(gm, inputs, ratio=0.25, what="ffn")
    removed_per_layer = int(0.25 * args.hidden_dim)  # 192 -> 48 channels
    assert rec.matches == args.n_layers and rec.stats["ffn_channels_removed"] == args.n_layers * removed_per_layer
    assert rec.stats["params_removed"] == args.n_layers * 3 * args.dim * removed_per_layer
    assert rec.stats["params_after"] == rec.stats["params_before"] - rec.stats["params_removed"]
    assert rec.stats["params_before"] == sum(p.numel() for p in model.parameters())
    kept = args.hidden_dim - removed_per_layer
    assert gm.get_parameter("model.layers.0.feed_forward.w1.weight").shape == (kept, args.dim)
    assert gm.get_parameter("model.layers.1.feed_forward.w2.weight").shape == (args.dim, kept)
    check_pruned(gm, silenced(model, args, ffn_ratio=0.25))


@pytest.mark.parametrize("preset,ratio", [("tiny", 0.25), ("tiny-gqa", 0.5), ("tiny-qwen", 0.5), ("gqa-9-3", 0.4)])
def test_heads_param_count_and_function(prune_setup, preset, ratio):
    args, model, inputs, gm = prune_setup(preset)
    gm, (rec,) = prune(gm, inputs, ratio=ratio, what="heads")
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
    check_pruned(gm, silenced(model, args, head_ratio=ratio))


@pytest.mark.parametrize("preset,ratio", [("tiny-gqa", 0.5), ("gqa-9-3", 0.4)])
def test_both_on_gqa(prune_setup, preset, ratio):
    args, model, inputs, gm = prune_setup(preset)
    gm, (rec,) = prune(gm, inputs, ratio=ratio, what="both")
    assert rec.matches == 2 * args.n_layers
    check_pruned(gm, silenced(model, args, ffn_ratio=ratio, head_ratio=ratio))


def test_bad_options(prune_setup):
    args, model, inputs, gm = prune_setup("tiny")
    for options, msg in [({"ratio": 1.0}, r"ratio' expects a value with 0 <= value < 1, got 1.0"), ({"ratio": -0.1}, "ratio"),
                         ({"ratio": 0.5, "what": "mlp"}, "'what' expects one of 'ffn', 'heads', 'both', got 'mlp'"),
                         ({"ratio": "0.5"}, "expects float"), ({"ration": 0.5}, "did you mean 'ratio'")]:
        with pytest.raises(PassError, match=msg):
            prune(copy.deepcopy(gm), inputs, **options)


def test_graph_without_ffn_weights_is_an_error():
    """No Meta-named weights (e.g. after merge_gate_up/merge_qkv, or another model): a clear error."""
    x = torch.randn(2, 4)
    gm = torch.export.export(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4)), (x,)).module()
    with pytest.raises(PassError, match="run it before merge_qkv / merge_gate_up"):
        prune(gm, (x,), ratio=0.5, what="ffn")
