"""What `lm_eval --model hf` and `graphopt lm-eval --model graphopt` compute on a suite, counted in-process
on the very requests lm-eval hands each model (its task instances, each model's own _encode_pair), and
whether the two tokenise them identically.

lm-eval's hf model (lm_eval/models/huggingface.py, 0.4.13, `_loglikelihood_tokens`): a Collator with
group_by="contexts" keys each request by context + continuation[:-1] and runs one forward per key (so
single-token continuations of one context, MMLU's letters, share a forward; multi-token ones do not),
over (context + continuation)[:-1], sorted longest first, chunks of batch_size right-padded to the
chunk's longest, the LM head at every position.

graphopt: the Scorer's prefix-tree plan of the distinct requests (graphopt.scoring.prefix_tree): each
cached node's tokens once (no head), then the rows under each cached node (each context's tail once,
its continuations after it), the head only at scored positions.

FLOPs as benchmarks.mfu counts them (issue #16's comparison): 2 x layer weights x tokens fed + 2 x LM
head x positions where logits are taken + 4 x dim x visible (query, key) pairs per layer; real tokens
only (padding: tokens_padded, reported apart).
"""
from __future__ import annotations

from benchmarks._common import layer_param_counts
from graphopt.scoring.prefix_tree import TreePlan, cached_children, row_groups


def flops(args, tokens: int, head_positions: int, visible_pairs: int) -> float:
    body = sum(layer_param_counts(args)) * args.n_layers
    return 2.0 * body * tokens + 2.0 * args.dim * args.vocab_size * head_positions + \
        4.0 * args.dim * visible_pairs * args.n_layers


def _causal_pairs(length: int, before: int = 0) -> int:
    """Visible (query, key) pairs of `length` tokens that follow `before` visible positions."""
    return length * before + length * (length + 1) // 2


def lm_eval_hf_counts(pairs: list[tuple[list[int], list[int]]], batch_size: int, max_length: int, args) -> dict:
    """pairs: (context ids, continuation ids) as HFLM._encode_pair makes them, in request order."""
    keys: dict[tuple, int] = {}
    for ctx, cont in pairs:  # Collator(group_by="contexts"): one forward per context + continuation[:-1]
        key = tuple(ctx) + tuple(cont[:-1])
        keys[key] = max(keys.get(key, 0), len(ctx) + len(cont))
    lengths = sorted((min(n - 1, max_length) for n in keys.values()), reverse=True)  # inputs: (ctx + cont)[:-1]
    padded = sum(len(chunk) * chunk[0] for chunk in (lengths[i:i + batch_size] for i in range(0, len(lengths),
                                                                                             batch_size)))
    tokens, pairs_visible = sum(lengths), sum(_causal_pairs(n) for n in lengths)
    return {"requests": len(pairs), "forwards": len(lengths), "tokens": tokens, "tokens_padded": padded,
            "head_positions": tokens, "flops": flops(args, tokens, tokens, pairs_visible)}


def tree_counts(plan: TreePlan, requests, args) -> dict:
    """requests: the distinct requests the plan was made of (plan.groups index them)."""
    tokens = head = visible = 0
    stack = [plan.root]
    while stack:
        node = stack.pop()
        if node is not plan.root:  # the node's own tokens, computed once reading the path above it
            tokens += len(node.tokens)
            visible += _causal_pairs(len(node.tokens), node.start)
        for g in row_groups(node):
            group = plan.groups[g]
            tail = len(group.context) - node.end
            tokens += tail
            visible += _causal_pairs(tail, node.end)
            for i in group.requests:
                cont = len(requests[i].continuation_ids)
                tokens += cont - 1  # the last continuation token is only a target
                visible += _causal_pairs(cont - 1, node.end + tail)
                head += cont
        stack.extend(cached_children(node))
    assert tokens == plan.stats["tokens_prefill"] + plan.stats["tokens_rows"], (tokens, plan.stats)
    return {"requests": len(requests), "cached_nodes": plan.stats["cached_nodes"], "tokens": tokens,
            "tokens_prefill": plan.stats["tokens_prefill"], "tokens_rows": plan.stats["tokens_rows"],
            "head_positions": head, "flops": flops(args, tokens, head, visible)}


def task_instances(task_dir, tasks: str) -> list:
    """Every loglikelihood Instance of `tasks` (a group or task names, comma-separated), in the order lm-eval's
    evaluator hands them to a model."""
    from lm_eval.tasks import TaskManager, get_task_dict

    out = []
    for task in _leaves(get_task_dict(tasks.split(","), TaskManager(include_path=str(task_dir)))):
        task.build_all_requests(rank=0, world_size=1)
        out += [inst for inst in task.instances for _ in range(inst.repeats)]
    return out


def _leaves(task_dict: dict) -> list:
    out = []
    for value in task_dict.values():
        out += _leaves(value) if isinstance(value, dict) else [value]
    return out


def graphopt_requests(lm, instances) -> list:
    """The graphopt Requests GraphoptLM (`lm`) scores for `instances`, made by its own loglikelihood path
    (its scoring replaced by a recorder)."""
    import torch

    seen = []

    def record(requests, progress):
        seen.extend(requests)
        return torch.zeros(len(requests), dtype=torch.float64), torch.zeros(len(requests), dtype=torch.bool)

    score, lm._score = lm._score, record
    try:
        lm.loglikelihood(instances, disable_tqdm=True)
    finally:
        lm._score = score
    return seen


def count_suite(hf_lm, graphopt_lm, instances, batch_size: int) -> dict:
    """{n_requests, same_ids, first_difference, prompt_tokens (mean context), lm_eval: counts, graphopt: counts}
    for one suite's instances; hf_lm: lm-eval's HFLM, graphopt_lm: GraphoptLM, on the same model directory."""
    args = graphopt_lm.model.args
    theirs = [hf_lm._encode_pair(*inst.args) for inst in instances]
    ours = [graphopt_lm._encode_pair(*inst.args) for inst in instances]
    same = [list(a[0]) == list(b[0]) and list(a[1]) == list(b[1]) for a, b in zip(theirs, ours)]
    first = next((k for k, ok in enumerate(same) if not ok), None)
    requests = graphopt_requests(graphopt_lm, instances)
    prepared = graphopt_lm.scorer.prepare(requests)
    distinct = [requests[i] for i in prepared.unique]
    return {"n_requests": len(instances), "n_questions": len({(i.task_name, i.doc_id) for i in instances}),
            "same_ids": sum(same), "first_difference": None if first is None else
            {"args": list(instances[first].args), "lm_eval": theirs[first], "graphopt": ours[first]},
            "prompt_tokens": sum(len(c) for c, _ in theirs) / max(len(theirs), 1),
            "lm_eval": lm_eval_hf_counts(theirs, batch_size, hf_lm.max_length, args),
            "graphopt": tree_counts(prepared.plan, distinct, args)}
