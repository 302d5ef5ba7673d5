"""graphopt.capture: export and dynamo give the same IR, equal outputs, weights as get_attr, dynamic B/T/N."""
from collections import Counter

import pytest
import torch

from graphopt.graph_capture import capture
from tests._builders import distinct_score_inputs, random_model, score_inputs, score_module

ATOL = 1e-5  # fp32: the captured graph runs the same ops as eager


def op_counts(gm):
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
@pytest.mark.parametrize("method", ["export", "dynamo"])
def test_capture_matches_eager_and_is_dynamic(captures, preset, method):
    module, _, gm = captures(preset, method)
    stats = gm.meta["capture_stats"]
    assert stats["method"] == method and stats["n_graphs"] == 1 and stats["recompiles"] == 0
    # weights are parameters read by get_attr, named as in the module
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert "model.layers.0.attention.wq.weight" in attrs and "model.output.weight" in attrs
    assert isinstance(gm.get_parameter("model.layers.1.feed_forward.w1.weight"), torch.nn.Parameter)
    # export's default IR: linear stays aten.linear, attention is written out
    counts = op_counts(gm)
    n_layers = module.model.args.n_layers
    assert counts["aten.linear.default"] == 7 * n_layers + 1
    assert counts["aten.softmax.int"] == n_layers
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 11, 7), (1, 5, 1)]:  # the second and third shapes reuse the capture
            x = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(gm(*x), module(*x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_dynamo_and_export_give_the_same_ir(captures, preset):
    assert op_counts(captures(preset, "export")[2]) == op_counts(captures(preset, "dynamo")[2])


def test_capture_bare_transformer():
    model = random_model("tiny")
    ids, pos, mask, _, _ = score_inputs(2, 8, 1)
    gm = capture(model, (ids, pos, mask))
    with torch.no_grad():
        ids, pos, mask, _, _ = score_inputs(4, 6, 1, seed=3)
        torch.testing.assert_close(gm(ids, pos, mask), model(ids, pos, mask), atol=ATOL, rtol=0)


def test_bad_method_is_a_clear_error():
    with pytest.raises(ValueError, match="export.*dynamo"):
        capture(score_module("tiny"), score_inputs(2, 8, 5), method="jit")


@pytest.mark.parametrize("method", ["export", "dynamo"])
def test_capture_from_size_one_and_equal_sizes(method):
    """An example with B = 1 must not specialise B to 1; with T == N (dynamo's duck shaping) T and N
    must not be tied together."""
    module = score_module("tiny")
    gm = capture(module, score_inputs(1, 8, 8), method=method)
    with torch.no_grad():
        x = score_inputs(3, 9, 4, seed=1)
        torch.testing.assert_close(gm(*x), module(*x), atol=ATOL, rtol=0)


def test_capture_strict_export():
    module = score_module("tiny")
    gm = capture(module, score_inputs(2, 8, 5), strict=True)
    with torch.no_grad():
        x = score_inputs(3, 9, 4, seed=1)
        torch.testing.assert_close(gm(*x), module(*x), atol=ATOL, rtol=0)


class GraphBreak(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow: dynamo cannot keep one graph
            return x * 2
        return x - 1


def test_dynamo_graph_break_is_a_clear_error():
    from graphopt.graph_capture import CaptureError
    with pytest.raises(CaptureError, match="one graph"):
        capture(GraphBreak(), (torch.randn(4, 3),), method="dynamo")


def test_export_falls_back_to_unnamed_dims_on_unprovable_guards(monkeypatch):
    """torch 2.11 raises 'Constraints violated' for always-true GQA guards on named Dims; capture then
    exports again with Dim.DYNAMIC and the graph still takes any B, T, N."""
    real_export = torch.export.export
    calls = []

    def export_that_rejects_named_dims(module, args, dynamic_shapes=None, strict=False):
        calls.append(dynamic_shapes)
        if any(isinstance(d, torch.export.Dim) or type(d).__name__ == "_Dim"
               for spec in dynamic_shapes if spec for d in spec.values()):
            raise torch._dynamo.exc.UserError(torch._dynamo.exc.UserErrorType.CONSTRAINT_VIOLATION,
                                              "Constraints violated (T)! (simulated)")
        return real_export(module, args, dynamic_shapes=dynamic_shapes, strict=strict)

    monkeypatch.setattr(torch.export, "export", export_that_rejects_named_dims)
    module = score_module("tiny-gqa")
    gm = capture(module, score_inputs(2, 8, 5), method="export")
    assert len(calls) == 2 and all(d is torch.export.Dim.DYNAMIC for s in calls[1] if s for d in s.values())
    other = distinct_score_inputs(3, 11, 7)
    torch.testing.assert_close(gm(*other), module(*other), atol=1e-5, rtol=1e-5)


def test_export_errors_other_than_constraints_are_not_retried(monkeypatch):
    calls = []

    def failing_export(module, args, dynamic_shapes=None, strict=False):
        calls.append(1)
        raise torch._dynamo.exc.UserError(torch._dynamo.exc.UserErrorType.DYNAMIC_CONTROL_FLOW, "data-dependent")

    monkeypatch.setattr(torch.export, "export", failing_export)
    with pytest.raises(Exception, match="torch.export of ScoreModule failed.*data-dependent"):
        capture(score_module("tiny-gqa"), score_inputs(2, 8, 5), method="export")
    assert len(calls) == 1
