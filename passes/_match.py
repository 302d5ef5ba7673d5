"""Matching helpers for the fusion passes (fuse_rmsnorm, fuse_rope, fuse_swiglu, merge_qkv,
merge_gate_up, sdpa_attention). Other passes may import them.

The graphs are torch.export's default IR (graphopt.capture). Two quirks of that IR make the plain
subgraph rewriter miss real matches, which is why the fusion passes match by hand with these helpers:
- `x.float()` is `aten.to.dtype(x, float32)` plus an `aten._assert_tensor_metadata` check on x; on an
  fp32 model the tracer then reuses the `to` node for later uses of x (the residual add reads it), so
  a pattern's interior node can have users outside the pattern.
- `y.type_as(x)` names either x or its `to` node, depending on the dtype the model was traced in.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr
from passes._graphutil import fake_mode, require_float_linears, set_val, val  # noqa: F401  (re-exported for the passes)

aten = torch.ops.aten
ASSERT_META = {aten._assert_tensor_metadata.default}
CAST = {aten.to.dtype, aten.type_as.default, aten._to_copy.default}


def is_op(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def real_users(node: Node) -> list[Node]:
    """Users that compute something (the metadata asserts export adds are not users of the value)."""
    return [u for u in node.users if u.target not in ASSERT_META]


def only_user(node: Node) -> Node | None:
    users = real_users(node)
    return users[0] if len(users) == 1 else None


def strip_float(node: Node) -> Node:
    """x.float() -> x (the source the float copy was made from)."""
    if is_op(node, aten.to.dtype) and len(node.args) >= 2 and node.args[1] == torch.float32:
        return node.args[0]
    return node


def other_arg(node: Node, known) -> object | None:
    """For a binary op node with `known` as one argument, the other argument (None if not there)."""
    a, b = node.args[0], node.args[1]
    if a is known:
        return b
    if b is known:
        return a
    return None


def is_dim(dim, ndim: int | None, want: int) -> bool:
    """dim == want, allowing negative indexing when the rank is known (want may be negative)."""
    if not isinstance(dim, int):
        return False
    if dim == want:
        return True
    if ndim is None:
        return False
    return dim % ndim == want % ndim


def same_dtype(a: Node, b: Node) -> bool:
    va, vb = val(a), val(b)
    return va is not None and vb is not None and va.dtype == vb.dtype


def cast_target_dtype(node: Node) -> torch.dtype | None:
    """The dtype a cast node casts to (type_as: its reference's dtype)."""
    if is_op(node, aten.to.dtype) and len(node.args) >= 2:
        return node.args[1]
    if is_op(node, aten.type_as.default):
        v = val(node.args[1])
        return v.dtype if v is not None else None
    v = val(node)
    return v.dtype if v is not None and is_op(node, aten._to_copy.default) else None


# --------------------------------------------------------------------------------- attributes

def add_parameter(gm: GraphModule, owner: str, name: str, tensor: torch.Tensor) -> str:
    """Register `tensor` as a parameter `name` of submodule `owner` (a unique name); returns its target."""
    module = gm.get_submodule(owner) if owner else gm
    base, k = name, 0
    while hasattr(module, name):
        k += 1
        name = f"{base}_{k}"
    module.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    return f"{owner}.{name}" if owner else name


def delete_unused_attrs(gm: GraphModule, targets) -> list[str]:
    """Delete the attributes (parameters/buffers) in `targets` that no get_attr node reads any more."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    deleted = []
    for target in targets:
        if target in used:
            continue
        owner, _, leaf = target.rpartition(".")
        module = gm.get_submodule(owner) if owner else gm
        if hasattr(module, leaf):
            delattr(module, leaf)
            deleted.append(target)
    return deleted


# --------------------------------------------------------------------------------- cleanup

def remove_dead(gm: GraphModule) -> int:
    """Erase pure nodes nobody uses (with the metadata asserts on them) and unread get_attr nodes.
    Returns how many nodes were erased."""
    erased = 0
    for node in reversed(list(gm.graph.nodes)):
        if node.op not in ("call_function", "get_attr") or node.target in ASSERT_META:
            continue
        if node.op == "call_function" and node.is_impure():
            continue
        users = list(node.users)
        if all(u.target in ASSERT_META for u in users):
            for u in users:
                gm.graph.erase_node(u)
                erased += 1
            gm.graph.erase_node(node)
            erased += 1
    return erased


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


# --------------------------------------------------------------------------------- linear merging

def linear_parts(gm: GraphModule, node: Node):
    """aten.linear(x, W[, b]) with W (and b) read by get_attr -> (x, W target, b target | None)."""
    if not is_op(node, aten.linear.default):
        return None
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if not (isinstance(w, Node) and w.op == "get_attr"):
        return None
    if b is not None and not (isinstance(b, Node) and b.op == "get_attr"):
        return None
    return x, w.target, (b.target if b is not None else None)


def find_linear_groups(gm: GraphModule, roles: dict[str, tuple[str, ...]]) -> list[list[Node]]:
    """Linears sharing one input whose weights are `<prefix>.<role name>.weight` for every role, in the
    order of `roles` (e.g. {"q": ("wq", "q_proj"), "k": ..., "v": ...}), one group per (input, prefix)."""
    found: dict[tuple, dict[str, Node]] = {}
    for node in gm.graph.nodes:
        parts = linear_parts(gm, node)
        if parts is None:
            continue
        x, w_target, _ = parts
        prefix, _, rest = w_target.rpartition(".")  # ...attention.wq | weight
        if rest != "weight":
            continue
        owner, _, leaf = prefix.rpartition(".")
        for role, names in roles.items():
            if leaf in names:
                found.setdefault((x, owner), {})[role] = node
    groups = []
    for (_, _), by_role in found.items():
        if len(by_role) == len(roles):
            group = [by_role[r] for r in roles]
            biased = [linear_parts(gm, n)[2] is not None for n in group]
            if all(biased) or not any(biased):
                groups.append(group)
    return groups


def merge_linear_groups(gm: GraphModule, roles: dict, name: str, pass_name: str) -> tuple[bool, dict]:
    """Every group of linears sharing an input (find_linear_groups(gm, roles)) -> one merged linear
    `<name>_weight` + split; dead nodes and the old weights removed. -> (modified, stats)."""
    require_float_linears(gm, pass_name)
    groups = find_linear_groups(gm, roles)
    for group in groups:  # free each group's old weights before the next concatenation: a 30B model
        old = merge_linears(gm, group, name)  # has no room for a second copy of all its q/k/v or gate/up
        remove_dead(gm)
        delete_unused_attrs(gm, old)
    return bool(groups), {"matches": len(groups)}


def merge_linears(gm: GraphModule, group: list[Node], name: str) -> list[str]:
    """Replace linears on one input by one linear on the concatenated weights (and biases) followed by
    a split on the last dim; the new weight is registered next to the old ones as `<name>_weight`.
    Returns the old attribute targets (delete them with delete_unused_attrs once all groups ran)."""
    parts = [linear_parts(gm, n) for n in group]
    x = parts[0][0]
    weights = [attr(gm, p[1]) for p in parts]  # each [out_i, in]
    assert len({w.shape[1] for w in weights}) == 1, [tuple(w.shape) for w in weights]
    sizes = [w.shape[0] for w in weights]
    owner = parts[0][1].rpartition(".")[0].rpartition(".")[0]  # ...attention
    mode = fake_mode(gm)
    first = first_user_position(group)
    w_target = add_parameter(gm, owner, f"{name}_weight", torch.cat([w.detach() for w in weights], 0))  # [sum out, in]
    with gm.graph.inserting_before(first):
        w_node = gm.graph.get_attr(w_target)
    set_val(gm, w_node, mode)
    args = [x, w_node]
    if parts[0][2] is not None:
        b_target = add_parameter(gm, owner, f"{name}_bias", torch.cat([attr(gm, p[2]).detach() for p in parts], 0))
        with gm.graph.inserting_before(first):
            b_node = gm.graph.get_attr(b_target)
        set_val(gm, b_node, mode)
        args.append(b_node)
    merged = insert_call(gm, first, aten.linear.default, args, mode=mode)  # [..., sum out]
    split = insert_call(gm, first, aten.split_with_sizes.default, (merged, sizes, -1), mode=mode)
    for i, old in enumerate(group):
        piece = getitem(gm, first, split, i, mode)
        old.replace_all_uses_with(piece)
    for old in group:
        gm.graph.erase_node(old)
    old_targets = [p[1] for p in parts] + [p[2] for p in parts if p[2] is not None]
    return old_targets
