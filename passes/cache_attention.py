"""cache_attention: attention whose keys and values are [KV cache | new tokens] -> graphopt.cache_attention,
which reads the cache in place instead of concatenating it in front of the new tokens' keys.

A graph that reads a KV cache (graphopt.model.llama: `cache` [2, L, B, Hkv, P, D]) concatenates, per
layer, the cache's K (V) with the row's own: a copy of the whole cache per layer per call, and with
GQA the written-out attention repeats it n_rep times more. For a decode step (T = 1 over a static
cache of P slots) those copies are most of the step's memory traffic besides the weights.

Before:  sdpa(q, [to(]cat([ck, k], 2)[, dt)], [to(]cat([cv, v], 2)[, dt)], attn_mask=m, scale=s[, enable_gqa])
         (or the written-out softmax(q k^T * s + m) v that sdpa_attention matches, repeat_interleave included)
After:   graphopt.cache_attention(q, to(ck, dt), to(cv, dt), to(k, dt), to(v, dt), m, s)
where ck / cv are read from the `cache` input (selects) and dt is the dtype the attention reads its
keys in (a cast to it is left out where the value has it already). Casts of the cache on its way to
the cat are dropped: the cache is read in the attention's dtype directly (cast_dtype with attention
float32 casts the cache to bf16 at the cat, then the keys back to float32; a cache this graph filled
holds the new keys' bf16 values, which float32 holds exactly). Run after every pass that changes the
attention's inputs (sdpa_attention, cast_dtype, tensor_parallel, prune_structured, quantize_int8).

Then the cache input takes the dtype the attention reads it in: when every use of the cache is a
select cast to one dtype (cast_dtype: bfloat16), the placeholder is given that dtype, so a caller
holds the cache in it (the casts become no-ops, not a converted copy of the cache per layer per call).
KVLayout.of_graph(gm).dtype then says what to allocate. stats: matches, cache_dtype.

Block by block (graphopt.optimize_blocks): a decoder block's graph gets its layer's cache as inputs
(k, v [B, Hkv, P, D]); the keys read from one of its inputs in front of the new ones are the cache's.
The cache's dtype belongs to the graph around the blocks, so where the cache would take another dtype
the pass raises NotBlockwise and the graph is optimised whole.
"""
from __future__ import annotations

import math

import torch
from torch.fx import GraphModule, Node

from graphopt.blockwise import NotBlockwise
from graphopt.pipeline import PassContext, PassResult, after, register_pass
from ._cache import cache_input
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import ASSERT_META, aten, is_dim, is_op, real_users, val
from .sdpa_attention import SOFTMAX, _unrepeat, match_attention

import graphopt.kernels  # noqa: F401 (torch.ops.graphopt.cache_attention)

CACHE_ATTENTION = torch.ops.graphopt.cache_attention.default
SDPA = aten.scaled_dot_product_attention.default
_VIEWS = {aten.select.int, aten.slice.Tensor, aten.to.dtype, aten.expand.default, aten.alias.default}
_WHY = "cache_attention reads the attention's final inputs"


def _peel_cast(node):
    """to(x, dt) -> (x, dt); anything else -> (node, None)."""
    if is_op(node, aten.to.dtype) and len(node.args) == 2 and not node.kwargs:
        return node.args[0], node.args[1]
    return node, None


def _from_cache(node, caches: set) -> Node | None:
    """The cache input (one of `caches`) node is, seen through selects / slices / casts / expands; else None."""
    while isinstance(node, Node) and node not in caches and node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    return node if node in caches else None


def _split_keys(node, caches: set):
    """[to(]cat([c, x], 2)[, dt)] with c read from the cache -> (c without its casts, x, the dtype the
    attention reads the keys in); else None."""
    v = val(node)
    node, _ = _peel_cast(node)
    if v is None or not (is_op(node, aten.cat.default) and len(node.args[0]) == 2):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    c, x = node.args[0]
    while _peel_cast(c)[1] is not None:  # the cache is read in the attention's dtype directly
        c = c.args[0]
    if v.dim() != 4 or not is_dim(dim, v.dim(), 2) or _from_cache(c, caches) is None:
        return None
    return c, x, v.dtype


def _sdpa_parts(node: Node):
    """An SDPA node -> (q, k, v, mask, scale, out) or None (dropout, causal flag, no bool mask)."""
    args = list(node.args) + [None] * (7 - len(node.args))
    kw = dict(node.kwargs)
    mask = kw.get("attn_mask", args[3])
    dropout = kw.get("dropout_p", args[4] if args[4] is not None else 0.0)
    causal = kw.get("is_causal", args[5] if args[5] is not None else False)
    if dropout or causal or val(mask) is None or val(mask).dtype != torch.bool or val(mask).dim() != 4:
        return None
    k, v = _unrepeat(node.args[1])[0], _unrepeat(node.args[2])[0]  # (keep_repeat's repeat_interleave)
    scale = kw.get("scale", args[6])
    scale = 1.0 / math.sqrt(val(node.args[0]).shape[-1]) if scale is None else scale
    return node.args[0], k, v, mask, scale, node


def _attentions(gm: GraphModule):
    for node in list(gm.graph.nodes):
        if node.graph is None:
            continue
        if is_op(node, SDPA):
            parts = _sdpa_parts(node)
        elif is_op(node, *SOFTMAX):
            m = match_attention(node)
            parts = m and (m["q"], m["k"], m["v"], m["mask"], m["scale"], m["out"])
        else:
            parts = None
        if parts:
            yield parts


def _cast_to(gm: GraphModule, before: Node, x: Node, dt, mode) -> Node:
    if dt is None or (val(x) is not None and val(x).dtype == dt):
        return x
    return insert_call(gm, before, aten.to.dtype, (x, dt), mode=mode)


def _retype_cache(gm: GraphModule, cache: Node) -> torch.dtype | None:
    """Give the cache input the one dtype every use casts it to (see the module docstring); that dtype,
    or None when the uses disagree, some use reads the values uncast, or nothing changes."""
    dt = _cast_dtype(cache)
    if dt is None:
        return None
    v = val(cache)
    with fake_mode(gm):
        cache.meta["val"] = v.to(dt)
    for n in [cache, *_descendants(cache)]:  # selects in the new dtype; the casts now no-ops
        if n is not cache:
            n.meta["val"] = n.target(*[a.meta["val"] if isinstance(a, Node) else a for a in n.args])
        for a in [u for u in n.users if u.target in ASSERT_META]:
            a.kwargs = {**a.kwargs, "dtype": n.meta["val"].dtype}
    for guard in [n for n in gm.graph.find_nodes(op="call_module") if n.target == "_guards_fn"]:
        gm.graph.erase_node(guard)  # export's input guard checks the captured dtype
    return dt


def _cast_dtype(cache: Node) -> torch.dtype | None:
    """The one dtype, not the cache's own, that every use of the cache casts it to; None when the uses
    disagree, some use reads the values uncast, or they read it in its own dtype."""
    casts, stack = [], [cache]
    while stack:
        n = stack.pop()
        for u in real_users(n):
            if is_op(u, aten.to.dtype):
                casts.append(u)
            elif is_op(u, aten.select.int, aten.slice.Tensor):
                stack.append(u)
            elif is_op(u, aten.sym_size.int) or (u.op == "call_module" and u.target == "_guards_fn"):
                continue  # (shapes only; the guard goes below)
            else:
                return None
    dtypes = {u.args[1] for u in casts}
    v = val(cache)
    if len(dtypes) != 1 or v is None or v.dtype in dtypes:
        return None
    return dtypes.pop()


def _descendants(cache: Node) -> list[Node]:
    """The selects / slices below the cache and their casts, in graph order."""
    out, stack = set(), [cache]
    while stack:
        for u in real_users(stack.pop()):
            if is_op(u, aten.select.int, aten.slice.Tensor, aten.to.dtype) and u not in out:
                out.add(u)
                stack.append(u)
    order = {n: i for i, n in enumerate(cache.graph.nodes)}
    return sorted(out, key=order.get)


@register_pass("cache_attention", "attention over [KV cache | new tokens] -> graphopt.cache_attention: the cache "
               "read in place, not concatenated per layer; the cache input takes the attention's dtype",
               order=[after(p, _WHY) for p in ("sdpa_attention", "cast_dtype", "quantize_int8", "tensor_parallel",
                                                "prune_structured")],
               blockwise=True)
def cache_attention(gm: GraphModule, ctx: PassContext) -> PassResult:
    cache = cache_input(gm)
    block = cache is None and ctx.part == "block"  # the layer's cache: some of the block's inputs
    caches = set(gm.graph.find_nodes(op="placeholder")) if block else {cache} - {None}
    if not caches:
        return PassResult(gm, False, {"matches": 0})
    mode, matches, read = fake_mode(gm), 0, set()
    for q, k, v, mask, scale, out in list(_attentions(gm)):
        ks, vs = _split_keys(k, caches), _split_keys(v, caches)
        if ks is None or vs is None or val(q) is None or val(q).dim() != 4:
            continue
        (ck, kn, kdt), (cv, vn, vdt) = ks, vs
        read |= {_from_cache(ck, caches), _from_cache(cv, caches)}
        args = (q, *(_cast_to(gm, out, x, kdt, mode) for x in (ck, kn)),
                *(_cast_to(gm, out, x, vdt, mode) for x in (cv, vn)))
        q_, ck_, kn_, cv_, vn_ = args
        fused = insert_call(gm, out, CACHE_ATTENTION, (q_, ck_, cv_, kn_, vn_, mask, float(scale)), mode=mode)
        out.replace_all_uses_with(fused)
        gm.graph.erase_node(out)  # (an SDPA node counts as impure: remove_dead would keep it)
        matches += 1
    if not matches:
        return PassResult(gm, False, {"matches": 0})
    remove_dead(gm)
    if block:
        for c in read:
            if _cast_dtype(c) is not None:
                raise NotBlockwise(f"the cache would be held in {_cast_dtype(c)}, a change to the graph around the "
                                   "blocks")
        dt = val(next(iter(read))).dtype
    else:
        dt = _retype_cache(gm, cache) or val(cache).dtype
    return PassResult(gm, True, {"matches": matches, "cache_dtype": str(dt).replace("torch.", "")})
