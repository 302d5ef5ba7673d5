"""Capture a model as an FX GraphModule in ONE IR: torch.export's default (pre-dispatch ATen) IR.

`capture(module, example_inputs, method="export"|"dynamo")` -> GraphModule (`ExportedProgram.module()`):
weights stay parameters/buffers (get_attr nodes named as in the module: model.layers.0.attention.wq.weight),
ops are ATen overloads (aten.linear.default, aten.matmul.default, aten.softmax.int, ...), B/T/N dynamic.

"dynamo" records the graph dynamo hands to a backend and re-exports it with torch.export (non-strict),
so the pass library matches one IR only. `normalise_dynamo_graph` is shared with graphopt.backend.
"""
from __future__ import annotations

import inspect
import re
import time

import torch
import torch.fx.experimental._config  # noqa: F401 (backed_size_oblivious)
from torch import nn
from torch.export import Dim
from torch.fx import GraphModule

# dynamic dims of the inputs graphopt captures, by forward() argument name: name -> {dim: dim name}
INPUT_DIMS = {
    "input_ids": {0: "B", 1: "T"},
    "positions": {0: "B", 1: "T"},
    "mask": {0: "B", 1: "T", 2: "T"},  # [B, T, P + T] with a cache (the key dim: see _dynamic_shapes)
    "score_idx": {0: "N"},
    "targets": {0: "N"},
    "doc_ids": {0: "B", 1: "T"},
    "seg_ids": {0: "B", 1: "T"},
    "cache": {2: "B", 4: "P"},  # [2, n_layers, B, Hkv, P, head_dim]: the K/V of P earlier tokens
}
DIM_MAX = {"B": 1 << 16, "T": 1 << 16, "N": 1 << 24, "P": 1 << 20}


class CaptureError(RuntimeError):
    """The model could not be captured as one graph; the message says why and what to try."""


def capture(module: nn.Module, example_inputs: tuple, method: str = "export", dynamic: bool = True,
            strict: bool = False) -> GraphModule:
    """Capture `module` run on `example_inputs` as a GraphModule in torch.export's IR.

    dynamic=True makes B, T (and N for ScoreModule) symbolic, so one capture serves every batch shape.
    gm.meta["capture_stats"] = {method, seconds, n_graphs, recompiles}.
    """
    if method not in ("export", "dynamo"):
        raise ValueError(f"capture method must be 'export' or 'dynamo', got {method!r}")
    example_inputs = tuple(example_inputs)
    module = module.eval()
    t0 = time.perf_counter()
    if method == "export":
        gm = _export(module, example_inputs, _dynamic_shapes(module, example_inputs) if dynamic else None, strict)
        n_graphs, recompiles = 1, 0
    else:
        gm, n_graphs, recompiles = _capture_dynamo(module, example_inputs, dynamic)
    gm.meta["capture_stats"] = {"method": method, "seconds": time.perf_counter() - t0, "n_graphs": n_graphs,
                                "recompiles": recompiles}
    return gm


def export_with_shapes(module: nn.Module, example_inputs: tuple, dynamic_shapes) -> GraphModule:
    """torch.export of `module` with the caller's `dynamic_shapes` (torch.export's spec), in the IR
    capture() gives; gm.meta["capture_stats"] as capture() records it."""
    t0 = time.perf_counter()
    gm = _export(module.eval(), tuple(example_inputs), dynamic_shapes, strict=False)
    gm.meta["capture_stats"] = {"method": "export", "seconds": time.perf_counter() - t0, "n_graphs": 1,
                                "recompiles": 0}
    return gm


def _dynamic_shapes(module: nn.Module, example_inputs: tuple):
    """dynamic_shapes for torch.export: known inputs (INPUT_DIMS) get shared named Dims, others static.
    A Dim whose example size is 1 gets min=1 (captured size-obliviously, see _export)."""
    names = list(inspect.signature(module.forward).parameters)[:len(example_inputs)]
    cached = any(n == "cache" and isinstance(x, torch.Tensor) for n, x in zip(names, example_inputs))
    known_dims = dict(INPUT_DIMS, mask={0: "B", 1: "T"}) if cached else INPUT_DIMS  # mask keys: P + T, below
    sizes: dict[str, int] = {}
    for name, x in zip(names, example_inputs):
        for d, dim_name in known_dims.get(name, {}).items():
            if isinstance(x, torch.Tensor) and d < x.dim():
                sizes[dim_name] = min(sizes.get(dim_name, x.shape[d]), x.shape[d])
    dims = {k: Dim(k, min=1 if v <= 1 else 2, max=DIM_MAX[k]) for k, v in sizes.items() if v >= 1}
    spec = []
    for name, x in zip(names, example_inputs):
        known = known_dims.get(name)
        if not isinstance(x, torch.Tensor) or known is None:
            spec.append(None)
            continue
        spec.append({d: dims[n] for d, n in known.items() if d < x.dim() and n in dims} or None)
        if cached and name == "mask":  # a sum of two Dims has no name: export derives P + T itself
            spec[-1] = {**(spec[-1] or {}), 2: Dim.AUTO}
    return tuple(spec)


def _export(module: nn.Module, example_inputs: tuple, dynamic_shapes, strict: bool) -> GraphModule:
    # an example size of 1 would specialise its dim to 1; size-oblivious tracing keeps it symbolic
    size_one = any((getattr(d, "min", None) or 2) <= 1  # (Dim.AUTO has min None)
                   for d in torch.utils._pytree.tree_leaves(dynamic_shapes or ()))
    try:
        with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=size_one):
            try:
                ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes, strict=strict)
            except torch._dynamo.exc.UserError as e:
                if "Constraints violated" not in str(e):
                    raise
                # older torch (2.11) cannot prove some always-true guards on named Dims (GQA's
                # repeat_interleave: Min(16*T, 32*T) == 16*T); Dim.DYNAMIC still fails on specialisation
                ep = torch.export.export(module, example_inputs, dynamic_shapes=_unnamed(dynamic_shapes),
                                         strict=strict)
    except Exception as e:  # torch's own message follows; say what was being done first
        hint = " (try strict=False)" if strict else ""
        raise CaptureError(f"torch.export of {type(module).__name__} failed{hint}: {type(e).__name__}: {e}") from e
    return ep.module()


def _unnamed(dynamic_shapes):
    """The same spec with every named Dim replaced by Dim.DYNAMIC (export infers which dims are equal)."""
    if isinstance(dynamic_shapes, dict):
        return {d: Dim.DYNAMIC for d in dynamic_shapes}
    if isinstance(dynamic_shapes, (list, tuple)):
        return type(dynamic_shapes)(_unnamed(s) for s in dynamic_shapes)
    return dynamic_shapes


# ---------------------------------------------------------------------------------------------- dynamo

def _capture_dynamo(module: nn.Module, example_inputs: tuple, dynamic: bool) -> tuple[GraphModule, int, int]:
    graphs = []

    def record(gm: GraphModule, inputs):
        graphs.append((gm, list(inputs)))
        return gm.forward

    # specialize_float: keep Python floats (eps) constants, not tensor inputs; fullgraph: one graph or error;
    # backed_size_oblivious: an example size of 1 stays symbolic (as in _export); no duck shaping: equal
    # example sizes (T == N) must not become one symbol
    dims = torch.utils._pytree.tree_leaves(_dynamic_shapes(module, example_inputs))
    size_one = dynamic and any((getattr(d, "min", None) or 2) <= 1 for d in dims)
    with torch._dynamo.config.patch(specialize_float=True), torch.no_grad(), \
            torch.fx.experimental._config.patch(backed_size_oblivious=size_one, use_duck_shape=False):
        compiled = torch.compile(module, backend=record, dynamic=dynamic, fullgraph=True)
        try:
            out = compiled(*example_inputs)
        except Exception as e:
            raise CaptureError(f"dynamo could not capture {type(module).__name__} as one graph (fullgraph=True): "
                               f"{type(e).__name__}: {e}") from e
    if len(graphs) != 1:
        raise CaptureError(f"dynamo produced {len(graphs)} graphs for {type(module).__name__}; expected exactly 1 "
                           "(a recompile cache limit reached? call torch._dynamo.reset())")
    gm, inputs = graphs[0]
    out_spec = torch.utils._pytree.tree_structure(out)
    return normalise_dynamo_graph(gm, inputs, dynamic=dynamic, out_spec=out_spec).gm, len(graphs), len(graphs) - 1


def _fold_scalar_attrs(gm: GraphModule, placeholders, example_inputs) -> None:
    """Without specialize_float, dynamo passes float attributes (RMSNorm.eps) as 0-d tensors read with
    .item(); put the value back as a constant so the graph (and fuse_rmsnorm) sees `mean + 1e-05`.
    The value is fixed at compile time (as an attribute of an eval model is)."""
    changed = False
    for node, value in zip(placeholders, example_inputs):
        if not (isinstance(value, torch.Tensor) and value.dim() == 0 and _qualified_name(node.name) is not None
                and "_parameters_" not in node.name.lower() and "_buffers_" not in node.name.lower()):
            continue
        for item in [u for u in node.users if u.op == "call_method" and u.target == "item"]:
            const = value.item()
            for user in list(item.users):
                user.args = torch.fx.node.map_aggregate(user.args, lambda a: const if a is item else a)
                user.kwargs = torch.fx.node.map_aggregate(user.kwargs, lambda a: const if a is item else a)
            gm.graph.erase_node(item)
            changed = True
    if changed:
        gm.recompile()


class NormalisedGraph:
    """A dynamo graph re-exported in the export IR. `user_positions[i]` is the index, in dynamo's flat
    inputs, of the exported graph's i-th input; `weights` maps dynamo input index -> the tensor that
    became a parameter/buffer of gm (same object, not a copy)."""

    def __init__(self, gm: GraphModule, user_positions: list[int], weights: dict[int, torch.Tensor]):
        self.gm, self.user_positions, self.weights = gm, user_positions, weights

    def user_args(self, flat_args) -> list:
        return [flat_args[i] for i in self.user_positions]


def _qualified_name(placeholder: str) -> str | None:
    """l_self_modules_model_modules_layers_modules_0_modules_attention_modules_wq_parameters_weight_
    -> model.layers.0.attention.wq.weight (None if the name is not a module attribute)."""
    m = re.fullmatch(r"l_self_(.*?)_?", placeholder, flags=re.IGNORECASE)
    if not m:
        return None
    parts = re.split(r"(?:^|_)(?:modules|parameters|buffers)_", m.group(1))
    return ".".join(p for p in parts if p)


class _Rebuilt(nn.Module):
    """Calls a dynamo graph with its weights as registered parameters/buffers, so export sees get_attr."""

    def __init__(self, dynamo_gm: GraphModule, slots: list, out_spec=None):
        super().__init__()
        self.dynamo_gm, self.out_spec = dynamo_gm, out_spec
        self.slots = slots  # per dynamo input: ("input", i) | ("weight", name) | ("size", i, dim)

    def forward(self, *inputs):
        args = []
        for slot in self.slots:
            if slot[0] == "input":
                args.append(inputs[slot[1]])
            elif slot[0] == "weight":
                args.append(self.get_parameter(slot[1]) if slot[2] else self.get_buffer(slot[1]))
            else:
                args.append(inputs[slot[1]].shape[slot[2]])
        out = self.dynamo_gm(*args)  # dynamo graphs return a flat tuple
        return out if self.out_spec is None else torch.utils._pytree.tree_unflatten(list(out), self.out_spec)


def _register(root: nn.Module, name: str, tensor: torch.Tensor, is_param: bool) -> None:
    *path, leaf = name.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part):
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    if is_param:
        mod.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False))
    else:
        mod.register_buffer(leaf, tensor)


def normalise_dynamo_graph(gm: GraphModule, example_inputs: list, dynamic: bool = True, out_spec=None) -> NormalisedGraph:
    """Re-export a dynamo graph (inputs: sizes, user tensors, weights) with torch.export (non-strict):
    weights become parameters/buffers named as in the original module, symbolic sizes become Dims shared
    between the inputs that had them in dynamo's graph. out_spec (a pytree spec) restores the module's
    output structure; None keeps dynamo's flat tuple (what a backend must return)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert len(placeholders) == len(example_inputs), (len(placeholders), len(example_inputs))
    _fold_scalar_attrs(gm, placeholders, example_inputs)
    wrapper_root = nn.Module()
    slots, user_positions, user_fakes, weights, sizes = [], [], [], {}, []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        name = _qualified_name(node.name)
        if isinstance(value, (int, torch.SymInt)):
            slots.append(None)
            sizes.append((i, node))
        elif name is not None and isinstance(value, torch.Tensor):
            is_param = "_parameters_" in node.name.lower()  # else a buffer (or a tensor attribute)
            _register(wrapper_root, name, value, is_param)
            slots.append(("weight", name, is_param))
            if is_param or "_buffers_" in node.name.lower():  # (other tensor attributes may be rebuilt per call)
                weights[i] = value
        elif isinstance(value, torch.Tensor):
            slots.append(("input", len(user_positions)))
            user_positions.append(i)
            user_fakes.append(node.meta.get("example_value"))
        else:
            raise CaptureError(f"dynamo graph input {node.name!r} is a {type(value).__name__}; expected a tensor or size")
    for i, node in sizes:  # a symbolic size input: find the user tensor dim that carries the same symbol
        sym = str(node.meta.get("example_value"))
        where = [(u, d) for u, f in enumerate(user_fakes) if f is not None for d, s in enumerate(f.shape) if str(s) == sym]
        if not where:
            raise CaptureError(f"dynamo graph size input {node.name!r} ({sym}) is not a dim of any input tensor")
        slots[i] = ("size",) + where[0]
    rebuilt = _Rebuilt(gm, slots, out_spec)
    for child_name, child in wrapper_root.named_children():
        rebuilt.add_module(child_name, child)
    for pname, p in wrapper_root.named_parameters(recurse=False):
        rebuilt.register_parameter(pname, p)
    for bname, b in wrapper_root.named_buffers(recurse=False):
        rebuilt.register_buffer(bname, b)
    user_inputs = tuple(example_inputs[i] for i in user_positions)
    dynamic_shapes = None
    if dynamic:
        dims: dict[str, Dim] = {}
        spec = []
        for f, real in zip(user_fakes, user_inputs):
            entry = {}
            for d, s in enumerate(f.shape if f is not None else ()):
                if isinstance(s, torch.SymInt) and re.fullmatch(r"s\d+", str(s)):
                    dims.setdefault(str(s), Dim(f"d{str(s)}", min=1 if real.shape[d] <= 1 else 2, max=1 << 24))
                    entry[d] = dims[str(s)]
            spec.append(entry or None)
        dynamic_shapes = (tuple(spec),)  # one entry: forward(*inputs)
    exported = _export(rebuilt, user_inputs, dynamic_shapes, strict=False)
    return NormalisedGraph(exported, user_positions, weights)

