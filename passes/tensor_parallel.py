"""tensor_parallel: rewrite a captured ScoreModule graph so that this rank holds only its shard.

`plan` lists the nodes to rewrite, each with the slice of every weight it reads (shard_slice in
graphopt.distributed.plan, which the shard loader uses too); one small function per kind rewrites it:
  column     wq/wk/wv (+bias), w1/w3: rows cut per head / hidden chunk; a merged wqkv / w13
             (merge_qkv / merge_gate_up) is cut part by part and the split after it takes local sizes.
  row        wo, w2: columns cut, then all_reduce(sum).
  vocab      output (vocab_parallel): rows cut along the vocab; the log_softmax + gather below it (or
             graphopt.logprob / linear_logprob) becomes a log-sum-exp over all-reduces: no full logits.
  embedding  tok_embeddings (embedding_parallel, Meta's layout): cut along dim, all-gather after the lookup.
             Untied models only (a tied table follows the head, below).
  lookup     tied embeddings with vocab_parallel: the lookup reads the head's [V/ws, D] vocab slice
             (ids outside it masked to zero rows), then all_reduce(sum): Megatron's vocab-parallel embedding.
  repeat     repeat_interleave's n_rep, the GQA literal: the local ratio where kv heads are replicated
             (n_kv_heads < world_size).
  cache      a KV-cache input (graphopt.model.llama) holds this rank's kv heads only, the K/V its own
             shard computed (passes/_cache.py): stats["cache_heads"].
The model's head views are [B, T, -1, D] and follow the cut weights; RoPE's [B, T, H, -1, 2] takes
its input's local head count when fake values are re-propagated (_edit.refit_vals).

Tied embeddings: the LM head and the lookup read one [V, D] table, and it stays ONE tensor on every
rank: replicated whole (no vocab_parallel; embedding_parallel does not apply to a tied table, as the
head needs every row's whole dim), or with vocab_parallel one [V/ws, D] vocab slice that both the head
and the lookup read (so the shard loader reads only that slice of the checkpoint's one tensor). A
full tensor that was cut is dropped under every name nothing reads any more (export also keeps a
tied table's unread model.tok_embeddings.weight name).

Rank / world size come from ctx; the group is the "tp" sub-group of the active device mesh
(graphopt.distributed.mesh: data-parallel replicas each sharded), else torch.distributed's default
group, which must be initialised (graphopt.distributed.launch, torchrun). Weights may be real (sliced here, the full tensor released)
or on the meta device: graphopt.distributed.load_shard then fills them from gm.meta["tp_shards"]
(attribute -> [(checkpoint key, (dim, start, stop)), ...]).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

import graphopt.kernels  # noqa: F401 (torch.ops.graphopt.*)
from graphopt.distributed.collectives import insert_all_gather_last_dim, insert_all_reduce, \
    insert_vocab_parallel_logprob, insert_vocab_parallel_lookup
from graphopt.distributed.plan import checkpoint_key, head_layout, shard_slice
from graphopt.graph_attrs import attr, set_attr, targets_holding
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, register_pass
from ._cache import set_cache_heads
from ._edit import add_parameter, drop_unused_attrs, refit_vals, splits_last_dim
from ._ops import EMBEDDING, GATHER, LINEAR, LOG_SOFTMAX, RESHAPE, aten, is_op
from ._weights import param_bytes

_LINEAR_LOGPROB = torch.ops.graphopt.linear_logprob.default
_LOGPROB = torch.ops.graphopt.logprob.default
_MERGED = {"wqkv_weight": ("wq", "wk", "wv"), "w13_weight": ("w1", "w3")}  # merge_qkv / merge_gate_up
_TABLE = ("output.weight", "tok_embeddings.weight")  # read by the LM head and the lookup when tied


@dataclass
class Site:
    kind: str  # column | row | vocab | embedding | lookup | repeat
    node: Node  # the linear / graphopt.linear_logprob / embedding / repeat_interleave
    weight: Node | None = None  # get_attr nodes
    bias: Node | None = None
    keys: tuple[str, ...] = ()  # checkpoint key of each part of the weight (merged: several)
    pieces: tuple = ()  # (dim, start, stop) of each part
    sizes: tuple[int, ...] = ()  # merged: each part's rows in the full weight (the split after it)
    n_rep: int = 0  # repeat: local query heads per kv head


@dataclass
class World:
    size: int
    rank: int
    group: str
    cuts: dict = field(default_factory=dict)  # (id of the full tensor, pieces) -> attribute holding that cut


def _get_attr(node: Node, i: int, name: str) -> Node | None:
    a = node.args[i] if len(node.args) > i else node.kwargs.get(name)
    return a if isinstance(a, Node) and a.op == "get_attr" else None


def _linear_site(lin: Node, sl) -> Site | None:
    w = _get_attr(lin, 1, "weight")
    if w is None:
        return None
    b = _get_attr(lin, 2, "bias") if lin.target in LINEAR else None
    key = checkpoint_key(w.target)
    if key in _TABLE:  # the LM head (a linear on the embedding table is the tied head)
        piece = sl("output.weight")
        return Site("vocab", lin, w, keys=("output.weight",), pieces=(piece,)) if piece else None
    if key is not None:
        piece = sl(key)
        return Site("column" if piece[0] == 0 else "row", lin, w, b, (key,), (piece,)) if piece else None
    module, _, leaf = w.target.rpartition(".")
    split = next(iter(lin.users)) if len(lin.users) == 1 else None
    if leaf not in _MERGED or not is_op(split, aten.split_with_sizes.default):
        return None
    keys = tuple(checkpoint_key(f"{module}.{part}.weight") for part in _MERGED[leaf])
    assert None not in keys and len(split.args[1]) == len(keys), (w.target, split.args)
    return Site("column", lin, w, b, keys, tuple(sl(k) for k in keys), tuple(split.args[1]))


def plan(gm: GraphModule, args, ws: int, rank: int, vp: bool, ep: bool) -> list[Site]:
    """The nodes rank rewrites, in graph order, with the slice of every weight they read."""
    tied = args.tie_embeddings
    ep = ep and not tied  # a tied table follows the head: whole, or the head's vocab slice (lookup below)
    sl = lambda key: shard_slice(key, args, ws, rank, vp, ep)
    n_rep = head_layout(args, ws, rank).n_rep
    sites = []
    for n in gm.graph.nodes:
        w = _get_attr(n, 0, "weight") if n.target in EMBEDDING else None
        if w is not None and checkpoint_key(w.target) in _TABLE and (ep or (tied and vp)):
            key = "output.weight" if tied else "tok_embeddings.weight"  # tied: the head's cut, one shard
            sites.append(Site("lookup" if tied else "embedding", n, w, keys=("tok_embeddings.weight",),
                              pieces=(sl(key),)))
        elif (n.target in LINEAR or n.target == _LINEAR_LOGPROB) and (site := _linear_site(n, sl)):
            sites.append(site)
        elif n.target == aten.repeat_interleave.self_int and n.args[1] == args.n_heads // args.n_kv_heads != n_rep:
            assert (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim")) == 1, n.args  # [B, Hkv, T, D] -> heads
            sites.append(Site("repeat", n, n_rep=n_rep))
    return sites


def _cut(gm: GraphModule, site: Site, wnode: Node, world: World, suffix: str = "weight") -> None:
    """Replace the tensor behind get_attr `wnode` by the shard site.node reads: each part (merged
    weights stack theirs along dim 0) cut by its piece; recorded in gm.meta["tp_shards"]. A tensor
    already cut this way for another site (a tied table: lookup and head) is read from that cut."""
    full = attr(gm, wnode.target)
    done = world.cuts.get((id(full), site.pieces))
    if done is not None:
        with gm.graph.inserting_before(site.node):
            site.node.replace_input_with(wnode, gm.graph.get_attr(done))
        return
    parts = [p if piece is None else p.narrow(piece[0], piece[1], piece[2] - piece[1])
             for p, piece in zip(full.split(list(site.sizes) or full.shape[0]), site.pieces)]
    new = torch.cat(parts) if len(parts) > 1 else parts[0].clone()  # a copy: the full storage is released
    target = wnode.target
    readers = {u for n in gm.graph.nodes if n.op == "get_attr" and n.target == target for u in n.users}
    if readers != {site.node}:  # read elsewhere too (tied embeddings): cut into a new attribute
        target = add_parameter(gm, "", "tp_shard_" + target.replace(".", "_"), new)
        with gm.graph.inserting_before(site.node):
            site.node.replace_input_with(wnode, gm.graph.get_attr(target))
    else:
        set_attr(gm, target, new)
    keys = [k.rsplit(".", 1)[0] + "." + suffix for k in site.keys]
    gm.meta.setdefault("tp_shards", {})[target] = list(zip(keys, site.pieces))
    world.cuts[(id(full), site.pieces)] = target


def _column(gm: GraphModule, site: Site, world: World) -> dict:
    _cut(gm, site, site.weight, world)
    if site.bias is not None:
        _cut(gm, site, site.bias, world, "bias")
    if site.sizes:  # merged: the split takes the local part sizes
        split = next(iter(site.node.users))
        split.args = (site.node, [stop - start for _, start, stop in site.pieces], *split.args[2:])
    return {"column": 1, "merged": int(bool(site.sizes))}


def _row(gm: GraphModule, site: Site, world: World) -> dict:
    assert site.bias is None, f"row-parallel {site.keys[0]} with a bias would add it world_size times"
    _cut(gm, site, site.weight, world)
    insert_all_reduce(gm.graph, site.node, "sum", world.group)  # partial sums
    return {"row": 1, "all_reduce": 1}


def _embedding(gm: GraphModule, site: Site, world: World) -> dict:
    _cut(gm, site, site.weight, world)
    insert_all_gather_last_dim(gm.graph, site.node, world.size, world.group)
    return {"embedding": 1}


def _lookup(gm: GraphModule, site: Site, world: World) -> dict:
    _, start, stop = site.pieces[0]
    _cut(gm, site, site.weight, world)
    insert_vocab_parallel_lookup(gm.graph, site.node, start, stop - start, world.group)
    return {"embedding": 1}


def _repeat(gm: GraphModule, site: Site, world: World) -> dict:
    site.node.args = (site.node.args[0], site.n_rep, *site.node.args[2:])
    return {"views": 1}


def _vocab(gm: GraphModule, site: Site, world: World) -> dict:
    g, head, vocab = gm.graph, site.node, attr(gm, site.weight.target).shape[0]
    _, start, stop = site.pieces[0]
    _cut(gm, site, site.weight, world)

    def logprob(x: Node, at: Node, tgt: Node, squeeze: bool = False) -> None:  # x [N, V_local] float32
        at.replace_all_uses_with(insert_vocab_parallel_logprob(g, at, x, tgt, world.rank, stop - start, world.group,
                                                               squeeze))
    if head.target == _LINEAR_LOGPROB:  # fused_logprob(with_linear=True) ran first
        hidden, w, tgt = head.args[:3]
        with g.inserting_before(head):
            logits = g.call_function(aten.to.dtype, (g.call_function(aten.linear.default, (hidden, w)), torch.float32))
            logprob(logits, head, g.call_function(aten.unsqueeze.default, (tgt, -1)), squeeze=True)
        return {"vocab_logprob": 1}
    done, todo, seen = 0, [head], set()  # below the head: reshape(-1, V) -> V_local; log_softmax + gather
    while todo:
        for u in [u for u in todo.pop().users if u not in seen]:
            seen.add(u)
            if u.target in RESHAPE:
                u.args = (u.args[0], [stop - start if s == vocab else s for s in u.args[1]], *u.args[2:])
            if u.target in LOG_SOFTMAX:
                if not u.users or any(ga.target not in GATHER for ga in u.users):
                    raise PassError(f"vocab_parallel: log_softmax {u.name} is used by something other than gather "
                                    f"({[x.name for x in u.users]}); full log-probs would need all-gathered logits")
                for ga in list(u.users):
                    logprob(u.args[0], ga, ga.args[2])
                    done += 1
            elif u.target == _LOGPROB:
                with g.inserting_before(u):
                    logprob(u.args[0], u, g.call_function(aten.unsqueeze.default, (u.args[1], -1)), squeeze=True)
                done += 1
            elif u.op == "call_function":
                todo.append(u)
    if not done:
        raise PassError("vocab_parallel: no log_softmax + gather (or graphopt.logprob) below the LM head; run "
                        "tensor_parallel before fused_logprob(with_linear=True)")
    return {"vocab_logprob": done}


REWRITE = {"column": _column, "row": _row, "vocab": _vocab, "embedding": _embedding, "lookup": _lookup,
           "repeat": _repeat}


def _world(ws: int, rank: int) -> World:
    """This rank's tensor-parallel group: the "tp" sub-group of the active device mesh
    (graphopt.distributed.mesh, data-parallel replicas), else the default group."""
    import torch.distributed as dist

    from graphopt.distributed.mesh import shard_group
    if not dist.is_initialized():
        raise PassError("tensor_parallel needs torch.distributed initialised in this process "
                        "(run under graphopt.distributed.launch or torchrun)")
    group = shard_group("tp")
    if (dist.get_world_size(group), dist.get_rank(group)) != (ws, rank):
        raise PassError(f"ctx says rank {rank} of {ws} but the tensor-parallel process group is rank "
                        f"{dist.get_rank(group)} of {dist.get_world_size(group)}")
    return World(ws, rank, group.group_name)


@register_pass("tensor_parallel", "shard the graph over ctx.world_size ranks (Megatron layout: column-parallel "
               "wq/wk/wv/w1/w3, row-parallel wo/w2 + all-reduce; head counts divided; optional vocab-parallel head)",
               options={"vocab_parallel": PassOption(bool, False, "cut the LM head along the vocab and compute the "
                                                     "log-prob with all-reduces of max / sum-exp / target logit"),
                        "embedding_parallel": PassOption(bool, False, "cut tok_embeddings along dim (Meta's shard "
                                                         "layout) and all-gather after the lookup (untied "
                                                         "models: a tied table follows the head's cut)")},
               shards="tensor")
def tensor_parallel(gm: GraphModule, ctx: PassContext) -> PassResult:
    if ctx.world_size == 1:
        return PassResult(gm, False, {"matches": 0})
    if ctx.model_args is None:
        raise PassError("tensor_parallel needs ctx.model_args (the ModelArgs of the captured model)")
    world = _world(ctx.world_size, ctx.rank)
    vp, ep = ctx.options.get("vocab_parallel", False), ctx.options.get("embedding_parallel", False)
    sites = plan(gm, ctx.model_args, world.size, world.rank, vp, ep)
    splits = [n for n in gm.graph.nodes if splits_last_dim(n)]  # RoPE's [B, T, H, -1, 2], before H changes
    stats = dict.fromkeys(("column", "row", "merged", "views", "all_reduce", "vocab_logprob", "embedding"), 0)
    stats["param_bytes_before"] = param_bytes(gm)
    full = [attr(gm, n.target) for s in sites for n in (s.weight, s.bias) if n is not None]
    for site in sites:
        for k, v in REWRITE[site.kind](gm, site, world).items():
            stats[k] += v
    gm.graph.eliminate_dead_code()
    drop_unused_attrs(gm, [name for t in {id(t): t for t in full}.values() for name in targets_holding(gm, t)])
    kv = head_layout(ctx.model_args, world.size, world.rank).kv_heads
    stats["cache_heads"] = kv[1] - kv[0] if set_cache_heads(gm, kv[1] - kv[0]) else 0  # a rank caches its own
    gm.recompile()
    try:
        stats["views"] += refit_vals(gm, splits, spell_split=True)
    except ValueError as e:
        raise PassError(f"tensor_parallel: after sharding, {e}") from e
    if vp and not stats["vocab_logprob"]:
        raise PassError("vocab_parallel: found no LM head (linear on output.weight, or graphopt.linear_logprob) "
                        "feeding a log-prob")
    if stats["column"] and not stats["row"]:
        raise PassError("tensor_parallel: found column-parallel projections but no wo/w2 to all-reduce after")
    stats.update(matches=stats["column"] + stats["row"] + stats["vocab_logprob"] + stats["embedding"],
                 param_bytes_after=param_bytes(gm))
    return PassResult(gm, stats["matches"] > 0, stats)
