"""prefix_attention: mask-driven SDPA -> graphopt::prefix_attention driven by the packed layout's ids.

    out = scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=s[, enable_gqa])
->  out = graphopt.prefix_attention(q, k, v, doc_ids, seg_ids, s)

The packed scoring layouts (shared_prefix, packed, bucketed) build the mask from per-token ids,
mask = prefix_mask(doc_ids, seg_ids) on every real token, and pass doc_ids / seg_ids to ScoreModule as
inputs; this pass reads those inputs, so the attention needs no [B, T, T] mask: the Triton kernel
(CUDA) skips the key blocks no query of a block can see. Padding tokens (doc -1) may attend other
padding tokens instead of only themselves; they are never scored. Run after sdpa_attention; a graph
without doc_ids / seg_ids inputs (per_pair or padded scoring, or a dynamo capture, which drops the
inputs the eager model does not read) is an error, and so is a graph that reads a KV cache (its keys
are the cached prefix then the row; the kernel attends within the row only).
"""
from __future__ import annotations

import math

import torch

import graphopt.kernels  # noqa: F401  (registers graphopt::prefix_attention)
from graphopt.pipeline import PassError, PassResult, register_pass, requires
from ._cache import cache_input
from ._edit import fake_mode, insert_call, remove_dead
from ._ops import aten, is_op, val

SDPA = aten.scaled_dot_product_attention.default
LAYOUT_INPUTS = ("doc_ids", "seg_ids")


def _layout_placeholders(gm) -> dict:
    found = {n.target: n for n in gm.graph.nodes if n.op == "placeholder" and n.target in LAYOUT_INPUTS}
    return found if len(found) == len(LAYOUT_INPUTS) else {}


@register_pass("prefix_attention", "SDPA over the packed layout's block mask -> graphopt::prefix_attention driven by "
               "the doc_ids/seg_ids inputs (no [B,T,T] mask; block-skipping Triton kernel on CUDA)",
               order=[requires("sdpa_attention", "it rewrites the scaled_dot_product_attention nodes that "
                                                 "sdpa_attention makes")])
def prefix_attention(gm, ctx):
    sites = [n for n in gm.graph.nodes if is_op(n, SDPA)]
    if not sites:
        return PassResult(gm, False, {"matches": 0})
    if cache_input(gm) is not None:  # the kernel's keys are the row's own tokens
        raise PassError("prefix_attention: this graph reads a KV cache (input `cache`): graphopt::prefix_attention "
                        "attends within the packed row only, not to a cached prefix; use a pipeline without it "
                        "(exact) for cache-reading graphs")
    layout = _layout_placeholders(gm)
    if not layout:
        raise PassError("prefix_attention needs the packed layout's doc_ids and seg_ids as graph inputs: capture "
                        "ScoreModule by export with a shared_prefix, packed or bucketed batch (per_pair and padded "
                        "batches carry only the mask; dynamo drops inputs the eager model does not read)")
    if getattr(ctx.model_args, "sliding_window", None):  # the kernel attends by doc/segment ids only
        raise PassError(f"prefix_attention: this model attends through a sliding window of "
                        f"{ctx.model_args.sliding_window} tokens, which graphopt::prefix_attention does not apply; "
                        "use a pipeline without it (exact, fast)")
    mode = fake_mode(gm)
    for sdpa in sites:
        q, k, v = sdpa.args[:3]
        kw = dict(sdpa.kwargs)
        if kw.get("dropout_p", 0.0) or kw.get("is_causal", False) or len(sdpa.args) > 3:
            raise PassError(f"prefix_attention: {sdpa.name} is not a plain masked SDPA (args {sdpa.args[3:]}, "
                            f"kwargs {kw}); run sdpa_attention to produce one")
        scale = kw.get("scale")
        if scale is None:
            scale = 1.0 / math.sqrt(val(q).shape[-1])
        fused = insert_call(gm, sdpa, torch.ops.graphopt.prefix_attention.default,
                            (q, k, v, layout["doc_ids"], layout["seg_ids"], float(scale)), mode=mode)
        sdpa.replace_all_uses_with(fused)
        gm.graph.erase_node(sdpa)
    remove_dead(gm)
    return PassResult(gm, True, {"matches": len(sites)})
