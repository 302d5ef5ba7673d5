"""The decode engine: greedy completions through the optimised generation graph (graphopt.generation.step)
over a static KV cache, with continuous batching.

    engine = DecodeEngine(model, pipeline="exact-cpu")                # slots: automatic (below)
    completions = engine.generate([GenerationRequest(prompt_ids, max_new_tokens=64, stop_ids=(eos,))])
    engine.stats  # prefill / decode tokens and seconds of that call (see `generate`)

`slots` rows of a static cache [2, L, slots, Hkv, width, D] decode together, one token per row per
step, each row at its own position (the mask hides what a row has not written). Prompts are
prefilled into free slots, several at once (right-padded rows of at most `prefill_chunk` tokens in
all; a longer prompt alone, in chunks), the first new token from each one's last position (see
graphopt.generation.prefill); a row that finishes (finish_of: a stop id, the stop rule, max_new_tokens) frees
its slot for the next prompt at once, so a suite is bound by its total tokens, not its longest
answer. Prompts sharing a prefix prefill it once (graphopt.generation.shared_prompts).

slots=None (the default) takes as many rows as a KV budget holds at the call's cache width, up to
AUTO_MAX_SLOTS (auto_slots): a CPU decode step streams every weight once however many rows it has, so
more rows are nearly free tokens until the matmuls are bound by arithmetic (~32 rows on a 2-core host),
and the budget (a quarter of the weights' bytes, at least 1 GiB) keeps a large model's long answers
from holding more cache than weights.

Shapes: a step runs the first `rows` slots (up to the highest busy one) over the first `width`
cache positions (the furthest row's, rounded up to `width_step`): views, no copy. With
static_shapes=True every step has the same shapes (all slots, the whole cache): what a CUDA graph
replays (graphopt.generation.fixed_step; cuda_graph=None: on CUDA devices).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphopt.generation.fixed_step import FixedShapeStep
from graphopt.generation.prefill import MIN_KEYS, fill_chunked, keys_at_least, prefill_rows
from graphopt.generation.requests import Completion, GenerationRequest, finish_of
from graphopt.generation.shared_prompts import DEFAULT_MIN_SHARED, admission_order
from graphopt.generation.static_cache import StaticCache
from graphopt.generation.step import GenerationGraph, build_generation_graph
from graphopt.scoring.prefix_cache import PathCache
from graphopt.scoring.prefix_tree import DEFAULT_BUDGET

LogitsHook = Callable[[int, int, Tensor], None]  # (request index, new-token index, logits [V] float32)


@dataclass
class _Row:
    """A busy slot: request `index`, `pos` tokens in its cache (the position `last` is fed at)."""
    index: int
    pos: int
    last: int
    new_ids: list[int] = field(default_factory=list)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


AUTO_MAX_SLOTS = 32  # rows of an automatic static cache (module docstring)
AUTO_KV_BUDGET = 1 << 30  # bytes an automatic static cache may take at least


def auto_slots(bytes_per_token: int, width: int, budget: int, most: int = AUTO_MAX_SLOTS) -> int:
    """Rows of `width` cached tokens that `budget` bytes hold, between 1 and `most`."""
    return max(1, min(most, budget // max(1, bytes_per_token * width)))


class DecodeEngine:
    """See the module docstring. model: a graphopt Transformer (its args give the cache layout and the
    RoPE length); pipeline / compiler / optimize_kwargs: graphopt.optimize's (pipeline None: the
    eager model); graph: a GenerationGraph built already (then model only gives max_seq_len)."""

    def __init__(self, model: nn.Module, pipeline="exact", compiler: str = "none", *, slots: int | None = None,
                 device=None, share_prefix: bool = True, prefix_budget: int = DEFAULT_BUDGET,
                 min_shared_tokens: int = DEFAULT_MIN_SHARED, prefill_chunk: int = 1024, width_step: int = 64,
                 static_shapes: bool = False, cuda_graph: bool | None = None, graph: GenerationGraph | None = None,
                 **optimize_kwargs):
        if (slots is not None and slots < 1) or prefill_chunk < 1 or width_step < 1:
            raise ValueError(f"slots, prefill_chunk and width_step must be >= 1; got {slots}, {prefill_chunk}, "
                             f"{width_step}")
        self.max_seq_len = model.args.max_seq_len
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.kv_budget = max(AUTO_KV_BUDGET, sum(p.numel() * p.element_size() for p in model.parameters()) // 4)
        self.graph = graph or build_generation_graph(model, pipeline, compiler, self.device, **optimize_kwargs)
        self.slots, self.share_prefix, self.prefix_budget = slots, share_prefix, prefix_budget
        self.min_shared_tokens, self.prefill_chunk, self.width_step = min_shared_tokens, prefill_chunk, width_step
        self.static_shapes, self.cuda_graph = static_shapes, cuda_graph
        self.cache: StaticCache | None = None
        self._fixed: FixedShapeStep | None = None
        self.stats: dict = {}
        self._hidden = self.graph.layout.empty(1, MIN_KEYS, self.device)  # read under a prompt with < MIN_KEYS cached

    @property
    def layout(self):
        return self.graph.layout

    # ------------------------------------------------------------------------------------ generate

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = False,
                 on_logits: LogitsHook | None = None) -> list[Completion]:
        """Completions of `requests`, in their order. on_logits(i, k, logits) sees the logits [V] each new
        token k of request i was taken from (the graph must be built with_logits=True).
        stats: requests, generated_tokens, prefill_tokens / prefill_seconds / prefill_tok_s (prompt
        and shared-prefix forwards), shared_prefix_tokens (prompt tokens copied from a shared prefix
        instead of computed), decode_steps, decode_tokens / decode_seconds / decode_tok_s (tokens after
        each prompt's first), mean_batch (rows per step), slots, cache_width, cache_bytes,
        first_token_seconds (from the call to the first completion's first token), seconds."""
        requests = list(requests)
        self._check(requests)
        if on_logits is not None and not self.graph.with_logits:
            raise ValueError("on_logits needs a generation graph built with with_logits=True")
        t_start = time.perf_counter()
        self.stats = dict(requests=len(requests), generated_tokens=0, prefill_tokens=0, prefill_seconds=0.0,
                          shared_prefix_tokens=0, decode_steps=0, decode_tokens=0, decode_seconds=0.0,
                          first_token_seconds=None)
        out: list[Completion | None] = [None] * len(requests)
        work = [r for r in requests if r.max_new_tokens > 0]
        width = max((len(r.prompt_ids) + r.max_new_tokens - 1 for r in work), default=1)
        slots = self.slots or auto_slots(self.layout.bytes_per_token, _round_up(max(width, MIN_KEYS), self.width_step),
                                         self.kv_budget)
        self._allocate(min(slots, max(len(work), 1)) if not self.static_shapes else slots, width)
        order, path = self._plan(requests)
        free, rows = list(range(self.cache.slots)), {}
        heapq.heapify(free)
        with torch.inference_mode(), tqdm(total=len(requests), unit="prompt", desc="generating",
                                          disable=not progress, leave=False) as bar:
            at = 0
            while at < len(order) or rows:
                at = self._admit_next(order, at, requests, free, rows, out, path, on_logits, t_start, bar)
                if rows:
                    self._step(rows, on_logits)
                    for b in [b for b, row in rows.items() if self._finish(row, requests[row.index], out, t_start)]:
                        del rows[b]
                        heapq.heappush(free, b)
                        bar.update(1)
                    if self.stats["decode_seconds"] > 0:
                        bar.set_postfix_str(f"decode {self.stats['decode_tokens'] / self.stats['decode_seconds']:.1f} "
                                            f"tok/s", refresh=False)
        self._summarise(time.perf_counter() - t_start)
        return out

    def _check(self, requests: list[GenerationRequest]) -> None:
        for i, r in enumerate(requests):
            if r.max_new_tokens and len(r.prompt_ids) + r.max_new_tokens - 1 > self.max_seq_len:
                raise ValueError(f"request {i}: {len(r.prompt_ids)} prompt tokens + {r.max_new_tokens} new tokens "
                                 f"need {len(r.prompt_ids) + r.max_new_tokens - 1} positions, more than the model's "
                                 f"max_seq_len {self.max_seq_len}; left-truncate the prompt or ask for fewer tokens")

    def _allocate(self, slots: int, width: int) -> None:
        width = max(_round_up(width, self.width_step), MIN_KEYS)
        if self.cache is None or not self.cache.fits(slots, width, self.layout, self.device):
            self.cache = self._fixed = None  # (the old one freed before the new one exists)
            self.cache = StaticCache(self.layout, slots, width, self.device)

    def _plan(self, requests: list[GenerationRequest]) -> tuple[list[tuple], PathCache | None]:
        if not self.share_prefix:
            return [("prompt", i, 0) for i in range(len(requests))], None
        order, stats = admission_order(requests, self.layout.bytes_per_token, self.prefix_budget,
                                       self.min_shared_tokens)
        return order, PathCache(self.layout, stats["capacity"], self.device) if stats["capacity"] else None

    # ------------------------------------------------------------------------------------ forwards

    def _timed_prefill(self, fn):
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats["prefill_seconds"] += time.perf_counter() - t0
        return out

    def _admit_next(self, order, at, requests, free, rows, out, path, on_logits, t_start, bar) -> int:
        """Work through `order` from `at` while slots are free: compute shared-prefix nodes, answer
        max_new_tokens 0 at once, prefill groups of prompts (consecutive, under the same shared prefix,
        as many as free slots, at most prefill_chunk tokens padded) into slots. -> the next index."""
        chunk = self.prefill_chunk
        while at < len(order):
            entry = order[at]
            if entry[0] == "node":
                node = entry[1]
                self._timed_prefill(lambda: fill_chunked(self.graph.run, node.tokens, node.start,
                                                         lambda lo: path.read(lo, 1), path.write, chunk,
                                                         self._hidden, self.device))
                self.stats["prefill_tokens"] += len(node.tokens)
                at += 1
                continue
            i, shared = entry[1], entry[2]
            if requests[i].max_new_tokens == 0:
                out[i] = Completion([], "length", 0, {"prompt_tokens": len(requests[i].prompt_ids)})
                bar.update(1)
                at += 1
                continue
            if not free:
                break
            group, longest = [], 0
            while at < len(order) and len(group) < len(free) and order[at][0] == "prompt" and order[at][2] == shared:
                r = requests[order[at][1]]
                tail = len(r.prompt_ids) - shared
                if r.max_new_tokens == 0 or (group and (tail > chunk or max(longest, tail) * (len(group) + 1) > chunk)):
                    break
                group.append(order[at][1])
                longest, at = max(longest, tail), at + 1
                if tail > chunk:  # a long prompt goes alone, in chunks
                    break
            slots = [heapq.heappop(free) for _ in group]
            for b, row in zip(slots, self._admit(group, slots, shared, requests, path, on_logits, t_start)):
                if self._finish(row, requests[row.index], out, t_start):
                    heapq.heappush(free, b)
                    bar.update(1)
                else:
                    rows[b] = row
        return at

    def _admit(self, group: list[int], slots: list[int], shared: int, requests, path: PathCache | None,
               on_logits: LogitsHook | None, t_start: float) -> list[_Row]:
        """Prefill requests `group` into `slots` (their first `shared` positions copied from the path):
        their rows, each holding its first new token."""
        tails = [requests[i].prompt_ids[shared:] for i in group]
        cache, run, dev = self.cache, self.graph.run, self.device

        def prefill():
            for b in slots:
                if shared:
                    cache.kv[:, :, b:b + 1, :, :shared] = path.kv[:, :, :, :, :shared]
            if len(tails[0]) > self.prefill_chunk:
                b = slots[0]
                out = fill_chunked(run, tails[0], shared, lambda lo: cache.slot(b, lo),
                                   lambda lo, kv: cache.write(b, lo, kv), self.prefill_chunk, self._hidden, dev)
            else:
                prefix = keys_at_least(path.read(shared, len(group)) if shared else None, self._hidden, len(group))
                out = prefill_rows(run, tails, shared, prefix, dev)
                for r, b in enumerate(slots):
                    cache.write(b, shared, out[1][:, :, r:r + 1, :, :len(tails[r])])
            return out[0].tolist(), (out[2] if self.graph.with_logits else None)
        firsts, logits = self._timed_prefill(prefill)
        self.stats["prefill_tokens"] += sum(len(t) for t in tails)
        self.stats["shared_prefix_tokens"] += shared * len(group)
        if self.stats["first_token_seconds"] is None:
            self.stats["first_token_seconds"] = time.perf_counter() - t_start
        if on_logits is not None:
            for r, i in enumerate(group):
                on_logits(i, 0, logits[r])
        return [_Row(i, len(requests[i].prompt_ids), first, [first]) for i, first in zip(group, firsts)]

    def _step(self, rows: dict[int, _Row], on_logits: LogitsHook | None) -> None:
        """One decode step: every busy row feeds its last token and gets the next."""
        t0, dev = time.perf_counter(), self.device
        busy = sorted(rows)
        n_rows = self.cache.slots if self.static_shapes else busy[-1] + 1
        reach = max(rows[b].pos for b in busy)  # a row reads positions < its pos
        width = self.cache.width if self.static_shapes else min(_round_up(max(reach, MIN_KEYS), self.width_step),
                                                                self.cache.width)
        busy_t = torch.tensor(busy)
        ids, pos = torch.zeros(n_rows, 1, dtype=torch.long), torch.zeros(n_rows, dtype=torch.long)
        ids[busy_t, 0] = torch.tensor([rows[b].last for b in busy])
        pos[busy_t] = torch.tensor([rows[b].pos for b in busy])
        mask = torch.cat([torch.arange(width)[None] < pos[:, None], torch.ones(n_rows, 1, dtype=torch.bool)], 1)
        if self.static_shapes:  # the step writes every row's K/V itself
            if self._fixed is None:
                self._fixed = FixedShapeStep(self.graph.run, self.cache, self.graph.with_logits, self.cuda_graph)
            out = self._fixed.step(ids, pos, mask[:, None])
            logits = out[1] if self.graph.with_logits else None
        else:
            busy_d, pos_d = busy_t.to(dev), pos.to(dev)
            out = self.graph.run(ids.to(dev), pos_d[:, None], mask[:, None].to(dev),
                                 torch.arange(n_rows, device=dev), self.cache.view(n_rows, width))
            self.cache.write_step(busy_d, pos_d[busy_d], out[1])
            logits = out[2] if self.graph.with_logits else None
        next_ids = out[0].tolist()
        for b in busy:
            row = rows[b]
            row.pos, row.last = row.pos + 1, next_ids[b]
            row.new_ids.append(row.last)
            if on_logits is not None:
                on_logits(row.index, len(row.new_ids) - 1, logits[b])
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(busy)
        self.stats["decode_seconds"] += time.perf_counter() - t0

    def _finish(self, row: _Row, request: GenerationRequest, out: list, t_start: float) -> bool:
        done = finish_of(row.new_ids, request)
        if done is None:
            return False
        kept, reason = done
        out[row.index] = Completion(kept, reason, len(row.new_ids),
                                    {"prompt_tokens": len(request.prompt_ids),
                                     "done_seconds": time.perf_counter() - t_start})
        self.stats["generated_tokens"] += len(row.new_ids)
        return True

    def _summarise(self, seconds: float) -> None:
        s = self.stats
        s.update(seconds=seconds, slots=self.cache.slots, cache_width=self.cache.width, cache_bytes=self.cache.nbytes,
                 prefill_tok_s=s["prefill_tokens"] / s["prefill_seconds"] if s["prefill_seconds"] else 0.0,
                 decode_tok_s=s["decode_tokens"] / s["decode_seconds"] if s["decode_seconds"] else 0.0,
                 mean_batch=s["decode_tokens"] / s["decode_steps"] if s["decode_steps"] else 0.0)
