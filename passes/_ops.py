"""What a node is: op sets by role and small predicates over FX nodes, for graphs in torch.export's
default IR (graphopt.graph_capture). Two quirks of that IR the predicates allow for:
- `x.float()` is `aten.to.dtype(x, float32)` plus an `aten._assert_tensor_metadata` check on x; on an
  fp32 model the tracer reuses the `to` node for later uses of x, so users are counted without the
  metadata asserts (`real_users`).
- `y.type_as(x)` names either x or its `to` node, depending on the dtype the model was traced in.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

# ops by role; export IR (ATen) first, then the torch-level forms dynamo graphs use
ASSERT_META = {aten._assert_tensor_metadata.default}
CAST = {aten.to.dtype, aten.type_as.default, aten._to_copy.default}
LINEAR = {aten.linear.default, torch._C._nn.linear, torch.nn.functional.linear}
EMBEDDING = {aten.embedding.default, torch.nn.functional.embedding}
RESHAPE = {aten.reshape.default, aten.view.default, aten._unsafe_view.default, torch.reshape}
INDEX = {aten.index.Tensor}
LOG_SOFTMAX = {aten.log_softmax.int, aten._log_softmax.default, torch.log_softmax, torch.nn.functional.log_softmax}
GATHER = {aten.gather.default, torch.gather}
SQUEEZE = {aten.squeeze.dim, aten.squeeze.dims, torch.squeeze}
UNSQUEEZE = {aten.unsqueeze.default, torch.unsqueeze}


def is_op(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def is_getitem(node: Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem


def val(node) -> torch.Tensor | None:
    """The node's fake value (node.meta['val']) when it is a tensor."""
    v = node.meta.get("val") if isinstance(node, Node) else None
    return v if isinstance(v, torch.Tensor) else None


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


def cast_target_dtype(node: Node) -> torch.dtype | None:
    """The dtype a cast node casts to (type_as: its reference's dtype)."""
    if is_op(node, aten.to.dtype) and len(node.args) >= 2:
        return node.args[1]
    if is_op(node, aten.type_as.default):
        v = val(node.args[1])
        return v.dtype if v is not None else None
    v = val(node)
    return v.dtype if v is not None and is_op(node, aten._to_copy.default) else None


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
