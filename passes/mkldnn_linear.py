"""mkldnn_linear (CPU): every linear whose weight is a graph attribute -> oneDNN's linear on a weight
pre-packed once, here, in oneDNN's blocked layout (what inductor's freezing does, without a compile).

Before:  y = linear(x [..., K], W [N, K] float32|bfloat16[, b])
After:   y = mkldnn._linear_pointwise(x, W_packed [N, K] (opaque oneDNN layout)[, b], "none")
The LM head inside graphopt.linear_logprob(h [N, D], W [V, D], t) likewise, a vocabulary chunk of
HEAD_CHUNK rows at a time (so [N, V] logits never exist at once):
    logits_i = mkldnn_linear(h, W_packed_i).float();  lse = logsumexp_i(logsumexp(logits_i, -1))
    out = sum_i(where(t in chunk i, logits_i[t - start_i], 0)) - lse
and graphopt.linear_argmax(h, W) (the greedy next token) as each chunk's max / argmax, the best chunk's.

On this project's 2-core AVX-512 host, fp32 [1536, 768] x [768, 4096] ran at 177 GFLOP/s through
F.linear (ATen) and 412 GFLOP/s packed; bf16 821 against 893. A CPU without oneDNN's bf16 path (AVX2
only) keeps bfloat16 linears as ATen linears, with a warning: bf16 runs several times slower than fp32
there (9 against 57 GFLOP/s on such a host), and the fp32 pipeline is the fast one. The sums are taken in another order,
so outputs move by fp32 rounding (the pass is exact: within 1e-4 of the graph before it).
The packed weights are oneDNN tensors: run the result as the FX graph (compiler none);
inductor-frozen packs weights itself. Run it after every pass that looks for linears or casts their
weights.

Every weight is held once: packed (its float original is dropped from the graph under every name
it had), or, when something else reads it plainly (a tied table's embedding lookup), left as it is
and read by oneDNN in place (a plain [N, K] weight is what _linear_pointwise also takes, reordered
per call: no second copy of the table). The head's W[t] (the target's logit) comes from the chunk
logits themselves, not from a plain copy of W. n_params (the runner's count_params) counts the packed
buffers with the parameters: each weight once.
"""
from __future__ import annotations

import operator
import warnings

import torch
from torch.fx import GraphModule

import graphopt.kernels  # noqa: F401 (torch.ops.graphopt.linear_logprob)

from graphopt.graph_attrs import attr, names_by_tensor
from graphopt.pipeline import PassContext, PassError, PassResult, after, register_pass
from ._edit import drop_unused_attrs
from ._ops import linear_parts

LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default
LINEAR_LOGPROB = torch.ops.graphopt.linear_logprob.default
LINEAR_LOGPROB_GREEDY = torch.ops.graphopt.linear_logprob_greedy.default
LINEAR_ARGMAX = torch.ops.graphopt.linear_argmax.default
HEAD_CHUNK = 8192  # vocabulary rows per packed head chunk
aten = torch.ops.aten
_REPLACES = "mkldnn_linear replaces the linears by oneDNN calls on packed weights"
_BEFORE_IT = ("merge_qkv", "merge_gate_up", "prune_lm_head", "fused_logprob", "tensor_parallel", "prune_structured",
              "cast_dtype", "quantize_int8")


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] float32/bfloat16 -> the same values in oneDNN's blocked layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


@register_pass("mkldnn_linear", "CPU: linears -> oneDNN linear on weights packed once (inductor-frozen's matmuls "
               "without its compile); run the graph as is (compiler none)",
               order=[after(p, _REPLACES) for p in _BEFORE_IT],
               compilers=("none", "inductor-frozen"), blockwise=True)  # inductor (unfrozen) cannot lower oneDNN-packed inputs
def mkldnn_linear(gm: GraphModule, ctx: PassContext) -> PassResult:
    if not torch.backends.mkldnn.is_available():
        raise PassError("mkldnn_linear needs a torch build with oneDNN (mkldnn)")
    dtypes = (torch.float32, torch.bfloat16) if bf16_packable() else (torch.float32,)
    packed: dict[int, str] = {}  # id(weight) -> packed target (a weight under several names is packed once)
    old, matches, kept_bf16 = set(), 0, 0
    names = names_by_tensor(gm)  # (one walk of the modules, not one per weight)
    for node in list(gm.graph.nodes):
        parts = linear_parts(gm, node)
        if parts is None:
            continue
        x, w_target, b_target = parts
        weight = attr(gm, w_target)
        if weight.device.type != "cpu" or weight.dtype not in dtypes or weight.dim() != 2:
            kept_bf16 += weight.dtype == torch.bfloat16
            continue
        if _read_plain(gm, node.args[1], names):  # a tied table the lookup reads: oneDNN on it as it is
            w_node = node.args[1]
        else:
            if id(weight) not in packed:
                packed[id(weight)] = _register_packed(gm, w_target, "mkldnn", _pack(weight))
                old.update(names.get(id(weight), [w_target]))  # every name of it: none keeps an unread float copy
            with gm.graph.inserting_before(node):
                w_node = gm.graph.get_attr(packed[id(weight)])
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(LINEAR_POINTWISE, (x, w_node, b, "none", [], ""))
        if "val" in node.meta:  # the packed weight has no fake value; the output is the linear's
            new.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        matches += 1
    for node in [n for n in gm.graph.nodes if n.op == "call_function"
                 and n.target in (LINEAR_LOGPROB, LINEAR_LOGPROB_GREEDY, LINEAR_ARGMAX)]:
        plain = _read_plain(gm, node.args[1], names)
        head = node.args[1].target if node.args[1].op == "get_attr" else None
        done = _packed_head(gm, node, dtypes, plain)
        if done and not plain:  # its plain original is read by nothing now
            old.update(names.get(id(attr(gm, head)), [head]))
        matches += done
        kept_bf16 += not done and _head_weight_dtype(gm, node) == torch.bfloat16
    for n in [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]:
        gm.graph.erase_node(n)
    drop_unused_attrs(gm, old)  # float weights nothing reads now (a table the embedding reads stays)
    if kept_bf16:
        warnings.warn(f"mkldnn_linear: this CPU has no oneDNN bfloat16 path (torch reports "
                      f"{torch.backends.cpu.get_cpu_capability()}; oneDNN needs AVX-512 or AMX for bf16): {kept_bf16} "
                      f"bfloat16 linears stay ATen linears, several times slower than float32 here; an fp32 "
                      f"pipeline (exact-cpu) is the fast one on this CPU", stacklevel=2)
    return PassResult(gm, matches > 0, {"matches": matches, "kept_bf16": kept_bf16})


def _read_plain(gm: GraphModule, w_node, names: dict) -> bool:
    """Whether the weight w_node reads is also read by something other than a linear or the head (a
    tied table's embedding lookup): then it stays one plain tensor, and no packed copy is made."""
    if w_node.op != "get_attr":
        return False
    holders = set(names.get(id(attr(gm, w_node.target)), [w_node.target]))
    readers = [u for n in gm.graph.find_nodes(op="get_attr") if n.target in holders for u in n.users]
    return any(not (u.op == "call_function" and u.target in (aten.linear.default, LINEAR_LOGPROB,
                                                              LINEAR_LOGPROB_GREEDY, LINEAR_ARGMAX)) for u in readers)


def bf16_packable() -> bool:
    """Whether oneDNN has a bfloat16 path on this CPU (AVX-512 / AMX; not on AVX2-only CPUs)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _register_packed(gm: GraphModule, target: str, suffix: str, packed: torch.Tensor) -> str:
    owner, _, leaf = target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    module.register_buffer(f"{leaf}_{suffix}", packed)  # a buffer: oneDNN tensors are no Parameters
    return f"{owner}.{leaf}_{suffix}" if owner else f"{leaf}_{suffix}"


def _head_weight_dtype(gm: GraphModule, node):
    w = node.args[1]
    return attr(gm, w.target).dtype if w.op == "get_attr" else None


def _packed_head(gm: GraphModule, node, dtypes: tuple, keep_plain: bool) -> int:
    """graphopt.linear_logprob(h, W, t) with W a CPU float attribute -> the chunked oneDNN form above;
    graphopt.linear_logprob_greedy likewise, its greedy flag from each chunk's max and argmax (the
    first chunk holding the overall maximum wins, as torch.argmax takes the first index).
    keep_plain: W has another reader (a tied embedding): oneDNN reads views of it, nothing is packed."""
    if node.target is LINEAR_ARGMAX:
        return _packed_argmax(gm, node, dtypes, keep_plain)
    hidden, w_node, target = node.args[:3]
    if not (w_node.op == "get_attr"):
        return 0
    weight = attr(gm, w_node.target)
    if weight.device.type != "cpu" or weight.dtype not in dtypes:
        return 0
    g, greedy = gm.graph, node.target is LINEAR_LOGPROB_GREEDY
    with g.inserting_before(node):
        call = lambda f, *a: g.call_function(f, a)  # noqa: E731
        chunk_lse, chunk_picked, chunk_max, chunk_arg = [], [], [], []
        for start, stop, logits in _chunk_logits(gm, hidden, w_node, weight, keep_plain):
            chunk_lse.append(call(aten.logsumexp.default, logits, [-1]))  # [N]
            # the target's logit, from the chunk holding it (0 from the others): no plain copy of W for W[t]
            local = call(aten.unsqueeze.default, call(aten.clamp.default, call(aten.sub.Tensor, target, start),
                                                      0, stop - start - 1), 1)  # [N, 1]
            inside = call(aten.logical_and.default, call(aten.ge.Scalar, target, start),
                          call(aten.lt.Scalar, target, stop))  # [N] bool
            chunk_picked.append(call(aten.where.ScalarOther, inside,
                                     call(aten.squeeze.dim, call(aten.gather.default, logits, 1, local), 1), 0.0))
            if greedy:
                top = call(aten.max.dim, logits, -1)  # ([N] value, [N] index in the chunk)
                chunk_max.append(call(operator.getitem, top, 0))
                chunk_arg.append(call(aten.add.Tensor, call(operator.getitem, top, 1), start))
        lse = call(aten.logsumexp.default, call(aten.stack.default, chunk_lse, 0), [0])  # [N]
        picked = call(aten.sum.dim_IntList, call(aten.stack.default, chunk_picked, 0), [0])  # [N]: logits[t]
        out = call(aten.sub.Tensor, picked, lse)
        if greedy:
            which = call(aten.argmax.default, call(aten.stack.default, chunk_max, 0), 0)  # [N] winning chunk
            arg = call(aten.gather.default, call(aten.stack.default, chunk_arg, 0), 0,
                       call(aten.unsqueeze.default, which, 0))  # [1, N]
            flag = call(aten.eq.Tensor, call(aten.squeeze.dim, arg, 0), target)  # [N] bool
    if greedy:
        for user in list(node.users):  # getitem(node, 0 | 1)
            new = out if user.args[1] == 0 else flag
            if "val" in user.meta:
                new.meta["val"] = user.meta["val"]
            user.replace_all_uses_with(new)
            g.erase_node(user)
    else:
        if "val" in node.meta:
            out.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(out)
    g.erase_node(node)
    return 1


def _chunk_logits(gm: GraphModule, hidden, w_node, weight, keep_plain: bool):
    """For each HEAD_CHUNK rows of the head W: (start, stop, the float32 [N, chunk] logits node), inserted
    at the graph's current insertion point. Packed once per chunk, or (keep_plain) oneDNN on a view of W."""
    g = gm.graph
    for i, start in enumerate(range(0, weight.shape[0], HEAD_CHUNK)):
        stop = min(start + HEAD_CHUNK, weight.shape[0])
        if keep_plain:  # the table stays plain for its other reader: oneDNN reads a view of it
            w_i = g.call_function(aten.slice.Tensor, (w_node, 0, start, stop))
        else:
            w_i = g.get_attr(_register_packed(gm, w_node.target, f"mkldnn_{i}", _pack(weight[start:stop])))
        logits = g.call_function(LINEAR_POINTWISE, (hidden, w_i, None, "none", [], ""))  # [N, chunk]
        yield start, stop, g.call_function(aten.to.dtype, (logits, torch.float32))


def _packed_argmax(gm: GraphModule, node, dtypes: tuple, keep_plain: bool) -> int:
    """graphopt.linear_argmax(h, W) (the greedy next token) -> per packed vocabulary chunk its max and
    argmax, then the chunk holding the overall maximum (the first one among equal maxima, as torch.argmax).
    keep_plain: W has another reader (a tied embedding): oneDNN reads views of it, nothing is packed."""
    hidden, w_node = node.args[:2]
    if not (w_node.op == "get_attr"):
        return 0
    weight = attr(gm, w_node.target)
    if weight.device.type != "cpu" or weight.dtype not in dtypes:
        return 0
    g = gm.graph
    with g.inserting_before(node):
        call = lambda f, *a: g.call_function(f, a)  # noqa: E731
        chunk_max, chunk_arg = [], []
        for start, _, logits in _chunk_logits(gm, hidden, w_node, weight, keep_plain):
            top = call(aten.max.dim, logits, -1)  # ([N] value, [N] index)
            chunk_max.append(call(operator.getitem, top, 0))
            chunk_arg.append(call(aten.add.Tensor, call(operator.getitem, top, 1), start))
        which = call(aten.argmax.default, call(aten.stack.default, chunk_max, 0), 0)  # [N] winning chunk
        arg = call(aten.gather.default, call(aten.stack.default, chunk_arg, 0), 0,
                   call(aten.unsqueeze.default, which, 0))  # [1, N]
        out = call(aten.squeeze.dim, arg, 0)  # [N] int64
    if "val" in node.meta:
        out.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(out)
    g.erase_node(node)
    return 1
