"""quantize_int8: every linear with a weight in the graph (export IR aten.linear, as the merge passes) ->
graphopt.int8_linear (W8A8, int32 accumulation; exact=False).

Before:  y = linear(x [..., K], W [N, K] float[, b])
After:   y = graphopt.int8_linear(x, Wq [K, N] int8, w_scale [N] float32[, b])    y keeps x's dtype

Weights are quantised once, here, symmetrically per output channel; activations per row (token) at
run time. On a CPU with AVX-512 VNNI an int8 matmul runs ~2x a bf16 one. Run it LAST among the passes
that look for linears (merge_qkv, merge_gate_up, prune_lm_head, fused_logprob, tensor_parallel,
prune_structured: each raises a PassError naming this order when it comes after), and after
cast_dtype, so that the attention and the residual stream stay in bf16 and only the matmuls change. The LM head inside graphopt.linear_logprob is not a linear and stays as
it is. Option `exclude`: comma-separated substrings of weight names to keep in floating point.
Tied embeddings: an LM head still a linear (no fused_logprob) is quantised, and the embedding lookup
still reads the float table, so the graph holds that table twice by necessity: int8 codes [D, V] +
scales [V] for the head next to the float [V, D] table (n_params counts both). To keep one float
table, exclude the head by its name ('output'; 'tok_embeddings' in a dynamo capture, which names
the tied table once).
stats: matches (linears quantised), param_bytes_before / param_bytes_after.

On CUDA it needs int8 tensor cores (torch._int_mm: Turing or newer; a V100 has none) and is not yet
measured (experiments/one-gpu-check.yaml has a run for it). Compile the result with `inductor`, not `inductor-frozen`: freezing rewrites each int8 matmul and
its dequantisation into onednn.qlinear_pointwise with per-token scales, which took minutes per batch
on CPU (torch 2.13), against milliseconds for inductor's extern `_int_mm`.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.kernels.int8_linear import quantize_weight
from graphopt.graph_attrs import attr, targets_holding
from graphopt.pipeline import PassContext, PassOption, PassResult, after, register_pass
from ._edit import add_parameter, drop_unused_attrs, fake_mode, insert_call, set_val
from ._ops import linear_parts, val
from ._weights import param_bytes

_REPLACES_LINEARS = "quantize_int8 replaces the linears it rewrites by graphopt.int8_linear"
# passes that look for aten.linear nodes, so must see them before quantize_int8 replaces them
_LINEAR_PASSES = ("merge_qkv", "merge_gate_up", "prune_lm_head", "fused_logprob", "tensor_parallel",
                  "prune_structured")

INT8_LINEAR = torch.ops.graphopt.int8_linear.default


def _quantizable(gm: GraphModule, node: Node, exclude: list[str]) -> bool:
    """A linear whose weight (and bias) are graph attributes (linear_parts), a 2-D floating weight,
    not excluded."""
    parts = linear_parts(gm, node)
    if parts is None:
        return False
    w = val(node.args[1])
    if w is not None and (w.ndim != 2 or not w.is_floating_point()):
        return False
    return not any(s in parts[1] for s in exclude)


@register_pass("quantize_int8", "linears -> graphopt.int8_linear: int8 weights (per output channel) x int8 "
               "activations (per token), int32 accumulation; run after the merges and cast_dtype",
               options={"exclude": PassOption(str, "", "comma-separated substrings of weight names to keep in "
                                                       "floating point, e.g. 'output' for an unfused LM head")},
               exact=False, dtype=lambda options, before: f"int8+{before}",
               order=[after(p, _REPLACES_LINEARS) for p in _LINEAR_PASSES]
               + [after("cast_dtype", "cast_dtype casts linear weights, the int8 weights are not linears")],
               blockwise=lambda options: not options["exclude"])  # names: a block's are its first layer's
def quantize_int8(gm: GraphModule, ctx: PassContext) -> PassResult:
    exclude = [s.strip() for s in str(ctx.options.get("exclude", "")).split(",") if s.strip()]
    bytes_before = param_bytes(gm)
    mode = fake_mode(gm)
    done: dict[int, tuple[str, str]] = {}  # id(weight) -> (int8 target, scale target): a tensor under two names once
    old, matches = set(), 0
    for node in list(gm.graph.nodes):
        if not _quantizable(gm, node, exclude):
            continue
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        weight = attr(gm, w.target)
        if id(weight) not in done:
            owner, _, leaf = w.target.rpartition(".")
            w_int8, w_scale = quantize_weight(weight)  # [K, N] int8, [N] float32
            done[id(weight)] = (add_parameter(gm, owner, f"{leaf}_int8", w_int8),
                                add_parameter(gm, owner, f"{leaf}_int8_scale", w_scale))
            old.update(targets_holding(gm, weight))  # every name of it: none keeps the float weight alive
        attrs = []
        for target in done[id(weight)]:
            with gm.graph.inserting_before(node):
                attrs.append(gm.graph.get_attr(target))
            set_val(gm, attrs[-1], mode)
        q = insert_call(gm, node, INT8_LINEAR, (x, *attrs, b), mode=mode)  # [..., N] in x's dtype
        node.replace_all_uses_with(q)
        gm.graph.erase_node(node)
        if not w.users:
            gm.graph.erase_node(w)
        matches += 1
    drop_unused_attrs(gm, old)  # float weights no node reads any more (a tied table the embedding reads stays)
    gm.graph.lint()
    gm.recompile()
    return PassResult(gm, bool(matches), {"matches": matches, "param_bytes_before": bytes_before,
                                          "param_bytes_after": param_bytes(gm)})
