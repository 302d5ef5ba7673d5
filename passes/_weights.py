"""The parameters a graph reads, and merging linears that share an input into one (merge_qkv,
merge_gate_up)."""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.graph_attrs import attr
from ._edit import add_parameter, drop_unused_attrs, fake_mode, first_user_position, getitem, \
    remove_dead, set_val
from ._ops import aten, linear_parts


def used_params(gm: GraphModule) -> list[torch.Tensor]:
    """The parameters the graph still reads (unique tensors reached by get_attr nodes)."""
    params = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    seen, out = set(), []
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
    for by_role in found.values():
        if len(by_role) == len(roles):
            group = [by_role[r] for r in roles]
            biased = [linear_parts(gm, n)[2] is not None for n in group]
            if all(biased) or not any(biased):
                groups.append(group)
    return groups


def merge_linear_groups(gm: GraphModule, roles: dict, name: str) -> tuple[bool, dict]:
    """Every group of linears sharing an input (find_linear_groups(gm, roles)) -> one merged linear
    `<name>_weight` + split; dead nodes and the old weights removed. -> (modified, stats)."""
    groups, merged = find_linear_groups(gm, roles), 0
    remove_dead(gm)  # once: a graph returning only a KV cache has the last layer's q dead from the start
    mode = fake_mode(gm)
    for group in groups:  # free each group's old weights before the next concatenation: a 30B model
        if any(n._erased for n in group):  # dead (a graph returning only a KV cache: the last layer's q)
            continue
        reads = [a for n in group for a in n.all_input_nodes if a.op == "get_attr"]
        old = merge_linears(gm, group, name, mode)  # has no room for a second copy of all its q/k/v or gate/up
        remove_dead(gm, reads)  # (only what the group read can have died: not a walk of the whole graph)
        drop_unused_attrs(gm, old)
        merged += 1
    return merged > 0, {"matches": merged}


def alias_into(parts: list[torch.Tensor], merged: torch.Tensor) -> bool:
    """Point each of `parts` (the old weights, concatenated along dim 0 into `merged`) at its rows of
    `merged`, so the old storage is freed: a captured graph shares its weights with the caller's
    model, which would otherwise keep a second copy of every q/k/v and gate/up weight alive (1.4x
    the parameters of an exact pipeline). Same values, so the model still computes the same.
    A tensor that refuses to be re-pointed keeps its own copy. -> all aliased."""
    offset, ok = 0, True
    for t in parts:
        rows = t.shape[0]
        try:
            with torch.no_grad():
                t.data = merged.data[offset:offset + rows]
        except RuntimeError:
            ok = False
        offset += rows
    return ok


def record_merged_source(gm: GraphModule, part_targets: list[str], merged_target: str) -> None:
    """A weightless graph (meta tensors, filled later by graphopt.distributed.load_shard from the
    checkpoint) must know which checkpoint rows a merged weight holds: each part's record in
    gm.meta["tp_shards"] (tensor_parallel's cut of it) or the whole part under its own name, in order
    (load_shard concatenates them along dim 0, as the merge did)."""
    if not attr(gm, merged_target).is_meta:
        return
    shards = gm.meta.setdefault("tp_shards", {})
    record = []
    for t in part_targets:
        record += shards.get(t) or [(t[len("model."):] if t.startswith("model.") else t, None)]
    shards[merged_target] = record


def merge_linears(gm: GraphModule, group: list[Node], name: str, mode=None) -> list[str]:
    """Replace linears on one input by one linear on the concatenated weights (and biases) followed by
    a split on the last dim; the new weight is registered next to the old ones as `<name>_weight`.
    Returns the old attribute targets (delete them with drop_unused_attrs once all groups ran)."""
    parts = [linear_parts(gm, n) for n in group]
    x = parts[0][0]
    weights = [attr(gm, p[1]) for p in parts]  # each [out_i, in]
    assert len({w.shape[1] for w in weights}) == 1, [tuple(w.shape) for w in weights]
    sizes = [w.shape[0] for w in weights]
    owner = parts[0][1].rpartition(".")[0].rpartition(".")[0]  # ...attention
    mode = mode or fake_mode(gm)
    first = first_user_position(group)
    w_target = add_parameter(gm, owner, f"{name}_weight", torch.cat([w.detach() for w in weights], 0))  # [sum out, in]
    alias_into(weights, attr(gm, w_target))
    record_merged_source(gm, [p[1] for p in parts], w_target)
    with gm.graph.inserting_before(first):
        w_node = gm.graph.get_attr(w_target)
    set_val(gm, w_node, mode)
    args = [x, w_node]
    if parts[0][2] is not None:
        biases = [attr(gm, p[2]) for p in parts]
        b_target = add_parameter(gm, owner, f"{name}_bias", torch.cat([b.detach() for b in biases], 0))
        alias_into(biases, attr(gm, b_target))
        record_merged_source(gm, [p[2] for p in parts], b_target)
        with gm.graph.inserting_before(first):
            b_node = gm.graph.get_attr(b_target)
        set_val(gm, b_node, mode)
        args.append(b_node)
    pieces = [n.meta.get("val") for n in group]  # the split's pieces are the old linears' values
    with gm.graph.inserting_before(first):
        merged = gm.graph.call_function(aten.linear.default, tuple(args))  # [..., sum out]
    if all(isinstance(v, torch._subclasses.FakeTensor) for v in pieces):  # (no symbolic propagation through a linear)
        with pieces[0].fake_mode:
            merged.meta["val"] = pieces[0].new_empty([*pieces[0].shape[:-1], sum(sizes)])
    else:
        set_val(gm, merged, mode)
    with gm.graph.inserting_before(first):
        split = gm.graph.call_function(aten.split_with_sizes.default, (merged, sizes, -1))
    if all(v is not None for v in pieces):
        split.meta["val"] = pieces
    else:
        set_val(gm, split, mode)
    for i, old in enumerate(group):
        piece = getitem(gm, first, split, i, mode)
        old.replace_all_uses_with(piece)
    for old in group:
        gm.graph.erase_node(old)
    return [p[1] for p in parts] + [p[2] for p in parts if p[2] is not None]
