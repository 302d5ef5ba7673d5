"""dce and cse: they remove exactly the dead / duplicated nodes, report how many, keep outputs bit-equal,
and never touch side effects (asserts, guards) or random ops."""
import copy

import torch
from torch import nn

from graphopt.graph_capture import capture
from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.pass_manager import count_nodes, run_passes
from graphopt.pipeline import PassContext
from graphopt.scoring.batch import ScoreModule

aten = torch.ops.aten
_CAPTURED = {}


def _inputs(B=2, T=8, N=5, vocab=512):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    pos = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    return ids, pos, mask, torch.randperm(B * T, generator=g)[:N], torch.randint(0, vocab, (N,), generator=g)


def _tiny_graph():
    if "tiny" not in _CAPTURED:
        model = init_random_weights(Transformer(ModelArgs.from_name("tiny"))).eval()
        _CAPTURED["tiny"] = (_inputs(), capture(ScoreModule(model), _inputs(), method="export"))
    inputs, gm = _CAPTURED["tiny"]
    return inputs, copy.deepcopy(gm)


def _impure(gm):
    return [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output") and n.is_impure()]


def test_cse_merges_duplicated_rope_unsqueezes():
    inputs, gm = _tiny_graph()
    with torch.no_grad():
        ref = gm(*inputs)
    impure = _impure(gm)
    # every layer unsqueezes the same cos/sin tables once for q and once for k: all but one per table are duplicates
    unsq = [n for n in gm.graph.nodes if n.target is aten.unsqueeze.default and n.args[0].target is aten.index.Tensor]
    distinct = {(n.args[0], n.args[1]) for n in unsq}
    before = count_nodes(gm)
    gm, (rec,) = run_passes(gm, ["cse"], PassContext(example_inputs=inputs))
    assert rec.matches == rec.stats["nodes_removed"] == before - count_nodes(gm)
    assert rec.matches >= len(unsq) - len(distinct) > 0
    left = [n for n in gm.graph.nodes if n.target is aten.unsqueeze.default and n.args[0].target is aten.index.Tensor]
    assert len(left) == len(distinct)
    assert _impure(gm) == impure  # asserts and the input guard untouched
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)
    gm, (again,) = run_passes(gm, ["cse"], PassContext(example_inputs=inputs))
    assert (again.modified, again.matches) == (False, 0)


class _TwoNoises(nn.Module):
    def forward(self, x):
        return (x + torch.rand_like(x)) * (x + torch.rand_like(x)) + x.sin() + x.sin()


def test_cse_never_merges_random_ops():
    x = torch.randn(4, 3)
    gm = torch.export.export(_TwoNoises(), (x,)).module()
    gm, (rec,) = run_passes(gm, ["cse"], PassContext(example_inputs=(x,)))
    assert rec.matches == 1  # the second x.sin()
    assert len([n for n in gm.graph.nodes if n.target is aten.rand_like.default]) == 2
    assert len([n for n in gm.graph.nodes if n.target is aten.sin.default]) == 1


def test_dce_removes_exactly_the_dead_nodes():
    inputs, gm = _tiny_graph()
    with torch.no_grad():
        ref = gm(*inputs)
    impure = _impure(gm)
    gm, (clean,) = run_passes(gm, ["dce"], PassContext(example_inputs=inputs))
    assert (clean.modified, clean.matches) == (False, 0)  # a fresh capture has no dead code
    ids = next(n for n in gm.graph.nodes if n.op == "placeholder")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(output):  # three dead nodes: a chain of two and a lone one
        a = gm.graph.call_function(aten.mul.Tensor, (ids, 2))
        gm.graph.call_function(aten.add.Tensor, (a, 1))
        gm.graph.call_function(aten.neg.default, (ids,))
    gm.recompile()
    gm, (rec,) = run_passes(gm, ["dce"], PassContext(example_inputs=inputs))
    assert rec.modified and rec.matches == rec.stats["nodes_removed"] == 3
    assert _impure(gm) == impure
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)


def test_dce_drops_parameters_nothing_reads():
    inputs, gm = _tiny_graph()
    with torch.no_grad():
        ref = gm(*inputs)
    gm.register_parameter("unused_w", nn.Parameter(torch.ones(3)))
    norm_w = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "model.norm.weight")
    with gm.graph.inserting_after(norm_w):
        gm.graph.get_attr("unused_w")  # read by nobody: node and parameter go
        gm.graph.get_attr("model.layers.0.ffn_norm.weight")  # unused reader of a weight used elsewhere: node goes
    gm.recompile()
    params = {n for n, _ in gm.named_parameters()}
    gm, (rec,) = run_passes(gm, ["dce"], PassContext(example_inputs=inputs))
    assert rec.matches == 2 and rec.stats["attrs_dropped"] == 1
    assert {n for n, _ in gm.named_parameters()} == params - {"unused_w"}
    with torch.no_grad():
        assert torch.equal(gm(*inputs), ref)
