"""Put the optimised block graphs back in place of the graphopt::decoder_block nodes of the optimised
outer graph: one flat GraphModule, node for node what optimising the whole captured model gives,
each layer's copy reading that layer's weights under the model's own names
(model.layers.7.attention.wqkv_weight).

    splice(outer_gm, blocks, layer_weights)

blocks: signature's BlockCapture with its optimised gm; layer_weights(index) -> {block target ->
tensor} for that layer (graphopt.weight_program). Fake values (node.meta["val"]) are carried over in
the outer graph's symbols (the block was traced in its own), so passes run later on the flat graph
see one consistent graph; a value that cannot be carried over is left out.
"""
from __future__ import annotations

import operator
from typing import Callable

import sympy
import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from graphopt.block_capture import BlockCapture, block_nodes, size_hints

_GUARDS = "_guards_fn"


def translate_vals(block: BlockCapture, fake_mode) -> dict[Node, object]:
    """node of block.gm -> its meta["val"] rebuilt in `fake_mode` (the outer graph's), the block's
    size symbols replaced by the outer graph's expressions (block.symbols)."""
    shape_env = fake_mode.shape_env if fake_mode is not None else None
    memo: dict[int, object] = {}
    hints = size_hints(shape_env) if shape_env is not None else {}

    def size(s):
        if not isinstance(s, torch.SymInt):
            return s
        expr = s.node.expr.xreplace(block.symbols)
        if isinstance(expr, (int, sympy.Integer)):
            return int(expr)
        if not expr.free_symbols <= set(hints):
            raise KeyError(str(expr))
        return shape_env.create_symintnode(expr, hint=int(expr.xreplace(hints)))

    def one(v):
        if id(v) in memo:
            return memo[id(v)]
        if isinstance(v, Tensor):
            with fake_mode:
                out = torch.empty_strided([size(s) for s in v.shape], [size(s) for s in v.stride()],
                                          dtype=v.dtype, device=v.device)
        elif isinstance(v, torch.SymInt):
            out = size(v)
        elif isinstance(v, (list, tuple)):
            out = type(v)(one(x) for x in v)
        else:
            out = v
        memo[id(v)] = out
        return out

    vals = {}
    if shape_env is None:
        return vals
    for node in block.gm.graph.nodes:
        if "val" not in node.meta:
            continue
        try:
            vals[node] = one(node.meta["val"])
        except Exception:  # noqa: BLE001 - a value the outer symbols cannot express: leave it out
            continue
    return vals


def _register(root: nn.Module, target: str, tensor: Tensor, as_parameter: bool) -> None:
    *path, leaf = target.split(".")
    owner = root
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if as_parameter and not tensor.is_mkldnn:
        owner.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, False))
    else:
        owner.register_buffer(leaf, tensor)


def _is_parameter(gm: GraphModule, target: str) -> bool:
    owner, _, leaf = target.rpartition(".")
    return leaf in (gm.get_submodule(owner) if owner else gm)._parameters


def splice(outer: GraphModule, blocks: list[BlockCapture], layer_name: Callable[[int], str],
           layer_weights: Callable[[int], dict[str, Tensor]]) -> GraphModule:
    """Replace every graphopt::decoder_block node of `outer` by the optimised graph of its layer's
    block (in place; returns outer)."""
    of_layer = {i: b for b in blocks for i in b.layers}
    fake_mode = torch._guards.detect_fake_mode(
        [n.meta["val"] for n in outer.graph.nodes if isinstance(n.meta.get("val"), Tensor)])
    vals = {id(b): translate_vals(b, fake_mode) for b in blocks}
    g = outer.graph
    for call in block_nodes(outer):
        index, inputs = call.args
        block = of_layer[index]
        weights = layer_weights(index)
        prefix, new_prefix = block.prefix, layer_name(index)
        env: dict[Node, Node] = dict(zip(block.gm.graph.find_nodes(op="placeholder"), inputs))
        out_nodes = None
        with g.inserting_before(call):
            for node in block.gm.graph.nodes:
                if node.op == "placeholder":
                    continue
                if node.op == "output":
                    out_nodes = torch.utils._pytree.tree_leaves(node.args[0])
                    continue
                if node.op == "call_module" and node.target == _GUARDS:
                    continue
                new = g.node_copy(node, lambda a: env[a])
                if node.op == "get_attr":
                    assert node.target.startswith(prefix + "."), (node.target, prefix)
                    new.target = new_prefix + node.target[len(prefix):]
                    _register(outer, new.target, weights[node.target], _is_parameter(block.gm, node.target))
                if node in vals[id(block)]:
                    new.meta["val"] = vals[id(block)][node]
                else:
                    new.meta.pop("val", None)
                env[node] = new
        outs = [env[n] if isinstance(n, Node) else n for n in out_nodes]
        for user in list(call.users):
            assert user.target is operator.getitem, user
            user.replace_all_uses_with(outs[user.args[1]])
            g.erase_node(user)
        g.erase_node(call)
    assert not block_nodes(outer)
    outer.recompile()
    return outer
