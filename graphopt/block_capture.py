"""Capture a model as the graph AROUND its decoder blocks plus one graph per DISTINCT block.

The decoder layers of a checkpoint share one code path and differ in their weights (and, after a
global pruning cut, in a few shapes). Tracing all of them (torch.export of the whole model) costs
time in proportion to the depth; tracing one of each kind does not:

    outer = capture_outer(module, example_inputs)       # every layer call -> one graphopt::decoder_block node
    for sig in outer.signatures: block = capture_block(outer, sig)   # one export per distinct block

`capture_outer` swaps each layer of the model's layer list for a stand-in whose call is the opaque
op `graphopt::decoder_block(index, [tensor inputs])` while torch.export traces the model, so the
outer graph holds the embedding, the RoPE tables, the masks, the final norm, the LM head and the
log-prob, and one node per layer call. The stand-in is generic over the block's forward arguments
(tensors, None, numbers, any pytree of them) and outputs (a tensor, a tuple, a KV cache's tensors):
its tensors are the op's inputs and outputs, the rest is kept as constants. The op's fake
implementation runs the real layer on fake tensors once per kind of call, to learn its outputs.

Layers are grouped by signature: class, parameter / buffer names, shapes and dtypes, the plain
attributes of every submodule (head_dim, eps, ...), the non-tensor arguments and the input shapes
and dtypes (symbolic: B, T, N stay symbols). `capture_block` exports the first layer of a group,
its inputs made dynamic in exactly the symbols of the outer graph, and records how the block's
symbols map to the outer graph's (graphopt.block_splice uses it).
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager

import sympy
import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from graphopt.blockwise import NotBlockwise
from graphopt.graph_capture import DIM_MAX, capture, export_with_shapes

_CAPTURING: list["OuterCapture"] = []  # the capture whose layers the fake implementation runs
_PLAIN = (type(None), bool, int, float, str)




@torch.library.custom_op("graphopt::decoder_block", mutates_args=())
def decoder_block(index: int, inputs: list[Tensor]) -> list[Tensor]:
    """Stands for layer `index` of a model while the graph around the layers is captured; replaced by
    the layer's optimised graph before anything runs (graphopt.block_splice)."""
    raise RuntimeError(f"graphopt::decoder_block({index}) is a stand-in for a decoder layer while capturing; it "
                       "never runs (graphopt.block_splice puts the layer's graph in its place)")


@decoder_block.register_fake
def _decoder_block_fake(index, inputs):
    return _CAPTURING[-1].fake_outputs(index, inputs)


BLOCK_OP = torch.ops.graphopt.decoder_block.default


def size_hints(shape_env) -> dict:
    """symbol -> its example value (torch >= 2.13 names it backed_var_to_val)."""
    return getattr(shape_env, "backed_var_to_val", None) or shape_env.var_to_val


def find_layers(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's decoder layers: the nn.ModuleList of modules of one class holding the most
    parameters (a LLaMA's `model.layers`), with its dotted name; None when there is none."""
    best, best_n = None, 0
    for name, m in module.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0 or len({type(b) for b in m}) != 1:
            continue
        n = sum(p.numel() for p in m.parameters())
        if n > best_n:
            best, best_n = (name, m), n
    return best


def _plain(value) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(_plain(v) for v in value))


def static_signature(layer: nn.Module) -> tuple:
    """What makes two layers the same block before looking at their inputs: the class, every
    parameter and buffer (name, shape, dtype, device) and the plain attributes of every submodule."""
    tensors = [(name, tuple(t.shape), t.dtype, t.device.type)
               for name, t in [*layer.named_parameters(remove_duplicate=False),
                               *layer.named_buffers(remove_duplicate=False)]]
    attrs = []
    for prefix, m in layer.named_modules(remove_duplicate=False):
        for key, value in sorted(vars(m).items()):
            if key.startswith("_") or isinstance(value, Tensor):
                continue
            if not _plain(value):
                raise NotBlockwise(f"{type(m).__name__}.{key} of a layer is a {type(value).__name__}, which does not "
                                   f"say whether two layers compute alike")
            attrs.append((prefix, key, value))
    return (type(layer).__module__, type(layer).__qualname__, tuple(tensors), tuple(attrs))


def _dim_ref(size, inputs: list[Tensor]):
    """An output size as the caller can rebuild it: an int, or ("in", j, d) = input j's size d."""
    if isinstance(size, int):
        return size
    for j, t in enumerate(inputs):
        for d, s in enumerate(t.shape):
            if isinstance(s, torch.SymInt) and s.node.expr == size.node.expr:
                return ("in", j, d)
    return None


def _memory_order(t: Tensor) -> tuple | None:
    """The dims of `t` from outermost to innermost in memory when `t` is a permutation of a contiguous tensor
    (a layer's K/V returned as a transposed view), else None. () for a contiguous tensor."""
    if t.is_contiguous():
        return ()
    for order in itertools.permutations(range(t.dim())):
        if t.permute(order).is_contiguous():
            return order
    return None


def _empty_in_order(sizes: list, order: tuple, dtype, device) -> Tensor:
    """An empty tensor of `sizes` laid out as _memory_order found: a contiguous one, permuted back."""
    if not order:
        return torch.empty(sizes, dtype=dtype, device=device)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return torch.empty([sizes[d] for d in order], dtype=dtype, device=device).permute(inverse)


class _Stand(nn.Module):
    """Layer `index` while the outer graph is captured: flattens its call, calls graphopt::decoder_block."""

    def __init__(self, index: int, capture_: "OuterCapture"):
        super().__init__()
        self.index, self.capture_ = index, capture_

    def forward(self, *args, **kwargs):
        flat, spec = tree_flatten((args, kwargs))
        consts = [None if isinstance(a, Tensor) else a for a in flat]
        bad = [a for a in flat if not isinstance(a, Tensor) and not isinstance(a, _PLAIN)]
        if bad:
            raise NotBlockwise(f"layer {self.index} is called with a {type(bad[0]).__name__} argument")
        known = self.capture_.calls.setdefault(self.index, (spec, consts))
        if known != (spec, consts):
            raise NotBlockwise(f"layer {self.index} is called twice with different arguments")
        outs = BLOCK_OP(self.index, [a for a in flat if isinstance(a, Tensor)])
        out_spec, out_consts = self.capture_.out_specs[self.index]
        it = iter(outs)
        return tree_unflatten([next(it) if c is _TENSOR else c for c in out_consts], out_spec)


_TENSOR = object()  # marks a tensor leaf in a flattened call


class OuterCapture:
    """The graph around the layers and what is known about each layer call."""

    def __init__(self, module: nn.Module, layers_name: str, layers: nn.ModuleList):
        self.module, self.layers_name, self.layers = module, layers_name, list(layers)
        self.static = [static_signature(layer) for layer in self.layers]
        self.calls: dict[int, tuple] = {}  # index -> (in_spec, consts: None where a tensor goes)
        self.out_specs: dict[int, tuple] = {}  # index -> (out_spec, consts: _TENSOR where a tensor goes)
        self._outputs: dict[tuple, tuple] = {}  # (static sig, call) -> (out_spec, consts, sizes as _dim_ref)
        self.gm: GraphModule | None = None
        self.groups: dict[tuple, list[int]] = {}  # signature -> layer indices, in call order
        self.history: dict[int, list[list[Tensor]]] = {}  # index -> its inputs' fake values: captured, then
        # after each pass run on the outer graph

    @contextmanager
    def active(self):
        """While active, the decoder_block nodes' fake implementation runs this capture's layers
        (a pass that propagates fake values through the outer graph needs it)."""
        _CAPTURING.append(self)
        try:
            yield self
        finally:
            _CAPTURING.pop()

    def layer_name(self, index: int) -> str:
        return f"{self.layers_name}.{index}" if self.layers_name else str(index)

    def fake_outputs(self, index: int, inputs: list[Tensor]) -> list[Tensor]:
        """The layer's outputs on fake `inputs`: computed by running the layer once per signature and
        input structure, then rebuilt from the inputs' sizes."""
        spec, consts = self.calls[index]
        key = (self.static[index], str(spec), repr(consts), tuple((t.dim(), t.dtype) for t in inputs))
        known = self._outputs.get(key)
        if known is None:
            it = iter(inputs)
            args, kwargs = tree_unflatten([next(it) if c is None else c for c in consts], spec)
            with torch.no_grad():
                out = self.layers[index](*args, **kwargs)
            flat, out_spec = tree_flatten(out)
            outs = [t for t in flat if isinstance(t, Tensor)]
            sizes = [[_dim_ref(s, inputs) for s in t.shape] for t in outs]
            orders = [_memory_order(t) for t in outs]
            known = (out_spec, [_TENSOR if isinstance(t, Tensor) else t for t in flat],
                     [(s, t.dtype, t.device, order) for s, t, order in zip(sizes, outs, orders)])
            if all(None not in s and order is not None for s, order in zip(sizes, orders)):
                self._outputs[key] = known  # sizes and layouts all rebuildable: later calls skip the layer
            else:
                self.out_specs[index] = known[:2]
                return [t.clone() for t in outs]
        self.out_specs[index] = known[:2]
        return [_empty_in_order([inputs[s[1]].shape[s[2]] if isinstance(s, tuple) else s for s in sizes], order,
                                dtype, device) for sizes, dtype, device, order in known[2]]


def capture_outer(module: nn.Module, example_inputs: tuple) -> OuterCapture:
    """torch.export of `module` with each decoder layer a graphopt::decoder_block node; the layers
    are grouped by signature (OuterCapture.groups). Raises NotBlockwise when there is nothing to
    share (no layer list) or a layer call cannot be flattened."""
    found = find_layers(module)
    if found is None:
        raise NotBlockwise(f"{type(module).__name__} has no list of decoder layers")
    name, layer_list = found
    out = OuterCapture(module, name, layer_list)
    original = dict(layer_list._modules)
    for key in original:
        layer_list._modules[key] = _Stand(int(key), out)
    try:
        with out.active():
            out.gm = capture(module, example_inputs)
    except Exception as e:  # a stand-in's own refusal, or anything export makes of them: capture it whole
        cause = e
        while cause is not None and not isinstance(cause, NotBlockwise):
            cause = cause.__cause__ or cause.__context__
        raise NotBlockwise(str(cause) if cause is not None else
                           f"the graph around the layers could not be captured ({type(e).__name__})") from e
    finally:
        layer_list._modules.update(original)
    record_inputs(out)
    return out


def record_inputs(outer: OuterCapture) -> None:
    """Append the fake values the layer calls' inputs have now to outer.history (call it after the
    capture and after each pass run on the outer graph)."""
    for node in block_nodes(outer.gm):
        index, inputs = node.args
        vals = [a.meta.get("val") for a in inputs]
        if any(not isinstance(v, Tensor) for v in vals):
            raise NotBlockwise(f"layer {index}'s inputs carry no fake values")
        outer.history.setdefault(index, []).append(vals)


def _metas(vals: list[Tensor]) -> tuple:
    return tuple((tuple(str(s) for s in v.shape), v.dtype, v.device.type) for v in vals)


def group_layers(outer: OuterCapture) -> None:
    """Group the layer calls by signature: the layer's static signature, its non-tensor arguments
    and its inputs as the capture and every pass left them (outer.history). A layer whose inputs a
    pass changed (cast_dtype hands the first layer the bfloat16 embedding) is a block of its own."""
    outer.groups = {}
    for index, history in outer.history.items():
        if len(history) != len(outer.history[next(iter(outer.history))]):
            raise NotBlockwise(f"layer {index} is called more than once")
        sig = (outer.static[index], str(outer.calls[index][0]), repr(outer.calls[index][1]),
               tuple(_metas(vals) for vals in history))
        outer.groups.setdefault(sig, []).append(index)


def retype_inputs(block_gm: GraphModule, vals: list[Tensor]) -> None:
    """Give the block graph's inputs the dtypes (and devices) of `vals` (the outer graph's inputs of
    the layer call after a pass), keeping their sizes: what re-propagating the whole graph's fake
    values would hand the block's first nodes."""
    for node, v in zip(block_gm.graph.find_nodes(op="placeholder"), vals):
        old = node.meta.get("val")
        if not isinstance(old, Tensor) or (old.dtype, old.device) == (v.dtype, v.device):
            continue
        if old.dim() != v.dim():
            raise NotBlockwise(f"a pass changed the rank of a layer input ({old.dim()} -> {v.dim()})")
        with old.fake_mode:
            node.meta["val"] = torch.empty_strided(old.shape, old.stride(), dtype=v.dtype, device=v.device)


def block_nodes(gm: GraphModule) -> list[Node]:
    return list(gm.graph.find_nodes(op="call_function", target=BLOCK_OP))


class _FlatBlock(nn.Module):
    """A layer called on flat tensors (the decoder_block op's inputs), returning flat tensors; the
    layer sits under its own dotted name, so the graph's weights are named as in the model."""

    def __init__(self, layer: nn.Module, name: str, spec, consts):
        super().__init__()
        *path, leaf = name.split(".")
        owner = self
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(leaf, layer)
        object.__setattr__(self, "layer", layer)  # (not a second registration: weights keep the one name)
        self.spec, self.consts = spec, consts

    def forward(self, *tensors):
        it = iter(tensors)
        args, kwargs = tree_unflatten([next(it) if c is None else c for c in self.consts], self.spec)
        out = self.layer(*args, **kwargs)
        return tuple(t for t in tree_leaves(out) if isinstance(t, Tensor))


class BlockCapture:
    """One distinct block's graph: `gm` (weights named as its first layer's, under `prefix`), the
    layers it stands for, and `symbols`: block size symbol -> the outer graph's size expression."""

    def __init__(self, gm: GraphModule, prefix: str, layers: list[int], symbols: dict, program=None):
        self.gm, self.prefix, self.layers, self.symbols = gm, prefix, layers, symbols
        self.program = program  # graphopt.weight_program.WeightProgram: how any layer's weights are made


def capture_block(outer: OuterCapture, sig: tuple) -> BlockCapture:
    """Export the first layer of group `sig` on inputs shaped as the outer graph's fake inputs of that
    call: a dim that is a symbol there is a dynamic Dim here (one Dim per symbol, its range the
    outer graph's), the others static."""
    layers = outer.groups[sig]
    first = layers[0]
    fakes = outer.history[first][0]  # as captured; the passes' changes come in through retype_inputs
    shape_env = fakes[0].fake_mode.shape_env if fakes and hasattr(fakes[0], "fake_mode") else None
    dims: dict[sympy.Symbol, Dim] = {}
    spec, examples = [], []
    for t in fakes:
        entry, sizes = {}, []
        for d, s in enumerate(t.shape):
            if isinstance(s, int):
                sizes.append(s)
                continue
            expr = s.node.expr
            if shape_env is None:
                raise NotBlockwise(f"layer {first}'s input size {expr} has no shape environment")
            if not isinstance(expr, sympy.Symbol):  # e.g. a KV cache's key length P + T: export derives it
                entry[d] = Dim.AUTO
                sizes.append(int(expr.xreplace(size_hints(shape_env))))
                continue
            hint = int(size_hints(shape_env)[expr])
            if expr not in dims:
                rng = shape_env.var_to_range.get(expr)
                lo = max(int(rng.lower), 1) if rng is not None else (1 if hint <= 1 else 2)
                hi = int(rng.upper) if rng is not None and rng.upper.is_finite else max(DIM_MAX.values())
                dims[expr] = Dim(f"d_{expr}", min=lo, max=hi)
            entry[d] = dims[expr]
            sizes.append(hint)
        spec.append(entry or None)
        examples.append(torch.zeros(sizes, dtype=t.dtype, device=t.device))
    in_spec, consts = outer.calls[first]
    name = outer.layer_name(first)
    wrapper = _FlatBlock(outer.layers[first], name, in_spec, consts)
    try:
        gm = export_with_shapes(wrapper, tuple(examples), (tuple(spec),))
    except Exception as e:  # noqa: BLE001 - e.g. a size the outer graph keeps symbolic that the block pins
        raise NotBlockwise(f"layer {first} could not be captured alone ({type(e).__name__})") from e
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    symbols = {}
    for node, outer_val in zip(placeholders, fakes):
        for s, o in zip(node.meta["val"].shape, outer_val.shape):
            if isinstance(s, torch.SymInt) and isinstance(s.node.expr, sympy.Symbol):
                symbols[s.node.expr] = o.node.expr if isinstance(o, torch.SymInt) else sympy.Integer(o)
    return BlockCapture(gm, name, layers, symbols)
