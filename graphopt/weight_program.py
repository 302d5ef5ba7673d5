"""The weights a pass pipeline makes out of a graph's own weights, recorded while the passes run, so
that another layer's weights (or, on a later run, the checkpoint's) go through the same steps
without running the passes again:

    with WeightRecorder(sources) as rec:        # sources: target -> tensor, the graph's weights before
        gm, records = run_passes(gm, pipeline, ctx)
    program = rec.program(gm)                   # every weight gm reads: a source, made by steps, or a constant
    weights = program.build(other_sources)      # the steps again on another layer's tensors: target -> tensor

The recorder is a TorchFunctionMode: every torch call that reads a recorded tensor and returns a
new one is a step (torch.cat of q/k/v, a cast, oneDNN's packing, a slice); a call returning a view
of a recorded tensor's very memory (detach, nn.Parameter) names the same value. Calls on fake
tensors (shape propagation) are not steps. A step that changes a recorded tensor in place makes
the program unusable (`unsafe` says which), except `t.data = ...` (merge_linears re-points a merged
part at its rows: same values, shared memory). That re-pointing is replayed too: `aliases` lists
each source whose memory ended up inside a made weight, and build() points the new layer's tensor
at the same rows of its made weight, so the model's own q/k/v weights hold no second copy.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.fx import GraphModule
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from graphopt.graph_attrs import attr

_HARMLESS_INPLACE = {"requires_grad_", "share_memory_"}


@dataclass(frozen=True)
class Ref:
    """A recorded tensor in a step's arguments."""
    index: int


@dataclass
class Step:
    func: Callable
    args: tuple  # Ref where a recorded tensor goes
    kwargs: dict
    outs: list  # per tensor leaf of the result: the Ref it makes (None: not recorded, or an existing one)


def _is_fake(t: Tensor) -> bool:
    return isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta"


def _view_key(t: Tensor):
    """Tensors with one key are views of the same memory: the same values."""
    if _is_fake(t) or t.is_mkldnn or t.is_sparse or t.layout != torch.strided:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype,
            str(t.device))


def _storage(t: Tensor):
    key = _view_key(t)
    return None if key is None else (key[0], key[5])


class WeightRecorder(TorchFunctionMode):
    def __init__(self, sources: dict[str, Tensor]):
        super().__init__()
        self.tensors: list[Tensor] = []  # Ref.index -> tensor (kept alive, so ids stay unique)
        self.by_id: dict[int, int] = {}
        self.by_view: dict[tuple, int] = {}
        self.steps: list[Step] = []
        self.producer: dict[int, int] = {}  # ref -> the step making it
        self.sources: dict[int, str] = {}  # ref -> its (first) source name
        self.unsafe: str | None = None
        for name, t in sources.items():
            ref = self.ref(t)
            self.sources.setdefault(self._new(t) if ref is None else ref, name)

    def _new(self, t: Tensor) -> int:
        ref = len(self.tensors)
        self.tensors.append(t)
        self.by_id[id(t)] = ref
        key = _view_key(t)
        if key is not None:
            self.by_view.setdefault(key, ref)
        return ref

    def ref(self, t: Tensor) -> int | None:
        r = self.by_id.get(id(t))
        if r is not None and self.tensors[r] is t:
            return r
        key = _view_key(t)
        return None if key is None else self.by_view.get(key)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, Tensor)]
        if not inputs or all(self.ref(a) is None for a in inputs):
            return out
        name = getattr(func, "__name__", "")
        if name == "__set__":  # `t.data = v`: merge_linears re-points a part at its rows of the merged weight
            return out
        schema = getattr(func, "_schema", None)
        if (name.endswith("_") and not name.startswith("__") and name not in _HARMLESS_INPLACE) \
                or name == "__setitem__" or (schema is not None and schema.is_mutable):
            self.unsafe = self.unsafe or f"{name} changed a weight in place"
            return out
        outs, new = [], False
        for o in tree_leaves(out):
            if not isinstance(o, Tensor) or _is_fake(o) or self.ref(o) is not None:
                outs.append(None)
                continue
            outs.append(self._new(o))
            self.producer[outs[-1]] = len(self.steps)
            new = True
        if new:
            wrap = lambda a: Ref(self.ref(a)) if isinstance(a, Tensor) and self.ref(a) is not None else a  # noqa: E731
            self.steps.append(Step(func, tree_map(wrap, tuple(args)), tree_map(wrap, dict(kwargs)), outs))
        return out

    def program(self, gm: GraphModule) -> "WeightProgram":
        """What each tensor gm's get_attr nodes read is: a source (by name), made by steps, or a constant."""
        if self.unsafe:
            raise ValueError(f"the passes' weights cannot be made again from another layer's: {self.unsafe}")
        targets: dict[str, tuple] = {}
        source_storages = {_storage(self.tensors[r]) for r in self.sources} - {None}
        for target in sorted({n.target for n in gm.graph.nodes if n.op == "get_attr"}):
            t = attr(gm, target)
            if not isinstance(t, Tensor):
                raise ValueError(f"graph attribute {target} is a {type(t).__name__}, not a tensor")
            r = self.ref(t)
            if r is None:
                if _storage(t) in source_storages:
                    raise ValueError(f"graph attribute {target} shares memory with a weight but was not made "
                                     f"by a recorded torch call")
                targets[target] = ("constant", t)
            elif r in self.sources:
                targets[target] = ("source", self.sources[r])
            else:
                targets[target] = ("made", r)
        needed = {x for kind, x in targets.values() if kind == "made"}
        steps = []
        for i in range(len(self.steps) - 1, -1, -1):
            step = self.steps[i]
            if not any(r in needed for r in step.outs):
                continue
            steps.append(step)
            for a in tree_leaves((step.args, step.kwargs)):
                if isinstance(a, Ref):
                    needed.add(a.index)
        steps.reverse()
        inputs = {r: name for r, name in self.sources.items() if r in needed}
        made = {x: target for target, (kind, x) in targets.items() if kind == "made"}
        aliases = []
        for r, name in self.sources.items():  # a source now living inside a made weight (merge_linears)
            src, where = self.tensors[r], _storage(self.tensors[r])
            for x, target in made.items():
                big = self.tensors[x]
                if where is not None and _storage(big) == where and big.dtype == src.dtype:
                    aliases.append((name, target, src.storage_offset() - big.storage_offset(), tuple(src.shape),
                                    tuple(src.stride())))
                    break
        return WeightProgram(targets, steps, inputs, aliases)


@dataclass
class WeightProgram:
    targets: dict[str, tuple]  # target -> ("source", name) | ("made", ref) | ("constant", tensor)
    steps: list[Step]
    inputs: dict[int, str]  # ref -> source name the steps read
    aliases: list[tuple] = field(default_factory=list)  # (source, made target, offset, shape, stride)

    def build(self, sources: dict[str, Tensor]) -> dict[str, Tensor]:
        """target -> tensor for a part whose weights are `sources` (named as the recorded part's)."""
        env: dict[int, Any] = {r: sources[name] for r, name in self.inputs.items()}
        get = lambda a: env[a.index] if isinstance(a, Ref) else a  # noqa: E731
        with torch.no_grad():
            for step in self.steps:
                out = step.func(*tree_map(get, step.args), **tree_map(get, step.kwargs))
                for r, o in zip(step.outs, tree_leaves(out)):
                    if r is not None:
                        env[r] = o
        result = {}
        for target, (kind, x) in self.targets.items():
            result[target] = sources[x] if kind == "source" else env[x] if kind == "made" else x
        for name, target, offset, shape, stride in self.aliases:
            src, big = sources[name], result[target]
            view = big.detach().as_strided(shape, stride, big.storage_offset() + offset)
            if src.dtype == big.dtype and src.shape == view.shape and torch.equal(src, view):
                with torch.no_grad():
                    src.data = view  # the part's own tensor now reads its rows of the made weight: one copy
        return result


def release_unheld(module: nn.Module, held) -> int:
    """Free every parameter / buffer of `module` whose memory none of the tensors `held` shares (an
    optimised graph holds it in another form: packed for oneDNN, cast): its slot gets an empty [0]
    tensor of its dtype and device, so running the module eagerly fails at the first freed weight
    (a size mismatch) instead of computing anything. (Not a meta tensor: F.linear of a CPU input and
    a meta weight returns uninitialised numbers on torch 2.13.) -> elements freed."""
    keep = {_storage(t) for t in held if isinstance(t, Tensor)} - {None}
    freed, done = 0, set()
    for _, owner in module.named_modules(remove_duplicate=False):
        for slots in (owner._parameters, owner._buffers):
            for name, t in list(slots.items()):
                if t is None or t.numel() == 0 or _storage(t) is None or _storage(t) in keep:
                    continue
                empty = torch.empty(0, dtype=t.dtype, device=t.device)
                slots[name] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
                if id(t) not in done:
                    done.add(id(t))
                    freed += t.numel()
    if freed:
        _return_to_os()
    return freed


def _return_to_os() -> None:
    """glibc keeps freed heap memory for reuse, and the packed copies made next fit the freed originals
    badly: without this, building SmolLM2's packed weights while freeing its float ones grew the RSS
    by 400 MB of free heap. malloc_trim hands it back (a few ms); a no-op without glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
