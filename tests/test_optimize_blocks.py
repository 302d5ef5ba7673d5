"""optimize() block by block (graphopt.optimize_blocks): capture and passes once per distinct decoder
block, the result node for node what optimising the whole graph gives and bit for bit the same outputs,
on GQA / tied / Qwen3 / sliding-window (per-layer windows) / per-layer-width (globally pruned) models."""
import copy
from collections import Counter

import pytest
import torch

import graphopt.optimize_blocks as optimize_blocks
from graphopt.block_capture import BLOCK_OP
from graphopt.optimize_model import optimize
from graphopt.scoring.batch import ScoreModule
from tests._builders import distinct_score_inputs, random_model
from tests._prune_oracles import cut

RMS, ROPE, SWIGLU = (torch.ops.graphopt.rms_norm.default, torch.ops.graphopt.rope.default,
                     torch.ops.graphopt.swiglu.default)
SDPA, PACKED = torch.ops.aten.scaled_dot_product_attention.default, torch.ops.mkldnn._linear_pointwise.default


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path, monkeypatch):  # optimised graphs kept by other runs are not loaded here
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))


def _model(preset, n_layers=3, **changes):
    return random_model(preset, n_layers=n_layers, **changes)


def _per_layer_widths():
    """A globally pruned model: layers of three widths (FFN channels, kv groups / query heads)."""
    model = _model("tiny-gqa", n_layers=4)
    return cut(model, model.args, keep_ffn={1: list(range(0, 96, 2)), 3: list(range(40))},
                keep_heads={1: ([1], [2, 3]), 3: ([0], [0, 1])}).model


def _both(model, pipeline):
    """(block by block, whole graph) optimisations of copies of `model` (after_each asks for the whole graph)."""
    inputs = distinct_score_inputs(2, 12, 6)
    blocks = optimize(ScoreModule(copy.deepcopy(model)), inputs, pipeline)
    whole = optimize(ScoreModule(copy.deepcopy(model)), inputs, pipeline, after_each=lambda record, gm: None)
    assert blocks.setup["path"] == "blocks" and whole.setup["path"] == "whole", (blocks.setup, whole.setup)
    return blocks, whole


def _reading(gm, node, prefix):
    """Whether `node` reads a weight of `prefix` (a layer), directly."""
    return any(a.op == "get_attr" and a.target.startswith(prefix) for a in node.all_input_nodes)


def _assert_every_layer_rewritten(gm, n_layers, packed):
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert not [n for n in nodes if n.target is BLOCK_OP]
    counts = Counter(n.target for n in nodes)
    assert counts[SDPA] == counts[SWIGLU] == n_layers and counts[ROPE] == 2 * n_layers
    for i in range(n_layers):
        layer = f"model.layers.{i}."
        assert sum(_reading(gm, n, layer) for n in nodes if n.target is RMS) >= 2, i  # its two norms, fused
        merged = "wqkv_weight_mkldnn" if packed else "wqkv_weight"
        assert any(a.op == "get_attr" and a.target == f"{layer}attention.{merged}" for a in gm.graph.nodes), i
        if packed:  # every linear of the layer on packed weights: no aten.linear reads its weights
            assert not [n for n in nodes if n.target is torch.ops.aten.linear.default and _reading(gm, n, layer)]


CASES = {
    "gqa": (lambda: _model("tiny-gqa"), 1),
    "tied": (lambda: _model("tiny-tied"), 1),
    "qwen3": (lambda: _model("tiny-qwen3"), 1),
    "window-from-layer-1": (lambda: _model("tiny-window", window_from_layer=1), 1),  # layer 0 unwindowed: one
    # block graph, handed the plain mask by layer 0 and the windowed one by the others
    "per-layer-widths": (_per_layer_widths, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_blocks_equal_whole_graph_exact_cpu(case):
    make, distinct = CASES[case]
    model = make()
    blocks, whole = _both(model, "exact-cpu")
    assert blocks.setup["distinct_blocks"] == distinct and blocks.setup["layers"] == len(model.layers)
    _assert_every_layer_rewritten(blocks.graph, len(model.layers), packed=True)
    assert [(r.name, r.matches) for r in blocks.records if r.name not in ("cse", "dce")] == \
        [(r.name, r.matches) for r in whole.records if r.name not in ("cse", "dce")]  # whole graph: one mask view
    # for all layers (cse); the outer graph: an unread tied-table name (dce)
    reference = ScoreModule(model).eval()
    for B, T, N in [(2, 12, 6), (3, 7, 5), (1, 9, 4)]:  # other shapes than the capture's
        inputs = distinct_score_inputs(B, T, N, seed=B)
        with torch.no_grad():
            got, want, eager = blocks(*inputs), whole(*inputs), reference(*inputs)
        assert torch.equal(got, want), (B, T, N)
        torch.testing.assert_close(got, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["tiny-tied", "tiny-qwen3"])
def test_blocks_equal_whole_graph_bfloat16(preset):
    """fast-cpu casts the embedding table: the first layer gets bfloat16 inputs, the others float32
    (a block of its own), typed as the whole graph types them."""
    blocks, whole = _both(_model(preset), "fast-cpu")
    assert blocks.setup["distinct_blocks"] == 2
    inputs = distinct_score_inputs(3, 7, 5, seed=3)
    with torch.no_grad():
        assert torch.equal(blocks(*inputs), whole(*inputs))


def test_capture_and_passes_once_per_distinct_block(monkeypatch):
    """Depth adds no capture and no pass run: 2 and 6 layers both export 2 graphs (the graph around the
    layers, one block) and run the pipeline on 2 parts."""
    counts = []
    for n_layers in (2, 6):
        calls = Counter()
        real_export, real_run = optimize_blocks.capture_block, optimize_blocks.run_passes
        monkeypatch.setattr(optimize_blocks, "capture_block", lambda *a: calls.update(["block"]) or real_export(*a))
        monkeypatch.setattr(optimize_blocks, "run_passes", lambda *a, **k: calls.update(["passes"]) or real_run(*a, **k))
        opt = optimize(ScoreModule(_model("tiny-gqa", n_layers=n_layers)), distinct_score_inputs(2, 12, 6), "exact",
                       cache=False)  # (a plan kept by another test would skip the capture)
        monkeypatch.undo()
        assert opt.setup["path"] == "blocks" and opt.setup["layers"] == n_layers
        merge = next(r for r in opt.records if r.name == "merge_qkv")
        assert merge.matches == n_layers
        counts.append(dict(calls))
    assert counts == [{"block": 1, "passes": 2}] * 2


def test_blocks_keep_one_copy_of_merged_weights():
    """exact: every layer's own wq / wk / wv and w1 / w3 are views of the graph's merged weights (the
    first layer through the passes, the others through the recorded steps): no second copy."""
    model = _model("tiny-gqa", n_layers=3)
    opt = optimize(ScoreModule(model), distinct_score_inputs(2, 12, 6), "exact")
    assert opt.setup["path"] == "blocks"
    params = dict(opt.graph.named_parameters())
    for i, layer in enumerate(model.layers):
        for owner, merged, parts in [("attention", "wqkv_weight", ("wq", "wk", "wv")),
                                     ("feed_forward", "w13_weight", ("w1", "w3"))]:
            big = params[f"model.layers.{i}.{owner}.{merged}"]
            for part in parts:
                w = getattr(getattr(layer, owner), part).weight
                assert w.untyped_storage().data_ptr() == big.untyped_storage().data_ptr(), (i, part)


@pytest.mark.parametrize("pipeline,why", [
    (["fuse_rmsnorm", "pipeline_split"], "pass pipeline_split needs the whole graph"),
    ([{"name": "fuse_rmsnorm", "fuse_residual": True}], "pass fuse_rmsnorm needs the whole graph"),
])
def test_pipelines_with_whole_graph_passes_capture_whole(pipeline, why):
    opt = optimize(ScoreModule(_model("tiny", n_layers=2)), distinct_score_inputs(2, 12, 6), pipeline)
    assert opt.setup["path"] == "whole" and opt.setup["why_whole"] == why


def test_module_without_layers_captures_whole():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(x).relu()
    opt = optimize(Head(), (torch.randn(2, 8),), ["cse"])
    assert opt.setup["path"] == "whole" and "no list of decoder layers" in opt.setup["why_whole"]


def test_a_layer_called_with_an_object_is_captured_whole():
    """The stand-in flattens a layer's call into tensors and plain constants; anything else (a cache
    object, say) cannot be baked into a block graph: the whole graph is captured, and says why."""
    class Scale:
        value = 2.0

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x, how):
            return self.lin(x) * how.value

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(2))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x, Scale())
            return x
    net = Net().eval()
    opt = optimize(net, (torch.randn(2, 8),), ["cse"])
    assert opt.setup["path"] == "whole" and "called with a Scale argument" in opt.setup["why_whole"]
    with torch.no_grad():
        x = torch.randn(2, 8)  # (x is no input graphopt knows the dynamic dims of: its shape is static)
        torch.testing.assert_close(opt(x), net(x))


def test_an_empty_pipeline_captures_block_by_block_and_changes_nothing():
    """No passes (the captured graph as it is, e.g. a benchmark's plain graph): still block by block, and the
    output equals the eager module's bit for bit."""
    model, inputs = _model("tiny-gqa"), distinct_score_inputs(2, 12, 6)
    opt = optimize(ScoreModule(copy.deepcopy(model)), inputs, [])
    assert opt.setup["path"] == "blocks" and not opt.records
    with torch.no_grad():
        assert torch.equal(opt(*inputs), ScoreModule(model)(*inputs))


@pytest.mark.parametrize("preset", ["tiny-gqa", "tiny-window"])
def test_the_kv_cache_graph_goes_block_by_block(preset):
    """The prefix tree's graph that reads and returns a KV cache: its layers see the mask's key length
    P + T, a sum of two sizes, which block capture leaves to export to derive (it went whole before: "layer
    0's input size s18 + s41 is not a plain symbol"). Outputs bit for bit the whole graph's, the new tokens'
    K/V included, at other B / T / P than the capture's."""
    from torch.utils._pytree import tree_leaves

    from graphopt.scoring.prefix_cache import KVLayout, cached_example_inputs, cached_score_module
    model = _model(preset)
    layout = KVLayout.of_args(model.args)
    example = cached_example_inputs(layout, vocab_size=model.args.vocab_size)
    ran = Counter()
    traced = copy.deepcopy(model)
    for i, layer in enumerate(traced.layers):
        layer.register_forward_hook(lambda *a, i=i: ran.update([i]))
    blocks = optimize(cached_score_module(traced, return_cache=True), example, "exact-cpu")
    # the layers return K/V as transposed views: the capture rebuilds their layout instead of running every
    # layer to learn it (it ran all of them before), so only the first layer of the block is ever traced
    assert set(ran) == {0}, ran
    whole = optimize(cached_score_module(copy.deepcopy(model), return_cache=True), example, "exact-cpu",
                     after_each=lambda record, gm: None)
    assert blocks.setup["path"] == "blocks" and blocks.setup["distinct_blocks"] == 1, blocks.setup
    assert whole.setup["path"] == "whole"
    for B, T, P, N in [(2, 5, 7, 4), (1, 3, 12, 2), (3, 6, 1, 5)]:
        inputs = list(cached_example_inputs(layout, B, T, P, N, vocab_size=model.args.vocab_size))
        torch.manual_seed(B * 100 + P)
        inputs[0] = torch.randint(0, model.args.vocab_size, inputs[0].shape)
        inputs[-1] = torch.randn_like(inputs[-1])  # a filled cache
        with torch.no_grad():
            got, want = tree_leaves(blocks(*inputs)), tree_leaves(whole(*inputs))
        assert len(got) == len(want) >= 2 and all(torch.equal(g, w) for g, w in zip(got, want)), (B, T, P)


@pytest.mark.parametrize("preset", ["tiny-gqa", "tiny-qwen3", "tiny-window"])
def test_the_decode_step_graph_goes_block_by_block(preset):
    """Generation's step graph (NextTokenModule + cache_attention + lean_graph): cache_attention runs on each
    block (the layer's cache is two of the block's inputs), lean_graph once on the assembled graph; next
    tokens, logits and new K/V equal the whole graph's (fp32, 1e-5) at other B / T / P than the capture's."""
    from torch.utils._pytree import tree_leaves

    from graphopt.generation.step import build_generation_graph
    from graphopt.scoring.prefix_cache import KVLayout
    model = _model(preset)
    blocks = build_generation_graph(copy.deepcopy(model), "decode-cpu", with_logits=True)
    whole = build_generation_graph(copy.deepcopy(model), "decode-cpu", with_logits=True,
                                   after_each=lambda record, gm: None)
    assert blocks.optimized.setup["path"] == "blocks" and whole.optimized.setup["path"] == "whole"
    matches = {r.name: r.matches for r in blocks.optimized.records}
    assert matches["cache_attention"] == model.args.n_layers and matches["lean_graph"] > 0, matches
    assert blocks.pass_names[-1] == "lean_graph"
    targets = [n.target for n in blocks.optimized.graph.graph.nodes]
    assert targets.count(torch.ops.graphopt.cache_attention.default) == model.args.n_layers
    assert not any(n.op == "get_attr" and "." in n.target for n in blocks.optimized.graph.graph.nodes)  # flat names
    layout = KVLayout.of_args(model.args)
    for B, T, P in [(3, 1, 9), (1, 5, 4), (2, 1, 1)]:
        g = torch.Generator().manual_seed(B * 10 + P)
        ids = torch.randint(0, model.args.vocab_size, (B, T), generator=g)
        pos = torch.arange(P, P + T).expand(B, T).contiguous()
        mask = torch.ones(T, P + T, dtype=torch.bool).tril(P).expand(B, T, P + T).contiguous()
        cache = torch.randn(layout.empty(B, P).shape, generator=g)
        inputs = (ids, pos, mask, torch.arange(B * T), cache)
        with torch.no_grad():
            got, want = tree_leaves(blocks.run(*inputs)), tree_leaves(whole.run(*inputs))
        assert len(got) == len(want) == 3
        assert torch.equal(got[0], want[0]) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got[1:], want[1:]))


def test_a_decode_step_whose_cache_changes_dtype_goes_whole():
    """cast_dtype makes the attention read bfloat16: cache_attention would give the cache input that dtype,
    a change the graph around the blocks would have to follow, so the step graph is optimised whole."""
    from graphopt.generation.step import build_generation_graph
    graph = build_generation_graph(_model("tiny-gqa"), ["cast_dtype", "sdpa_attention"])
    setup = graph.optimized.setup
    assert setup["path"] == "whole" and "cache would be held in torch.bfloat16" in setup["why_whole"], setup
    assert graph.layout.dtype == torch.bfloat16  # the whole graph's cache input took the dtype


def test_a_kept_decode_step_graph_is_read_back_and_decodes_the_same():
    """A second build of the same step graph reads the kept one (no capture, no passes; lean_graph runs again on
    the assembled graph) and gives the same outputs bit for bit."""
    from torch.utils._pytree import tree_leaves

    from graphopt.generation.step import build_generation_graph, step_example_inputs
    model = _model("tiny-gqa")
    first = build_generation_graph(copy.deepcopy(model), "decode-cpu", cache=True)
    again = build_generation_graph(copy.deepcopy(model), "decode-cpu", cache=True)
    assert not first.optimized.setup["cached"] and again.optimized.setup["cached"], again.optimized.setup
    assert again.pass_names == first.pass_names and again.pass_names[-1] == "lean_graph"
    inputs = list(step_example_inputs(first.layout, B=3, T=1, P=6, N=3))
    inputs[-1] = torch.randn_like(inputs[-1])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(first.run(*inputs)), tree_leaves(again.run(*inputs))))
