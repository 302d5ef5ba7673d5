"""The pass manager: registry, option checking, per-pass records, verification naming the culprit."""
import pytest
import torch
from torch import fx

from graphopt import pipeline
from graphopt.pass_manager import max_output_diff, run_passes
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, register_pass


class Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2 + 1


def _gm():
    return fx.symbolic_trace(Tiny())


def _relu_to_clamp(gm, ctx):
    n = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.relu:
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(torch.clamp, (node.args[0],), {"min": 0.0})
                out = new
                if ctx.options["scale"] != 1.0:
                    with gm.graph.inserting_after(new):
                        out = gm.graph.call_function(torch.mul, (new, ctx.options["scale"]))
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            n += 1
    return PassResult(gm, n > 0, {"matches": n})


def _break(gm, ctx):
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        bumped = gm.graph.call_function(torch.add, (out.args[0], 1.0))
    out.args = (bumped,)
    return PassResult(gm, True, {"matches": 1})


@pytest.fixture(autouse=True, scope="module")
def _test_passes():
    """Register the test passes for this module only (other tests enumerate the registry)."""
    register_pass("test_relu_to_clamp", "relu(x) -> clamp(x, min=0) (test pass)", options={
        "scale": PassOption(float, 1.0, "multiply the result (1.0 keeps numerics)")})(_relu_to_clamp)
    register_pass("test_break_graph", "adds 1 to the output (test pass that breaks numerics)")(_break)
    yield
    for name in ("test_relu_to_clamp", "test_break_graph"):
        pipeline._REGISTRY.pop(name)


def test_pass_rewrites_and_records():
    x = torch.randn(4, 5)
    gm, records = run_passes(_gm(), ["test_relu_to_clamp"], PassContext(example_inputs=(x,)), verify=True)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.relu not in targets and torch.clamp in targets
    (rec,) = records
    assert rec.name == "test_relu_to_clamp" and rec.modified and rec.matches == 1
    assert rec.nodes_before == rec.nodes_after == 3 and rec.max_abs_diff == 0.0
    torch.testing.assert_close(gm(x), Tiny()(x))


def test_second_run_finds_nothing():
    gm, _ = run_passes(_gm(), ["test_relu_to_clamp"])
    gm, (rec,) = run_passes(gm, ["test_relu_to_clamp"])
    assert rec.matches == 0 and not rec.modified


def test_verify_names_the_breaking_pass_and_predecessors():
    with pytest.raises(PassError, match=r"'test_break_graph' \(after \['test_relu_to_clamp'\]\) changed the outputs"):
        run_passes(_gm(), ["test_relu_to_clamp", "test_break_graph"], PassContext(example_inputs=(torch.randn(3),)),
                   verify=True)


def test_unknown_pass_lists_close_matches():
    with pytest.raises(PassError, match="did you mean test_relu_to_clamp"):
        run_passes(_gm(), ["test_relu_to_clam"])


def test_option_errors():
    with pytest.raises(PassError, match="has no option 'scal'; did you mean 'scale'"):
        run_passes(_gm(), [{"name": "test_relu_to_clamp", "scal": 2.0}])
    with pytest.raises(PassError, match="option 'scale' expects float"):
        run_passes(_gm(), [("test_relu_to_clamp", {"scale": "big"})])
    with pytest.raises(PassError, match="is not a name"):
        run_passes(_gm(), [42])


def test_options_reach_the_pass_and_int_coerces_to_float():
    x = torch.randn(6)
    gm, _ = run_passes(_gm(), [("test_relu_to_clamp", {"scale": 3})])
    torch.testing.assert_close(gm(x), torch.relu(x) * 3 * 2 + 1)


def test_nothing_runs_when_a_later_spec_is_invalid():
    gm = _gm()
    before = str(gm.graph)
    with pytest.raises(PassError):
        run_passes(gm, ["test_relu_to_clamp", "no_such_pass"])
    assert str(gm.graph) == before


def test_registry_rejects_duplicate_names():
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("test_relu_to_clamp", "again")(lambda gm, ctx: PassResult(gm, False))


def test_max_output_diff():
    a = torch.zeros(3)
    assert max_output_diff((a,), (a + 0.5,)) == 0.5
    assert max_output_diff(a, torch.zeros(4)) == float("inf")
