"""Local rewrites as pattern / replacement pairs, as torch's PT2E quantisation writes them: both are
traced by torch.export (the graphs' own capture) and matched by subgraph_rewriter.replace_pattern_with_filters.

Graph and patterns first take one canonical form (`canonicalise`, a helper, not a pass): no
aten._assert_tensor_metadata (export's check at each `x.float()`), and one user per node that only
re-describes its input: a no-op cast (to.dtype(x, float32) of a float32 x) or an unsqueeze. Export
reuses such a cast for later uses of x (the residual add reads the norm's), cse shares RoPE's
unsqueezed cos/sin between q and k, and a match cannot own a node read outside it. `restore` then
merges the copies back and puts the asserts back (cast_dtype reads the casts as "keep float32").
Real casts (bfloat16 -> float32) stay, and `y.type_as(x)` names x or its cast by the dtype traced:
a pass traces its pattern per dtype case (a small table).
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch.export import Dim
from torch.fx import GraphModule
from torch.fx.node import map_aggregate
from torch.fx.subgraph_rewriter import replace_pattern_with_filters

import graphopt.kernels  # noqa: F401 (registers torch.ops.graphopt, which the replacements call)
from ._edit import fake_mode, set_val
from ._ops import ASSERT_META, aten, is_op, val


def _noop_cast(n) -> bool:
    return is_op(n, aten.to.dtype) and len(n.args) == 2 and not n.kwargs and val(n.args[0]) is not None \
        and val(n.args[0]).dtype == n.args[1]


def canonicalise(gm: GraphModule) -> tuple[list, list]:
    """gm in the canonical form above, outputs unchanged bit for bit; returns what `restore` undoes."""
    g, asserts, copies = gm.graph, [], []
    for n in list(g.nodes):
        if is_op(n, *ASSERT_META):
            asserts.append((n.args, n.kwargs, n.meta))
            g.erase_node(n)
        elif _noop_cast(n) or is_op(n, aten.unsqueeze.default):
            for user in list(n.users)[1:]:
                with g.inserting_after(n):
                    copies.append((g.call_function(n.target, n.args), n))
                copies[-1][0].meta = dict(n.meta)
                user.replace_input_with(n, copies[-1][0])
    return asserts, copies


def restore(gm: GraphModule, undo: tuple[list, list], moved: dict) -> None:
    """After a rewrite: the surviving copies merge into their original (or, if a match took it, into
    one another), the asserts come back on their subject or on what replaced it (moved)."""
    (asserts, copies), survivor = undo, {}
    for copy, n in (c for c in copies if not c[0]._erased):  # (they sit right after n, before its users)
        into = n if not n._erased else survivor.setdefault(n, copy)
        if into is not copy:
            copy.replace_all_uses_with(into)
            gm.graph.erase_node(copy)
    for (subject, *args), kwargs, meta in asserts:
        subject = moved.get(subject, subject)
        if not subject._erased:
            with gm.graph.inserting_after(subject):
                gm.graph.call_function(aten._assert_tensor_metadata.default, (subject, *args), kwargs).meta = meta


class _Call(torch.nn.Module):  # export traces modules: fn, its number inputs bound
    def __init__(self, fn, numbers):
        super().__init__()
        self.fn, self.numbers = fn, numbers

    def forward(self, *tensors):
        return self.fn(*tensors, *self.numbers)


@functools.cache
def trace(fn, inputs: tuple, dynamic: tuple = (), n_sizes: int = 0) -> GraphModule:
    """fn traced by torch.export, canonicalised. inputs: (shape, dtype) per tensor input, then the number
    inputs, traced as their value (a marker found nowhere else) and then matching any literal (eps).
    dynamic: per tensor input a string naming its leading dims ("BT"): sizes left open, as RoPE's
    reshape to [B, T, H, -1, 2]. Placeholders (names: gm.meta["inputs"]): the inputs, one per symbolic
    size, n_sizes unused ones (a replacement's, to line up with its pattern's)."""
    tensors = [torch.randn(a[0]).to(a[1]) for a in inputs if isinstance(a, tuple)]
    numbers = list(inputs[len(tensors):])
    dims = {name: Dim(name) for name in "".join(dynamic)}
    shapes = (tuple({d: dims[name] for d, name in enumerate(spec)} for spec in dynamic)
              + (None,) * (len(tensors) - len(dynamic)),) if dynamic else None
    gm = torch.export.export(_Call(fn, numbers), tuple(tensors), dynamic_shapes=shapes).module()
    g = gm.graph
    g._codegen = torch.fx.graph.CodeGen()  # plain placeholders, not export's pytree calling convention
    for n in g.find_nodes(op="call_module"):  # the input guards
        g.erase_node(n)
    canonicalise(gm)
    names = list(inspect.signature(fn).parameters)[:len(inputs)]
    last = list(g.find_nodes(op="placeholder"))[-1]
    for name, number in zip(names[len(tensors):], numbers):
        with g.inserting_after(last):
            last = g.placeholder(name)
        for n in g.nodes:
            n.args, n.kwargs = map_aggregate((n.args, n.kwargs),
                                             lambda a: last if type(a) is type(number) and a == number else a)
    sizes = list(g.find_nodes(op="call_function", target=aten.sym_size.int))
    for i in range(len(sizes) + n_sizes):
        with g.inserting_after(last):
            last = g.placeholder(f"size{i}")
        if i < len(sizes):
            sizes[i].replace_all_uses_with(last)
            g.erase_node(sizes[i])
            names.append(f"size{i}")
    g.eliminate_dead_code()
    gm.recompile()
    gm.meta["inputs"] = names
    return gm


def _targets(gm: GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


def same_meta(*nodes) -> bool:
    """Every node has a tensor value, all of one shape and dtype."""
    vals = [val(n) for n in nodes]
    return None not in vals and all((v.shape, v.dtype) == (vals[0].shape, vals[0].dtype) for v in vals)


def replace_all(gm: GraphModule, pattern, replacement, inputs: tuple, match_filter=None, dynamic: tuple = ()) -> int:
    """Replace each match of `pattern` (traced on inputs, see trace) by `replacement` (same signature, no
    size arithmetic); returns how many. match_filter(m, match) -> bool gets the pattern's inputs by name
    (m["x"]: the node or literal bound to x) and the InternalMatch. A graph lacking an op of the pattern
    is left untouched. New nodes get meta["val"] and the stack trace of the node they replace."""
    pat = trace(pattern, inputs, dynamic)
    if not _targets(pat) <= _targets(gm):  # (canonicalise only removes ops)
        return 0
    names = pat.meta["inputs"]
    assert all(p.users for p in pat.graph.find_nodes(op="placeholder")), f"{pattern.__name__}: unused input"
    rep = trace(replacement, inputs, n_sizes=len(names) - len(inputs))
    assert aten.sym_size.int not in _targets(rep), f"{replacement.__name__}: sizes must come from its inputs"

    def keep(match, *_):
        return match_filter is None or bool(match_filter(dict(zip(names, match.placeholder_nodes)), match))

    undo, mode = canonicalise(gm), fake_mode(gm)
    done = replace_pattern_with_filters(gm, pat, rep, [keep])
    made = [n for n in rep.graph.nodes if n.op not in ("placeholder", "output")]  # as r.replacements
    moved = {}
    outputs = list(zip(pat.graph.output_node().args[0], rep.graph.output_node().args[0]))
    for r in done:
        # a replacement's outputs are the values its pattern computed: they keep their fake values
        # (propagating symbolic shapes through a kernel's fake implementation costs ~10 ms a node)
        known = {r.replacements[made.index(q)]: r.nodes_map[p].meta.get("val") for p, q in outputs}
        for n in r.replacements:
            n.meta = {"stack_trace": r.nodes_map[r.anchor].meta.get("stack_trace")}
            if known.get(n) is not None:
                n.meta["val"] = known[n]
            else:
                set_val(gm, n, mode)
        for p, q in outputs:
            moved[r.nodes_map[p]] = r.replacements[made.index(q)]
            if _noop_cast(p) and p.args[0].op != "placeholder":  # float32: export returns x as x.float()
                moved[r.nodes_map[p.args[0]]] = moved[r.nodes_map[p]]
    restore(gm, undo, moved)
    gm.recompile()
    return len(done)
