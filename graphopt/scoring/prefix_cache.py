"""Scoring rows under a prefix whose keys and values are cached: the module that fills a cache, the
cache of one root-to-leaf path of the prefix tree, and packed rows that read it.

A cache is one tensor [2, n_layers, B, Hkv, P, head_dim] (graphopt.model.llama.Transformer.forward):
the K (after RoPE) and V of P tokens, slot j holding position j. Rows that read it attend every slot
first (mask [B, T, P + T]); their own tokens sit at positions P.. (the packed layout's segments,
shifted by P). A prefix shared by many rows is held once ([.., 1, ..]) and expanded to B rows as a
view; the graph's concatenation with each row's own keys is the only copy.

Sizes the capture fixes: a graph cannot be captured with P = 0 (a size of 0 specialises), and
export derives the mask's key length P + T with a lower bound from the example's sizes. The example
inputs here (`cached_example_inputs`: B = 2, T = 2, P = 1) give the widest range a capture allows:
any B >= 1, T >= 1, P >= 1 with P + T >= 3. So every call reads MIN_SLOTS = 2 cache slots at least;
slots beyond the real prefix (`hidden_slots`, or a path cache read past its end) are masked out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.fx import GraphModule

from graphopt.scoring.batch import Request, ScoreModule
from graphopt.scoring.pack_layout import PackedScoreBatch, assemble, group_rows, shared_prefix_segments
from graphopt.scoring.row_packing import pack_rows


class PrefillModule(nn.Module):
    """What a cache-filling graph is captured from: forward(input_ids [B, T], positions [B, T],
    mask [B, T, P + T], cache [2, L, B, Hkv, P, D]) -> the K/V of the row's tokens [2, L, B, Hkv, T, D].
    No LM head; the last layer's queries, attention output and FFN are dead code (the dce pass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, positions: Tensor, mask: Tensor, cache: Tensor) -> Tensor:
        return self.model(input_ids, positions, mask, cache, return_hidden=True)[1]


@dataclass(frozen=True)
class KVLayout:
    """What one cached token holds: per layer a key and a value of n_kv_heads x head_dim."""
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    @classmethod
    def of_args(cls, args) -> "KVLayout":
        return cls(args.n_layers, args.n_kv_heads, args.head_dim)

    @classmethod
    def of_graph(cls, gm: GraphModule) -> "KVLayout":
        """From a captured graph's `cache` input (after the passes: a tensor-parallel rank's or a
        pruned model's kv heads)."""
        node = next((n for n in gm.graph.find_nodes(op="placeholder") if n.target == "cache"), None)
        v = node.meta.get("val") if node is not None else None
        if v is None:
            raise ValueError("this graph has no `cache` input; capture it with cached_example_inputs")
        return cls(int(v.shape[1]), int(v.shape[3]), int(v.shape[5]), v.dtype)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    def empty(self, rows: int, slots: int, device="cpu") -> Tensor:
        return torch.zeros(2, self.n_layers, rows, self.n_kv_heads, slots, self.head_dim, dtype=self.dtype,
                           device=device)


MIN_SLOTS = 2  # cache slots every call of a captured cache-reading graph reads (module docstring)


def hidden_slots(layout: KVLayout, rows: int, device="cpu") -> Tensor:
    """A cache of MIN_SLOTS zero slots [2, L, rows, Hkv, 2, D] for rows without a cached prefix (their
    mask hides every slot)."""
    return layout.empty(1, MIN_SLOTS, device).expand(-1, -1, rows, -1, -1, -1)


class PathCache:
    """The K/V of one root-to-leaf path of the prefix tree: [2, L, 1, Hkv, capacity, D], allocated once.
    A node at positions [start, start + m) writes its K/V there; its subtree reads [0, end). Siblings
    overwrite each other's slots in turn (depth-first), so one path is alive at a time. At least
    MIN_SLOTS slots: a read of fewer positions returns MIN_SLOTS, the ones past `length` for the mask
    to hide (see `slots`)."""

    def __init__(self, layout: KVLayout, capacity: int, device="cpu"):
        self.kv = layout.empty(1, max(capacity, MIN_SLOTS), device)

    @property
    def capacity(self) -> int:
        return self.kv.shape[4]

    def write(self, start: int, kv: Tensor) -> None:
        """kv [2, L, 1, Hkv, m, D] of positions start .. start + m - 1."""
        assert start + kv.shape[4] <= self.capacity, (start, kv.shape, self.capacity)
        self.kv[:, :, :, :, start:start + kv.shape[4]] = kv

    def read(self, length: int, rows: int) -> Tensor:
        """Positions 0 .. length - 1 (and hidden ones up to MIN_SLOTS) for `rows` rows:
        [2, L, rows, Hkv, slots(length), D], a view (no copy)."""
        return self.kv[:, :, :, :, :slots(length)].expand(-1, -1, rows, -1, -1, -1)


def slots(length: int) -> int:
    """Cache slots a call reads for a prefix of `length` positions (MIN_SLOTS at least)."""
    return max(length, MIN_SLOTS)


def slot_mask(queries: Tensor, length: int) -> Tensor:
    """[.., T] bool (the queries that see the prefix) -> [.., T, slots(length)]: slots < length visible."""
    visible = torch.arange(slots(length), device=queries.device) < length  # [S]
    return queries.unsqueeze(-1) & visible


def cached_mask(batch: PackedScoreBatch, length: int) -> Tensor:
    """batch.mask [B, T, T] -> [B, T, slots(length) + T]: real tokens (doc >= 0) see the `length`
    cached positions (none for length 0), no hidden slot; padding queries still see only themselves."""
    return torch.cat([slot_mask(batch.doc_ids >= 0, length), batch.mask], dim=-1)


def rows_under_prefix(requests: list[Request], start: int, max_tokens: int) -> list[PackedScoreBatch]:
    """Today's packed layout (one context then its endings per segment, segments first-fit into rows,
    rows into batches of B * T <= max_tokens) for requests whose tokens begin at position `start`
    (the context_ids here are what follows a cached prefix of `start` tokens). Requests with the same
    (question, context_ids) share a segment. Owners index `requests`."""
    segments = shared_prefix_segments(requests)
    if not segments:
        return []
    for s in segments:
        s.positions = [p + start for p in s.positions]
    rows = pack_rows(segments, max(s.length for s in segments))
    return [assemble(batch) for batch in group_rows(rows, max_tokens)]


def cached_example_inputs(layout: KVLayout, B: int = 2, T: int = 2, P: int = 1, N: int = 2,
                          vocab_size: int = 2, prefill: bool = False) -> tuple:
    """Inputs to capture ScoreModule (N scored entries; doc_ids / seg_ids None) or PrefillModule
    (prefill=True) reading a cache, in the call order the prefix tree uses. The default sizes give
    the capture its widest range (module docstring: B, T, P >= 1, P + T >= 3)."""
    ids = torch.zeros(B, T, dtype=torch.long)
    positions = torch.arange(P, P + T).expand(B, T).contiguous()
    mask = torch.ones(T, P + T, dtype=torch.bool).tril(P).expand(B, T, P + T).contiguous()
    cache = layout.empty(B, P)
    if prefill:
        return ids, positions, mask, cache
    score_idx = torch.arange(N) % (B * T)
    return ids, positions, mask, score_idx, torch.arange(N) % vocab_size, None, None, cache


def cached_score_module(model: nn.Module, return_cache: bool = False) -> ScoreModule:
    """The ScoreModule the prefix tree reads caches with (greedy: lm-eval's is_greedy)."""
    return ScoreModule(model, greedy=True, return_cache=return_cache).eval()
