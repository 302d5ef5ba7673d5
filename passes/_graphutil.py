"""Small FX helpers shared by the dead-work / dtype / pruning passes (prune_lm_head, fused_logprob,
cast_dtype, prune_structured, dce, cse).

Pass order: every one of these passes appends its name to `gm.meta["graphopt_passes"]` when it runs
(`record_pass`). A pass that needs a predecessor, or that cannot run after another one, checks that
list with `require_before` and raises a PassError naming the order it needs, e.g.
"prune_lm_head must run before fused_logprob". The list survives recompile() (it lives on the
GraphModule), so it works both under `run_passes` and when passes are called directly.
"""
from __future__ import annotations

import operator

import torch
from torch._dispatch.python import enable_python_dispatcher
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr, set_attr  # noqa: F401  (re-exported for the passes)
from graphopt.pipeline import PassError

aten = torch.ops.aten

# ops by role; export IR (ATen) first, then the torch-level forms dynamo graphs use
LINEAR = {aten.linear.default, torch._C._nn.linear, torch.nn.functional.linear}
EMBEDDING = {aten.embedding.default, torch.nn.functional.embedding}
RESHAPE = {aten.reshape.default, aten.view.default, aten._unsafe_view.default, torch.reshape}
INDEX = {aten.index.Tensor}
LOG_SOFTMAX = {aten.log_softmax.int, aten._log_softmax.default, torch.log_softmax, torch.nn.functional.log_softmax}
GATHER = {aten.gather.default, torch.gather}
SQUEEZE = {aten.squeeze.dim, aten.squeeze.dims, torch.squeeze}
UNSQUEEZE = {aten.unsqueeze.default, torch.unsqueeze}
ASSERT_META = {aten._assert_tensor_metadata.default}


def record_pass(gm: GraphModule, name: str) -> None:
    gm.meta.setdefault("graphopt_passes", []).append(name)


def applied_passes(gm: GraphModule) -> list[str]:
    return list(gm.meta.get("graphopt_passes", []))


def require_before(gm: GraphModule, name: str, later: str, why: str) -> None:
    """Raise when `later` already ran on gm: `name` must run before it."""
    if later in applied_passes(gm):
        raise PassError(f"{name} must run before {later}: {why} (passes applied so far: "
                        f"{applied_passes(gm)}; use the order [{name}, {later}])")


def require_float_linears(gm: GraphModule, name: str) -> None:
    """For passes that rewrite aten.linear nodes: raise when quantize_int8 already replaced them."""
    require_before(gm, name, "quantize_int8", "quantize_int8 replaces the linears it rewrites by "
                   "graphopt.int8_linear, so it must come after the passes that look for linears")


def val(node) -> torch.Tensor | None:
    """The node's fake value (node.meta['val']) when it is a tensor."""
    v = node.meta.get("val") if isinstance(node, Node) else None
    return v if isinstance(v, torch.Tensor) else None


def fake_mode(gm: GraphModule):
    vals = [n.meta.get("val") for n in gm.graph.nodes if "val" in n.meta]
    return torch._guards.detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])


def parameter_targets(gm: GraphModule) -> set[str]:
    return {name for name, _ in gm.named_parameters(remove_duplicate=False)}


def used_params(gm: GraphModule) -> list[torch.Tensor]:
    """The parameters the graph still reads (unique tensors reached by get_attr nodes)."""
    seen, out = set(), []
    params = parameter_targets(gm)
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.target in params:
            t = attr(gm, n.target)
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def param_count(gm: GraphModule) -> int:
    return sum(t.numel() for t in used_params(gm))


def param_bytes(gm: GraphModule) -> int:
    return sum(t.numel() * t.element_size() for t in used_params(gm))


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


def propagate_vals(gm: GraphModule) -> None:
    """Recompute node.meta['val'] for every call_function / get_attr node in order."""
    if fake_mode(gm) is None:
        return
    for n in gm.graph.nodes:
        if n.op in ("get_attr", "call_function"):
            set_val(gm, n)


def erase_dead(gm: GraphModule, nodes) -> int:
    """Erase the given nodes (and dtype asserts on them) that have become unused; returns how many
    were erased. Asserts guarding a node that is going away are dropped with it."""
    erased, changed = 0, True
    nodes = list(nodes)
    while changed:
        changed = False
        for n in reversed(nodes):
            if n.graph is None or n._erased:
                continue
            users = list(n.users)
            if all(u.op == "call_function" and u.target in ASSERT_META for u in users):
                for u in users:
                    gm.graph.erase_node(u)
                gm.graph.erase_node(n)
                erased += 1
                changed = True
    return erased


def is_getitem(node: Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem
