"""tensor_parallel: rewrite a captured ScoreModule graph so that this rank holds only its shard.

  wq/wk/wv, w1/w3 (and a merged wqkv / w13 followed by a split): column-parallel, rows cut per head /
      per hidden chunk; head counts in the view/reshape nodes that follow become local counts and
      repeat_interleave's n_rep the local ratio (GQA with n_kv_heads < world_size: kv heads replicated).
  wo, w2: row-parallel, columns cut, then all_reduce(sum) (functional collective + wait_tensor).
  output: replicated, or (vocab_parallel) cut along the vocab with the log-prob computed from
      all_reduce(max), all_reduce(sum exp) and all_reduce(target logit): no full logits anywhere.
  tok_embeddings: replicated, or (embedding_parallel, Meta's layout) cut along dim + all_gather.

Rank / world size come from ctx.rank / ctx.world_size; the group is torch.distributed's default
group, which must be initialised (graphopt.distributed.launch). Weights may be real (sliced here,
the full tensor released) or on the meta device (then graphopt.distributed.load_shard fills them).
"""
from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

import graphopt.kernels  # noqa: F401 (torch.ops.graphopt.*)
from graphopt.distributed.collectives import ALL_REDUCE, WAIT, insert_all_gather_last_dim, insert_all_reduce
from graphopt.distributed.plan import checkpoint_key, head_layout, shard_slice
from graphopt.graph_attrs import attr, set_attr
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, register_pass
from ._edit import propagate_vals
from ._ops import EMBEDDING, GATHER, LINEAR, LOG_SOFTMAX, RESHAPE
from ._weights import param_bytes

aten = torch.ops.aten
_LINEAR_LOGPROB = torch.ops.graphopt.linear_logprob.default
_SPLIT = {aten.split_with_sizes.default, aten.split.Tensor, aten.split.sizes}
_ATTN_STOP = {aten.matmul.default, aten.bmm.default, aten.linear.default,
              aten.scaled_dot_product_attention.default, torch.ops.graphopt.prefix_attention.default}


def _weight_node(lin: Node) -> Node | None:
    w = lin.args[1] if len(lin.args) > 1 else lin.kwargs.get("weight")
    return w if isinstance(w, Node) and w.op == "get_attr" else None


def _bias_node(lin: Node) -> Node | None:
    b = lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias")
    return b if isinstance(b, Node) and b.op == "get_attr" else None


class _Sharder:
    def __init__(self, gm: GraphModule, args, ws: int, rank: int, vocab_parallel: bool, embedding_parallel: bool):
        self.gm, self.args, self.ws, self.rank = gm, args, ws, rank
        self.vp, self.ep = vocab_parallel, embedding_parallel
        self.done: dict[str, tuple] = {}  # attr target -> the slicing applied to it
        self.n_new = 0

    def slice_attr(self, user: Node, wnode: Node, pieces: list[tuple[int, int, int] | None], full_sizes=None,
                   keys: list[str] | None = None) -> None:
        """Replace the tensor behind get_attr `wnode` (as used by `user`) by its shard; `pieces` are
        (dim, start, stop) per part of a merged weight (concatenated along dim 0), `keys` the
        checkpoint keys of the parts. gm.meta["tp_shards"][target] records [(key, piece), ...] so
        that graphopt.distributed.load_shard can fill the attribute from a checkpoint."""
        keys = keys or [checkpoint_key(wnode.target)]
        full = attr(self.gm, wnode.target)
        if full_sizes is None:
            full_sizes = [full.shape[0]]
        parts, off = [], 0
        for size, piece in zip(full_sizes, pieces):
            part = full.narrow(0, off, size) if len(full_sizes) > 1 else full
            off += size
            parts.append(part if piece is None else part.narrow(piece[0], piece[1], piece[2] - piece[1]))
        new = (torch.cat(parts, 0) if len(parts) > 1 else parts[0]).clone()  # clone: drop the full storage
        spec = tuple(pieces)
        target = wnode.target
        shared = [u for u in wnode.users if u is not user]
        if target in self.done and self.done[target] != spec or shared:
            # the same tensor is used elsewhere with another layout (tied embeddings): new attribute
            target = f"tp_shard_{self.n_new}_" + wnode.target.replace(".", "_")
            self.n_new += 1
            self.gm.register_buffer(target, new) if not isinstance(full, torch.nn.Parameter) else \
                self.gm.register_parameter(target, torch.nn.Parameter(new, requires_grad=False))
            with self.gm.graph.inserting_before(user):
                nw = self.gm.graph.get_attr(target)
            user.replace_input_with(wnode, nw)
        else:
            set_attr(self.gm, target, new)
        self.done[target] = spec
        self.gm.meta.setdefault("tp_shards", {})[target] = list(zip(keys, pieces))


def _walk_users(start: Node, visit) -> None:
    """Depth-first over the call_function nodes downstream of start, each once: visit(parent, node)
    returns True to go on below node."""
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        for u in list(n.users):
            if u in seen or u.op != "call_function":
                continue
            seen.add(u)
            if visit(n, u):
                todo.append(u)


def _fix_heads(start: Node, old: int, new: int, old_rep: int, new_rep: int, head_dim: int) -> int:
    """Walk forward from a q/k/v projection to the attention matmul; in view/reshape shapes replace
    the head count `old` by `new` (the entry followed by head_dim, head_dim/2 or -1) and set
    repeat_interleave's repeats to new_rep. Returns how many nodes changed."""
    changed = 0

    def visit(n: Node, u: Node) -> bool:
        nonlocal changed
        if u.target in _ATTN_STOP:
            return False
        if u.target in RESHAPE and u.args[0] is n:
            shape = list(u.args[1])
            idx = [i for i in range(len(shape) - 1) if shape[i] == old and shape[i + 1] in (head_dim, head_dim // 2, -1)]
            if idx and old != new:
                shape[idx[-1]] = new
                u.args = (u.args[0], shape, *u.args[2:])
                changed += 1
        if u.target == aten.repeat_interleave.self_int and u.args[1] == old_rep and old_rep != new_rep:
            u.args = (u.args[0], new_rep, *u.args[2:])
            changed += 1
        return True
    _walk_users(start, visit)
    return changed


def _redirect_after(graph, node: Node, new: Node) -> None:
    node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new and u.target is not ALL_REDUCE)


def _vocab_parallel_logprob(gm: GraphModule, head: Node, rank: int, v_local: int, vocab: int, group: str) -> int:
    """Below the vocab-sharded LM head: reshape(-1, V) -> V_local, and log_softmax + gather(target)
    -> distributed log-sum-exp. Returns how many log-prob sites were rewritten."""
    g, done = gm.graph, 0

    def visit(n: Node, u: Node) -> bool:
        nonlocal done
        if u.target in RESHAPE:
            u.args = (u.args[0], [v_local if s == vocab else s for s in u.args[1]], *u.args[2:])
        if u.target in LOG_SOFTMAX:
            gathers = [x for x in u.users if x.target in GATHER]
            if len(gathers) != len(u.users) or not gathers:
                raise PassError(f"vocab_parallel: log_softmax {u.name} is used by something other than gather "
                                f"({[x.name for x in u.users]}); full log-probs would need all-gathered logits")
            for ga in gathers:
                _replace_logprob(g, u.args[0], ga, ga.args[2], rank, v_local, group)
                done += 1
            return False
        if u.target == torch.ops.graphopt.logprob.default:
            with g.inserting_before(u):
                tgt = g.call_function(aten.unsqueeze.default, (u.args[1], -1))
            _replace_logprob(g, u.args[0], u, tgt, rank, v_local, group, squeeze=True)
            done += 1
            return False
        return True
    _walk_users(head, visit)
    return done


def _replace_logprob(g, x: Node, site: Node, tgt: Node, rank: int, v_local: int, group: str, squeeze=False) -> Node:
    """x [N, V_local] float32 logits shard, tgt [N, 1] global target ids -> log p(target) [N, 1]
    ([N] when squeeze), replacing `site`."""
    with g.inserting_before(site):
        c = lambda f, *a: g.call_function(f, a)
        m = c(WAIT, c(ALL_REDUCE, c(aten.amax.default, x, [-1], True), "max", group))  # [N, 1] global max
        s = c(aten.sum.dim_IntList, c(aten.exp.default, c(aten.sub.Tensor, x, m)), [-1], True)
        s = c(WAIT, c(ALL_REDUCE, s, "sum", group))  # [N, 1] global sum of exp
        lse = c(aten.add.Tensor, m, c(aten.log.default, s))
        local = c(aten.sub.Tensor, tgt, rank * v_local)  # target id within this rank's vocab slice
        valid = c(aten.logical_and.default, c(aten.ge.Scalar, local, 0), c(aten.lt.Scalar, local, v_local))
        picked = c(aten.gather.default, x, -1, c(aten.clamp.default, local, 0, v_local - 1))
        picked = c(aten.where.ScalarOther, valid, picked, 0.0)
        picked = c(WAIT, c(ALL_REDUCE, picked, "sum", group))  # [N, 1] target logit (one rank had it)
        out = c(aten.sub.Tensor, picked, lse)
        if squeeze:
            out = c(aten.squeeze.dim, out, -1)
    site.replace_all_uses_with(out)
    return out


@register_pass("tensor_parallel", "shard the graph over ctx.world_size ranks (Megatron layout: column-parallel "
               "wq/wk/wv/w1/w3, row-parallel wo/w2 + all-reduce; head counts divided; optional vocab-parallel head)",
               options={"vocab_parallel": PassOption(bool, False, "cut the LM head along the vocab and compute the "
                                                     "log-prob with all-reduces of max / sum-exp / target logit"),
                        "embedding_parallel": PassOption(bool, False, "cut tok_embeddings along dim (Meta's shard "
                                                         "layout) and all-gather after the lookup")},
               shards="tensor")
def tensor_parallel(gm: GraphModule, ctx: PassContext) -> PassResult:
    ws, rank = ctx.world_size, ctx.rank
    if ws == 1:
        return PassResult(gm, False, {"matches": 0})
    args = ctx.model_args
    if args is None:
        raise PassError("tensor_parallel needs ctx.model_args (the ModelArgs of the captured model)")
    import torch.distributed as dist
    if not dist.is_initialized():
        raise PassError("tensor_parallel needs torch.distributed initialised in this process "
                        "(run under graphopt.distributed.launch or torchrun)")
    if (dist.get_world_size(), dist.get_rank()) != (ws, rank):
        raise PassError(f"ctx says rank {rank} of {ws} but the process group is rank {dist.get_rank()} of "
                        f"{dist.get_world_size()}")
    group = dist.group.WORLD.group_name
    vp, ep = ctx.options.get("vocab_parallel", False), ctx.options.get("embedding_parallel", False)
    lay = head_layout(args, ws, rank)
    D, H, Hkv = args.head_dim, args.n_heads, args.n_kv_heads
    q_local, kv_local = lay.q_heads[1] - lay.q_heads[0], lay.kv_heads[1] - lay.kv_heads[0]
    old_rep = H // Hkv
    sl = lambda key: shard_slice(key, args, ws, rank, vp, ep)
    bytes_before = param_bytes(gm)
    sh = _Sharder(gm, args, ws, rank, vp, ep)
    g = gm.graph
    stats = {"column": 0, "row": 0, "merged": 0, "views": 0, "all_reduce": 0, "vocab_logprob": 0, "embedding": 0}

    for lin in list(g.nodes):
        if lin.op != "call_function":
            continue
        if lin.target in EMBEDDING and ep:
            w = lin.args[0]
            if isinstance(w, Node) and w.op == "get_attr" and checkpoint_key(w.target) == "tok_embeddings.weight":
                sh.slice_attr(lin, w, [sl("tok_embeddings.weight")])
                gathered = insert_all_gather_last_dim(g, lin, ws, group)
                lin.replace_all_uses_with(gathered, delete_user_cb=lambda u: u.target is not
                                          torch.ops._c10d_functional.all_gather_into_tensor.default)
                stats["embedding"] += 1
            continue
        if lin.target == _LINEAR_LOGPROB and vp:  # fused_logprob(with_linear=True) ran first
            hidden, w, tgt = lin.args[:3]
            if isinstance(w, Node) and w.op == "get_attr" and checkpoint_key(w.target) in ("output.weight",
                                                                                           "tok_embeddings.weight"):
                piece = shard_slice("output.weight", args, ws, rank, True)
                sh.slice_attr(lin, w, [piece], keys=["output.weight"])
                w = lin.args[1]  # a new get_attr when the weight was shared (tied embeddings)
                with g.inserting_before(lin):
                    logits = g.call_function(aten.linear.default, (hidden, w))  # [N, V_local]
                    logits = g.call_function(aten.to.dtype, (logits, torch.float32))
                    t2 = g.call_function(aten.unsqueeze.default, (tgt, -1))
                _replace_logprob(g, logits, lin, t2, rank, piece[2] - piece[1], group, squeeze=True)
                stats["vocab_logprob"] += 1
            continue
        if lin.target not in LINEAR:
            continue
        w = _weight_node(lin)
        if w is None:
            continue
        key = checkpoint_key(w.target)
        b = _bias_node(lin)
        users = list(lin.users)
        if key is not None and key.endswith(".weight"):
            name = key[: -len(".weight")]
            piece = sl(key)
            if name == "output":
                if piece is not None:
                    sh.slice_attr(lin, w, [piece], keys=["output.weight"])
                    n = _vocab_parallel_logprob(gm, lin, rank, piece[2] - piece[1], args.vocab_size, group)
                    if n == 0:
                        raise PassError("vocab_parallel: no log_softmax + gather (or graphopt.logprob) below the LM "
                                        "head; run tensor_parallel before fused_logprob(with_linear=True)")
                    stats["vocab_logprob"] += n
                continue
            if piece is None:
                continue
            sh.slice_attr(lin, w, [piece])
            if piece[0] == 0:  # column-parallel
                if b is not None:
                    sh.slice_attr(lin, b, [piece])
                stats["column"] += 1
                if name.endswith("attention.wq"):
                    stats["views"] += _fix_heads(lin, H, q_local, old_rep, lay.n_rep, D)
                elif name.endswith("attention.wk") or name.endswith("attention.wv"):
                    stats["views"] += _fix_heads(lin, Hkv, kv_local, old_rep, lay.n_rep, D)
            else:  # row-parallel: partial sums -> all-reduce
                assert b is None, f"row-parallel {key} with a bias would add it world_size times"
                wait = insert_all_reduce(g, lin, "sum", group)
                _redirect_after(g, lin, wait)
                stats["row"] += 1
                stats["all_reduce"] += 1
            continue
        # a merged projection (merge_qkv / merge_gate_up): linear -> split(sizes, -1) -> getitems
        if len(users) == 1 and users[0].target in _SPLIT:
            split = users[0]
            sizes = list(split.args[1]) if isinstance(split.args[1], (list, tuple)) else None
            dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
            full_out = attr(gm, w.target).shape[0]
            if sizes is None or dim not in (-1, lin.meta.get("val", torch.empty(0, 0, 0)).dim() - 1):
                continue
            qkv = [H * D, Hkv * D, Hkv * D]
            gu = [args.hidden_dim, args.hidden_dim]
            module = w.target.rsplit(".", 1)[0]
            module = module[len("model."):] if module.startswith("model.") else module
            if sizes == qkv and sum(sizes) == full_out:
                names = ["wq", "wk", "wv"]
                pieces = [(0, lay.q_heads[0] * D, lay.q_heads[1] * D), (0, lay.kv_heads[0] * D, lay.kv_heads[1] * D),
                          (0, lay.kv_heads[0] * D, lay.kv_heads[1] * D)]
                heads = [(H, q_local), (Hkv, kv_local), (Hkv, kv_local)]
            elif sizes == gu and sum(sizes) == full_out:
                k = args.hidden_dim // ws
                pieces = [(0, rank * k, rank * k + k)] * 2
                heads = None
                names = ["w1", "w3"]
            else:
                continue
            sh.slice_attr(lin, w, pieces, full_sizes=sizes, keys=[f"{module}.{n}.weight" for n in names])
            if b is not None:
                sh.slice_attr(lin, b, pieces, full_sizes=sizes, keys=[f"{module}.{n}.bias" for n in names])
            split.args = (lin, [p[2] - p[1] for p in pieces], *split.args[2:])
            if heads:
                for gi in split.users:
                    if gi.target is operator.getitem:
                        old, new = heads[gi.args[1]]
                        stats["views"] += _fix_heads(gi, old, new, old_rep, lay.n_rep, D)
            stats["merged"] += 1
            stats["column"] += 1
    g.eliminate_dead_code()
    gm.recompile()
    try:
        propagate_vals(gm)
    except Exception:  # fake values are advisory; a graph without them still runs
        for n in g.nodes:
            n.meta.pop("val", None)
    if vp and not stats["vocab_logprob"]:
        raise PassError("vocab_parallel: found no LM head (linear on output.weight, or graphopt.linear_logprob) "
                        "feeding a log-prob")
    matches = stats["column"] + stats["row"] + stats["vocab_logprob"] + stats["embedding"]
    if stats["column"] and not stats["row"]:
        raise PassError("tensor_parallel: found column-parallel projections but no wo/w2 to all-reduce after")
    stats.update(matches=matches, param_bytes_before=bytes_before, param_bytes_after=param_bytes(gm))
    return PassResult(gm, matches > 0, stats)
