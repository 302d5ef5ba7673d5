"""A prefix tree over the token ids of every request: each shared prefix is computed once.

Requests (context_ids + continuation_ids; the Scorer hands over each distinct request once) are grouped
by context ids. A radix tree is built over every context without its
last token (that token predicts the first continuation token, so it is always computed in a scored
row). Token ids decide sharing: two contexts whose strings share a prefix but whose tokens differ
(a tokenizer merging across the example / question boundary) branch where their ids do.

A node is *cached* when computing its tokens once instead of once per context below it saves at
least `min_shared_tokens` (its own saving plus its cached children's), its subtree holds two
contexts or more, and it ends within the memory budget. Scoring walks the cached nodes depth-first:
a node's tokens are computed once (reading the cache of the path above it) into the path cache,
the contexts below it that no cached child takes are scored as today's packed rows (each context
once, its endings after it: graphopt.scoring.pack_layout) over the tokens after it, every row reading
the path cache, then each cached child in turn overwrites the path beyond this node. So the tree's
two lowest levels are today's layout, and at most one root-to-leaf path of K/V is alive (plus one
batch of rows). Contexts with no cached prefix are scored as today, by the graph without a cache.

Memory budget (bytes; default DEFAULT_BUDGET): the path cache holds at most budget // bytes per token
(KVLayout.bytes_per_token) positions. A prefix longer than that is cached up to the budget; its
remaining tokens are computed inside each row that needs them (today's layout from there on), so a
budget below one token caches nothing and scores exactly as today.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphopt.scoring.batch import Request, all_by_owner, sum_by_owner
from graphopt.scoring.pack_layout import PackedScoreBatch
from graphopt.scoring.prefix_cache import KVLayout, PathCache, cached_mask, rows_under_prefix, slot_mask

DEFAULT_BUDGET = 1 << 30  # bytes of K/V on one root-to-leaf path
DEFAULT_MIN_SHARED = 512  # tokens a cached node must save: below that, an extra forward and smaller
# batches of rows cost more than they save (zero-shot contexts sharing a few words stay in today's layout)


@dataclass
class Node:
    """A run of tokens at positions start .. start + len(tokens) - 1 shared by every context below."""
    tokens: list[int]
    start: int
    children: dict[int, "Node"] = field(default_factory=dict)  # by first token
    groups: list[int] = field(default_factory=list)  # contexts whose tokens (but the last) end here
    n_groups: int = 0  # contexts in the subtree
    cached: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass
class Group:
    """One context and the requests (indices into the request list) that continue it."""
    context: tuple[int, ...]
    requests: list[int]


@dataclass
class TreePlan:
    root: Node
    groups: list[Group]
    unique: list[int]  # requests[i] scored as requests[unique[i]] (the Scorer dedups: each itself)
    capacity: int  # positions of the deepest cached node: the path cache's size
    stats: dict


def _common(a: Sequence[int], b: Sequence[int], j: int) -> int:
    """Length of the common prefix of a and b[j:]."""
    n = 0
    while n < len(a) and j + n < len(b) and a[n] == b[j + n]:
        n += 1
    return n


def _split(node: Node, n: int) -> Node:
    """node -> a head of its first n tokens whose one child is the rest (same subtree)."""
    head = Node(node.tokens[:n], node.start)
    node.tokens, node.start = node.tokens[n:], node.start + n
    head.children[node.tokens[0]] = node
    return head


def build_tree(keys: Sequence[Sequence[int]]) -> Node:
    """A radix tree over keys (group g ends at the node where keys[g] ends; the root is position 0)."""
    root = Node([], 0)
    for g, key in enumerate(keys):
        node, i = root, 0
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                child = node.children[key[i]] = Node(list(key[i:]), i)
                i = len(key)
            else:
                n = _common(child.tokens, key, i)
                if n < len(child.tokens):
                    child = node.children[key[i]] = _split(child, n)
                i += n
            node = child
        node.groups.append(g)
    return root


def _walk(node: Node):
    """Every node below `node` (itself first), depth-first."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(list(n.children.values())))


def _cut_at(root: Node, limit: int) -> None:
    """Split every node that straddles position `limit` so that a node ends there."""
    for node in list(_walk(root)):
        for first, child in list(node.children.items()):
            if child.start < limit < child.end:
                node.children[first] = _split(child, limit - child.start)


def _mark_cached(root: Node, limit: int, min_shared: int) -> None:
    """n_groups and `cached` of every node, per the rule in the module docstring (children first;
    iterative: a long chain of nested contexts is a deep tree)."""
    saved: dict[int, int] = {}  # id(node) -> tokens that caching it saves (0: not cached)
    for node in reversed(list(_walk(root))):  # every child before its parent
        kids = node.children.values()
        node.n_groups = len(node.groups) + sum(c.n_groups for c in kids)
        gain = (node.n_groups - 1) * len(node.tokens) + sum(saved[id(c)] for c in kids)
        node.cached = node.n_groups >= 2 and node.end <= limit and gain >= min_shared and len(node.tokens) > 0
        saved[id(node)] = gain if node.cached else 0


def row_groups(node: Node) -> list[int]:
    """The groups scored under `node`'s cache: its own, and every group below a child not cached."""
    out, stack = list(node.groups), [c for c in node.children.values() if not c.cached]
    while stack:
        n = stack.pop()
        out += n.groups
        stack.extend(n.children.values())
    return sorted(out)


def cached_children(node: Node) -> list[Node]:
    return [c for c in node.children.values() if c.cached]


def plan_tree(requests: Sequence[Request], bytes_per_token: int, budget: int = DEFAULT_BUDGET,
              min_shared_tokens: int = DEFAULT_MIN_SHARED) -> TreePlan:
    """The tree over `requests` with its cached nodes chosen. stats: tokens computed by the tree
    (tokens_prefill in cached nodes + tokens_rows in scored rows), by today's packed layout
    (tokens_packed: each context once per group) and by lm-eval (tokens_per_pair: each pair alone),
    cached_nodes, capacity (positions of the deepest cached node) and limit (the budget in positions)."""
    if budget < 0 or bytes_per_token <= 0:
        raise ValueError(f"need budget >= 0 and bytes_per_token > 0; got {budget}, {bytes_per_token}")
    unique = list(range(len(requests)))
    by_context: dict[tuple, Group] = {}
    for i, r in enumerate(requests):
        if len(r.context_ids) == 0:
            raise ValueError(f"question {r.question} choice {r.choice}: empty context; a continuation needs at "
                             f"least one context token to be predicted from (use the BOS/EOT token as context)")
        if unique[i] == i:
            by_context.setdefault(tuple(r.context_ids), Group(tuple(r.context_ids), [])).requests.append(i)
    groups = list(by_context.values())
    root = build_tree([g.context[:-1] for g in groups])
    limit = budget // bytes_per_token
    _cut_at(root, limit)
    _mark_cached(root, limit, min_shared_tokens)
    root.cached = True  # position 0: nothing to compute
    cached = [n for n in _walk(root) if n.cached and n is not root]
    # (a cached node's parent is cached: its saving includes the child's and it ends earlier)
    cont = lambda i: max(len(requests[i].continuation_ids) - 1, 0)  # noqa: E731 (the last token is only a target)
    rows = sum(len(groups[g].context) - n.end + sum(cont(i) for i in groups[g].requests)
               for n in [root] + cached for g in row_groups(n))
    stats = dict(tokens_prefill=sum(len(n.tokens) for n in cached), tokens_rows=rows,
                 tokens_packed=sum(len(g.context) + sum(cont(i) for i in g.requests) for g in groups),
                 tokens_per_pair=sum(len(r.context_ids) + len(r.continuation_ids) - 1 for r in requests),
                 cached_nodes=len(cached), capacity=max((n.end for n in cached), default=0), limit=limit)
    return TreePlan(root, groups, unique, stats["capacity"], stats)


# ---------------------------------------------------------------------------------------------- scoring

@dataclass
class TreeRunners:
    """What score_tree runs (graphopt.optimize results, or the eager modules themselves).

    score_cached: ScoreModule(greedy=True) captured with a cache (prefix_cache.cached_example_inputs);
        None is allowed when the plan caches nothing (plan_tree(...).stats["cached_nodes"] == 0, e.g. a
        zero-shot task) and `score` is given: then only `score` runs, as today.
    layout: the K/V one cached token holds (KVLayout.of_graph(optimized.graph): a tensor-parallel rank's
        or a pruned model's kv heads; KVLayout.of_args(model.args) for an eager model).
    prefill: PrefillModule captured on cached_example_inputs(layout, prefill=True); None: score_cached
        fills the cache too (built with return_cache=True; one graph, but every scored batch also
        returns its K/V).
    score: ScoreModule(greedy=True) without a cache, captured on a PackedScoreBatch's model_inputs():
        contexts with no cached prefix are scored by it exactly as today (and prefix_attention may run
        there); None: score_cached reading hidden slots."""
    score_cached: Callable | None
    layout: KVLayout
    prefill: Callable | None = None
    score: Callable | None = None


def _prefill(runners: TreeRunners, node: Node, path: PathCache, max_tokens: int, device) -> int:
    """node's tokens -> their K/V in path[node.start:node.end], in chunks of max_tokens, each reading
    the path before it (at position 0: hidden slots only). -> the number of forwards."""
    chunks = 0
    for lo in range(node.start, node.end, max_tokens):
        hi = min(lo + max_tokens, node.end)
        ids = torch.tensor([node.tokens[lo - node.start:hi - node.start]], device=device)  # [1, m]
        cache = path.read(lo, 1)
        causal = torch.ones(hi - lo, hi - lo, dtype=torch.bool, device=device).tril()
        mask = torch.cat([slot_mask(torch.ones(hi - lo, dtype=torch.bool, device=device), lo), causal], -1)[None]
        positions = torch.arange(lo, hi, device=device)[None]
        if runners.prefill is not None:
            new = runners.prefill(ids, positions, mask, cache)
        else:
            zero = torch.zeros(1, dtype=torch.long, device=device)
            new = runners.score_cached(ids, positions, mask, zero, zero, None, None, cache)[-1]
        path.write(lo, new)
        chunks += 1
    return chunks


def _run_rows(runners: TreeRunners, batch: PackedScoreBatch, path: PathCache, start: int, device):
    """One batch of rows after `start` cached positions -> (log-probs [N], greedy [N] bool)."""
    batch = batch.to(device)
    if start == 0 and runners.score is not None:
        out = runners.score(*batch.model_inputs())
    else:
        cache = path.read(start, batch.input_ids.shape[0])  # start 0: hidden slots only
        out = runners.score_cached(batch.input_ids, batch.positions, cached_mask(batch, start), batch.score_idx,
                                   batch.targets, None, None, cache)
    if not (isinstance(out, (tuple, list)) and len(out) >= 2 and out[1].dtype == torch.bool):
        raise TypeError("score_tree needs greedy scoring graphs: ScoreModule(model, greedy=True) returning "
                        "(log-probs, is_greedy)")
    return out[0], out[1]


def score_tree(requests: Sequence[Request], runners: TreeRunners, device="cpu", budget: int = DEFAULT_BUDGET,
               progress: bool = True, max_tokens: int = 4096,
               min_shared_tokens: int = DEFAULT_MIN_SHARED, plan: TreePlan | None = None,
               counts: dict | None = None) -> tuple[Tensor, Tensor]:
    """(log-likelihood float64 [n], is_greedy bool [n]) of `requests`, in order, every shared prefix
    computed once (see the module docstring; plan_tree gives the plan and its token counts).
    budget: bytes of K/V on one root-to-leaf path. max_tokens: B * T of a batch of rows, and the
    tokens per forward when a cached node is computed. Identical requests get the first one's value.
    plan: plan_tree's result for these requests, when the caller made it already. counts: filled with
    "batches" (forwards over rows) and "prefills" (forwards computing cached nodes)."""
    plan = plan or plan_tree(requests, runners.layout.bytes_per_token, budget, min_shared_tokens)
    if runners.score_cached is None and (plan.stats["cached_nodes"] or runners.score is None):
        raise ValueError("score_tree: these requests share prefixes worth caching (or no plain graph was given), "
                         "so TreeRunners needs score_cached")
    n = len(requests)
    total = torch.zeros(n, dtype=torch.float64)
    greedy = torch.ones(n, dtype=torch.bool)
    seen = torch.zeros(n, dtype=torch.bool)
    path = PathCache(runners.layout, plan.capacity, device)
    n_batches = n_prefills = 0
    with torch.inference_mode(), tqdm(total=len(set(plan.unique)), unit="req", desc="scoring (prefix tree)",
                                      disable=not progress, leave=False) as bar:
        stack = [plan.root]
        while stack:  # depth-first: a node's subtree is done before its next sibling overwrites the path
            node = stack.pop()
            if node is not plan.root:
                n_prefills += _prefill(runners, node, path, max_tokens, device)
            who, tails = [], []  # the requests scored under this node, their tokens after it
            for g in row_groups(node):
                group = plan.groups[g]
                for k, i in enumerate(group.requests):
                    r = requests[i]
                    tails.append(Request(g, k, group.context[node.end:], r.continuation_ids, r.continuation_chars))
                    who.append(i)
            who = torch.tensor(who, dtype=torch.long)
            for batch in rows_under_prefix(tails, node.end, max_tokens):
                n_batches += 1
                logprobs, flags = _run_rows(runners, batch, path, node.end, device)
                owners = torch.where(batch.owners >= 0, who[batch.owners.clamp(min=0)], -1)
                total += sum_by_owner(logprobs, owners, n)
                greedy &= all_by_owner(flags, owners, n)
                owners = owners[owners >= 0].unique()
                bar.update(int((~seen[owners]).sum()))
                seen[owners] = True
            stack.extend(reversed(cached_children(node)))
    missing = [i for i in set(plan.unique) if not seen[i] and requests[i].continuation_ids]
    assert not missing, f"{len(missing)} requests were never scored (first: {sorted(missing)[:5]})"
    if counts is not None:
        counts.update(batches=n_batches, prefills=n_prefills)
    index = torch.tensor(plan.unique, dtype=torch.long)
    return total[index], greedy[index]


def subtree_shares(requests: Sequence[Request], n_replicas: int, plan: TreePlan) -> list[list[int]]:
    """[replica] -> indices into `requests` (ascending): data-parallel replicas split the tree by subtrees.

    Items: each subtree under a cached child of the root (its prefix computed once by the replica that
    takes it) and each context with no cached prefix, costed in the tokens a replica computes for them.
    A subtree costing more than a fair share (total / n_replicas) is cut into as many parts as it needs,
    each part computing the prefix again. Items go longest first to the replica with the fewest tokens
    (ties: the lower replica), so every rank computes the same split without talking."""
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1, got {n_replicas}")
    cont = lambda i: max(len(requests[i].continuation_ids) - 1, 0)  # noqa: E731
    groups = plan.groups

    def group_cost(g: int, start: int) -> int:
        return len(groups[g].context) - start + sum(cont(i) for i in groups[g].requests)

    items: list[tuple[int, list[int]]] = [(group_cost(g, 0), [g]) for g in row_groups(plan.root)]
    sub_totals = []
    for child in cached_children(plan.root):
        nodes = [n for n in _walk(child) if n.cached]
        prefix = sum(len(n.tokens) for n in nodes)
        costs = {g: group_cost(g, n.end) for n in nodes for g in row_groups(n)}
        sub_totals.append((prefix, costs))
    total = sum(c for c, _ in items) + sum(p + sum(c.values()) for p, c in sub_totals)
    fair = max(total / n_replicas, 1)
    for prefix, costs in sub_totals:
        parts = max(1, min(len(costs), -(-(prefix + sum(costs.values())) // int(fair))))
        bins: list[tuple[int, list[int]]] = [(prefix, []) for _ in range(parts)]
        for g in sorted(costs, key=lambda g: (-costs[g], g)):  # longest first into the lightest part
            k = min(range(parts), key=lambda k: (bins[k][0], k))
            bins[k] = (bins[k][0] + costs[g], bins[k][1] + [g])
        items += bins
    if sum(1 for _, gs in items if gs) < n_replicas:
        raise ValueError(f"data_parallel {n_replicas} is more than the {len(groups)} contexts to score: a replica "
                         f"would have nothing to do; lower data_parallel or score more questions")
    load = [0] * n_replicas
    share: list[list[int]] = [[] for _ in range(n_replicas)]
    for cost, gs in sorted(items, key=lambda it: (-it[0], it[1])):
        k = min(range(n_replicas), key=lambda k: (load[k], k))
        load[k] += cost
        share[k] += [i for g in gs for i in groups[g].requests]
    return [sorted(s) for s in share]

