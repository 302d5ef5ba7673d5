"""Launch helpers shared by the kernel files: pick the compiled kernel for CUDA tensors and the Triton
interpreter for CPU tensors, whatever TRITON_INTERPRET said when triton was imported."""
from __future__ import annotations

import contextlib

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def interpreter_imported() -> bool:
    """True when triton was imported under TRITON_INTERPRET=1 (then every @triton.jit, including
    triton.language's own tl.sum / tl.max, is already an InterpretedFunction)."""
    return isinstance(triton.language.standard.sum, InterpretedFunction)


_callees: dict[int, InterpretedFunction] = {}  # id(JITFunction) -> its interpreted twin


def _interpreted_callee(jit_fn: JITFunction) -> InterpretedFunction:
    # keyed by id: hashing a JITFunction computes its cache key, which fails while the interpreter
    # has patched triton.language
    if id(jit_fn) not in _callees:
        _callees[id(jit_fn)] = InterpretedFunction(jit_fn.fn)
    return _callees[id(jit_fn)]


@contextlib.contextmanager
def _jit_calls_interpreted():
    # triton reads TRITON_INTERPRET once, when @triton.jit runs (at import): if it was unset then,
    # tl.sum, tl.max, tl.sigmoid ... are compiled-only JITFunctions that refuse to be called outside a
    # kernel. While our interpreted kernel runs, route such calls through the interpreter.
    if interpreter_imported():
        yield
        return
    original = JITFunction.__call__
    JITFunction.__call__ = lambda self, *args, **kwargs: _interpreted_callee(self)(*args, **kwargs)
    try:
        yield
    finally:
        JITFunction.__call__ = original


class _InterpretedKernel(InterpretedFunction):
    """An interpreted copy of a @triton.jit kernel that also works when TRITON_INTERPRET was unset at
    import (it stays an InterpretedFunction, so torch.library.wrap_triton accepts it)."""

    def run(self, *args, grid, warmup, **kwargs):
        with _jit_calls_interpreted():
            return super().run(*args, grid=grid, warmup=warmup, **kwargs)


_kernels: dict[int, InterpretedFunction] = {}


def _interpreted(kernel) -> InterpretedFunction:
    if id(kernel) not in _kernels:
        _kernels[id(kernel)] = _InterpretedKernel(kernel.fn)
    return _kernels[id(kernel)]


def for_device(kernel, device: torch.device):
    """The kernel to launch on `device`: on CUDA the kernel as decorated (compiled; interpreted only if
    TRITON_INTERPRET=1 was set at import), on CPU an interpreted copy (numpy, slow: for tests)."""
    if device.type == "cuda":
        return kernel
    assert device.type == "cpu", f"no Triton kernel for device {device}"
    return _interpreted(kernel)


def wrap_triton(kernel):
    """torch.library.wrap_triton, also for the interpreted CPU copies on torch versions that wrap
    JITFunctions only (2.11); nothing traces into a CPU launch, so the bare copy is launched there.
    (Launchers call it by this name: torch finds a triton_op's kernels by looking for such calls.)"""
    try:
        return torch.library.wrap_triton(kernel)
    except RuntimeError:
        if isinstance(kernel, InterpretedFunction):
            return kernel
        raise


def num_warps_for(block: int) -> int:
    """Warps for a one-row-per-program kernel over `block` elements (about 256 elements a warp)."""
    return max(1, min(16, block // 256))


def upcast_dot(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether kernels must feed tl.dot float32 copies of their operands: the triton 3.9 interpreter
    multiplies the raw uint16 bits of bfloat16 operands (numpy has no bfloat16). The upcast is exact
    (bf16 x bf16 products fit in float32), so results match the compiled bf16 dot with fp32 accumulation.
    (The same interpreter truncates float32 -> bfloat16 casts where the GPU rounds to nearest even, so
    interpreted bf16 outputs may differ from the GPU's by one bf16 ulp.)"""
    return device.type != "cuda" and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: for float32 operands follow torch's TF32 switch (exact "ieee" unless
    torch.backends.cuda.matmul.allow_tf32), so the kernel is as exact as the torch matmul it replaces;
    for half types triton's default ("tf32", which only affects float32 operands)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """t [..., D] -> [R, D] with unit stride along D, for kernels that take a row stride: a view when
    the leading dims collapse (a slice of the last dim, such as one half of a merged projection, does),
    else a copy."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


class _KernelsFoundLater(list):
    """torch.library.triton_op's list of the Triton kernels inside an op, found when first read (by the
    compile caches' keys) instead of when the op is registered: torch finds them by parsing the op's
    source with inductor's helpers, and importing inductor (and dynamo with it) costs ~0.8 s of every
    process's start, where a run from a kept graph never compiles or captures anything."""

    def __init__(self, find, fn):
        super().__init__()
        self._find, self._fn = find, fn

    def _found(self) -> list:
        if self._find is not None:
            find, self._find = self._find, None
            super().extend(find(self._fn))
        return self

    def __iter__(self):
        return super(_KernelsFoundLater, self._found()).__iter__()

    def __len__(self):
        return super(_KernelsFoundLater, self._found()).__len__()

    def __getitem__(self, i):
        return super(_KernelsFoundLater, self._found()).__getitem__(i)


def triton_op(name: str, mutates_args):
    """torch.library.triton_op(name, mutates_args=...), its kernels found when first asked for
    (_KernelsFoundLater); torch's own decorator where its private finder has moved."""
    import torch._library.triton as torch_triton
    find = getattr(torch_triton, "get_inner_triton_kernels", None)

    def dec(fn):
        if find is None:
            return torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        torch_triton.get_inner_triton_kernels = lambda f: _KernelsFoundLater(find, f)
        try:
            return torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        finally:
            torch_triton.get_inner_triton_kernels = find
    return dec
