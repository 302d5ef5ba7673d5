"""cast_dtype: run the matmuls in bfloat16/float16 (exact=False) as a graph rewrite.

- Weights (and biases) of every linear / embedding / graphopt.linear_logprob / linear_argmax are cast to `dtype`.
  A tied table is cast once and replaced under every name the graph holds it by (export keeps
  model.tok_embeddings.weight unread next to model.output.weight): one bf16 table, no float32 one
  left behind. Other parameters (norm weights) and buffers (RoPE tables) stay float32.
- Activations: an activation entering a linear (or a matmul whose other side is in `dtype`) in
  float32 gets a cast to `dtype` inserted before it, so linears and attention matmuls compute in
  `dtype`.
- What the model computes in float32 stays float32: RMSNorm (`x.float()`), RoPE, the attention
  softmax (`scores.float()`) and the log-softmax / log-prob accumulation; the final log-probs are
  float32. In export IR, `x.float()` of an fp32 tensor is recorded as the value of x itself, so the
  residual stream (x + attention(...)) stays float32 as well; `type_as(y, x.float())` is read
  back as `type_as(y, x)` so values return to the activation's dtype as the source code intends.
- A KV cache input (graphopt.model.llama: float32 [2, L, B, Hkv, P, D]) is cast to `dtype` where it
  meets the row's keys (the cat before attention); the new keys/values it returns are cast back to
  float32 with the other outputs, so a caller's cache stays float32 holding `dtype` values.
- Option `attention: float32` runs scaled_dot_product_attention in float32 (q, k, v cast up, its
  output cast back): on CPU the bf16 flash kernel is ~1.5x slower than the fp32 one (measured at
  rows of 128, head_dim 64), on GPUs keep the default `low`.
stats: param_bytes_before / param_bytes_after (all parameters the graph reads), tensors_cast,
casts_inserted, attention_upcast (SDPA nodes run in float32).
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.pipeline import PassContext, PassOption, PassResult, register_pass
from graphopt.graph_attrs import attr, replace_tensor
from ._edit import set_val
from ._ops import ASSERT_META, EMBEDDING, LINEAR, aten, val
from ._weights import param_bytes

import graphopt.kernels  # noqa: E402,F401 (torch.ops.graphopt.*)

_HEAD_OPS = (torch.ops.graphopt.linear_logprob.default, torch.ops.graphopt.linear_logprob_greedy.default,
             torch.ops.graphopt.linear_argmax.default)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_MATMUL = {aten.matmul.default, aten.bmm.default, aten.mm.default, torch.matmul, torch.bmm}
_SDPA = {aten.scaled_dot_product_attention.default}
_ATTENTION = ("low", "float32")


def _weight_nodes(gm: GraphModule) -> list[Node]:
    """get_attr nodes read as weight/bias by a linear, embedding or linear_logprob."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in LINEAR:
            cands = list(n.args[1:3]) + [n.kwargs.get("bias")]
        elif n.target in EMBEDDING:
            cands = [n.args[0]]
        elif n.target in _HEAD_OPS:
            cands = [n.args[1]]
        else:
            continue
        out += [a for a in cands if isinstance(a, Node) and a.op == "get_attr" and a not in out]
    return out


def _undo_noop_float_alias(gm: GraphModule) -> None:
    """type_as(y, to(x, float32)) where x already was float32 -> type_as(y, x)."""
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not aten.type_as.default:
            continue
        ref = n.args[1]
        if (isinstance(ref, Node) and ref.op == "call_function" and ref.target is aten.to.dtype
                and val(ref.args[0]) is not None and val(ref.args[0]).dtype == val(ref).dtype):
            n.args = (n.args[0], ref.args[0])


def _cast(gm: GraphModule, node: Node, arg: Node, dtype: torch.dtype, cache: dict) -> bool:
    """Make `node` read `arg` cast to dtype; one cast node per (arg, dtype). True when one was made."""
    made = (arg, dtype) not in cache
    if made:
        with gm.graph.inserting_after(arg):
            cache[(arg, dtype)] = gm.graph.call_function(aten.to.dtype, (arg, dtype))
        set_val(gm, cache[(arg, dtype)])
    node.replace_input_with(arg, cache[(arg, dtype)])
    return made


def _attention_in_float32(gm: GraphModule, cache: dict) -> tuple[int, int]:
    """Every SDPA reading low-precision q/k/v -> reads them cast to float32; its output is cast back.
    Returns (SDPA nodes changed, casts inserted)."""
    changed = made = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in _SDPA or val(n) is None or val(n).dtype == torch.float32:
            continue
        low = val(n).dtype
        for a in n.args[:3]:
            made += _cast(gm, n, a, torch.float32, cache)
        mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        if isinstance(mask, Node) and val(mask) is not None and val(mask).dtype == low:  # additive mask
            made += _cast(gm, n, mask, torch.float32, cache)
        set_val(gm, n)
        with gm.graph.inserting_after(n):
            back = gm.graph.call_function(aten.to.dtype, (n, low))
        set_val(gm, back)
        n.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
        changed, made = changed + 1, made + 1
    return changed, made


@register_pass("cast_dtype", "run linears/embeddings/attention matmuls in bfloat16 or float16 (weights cast, "
               "activations cast at their inputs); norms, softmax and log-probs stay float32",
               options={"dtype": PassOption(str, "bfloat16", "low-precision dtype: bfloat16 or float16",
                                            choices=tuple(_DTYPES)),
                        "attention": PassOption(str, "low", "dtype of scaled_dot_product_attention: low (the dtype "
                                                "above) or float32 (faster on CPU)", choices=_ATTENTION)},
               exact=False, dtype=lambda options, before: options["dtype"], blockwise=True)
def cast_dtype(gm: GraphModule, ctx: PassContext) -> PassResult:
    dtype = _DTYPES[ctx.options["dtype"]]
    attention = ctx.options["attention"]
    bytes_before = param_bytes(gm)
    outputs = [a for a in torch.utils._pytree.tree_leaves(next(n for n in gm.graph.nodes if n.op == "output").args)
               if isinstance(a, Node)]
    out_dtypes = {a: val(a).dtype for a in outputs if val(a) is not None}

    tensors_cast = 0
    for w in _weight_nodes(gm):
        t = attr(gm, w.target)
        if not t.is_floating_point() or t.dtype == dtype:  # (a tied weight's other names: cast already)
            continue
        replace_tensor(gm, t, t.detach().to(dtype))  # under every name it has: tied weights stay one tensor
        tensors_cast += 1
    if not tensors_cast:
        return PassResult(gm, False, {"matches": 0, "param_bytes_before": bytes_before, "param_bytes_after": bytes_before})
    _undo_noop_float_alias(gm)

    inserted, cache = 0, {}
    for n in list(gm.graph.nodes):
        if n.op == "get_attr":
            set_val(gm, n)
            continue
        if n.op != "call_function":
            continue
        if n.target in LINEAR or n.target in _HEAD_OPS:
            x, w = n.args[0], n.args[1]
            if val(x) is not None and val(w) is not None and val(x).dtype != val(w).dtype and val(x).is_floating_point():
                inserted += _cast(gm, n, x, val(w).dtype, cache)
        elif n.target in _MATMUL:
            a, b = n.args[0], n.args[1]
            if val(a) is not None and val(b) is not None and val(a).dtype != val(b).dtype:
                hi = a if val(a).dtype == torch.float32 else b
                inserted += _cast(gm, n, hi, dtype, cache)
        elif n.target is aten.cat.default:  # a KV cache (float32 input) before this row's keys in `dtype`
            parts = [val(a) for a in n.args[0]]
            if None not in parts and any(p.dtype == dtype for p in parts):
                for a, p in zip(list(n.args[0]), parts):
                    if p.dtype == torch.float32:
                        inserted += _cast(gm, n, a, dtype, cache)
        elif n.target in ASSERT_META and val(n.args[0]) is not None:
            n.kwargs = {**n.kwargs, "dtype": val(n.args[0]).dtype}
            continue
        set_val(gm, n)

    upcast, made = _attention_in_float32(gm, cache) if attention == "float32" else (0, 0)
    inserted += made
    for a, dt in out_dtypes.items():  # outputs keep their dtype (log-probs float32)
        if val(a) is not None and val(a).dtype != dt:
            out = next(n for n in gm.graph.nodes if n.op == "output")
            with gm.graph.inserting_before(out):
                c = gm.graph.call_function(aten.to.dtype, (a, dt))
            set_val(gm, c)
            out.replace_input_with(a, c)
            inserted += 1
    return PassResult(gm, True, {"matches": tensors_cast, "tensors_cast": tensors_cast, "casts_inserted": inserted,
                                 "attention_upcast": upcast,
                                 "param_bytes_before": bytes_before, "param_bytes_after": param_bytes(gm)})
