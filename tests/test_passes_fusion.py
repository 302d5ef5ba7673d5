"""Fusion passes (fuse_rmsnorm, fuse_rope, fuse_swiglu, merge_qkv, merge_gate_up, sdpa_attention) on the
captured tiny ScoreModule graphs: the rewrite happened (op counts), outputs stay equal (fp32: 1e-5 per
pass, 1e-4 for all passes together; bf16: 0.1 absolute on log-probs against bf16 eager), and a graph
without the pattern is left alone (modified=False, matches=0)."""
import copy
import warnings
from collections import Counter

import pytest
import torch

from graphopt.graph_capture import capture
from graphopt.pass_manager import run_passes
from graphopt.pipeline import PassContext, get_pass
from tests.test_capture import score_inputs, score_module

FP32_ATOL = 1e-5
ALL_ATOL = 1e-4
BF16_ATOL = 0.1  # bf16 log-probs of |value| ~ 5-10: a few bf16 ulps; bf16 eager itself is ~0.02 off fp32
FUSION = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention"]
N_LAYERS = 2
EXAMPLE, OTHER = (2, 8, 5), (3, 11, 7)

_CACHE = {}


def captured(preset, dtype=torch.float32):
    """(eager module, a fresh copy of its captured graph): one capture per preset/dtype per session."""
    key = (preset, dtype)
    if key not in _CACHE:
        module = score_module(preset).to(dtype)
        _CACHE[key] = (module, capture(module, score_inputs(*EXAMPLE)))
    module, gm = _CACHE[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return module, copy.deepcopy(gm)


def ops(gm):
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def run(gm, specs):
    return run_passes(gm, specs, PassContext(example_inputs=score_inputs(*EXAMPLE)))


def assert_same_outputs(gm, module, atol):
    with torch.no_grad():
        for shape in (EXAMPLE, OTHER):  # the second shape checks the rewrite kept the graph dynamic
            x = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(gm(*x), module(*x), atol=atol, rtol=0)


# pass -> (expected matches on tiny-gqa, op that must appear with that count, ops that must disappear)
EXPECT = {
    "fuse_rmsnorm": (2 * N_LAYERS + 1, "graphopt.rms_norm.default", ["aten.rsqrt.default", "aten.mean.dim"]),
    "fuse_rope": (2 * N_LAYERS, "graphopt.rope.default", ["aten.stack.default", "aten.select.int"]),
    "fuse_swiglu": (N_LAYERS, "graphopt.swiglu.default", ["aten.silu.default"]),
    "merge_qkv": (N_LAYERS, "aten.split_with_sizes.default", []),
    "merge_gate_up": (N_LAYERS, "aten.split_with_sizes.default", []),
    "sdpa_attention": (N_LAYERS, "aten.scaled_dot_product_attention.default",
                       ["aten.softmax.int", "aten.masked_fill.Scalar", "aten.repeat_interleave.self_int"]),
}


@pytest.mark.parametrize("name", FUSION)
def test_pass_rewrites_and_keeps_outputs(name):
    module, gm = captured("tiny-gqa")
    before = ops(gm)
    gm, (record,) = run(gm, [name])
    matches, new_op, gone = EXPECT[name]
    after = ops(gm)
    assert record.modified and record.matches == matches
    assert after[new_op] == matches
    for op in gone:
        assert before[op] > 0 and after[op] == 0, op
    computed = [n for n in gm.graph.nodes if n.op == "call_function"
                and n.target != torch.ops.aten._assert_tensor_metadata.default]
    assert all("val" in n.meta for n in computed)  # shapes stay known to later passes and inductor
    assert_same_outputs(gm, module, FP32_ATOL)


def test_merges_remove_old_weights_and_split_gqa_sizes():
    module, gm = captured("tiny-qwen")  # GQA (4 q heads, 2 kv heads) with q/k/v biases
    gm, records = run(gm, ["merge_qkv", "merge_gate_up"])
    assert [r.matches for r in records] == [N_LAYERS, N_LAYERS]
    attn = gm.get_submodule("model.layers.0.attention")
    ffn = gm.get_submodule("model.layers.0.feed_forward")
    dim, head_dim = 64, 16
    assert tuple(attn.wqkv_weight.shape) == ((4 + 2 + 2) * head_dim, dim)
    assert tuple(attn.wqkv_bias.shape) == ((4 + 2 + 2) * head_dim,)
    assert tuple(ffn.w13_weight.shape) == (2 * module.model.args.hidden_dim, dim)
    for sub in ("wq", "wk", "wv"):
        assert not hasattr(attn.get_submodule(sub), "weight") and not hasattr(attn.get_submodule(sub), "bias")
    assert not hasattr(ffn.w1, "weight") and not hasattr(ffn.w3, "weight")
    splits = [n for n in gm.graph.nodes if n.target == torch.ops.aten.split_with_sizes.default]
    assert [4 * head_dim, 2 * head_dim, 2 * head_dim] in [list(n.args[1]) for n in splits]
    assert_same_outputs(gm, module, FP32_ATOL)


def test_fuse_rmsnorm_residual_option():
    module, gm = captured("tiny-gqa")
    gm, (record,) = run(gm, [("fuse_rmsnorm", {"fuse_residual": True})])
    counts = ops(gm)
    # every norm but the first (fed by the embedding) and the last (its add has no other reader)
    assert record.matches == 2 * N_LAYERS + 1 and record.stats["residual_matches"] == 2 * N_LAYERS - 1
    assert counts["graphopt.add_rms_norm.default"] == 2 * N_LAYERS - 1
    assert counts["graphopt.rms_norm.default"] == 2
    assert_same_outputs(gm, module, FP32_ATOL)


def test_sdpa_keep_repeat_option():
    module, gm = captured("tiny-gqa")
    gm, (record,) = run(gm, [("sdpa_attention", {"keep_repeat": True})])
    assert record.matches == N_LAYERS and ops(gm)["aten.repeat_interleave.self_int"] == 2 * N_LAYERS
    sdpa = [n for n in gm.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert all(not n.kwargs.get("enable_gqa", False) for n in sdpa)
    assert all(abs(n.kwargs["scale"] - 16 ** -0.5) < 1e-12 for n in sdpa)
    assert_same_outputs(gm, module, FP32_ATOL)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa", "tiny-qwen"])
def test_all_fusion_passes_together(preset):
    module, gm = captured(preset)
    n_before = len(gm.graph.nodes)
    gm, records = run(gm, [("fuse_rmsnorm", {"fuse_residual": True})] + FUSION[1:])
    assert all(r.matches > 0 for r in records), [(r.name, r.matches) for r in records]
    assert len(gm.graph.nodes) < n_before
    assert_same_outputs(gm, module, ALL_ATOL)


def test_all_fusion_passes_bf16():
    module, gm = captured("tiny-gqa", torch.bfloat16)
    gm, records = run(gm, FUSION)
    assert [r.matches for r in records] == [EXPECT[n][0] for n in FUSION]
    assert_same_outputs(gm, module, BF16_ATOL)


class NoPattern(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.a(x)) * torch.sigmoid(self.b(x)) + x.softmax(-1)


@pytest.mark.parametrize("name", FUSION)
def test_graph_without_pattern_is_unchanged(name):
    module = NoPattern().eval()
    x = torch.randn(3, 8)
    gm = capture(module, (x,))
    code = gm.code
    options = {k: o.default for k, o in get_pass(name).options.items()}
    result = get_pass(name).fn(gm, PassContext(example_inputs=(x,), options=options))
    assert result.modified is False and result.stats["matches"] == 0
    assert result.gm.code == code
