"""graphopt.backend as a torch.compile backend: passes run on dynamo's graph (normalised to the export
IR), then the FX graph ("eager") or inductor; outputs equal eager (fp32, 1e-4), one compilation for
several shapes, pass records exposed."""
import pytest
import torch

import graphopt
from tests._builders import score_inputs, score_module

ATOL = 1e-4
FUSION = ["fuse_rmsnorm", "fuse_rope", "fuse_swiglu", "merge_qkv", "merge_gate_up", "sdpa_attention"]


def test_backend_eager_runs_passes_and_matches():
    module = score_module("tiny-gqa")
    be = graphopt.backend(pipeline=FUSION, compiler="none")
    compiled = torch.compile(module, backend=be, dynamic=True)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 11, 7), (2, 5, 3)]:
            x = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(compiled(*x), module(*x), atol=ATOL, rtol=0)
    assert be.compiles == 1  # dynamic B/T/N: no recompilation for new shapes
    assert [r.name for r in be.records] == FUSION
    assert [r.matches for r in be.records] == [5, 4, 2, 2, 2, 2]
    ops = {str(n.target) for n in be.graphs[-1].graph.nodes}
    assert "graphopt.rms_norm.default" in ops and "aten.scaled_dot_product_attention.default" in ops


def test_backend_rejects_unknown_then():
    with pytest.raises(ValueError, match="inductor"):
        graphopt.backend(pipeline=[], compiler="jit")


def test_backend_inductor_one_layer():
    """Inductor compiles are slow on CPU: one layer, a few passes, two shapes."""
    torch._dynamo.reset()
    module = score_module("tiny-gqa", n_layers=1)
    be = graphopt.backend(pipeline=["fuse_rmsnorm", "fuse_swiglu", "sdpa_attention"], compiler="inductor")
    compiled = torch.compile(module, backend=be, dynamic=True)
    with torch.no_grad():
        for shape in [(2, 8, 5), (3, 6, 4)]:
            x = score_inputs(*shape, seed=sum(shape))
            torch.testing.assert_close(compiled(*x), module(*x), atol=ATOL, rtol=0)
    assert be.compiles == 1 and [r.matches for r in be.records] == [3, 1, 1]


def test_registered_name_graphopt_runs_the_named_pipeline():
    """torch.compile(model, backend="graphopt") finds the backend by name (torch_dynamo_backends entry
    point); options choose the pipeline and the compiler."""
    from graphopt.compile_backend import graphopt_backend
    from graphopt.pipeline import parse_pipeline
    torch._dynamo.reset()
    module = score_module("tiny-gqa")
    compiled = torch.compile(module, backend="graphopt", dynamic=True,
                             options={"pipeline": "exact", "compiler": "none"})
    x = score_inputs(2, 8, 5, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*x), module(*x), atol=ATOL, rtol=0)
    be = graphopt_backend.last
    assert [r.name for r in be.records] == [p.name for p in parse_pipeline("exact")]
    ops = {str(n.target) for n in be.graphs[-1].graph.nodes}
    assert {"graphopt.rms_norm.default", "graphopt.linear_logprob.default",
            "aten.scaled_dot_product_attention.default"} <= ops


def test_registered_backend_rejects_unknown_option():
    torch._dynamo.reset()
    compiled = torch.compile(score_module("tiny"), backend="graphopt", options={"pipelin": "exact"})
    with pytest.raises(Exception, match="no option 'pipelin'"):
        with torch.no_grad():
            compiled(*score_inputs(2, 8, 5, seed=1))
