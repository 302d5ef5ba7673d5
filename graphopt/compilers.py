"""The last step of a run: how the (optimised) module or graph is executed.

    none             run it as is (an nn.Module, or the FX GraphModule the passes produced)
    eager-fx         torch.compile with dynamo's "eager" backend (graph capture, no code generation)
    inductor         torch.compile with inductor (fuses the elementwise work around the matmuls)
    inductor-frozen  inductor with freezing: weights folded in as constants, so on CPU inductor
                     pre-packs them for oneDNN's matmuls (inference only; weights must not change)

`compile_for(fn, compiler)` compiles a module or an exported graph lazily (on its first call);
`compile_inside_backend(gm, compiler)` is the same step for a graph that a torch.compile backend
hands on (dynamo is already running there, so inductor is called directly on the graph).
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

COMPILERS = ("none", "inductor", "inductor-frozen", "eager-fx")


def check_compiler(compiler: str) -> None:
    if compiler not in COMPILERS:
        raise ValueError(f"unknown compiler {compiler!r}; expected one of {', '.join(COMPILERS)}")


def inductor_options(compiler: str) -> dict:
    """Inductor config patches for an inductor compiler name."""
    return {"freezing": True} if compiler == "inductor-frozen" else {}


def _with_freezing(compiled):
    """Dynamo reads the freezing flag while tracing (it then treats parameters as static, guarded on
    their addresses), and tracing happens on a call, so the flag is set around every call."""
    from torch._inductor import config as inductor_config

    def call(*args, **kwargs):
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)
    call._orig_mod = compiled._orig_mod  # what was compiled, as torch.compile's wrapper exposes it
    return call


def compile_for(fn, compiler: str, dynamic: bool | None = None):
    """-> fn compiled as `compiler` names it (lazily: the compilation happens on the first call)."""
    check_compiler(compiler)
    if compiler == "none":
        return fn
    if compiler == "eager-fx":
        return torch.compile(fn, backend="eager", dynamic=dynamic)
    compiled = torch.compile(fn, backend="inductor", dynamic=dynamic)
    return _with_freezing(compiled) if compiler == "inductor-frozen" else compiled


def compile_inside_backend(gm: GraphModule, compiler: str):
    """An exported graph handed on by a torch.compile backend -> its runnable: the graph itself
    (none / eager-fx), or inductor's compile_fx on it, dynamic in the symbolic sizes its placeholders
    carry (one compilation for every batch shape). The runnable takes and returns flat tensors."""
    check_compiler(compiler)
    if compiler in ("none", "eager-fx"):
        return gm
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx
    flat = flat_graph(gm)
    fakes = [n.meta["val"] for n in flat.graph.nodes if n.op == "placeholder"]
    with inductor_config.patch(inductor_options(compiler)):
        return compile_fx(flat, fakes)


def flat_graph(gm: GraphModule) -> GraphModule:
    """An exported GraphModule with plain codegen (flat inputs, outputs as the graph returns them) and
    without export's input-guard call, as inductor's compile_fx wants it. Shares gm's weights."""
    graph = torch.fx.Graph()
    env = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.set_codegen(CodeGen())
    out = [n for n in graph.nodes if n.op == "output"][0]
    # export's output is the unflattened structure; plain codegen returns exactly the flat output args
    flat_out, _ = torch.utils._pytree.tree_flatten(out.args[0])
    out.args = (tuple(flat_out),)
    return GraphModule(gm, graph)
