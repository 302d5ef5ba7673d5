"""graphopt.compilers: every compiler name runs the module and matches it (fp32, 1e-4);
inductor-frozen really folds the weights in (a weight changed after compiling is not seen), plain
inductor does not; an unknown name is an error listing the valid ones."""
import pytest
import torch

import graphopt
from graphopt.compilers import COMPILERS, compile_for
from tests._builders import score_inputs, score_module

ATOL = 1e-4


def one_layer_module():
    return score_module("tiny-gqa", n_layers=1)


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compiler_matches_module_and_freezing_folds_weights(compiler):
    torch._dynamo.reset()
    module = one_layer_module()
    fn = compile_for(module, compiler)
    assert getattr(fn, "_orig_mod", fn) is module  # the runner counts parameters on what was compiled
    x = score_inputs(2, 8, 5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(fn(*x), module(*x), atol=ATOL, rtol=0)
        before = fn(*x)
        module.model.output.weight.mul_(2.0)  # changes every log-prob
        after, expected = fn(*x), module(*x)
    if compiler == "inductor-frozen":
        torch.testing.assert_close(after, before, atol=0, rtol=0)  # the old weights are baked in
    else:
        torch.testing.assert_close(after, expected, atol=ATOL, rtol=0)
        assert (after - before).abs().max() > 1e-3


def test_unknown_compiler_lists_the_valid_ones():
    with pytest.raises(ValueError, match="inductor-frozen"):
        compile_for(torch.nn.Identity(), "tvm")


def test_backend_then_inductor_frozen_runs_passes_matches_and_freezes():
    torch._dynamo.reset()
    module = one_layer_module()
    be = graphopt.backend(pipeline=["fuse_rmsnorm", "fuse_swiglu"], compiler="inductor-frozen")
    compiled = torch.compile(module, backend=be, dynamic=True)
    x = score_inputs(2, 8, 5, seed=3)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 6, 4)]:
            y = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(compiled(*y), module(*y), atol=ATOL, rtol=0)
        before = compiled(*x)
        module.model.layers[0].attention.wq.weight.mul_(2.0)
        torch.testing.assert_close(compiled(*x), before, atol=0, rtol=0)  # weights folded in at compile time
        assert (module(*x) - before).abs().max() > 1e-3
    assert be.compiles == 1 and [r.matches for r in be.records] == [3, 1]
