"""The last step of a run: how the (optimised) module or graph is executed.

    none             run it as is (an nn.Module, or the FX GraphModule the passes produced)
    eager-fx         torch.compile with dynamo's "eager" backend (graph capture, no code generation)
    inductor         torch.compile with inductor (fuses the elementwise work around the matmuls)
    inductor-frozen  inductor with freezing: weights folded in as constants, so on CPU inductor
                     pre-packs them for oneDNN's matmuls (inference only; weights must not change)
"""
from __future__ import annotations

import torch

COMPILERS = ("none", "inductor", "inductor-frozen", "eager-fx")


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
    if compiler == "none":
        return fn
    if compiler == "eager-fx":
        return torch.compile(fn, backend="eager", dynamic=dynamic)
    if compiler == "inductor":
        return torch.compile(fn, backend="inductor", dynamic=dynamic)
    if compiler == "inductor-frozen":
        return _with_freezing(torch.compile(fn, backend="inductor", dynamic=dynamic))
    raise ValueError(f"unknown compiler {compiler!r}; expected one of {', '.join(COMPILERS)}")
