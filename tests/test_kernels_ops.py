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
from graphopt.kernels.prefix_attention import prefix_attention_sdpa
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
        "prefix_attention": ((*qkv, doc, seg, 8 ** -0.5), prefix_attention_sdpa),
    }


CASES = _cases()


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


def _fake_cuda_cases(mode):
    """The ops' args as fake CUDA tensors (no GPU needed): the CUDA branch of each op, i.e. the Triton
    launcher, runs on them as it does under export / torch.compile on a GPU."""
    with mode:
        g = lambda *s, dtype=torch.bfloat16: torch.empty(*s, dtype=dtype, device="cuda")  # noqa: E731
        ids = torch.zeros(2, 40, dtype=torch.long, device="cuda")
        target = torch.zeros(6, dtype=torch.long, device="cuda")
        return {
            "rms_norm": (g(4, 8, 64), g(64), 1e-5),
            "add_rms_norm": (g(4, 8, 64), g(4, 8, 64), g(64), 1e-5),
            "rope": (g(2, 8, 4, 32), g(2, 8, 16, dtype=torch.float32), g(2, 8, 16, dtype=torch.float32)),
            "swiglu": (g(4, 8, 96), g(4, 8, 96)),
            "logprob": (g(6, 500), target),
            "linear_logprob": (g(6, 64), g(500, 64), target),
            "prefix_attention": (g(2, 4, 40, 64), g(2, 2, 40, 64), g(2, 2, 40, 64), ids, ids, 0.125),
        }


def _check_cuda_branch(name):
    """export keeps the op as one node; aot_autograd (what torch.compile hands inductor) lowers it to the
    Triton kernel, with fake CUDA tensors."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    args = _fake_cuda_cases(mode)[name]
    module, tensors = _with_constants(name, args)
    ep = torch.export.export(module, tensors)  # export keeps the op whole
    calls = [n.target for n in ep.graph_module.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert calls == [getattr(torch.ops.graphopt, name).default]

    class Tupled(torch.nn.Module):
        def forward(self, *t):
            out = module(*t)
            return out if isinstance(out, tuple) else (out,)

    graphs = []
    with torch._guards.tracing(torch._guards.TracingContext(mode)):  # what torch.compile hands the backend
        aot_module_simplified(Tupled(), list(tensors), fw_compiler=lambda gm, ex: graphs.append(gm) or gm.forward)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert "triton_kernel_wrapper_functional" in targets, targets  # the Triton kernel, not the reference
    assert not any(t.startswith("graphopt.") for t in targets)


def _uninterpreted_checks():
    """Run in a process where triton was imported with TRITON_INTERPRET=0 (compiled-only kernels)."""
    from triton.runtime.interpreter import InterpretedFunction

    from graphopt.kernels._triton import interpreter_imported
    from graphopt.kernels.rms_norm import _rms_norm_kernel, rms_norm_triton

    assert not interpreter_imported() and not isinstance(_rms_norm_kernel, InterpretedFunction)
    # 1. the launchers still interpret on CPU tensors (tl.sum & co. are routed through the interpreter)
    x, w = torch.randn(3, 7, 45), torch.randn(45)
    torch.testing.assert_close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    # 2. the CUDA branch of every op traces (no GPU needed: fake CUDA tensors), and torch finds the kernel
    #    behind each triton_op (it keys the AOT-autograd cache on the kernel's source)
    for name in CASES:
        _check_cuda_branch(name)
        kernels = torch._library.triton.get_triton_kernels_for_op(f"graphopt::{name}")
        assert [k.fn.__name__ for k in kernels] == [f"_{name}_kernel"], (name, kernels)
    print("ok")


def test_without_interpreter_cpu_launch_and_cuda_branch_tracing():
    """TRITON_INTERPRET=1 (set above) makes every @triton.jit an InterpretedFunction at import; a process
    that imported triton without it gets compiled-only kernels: check both behaviours there."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", "from tests.test_kernels_ops import _uninterpreted_checks as f; f()"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_wrap_triton_shim_launches_interpreted_copies_where_torch_refuses_them(monkeypatch):
    """torch 2.11 wraps JITFunctions only: the CPU launch then uses the interpreted copy itself;
    anything else torch refuses is still an error."""
    from triton.runtime.interpreter import InterpretedFunction

    from graphopt.kernels import _triton
    from graphopt.kernels.rms_norm import _rms_norm_kernel, rms_norm_triton

    def refuse(kernel):
        raise RuntimeError("wrap_triton only works on functions annotated with triton.jit or triton.autotune")

    monkeypatch.setattr(torch.library, "wrap_triton", refuse)
    interpreted = _triton.for_device(_rms_norm_kernel, torch.device("cpu"))
    assert isinstance(interpreted, InterpretedFunction) and _triton.wrap_triton(interpreted) is interpreted
    x, w = torch.randn(3, 5, 40), torch.randn(40)
    torch.testing.assert_close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="wrap_triton only works"):
        _triton.wrap_triton(lambda: None)
