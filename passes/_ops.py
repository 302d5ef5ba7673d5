"""What a node is: op sets by role and small predicates over FX nodes, for graphs in torch.export's
default IR (graphopt.graph_capture). Users are counted without export's `_assert_tensor_metadata`
checks (`real_users`), which are not users of the value. The IR's cast quirks that matter to the
fusion patterns are handled in _patterns.py."""
from __future__ import annotations


import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

# ops by role; export IR (ATen) first, then the torch-level forms dynamo graphs use
ASSERT_META = {aten._assert_tensor_metadata.default}
LINEAR = {aten.linear.default, torch._C._nn.linear, torch.nn.functional.linear}
EMBEDDING = {aten.embedding.default, torch.nn.functional.embedding}
RESHAPE = {aten.reshape.default, aten.view.default, aten._unsafe_view.default, torch.reshape}
INDEX = {aten.index.Tensor}
LOG_SOFTMAX = {aten.log_softmax.int, aten._log_softmax.default, torch.log_softmax, torch.nn.functional.log_softmax}
GATHER = {aten.gather.default, torch.gather}


def is_op(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


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


def is_dim(dim, ndim: int | None, want: int) -> bool:
    """dim == want, allowing negative indexing when the rank is known (want may be negative)."""
    if not isinstance(dim, int):
        return False
    if dim == want:
        return True
    if ndim is None:
        return False
    return dim % ndim == want % ndim


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
