"""Editing a graph: fake values for new nodes, inserting calls, removing dead nodes and the
parameters nothing reads any more, registering new parameters."""
from __future__ import annotations

import operator

import torch
from torch._dispatch.python import enable_python_dispatcher
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr
from ._ops import ASSERT_META, RESHAPE, val


def fake_mode(gm: GraphModule):
    """The fake mode of the graph's fake values (one per graph: the first value found names it)."""
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch._subclasses.FakeTensor):
            return v.fake_mode
    return None


def set_val(gm: GraphModule, node: Node, mode=None) -> None:
    """Fill node.meta['val'] by running its target on the fake values of its inputs (no-op when the
    graph carries no fake values, e.g. a symbolic_trace graph). `mode`: the graph's fake mode, when
    the caller already has it."""
    mode = mode or fake_mode(gm)
    if mode is None:
        return
    if node.op == "get_attr":
        node.meta["val"] = mode.from_tensor(attr(gm, node.target), static_shapes=True)
        return
    if node.op != "call_function":
        return

    def conv(a):
        if isinstance(a, Node):
            if "val" not in a.meta:
                raise KeyError(a.name)
            return a.meta["val"]
        return a

    try:
        args = torch.fx.node.map_aggregate(node.args, conv)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, conv)
    except KeyError:
        return
    # the python dispatcher (as export's tracer uses) runs composite ops such as linear/matmul through
    # their symbolic-size-aware python decompositions; torch 2.11's C++ matmul calls numel() otherwise
    with mode, enable_python_dispatcher():
        node.meta["val"] = node.target(*args, **kwargs)


def insert_call(gm: GraphModule, before: Node, target, args, kwargs=None, mode=None) -> Node:
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, tuple(args), dict(kwargs or {}))
    set_val(gm, node, mode)
    return node


def getitem(gm: GraphModule, before: Node, node: Node, i: int, mode=None) -> Node:
    out = insert_call(gm, before, operator.getitem, (node, i), mode=mode)
    if "val" in node.meta and isinstance(node.meta["val"], (tuple, list)):
        out.meta["val"] = node.meta["val"][i]
    return out


def first_user_position(nodes) -> Node:
    """The earliest node (in graph order) among `nodes`: insert replacements before it."""
    nodes = list(nodes)
    order = {n: i for i, n in enumerate(nodes[0].graph.nodes)}
    return min(nodes, key=order.__getitem__)


def remove_dead(gm: GraphModule, nodes=None) -> int:
    """Erase side-effect-free call_function / get_attr nodes nobody uses (with the metadata asserts
    on them), repeatedly, among `nodes` (default: the whole graph). Returns how many were erased."""
    erased, changed = 0, True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes) if nodes is None else list(nodes)):
            if node.graph is None or node._erased or node.op not in ("call_function", "get_attr"):
                continue
            if node.target in ASSERT_META or (node.op == "call_function" and node.is_impure()):
                continue
            users = list(node.users)
            if all(u.op == "call_function" and u.target in ASSERT_META for u in users):
                for u in users:
                    gm.graph.erase_node(u)
                    erased += 1
                gm.graph.erase_node(node)
                erased += 1
                changed = True
    return erased


def drop_unused_attrs(gm: GraphModule, targets=None) -> list[str]:
    """Delete the parameters/buffers (among `targets`, default: all) that no get_attr node reads and
    that no call_module submodule owns. Returns the deleted targets."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    if targets is None:
        targets = [name for name, _ in list(gm.named_parameters(remove_duplicate=False))
                   + list(gm.named_buffers(remove_duplicate=False))]
    deleted = []
    for target in targets:
        if target in used or any(target.startswith(m + ".") for m in modules):
            continue
        owner, _, leaf = target.rpartition(".")
        module = gm.get_submodule(owner) if owner else gm
        if leaf in module._parameters or leaf in module._buffers:
            module._parameters.pop(leaf, None)
            module._buffers.pop(leaf, None)
            deleted.append(target)
        elif hasattr(module, leaf) and isinstance(getattr(module, leaf), torch.Tensor):
            delattr(module, leaf)
            deleted.append(target)
    return deleted


def add_parameter(gm: GraphModule, owner: str, name: str, tensor: torch.Tensor) -> str:
    """Register `tensor` as a parameter `name` of submodule `owner` (a unique name); returns its target."""
    module = gm.get_submodule(owner) if owner else gm
    base, k = name, 0
    while hasattr(module, name):
        k += 1
        name = f"{base}_{k}"
    module.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    return f"{owner}.{name}" if owner else name


def splits_last_dim(node: Node) -> bool:
    """reshape(x, [*x.shape[:-1], -1, k]): x's last dim split, the others kept. apply_rope's
    [B, T, H, -1, 2] is one, and export records its head count H as a literal."""
    if not (node.op == "call_function" and node.target in RESHAPE and val(node.args[0]) is not None):
        return False
    shape, lead = node.args[1], val(node.args[0]).shape[:-1]
    return (len(shape) == len(lead) + 2 and shape[-2] == -1
            and all(not isinstance(s, int) or s == d for s, d in zip(shape, lead)))


def refit_vals(gm: GraphModule, splits, spell_split: bool = False) -> int:
    """propagate_vals after a pass changed weight shapes, each reshape in `splits` (splits_last_dim,
    found before the change) first taking its input's new static leading sizes (heads pruned or
    sharded). A node that no longer fits its inputs raises ValueError naming it. Returns how many
    reshapes changed."""
    splits, changed = set(splits), 0
    for n in gm.graph.nodes:
        if n.target in ASSERT_META:  # checks, no value (and they name the capture's device)
            continue
        if n in splits:
            shape, x_shape = list(n.args[1]), val(n.args[0]).shape
            lead, last = x_shape[:-1], x_shape[-1]
            new = [d if isinstance(s, int) and isinstance(d, int) else s for s, d in zip(shape, lead)] + shape[-2:]
            changed += new != shape  # a leading size (the head count) followed the weights
            if spell_split and isinstance(last, int) and isinstance(shape[-1], int):
                new[-2] = last // shape[-1]  # the split's -1 spelled out: in a batch that may be 1 (a per-pair
                # capture) a symbolic -1 over a sharded head count does not simplify
            if new != shape:
                n.args = (n.args[0], new, *n.args[2:])
        try:
            set_val(gm, n)
        except Exception as e:
            raise ValueError(f"node {n.name} ({n.target}) no longer fits its input shapes: {e}") from e
    return changed
