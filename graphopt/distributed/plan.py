"""Which slice of each weight a tensor-parallel rank holds (shared by the tensor_parallel pass and
the shard loader, so that both cut the same way).

Column-parallel (output features split): wq, wk, wv (+bias), w1, w3; row-parallel (input features
split, all-reduce after): wo, w2. Heads stay whole: rank r keeps query heads
[r*Hq/ws, (r+1)*Hq/ws). GQA with n_kv_heads >= ws splits kv heads the same way; with
n_kv_heads < ws each rank keeps the one kv head its query heads read (kv heads replicated
ws/n_kv_heads times). output is split along the vocab when vocab_parallel, tok_embeddings along
dim when embedding_parallel (Meta's ParallelEmbedding layout); both are replicated otherwise.
Tied embeddings (one table, no output.weight in the checkpoint): the table is cut as `output.weight`
is, along the vocab when vocab_parallel, else replicated, and never along dim (tensor_parallel asks
with embedding_parallel=False); the lookup reads that same cut.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from graphopt.model.args import ModelArgs

_KEY = re.compile(r"(?:^|\.)((?:layers\.\d+\.(?:attention|feed_forward)\.\w+|output|tok_embeddings)\.(?:weight|bias))$")


def checkpoint_key(target: str) -> str | None:
    """'model.layers.0.attention.wq.weight' -> 'layers.0.attention.wq.weight' (None: not a TP weight)."""
    m = _KEY.search(target)
    return m.group(1) if m else None


@dataclass(frozen=True)
class HeadLayout:
    q_heads: tuple[int, int]  # [start, stop) of this rank's query heads
    kv_heads: tuple[int, int]  # [start, stop) of the kv heads it keeps
    n_rep: int  # query heads per kv head on this rank


def head_layout(args: ModelArgs, world_size: int, rank: int) -> HeadLayout:
    H, Hkv = args.n_heads, args.n_kv_heads
    if H % world_size:
        raise ValueError(f"tensor_parallel: n_heads {H} is not divisible by world_size {world_size}")
    ql = H // world_size
    q0 = rank * ql
    if Hkv >= world_size:
        if Hkv % world_size:
            raise ValueError(f"tensor_parallel: n_kv_heads {Hkv} is not divisible by world_size {world_size}")
        kl = Hkv // world_size
        kv = (rank * kl, rank * kl + kl)
    else:
        n_rep = H // Hkv
        if n_rep % ql:
            raise ValueError(f"tensor_parallel: the {ql} query heads of a rank straddle kv heads "
                             f"(n_heads {H}, n_kv_heads {Hkv}, world_size {world_size}); need world_size % n_kv_heads == 0")
        kv = (q0 // n_rep, q0 // n_rep + 1)
        kl = 1
    return HeadLayout((q0, q0 + ql), kv, ql // kl)


def _chunk(n: int, world_size: int, rank: int, what: str) -> tuple[int, int]:
    if n % world_size:
        raise ValueError(f"tensor_parallel: {what} {n} is not divisible by world_size {world_size}")
    k = n // world_size
    return rank * k, rank * k + k


def shard_slice(key: str, args: ModelArgs, world_size: int, rank: int, vocab_parallel: bool = False,
                embedding_parallel: bool = False) -> tuple[int, int, int] | None:
    """(dim, start, stop) of the full tensor `key` that rank holds; None = replicated."""
    if world_size == 1:
        return None
    D = args.head_dim
    lay = head_layout(args, world_size, rank)
    name = key.rsplit(".", 1)[0]
    if name.endswith("attention.wq"):
        return 0, lay.q_heads[0] * D, lay.q_heads[1] * D
    if name.endswith("attention.wk") or name.endswith("attention.wv"):
        return 0, lay.kv_heads[0] * D, lay.kv_heads[1] * D
    if name.endswith("attention.wo"):
        return 1, lay.q_heads[0] * D, lay.q_heads[1] * D
    if name.endswith("feed_forward.w1") or name.endswith("feed_forward.w3"):
        return (0, *_chunk(args.hidden_dim, world_size, rank, "hidden_dim"))
    if name.endswith("feed_forward.w2"):
        return (1, *_chunk(args.hidden_dim, world_size, rank, "hidden_dim"))
    if name == "output" and vocab_parallel:
        return (0, *_chunk(args.vocab_size, world_size, rank, "vocab_size"))
    if name == "tok_embeddings" and embedding_parallel:
        return (1, *_chunk(args.dim, world_size, rank, "dim"))
    return None


# one weight of each kind whose slice shard_slice checks: heads, FFN hidden size, vocab, dim
_TP_KEYS = ("layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight", "output.weight",
            "tok_embeddings.weight")


def tensor_parallel_problem(args: ModelArgs, world_size: int, vocab_parallel: bool = False,
                            embedding_parallel: bool = False) -> str | None:
    """Why tensor_parallel cannot shard a model of `args` over world_size ranks (None: it can), from
    this plan's checks (the ones the pass and the shard loader make), called for the first rank's slices."""
    if world_size == 1:
        return None
    # as passes/tensor_parallel.py's plan(): a tied table follows the head, never cut along dim
    embedding_parallel = embedding_parallel and not args.tie_embeddings
    try:
        for key in _TP_KEYS:
            shard_slice(key, args, world_size, 0, vocab_parallel, embedding_parallel)
    except ValueError as e:
        return str(e)
    return None
