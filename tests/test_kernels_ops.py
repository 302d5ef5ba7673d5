"""The graphopt:: custom ops as graph nodes: opcheck on CPU, torch.export and torch.compile(fullgraph)
each capture an op as exactly one node, and the op on CPU runs the reference. Also: the Triton kernels
launch on CPU tensors whether or not TRITON_INTERPRET was set when triton was imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported; CPU launches interpret regardless

import operator
import subprocess
import sys

import pytest
import torch

import graphopt.kernels  # noqa: F401 (registers the ops)
from graphopt.kernels.linear_logprob import linear_logprob_reference
from graphopt.kernels.logprob import logprob_reference
from graphopt.kernels.prefix_attention import prefix_attention_reference
from graphopt.kernels.rms_norm import add_rms_norm_reference, rms_norm_reference
from graphopt.kernels.rope import rope_reference
from graphopt.kernels.swiglu import swiglu_reference


def _cases():
    """op name -> (args, reference fn)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 24, generator=g)
    ang = torch.randn(2, 5, 4, generator=g)
    doc = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, -1]])
    seg = torch.tensor([[0, 1, 2, 2, 0], [0, 0, 1, 2, 0]])
    qkv = [torch.randn(2, h, 5, 8, generator=g) for h in (4, 2, 2)]
    return {
        "rms_norm": ((x, torch.randn(24, generator=g), 1e-5), rms_norm_reference),
        "add_rms_norm": ((x, torch.randn(2, 5, 24, generator=g), torch.randn(24, generator=g), 1e-6),
                         add_rms_norm_reference),
        "rope": ((torch.randn(2, 5, 3, 8, generator=g), ang.cos(), ang.sin()), rope_reference),
        "swiglu": ((x, torch.randn(2, 5, 24, generator=g)), swiglu_reference),
        "logprob": ((torch.randn(6, 50, generator=g), torch.randint(0, 50, (6,), generator=g)), logprob_reference),
        "linear_logprob": ((torch.randn(6, 16, generator=g), torch.randn(50, 16, generator=g),
                            torch.randint(0, 50, (6,), generator=g)), linear_logprob_reference),
        "prefix_attention": ((*qkv, doc, seg, 8 ** -0.5), prefix_attention_reference),
    }


CASES = _cases()


class _OneOp(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, *args):
        return getattr(torch.ops.graphopt, self.name)(*args)


def _tensors(args):
    return tuple(a for a in args if isinstance(a, torch.Tensor))


def _with_constants(name, args):
    """A module that takes only the tensor args (scalars baked in), and those tensor args."""
    consts = {i: a for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}

    class M(torch.nn.Module):
        def forward(self, *tensors):
            it = iter(tensors)
            full = [consts[i] if i in consts else next(it) for i in range(len(args))]
            return getattr(torch.ops.graphopt, name)(*full)

    return M(), _tensors(args)


def _assert_same(out, ref):
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(o, r, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_op_on_cpu_runs_reference(name):
    args, reference = CASES[name]
    _assert_same(getattr(torch.ops.graphopt, name)(*args), reference(*args))


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck(name):
    args, _ = CASES[name]
    torch.library.opcheck(getattr(torch.ops.graphopt, name).default, args)


@pytest.mark.parametrize("name", list(CASES))
def test_export_captures_one_node(name):
    args, reference = CASES[name]
    module, tensors = _with_constants(name, args)
    ep = torch.export.export(module, tensors)
    calls = [n for n in ep.graph_module.graph.nodes if n.op == "call_function"]
    target = getattr(torch.ops.graphopt, name).default
    assert [n.target for n in calls if n.target is not operator.getitem] == [target]
    _assert_same(ep.module()(*tensors), reference(*args))


@pytest.mark.parametrize("name", list(CASES))
def test_compile_fullgraph_captures_one_node(name):
    args, reference = CASES[name]
    module, tensors = _with_constants(name, args)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(module, backend=backend, fullgraph=True)(*tensors)
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes if n.op == "call_function"]
    packet = getattr(torch.ops.graphopt, name)
    assert len(calls) - sum(n.target is operator.getitem for n in calls) == 1
    assert calls[0].target in (packet, packet.default)
    _assert_same(out, reference(*args))


_UNINTERPRETED = """
import os, torch, triton
from triton.runtime.interpreter import InterpretedFunction
from graphopt.kernels._triton import interpreter_imported
from graphopt.kernels.rms_norm import rms_norm_reference, rms_norm_triton
from graphopt.kernels.rms_norm import _rms_norm_kernel
assert "TRITON_INTERPRET" not in os.environ and not interpreter_imported()
assert not isinstance(_rms_norm_kernel, InterpretedFunction)  # a compiled-only JITFunction
x, w = torch.randn(3, 7, 45), torch.randn(45)
torch.testing.assert_close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), atol=1e-5, rtol=1e-5)
print("ok")
"""


def test_kernels_launch_on_cpu_when_triton_was_imported_without_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _UNINTERPRETED], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
