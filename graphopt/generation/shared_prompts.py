"""Prompts that share a prefix (few-shot examples, a system prompt) prefill it once.

The prefix tree of scoring (graphopt.scoring.prefix_tree.plan_tree) is built over every prompt without
its last token (that token must be fed to produce the first new one, so it is always computed in the
prompt's own prefill). Its cached nodes are computed once each, depth-first, into one path cache (at
most one root-to-leaf path alive, within the memory budget); a prompt is admitted right after the
deepest cached node above it, its K/V copied from the path into the prompt's decode slot (a copy of
P tokens' K/V instead of their forward) and only its remaining tokens prefilled.

`admission_order` gives that sequence: ("node", node) to compute a node into the path, ("prompt", i,
shared) to admit request i with `shared` positions taken from the path. Prompts come in the tree's
depth-first order (so a suite that interleaves two few-shot prefixes still computes each once).
"""
from __future__ import annotations

from typing import Sequence

from graphopt.generation.requests import GenerationRequest
from graphopt.scoring.batch import Request
from graphopt.scoring.prefix_tree import cached_children, plan_tree, row_groups

DEFAULT_MIN_SHARED = 128  # tokens a shared node must save: below that its extra forward is not worth it


def admission_order(requests: Sequence[GenerationRequest], bytes_per_token: int, budget: int,
                    min_shared_tokens: int = DEFAULT_MIN_SHARED) -> tuple[list[tuple], dict]:
    """-> (the sequence described in the module docstring, covering every request once; stats:
    tokens_shared (prompt tokens read from the path instead of computed), tokens_prefill_nodes
    (tokens computed into the path), cached_nodes, capacity (the path's positions))."""
    as_scoring = [Request(i, 0, tuple(r.prompt_ids), (), 0) for i, r in enumerate(requests)]
    plan = plan_tree(as_scoring, bytes_per_token, budget, min_shared_tokens)
    copies: dict[int, list[int]] = {}  # a prompt identical to an earlier one is admitted right after it
    for i, first in enumerate(plan.unique):
        copies.setdefault(first, []).append(i)
    order, shared, stack = [], 0, [plan.root]
    while stack:
        node = stack.pop()
        if node is not plan.root:
            order.append(("node", node))
        for g in row_groups(node):
            for first in plan.groups[g].requests:
                for i in copies[first]:
                    order.append(("prompt", i, node.end))
                    shared += node.end
        stack.extend(reversed(cached_children(node)))
    assert sorted(e[1] for e in order if e[0] == "prompt") == list(range(len(requests)))
    stats = dict(tokens_shared=shared, tokens_prefill_nodes=plan.stats["tokens_prefill"],
                 cached_nodes=plan.stats["cached_nodes"], capacity=plan.capacity)
    return order, stats
