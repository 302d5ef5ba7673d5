"""prune_structured: structured pruning of FFN channels and attention heads (exact=False), by a
criterion that may read the model's activations on calibration text.

Structures (_prune_scores.py): an FFN channel j is row j of w1 (gate) and w3 (up) and column j of w2
(down); a query head is its rows of wq and columns of wo; a kv head its rows of wk and wv. Each is
scored by criterion l1 (|W|), wanda (|W| x ||X|| per input channel) or taylor (|W . dL/dW|), summed
over its weights; the lowest-scoring go. wanda and taylor run the captured graph on `calibration`
(a .txt / .jsonl file of the user's text, never the evaluation set; _calibration.py), tokenised by
ctx.tokenizer (graphopt.optimize(tokenizer=...)) or the `tokenizer` option's file.

ratio, budget per_layer: every layer drops int(ratio * hidden_dim) FFN channels and int(ratio * n_heads)
query heads, cut GQA-aware (_prune_heads.py): whole kv groups (a kv head with its query heads) and/or
the same number of query heads from every kept group, the largest cut the layout allows not above
the count. budget global: one budget of int(ratio * all layers' FFN channels) and int(ratio * all
kv groups) (each FFN channel of a layer, and each kv group, holds the same parameters), spent on the
lowest scores across layers. Raw scores do not compare across layers (a layer with larger weights or
activations scores higher everywhere), so normalize: mean (default) divides each layer's scores by
their mean first; and no layer gives up more than int(max_layer_ratio * its channels / kv groups)
(default 0.5), so none is gutted; a budget the caps cannot hold is an error before any work.
stats["layers"] reports each layer's result. A ratio > 0 that removes nothing is an error naming the layout, never a no-op.

Only weights (qkv biases too) are replaced: the model's head views are [B, T, -1, D], so they follow.
The head counts export records as literals follow as well: RoPE's [B, T, H, -1, 2] reshape takes its
input's new size when fake values are re-propagated (_edit.refit_vals), and repeat_interleave's n_rep
is set when query heads leave every group; a graph that no longer fits is a PassError.
Weights are found by their Meta checkpoint names (layers.N.attention.wq.weight, ...), so this must
run before merge_qkv / merge_gate_up, which replace them (taylor: before the passes that insert
graphopt's own ops, which have no gradient). The embedding table and the LM head are not touched.
stats: params_before, params_after, params_removed, ffn_channels_removed, kv_groups_removed,
query_heads_removed, layers ({layer: {ffn_channels, query_heads, kv_heads}} kept), criterion, budget,
calibration_sequences, calibration_tokens.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from graphopt.checkpoints.errors import CheckpointError
from graphopt.graph_attrs import attr, set_attr
from graphopt.pipeline import PassContext, PassError, PassOption, PassResult, before, register_pass
from ._cache import cache_input, set_cache_heads
from ._calibration import CalibrationStats, calibration_batches, gather_statistics, read_calibration_text
from ._edit import refit_vals, splits_last_dim
from ._ops import LINEAR, RESHAPE, val
from ._weights import param_count
from ._prune_heads import global_group_budget, head_cut, kv_repeats, select_heads, set_repeats
from ._prune_scores import (CRITERIA, NEEDS_CALIBRATION, NORMALIZE, ffn_channel_scores, group_scores, head_scores,
                            importance, lowest_across_layers, normalised)

_NEEDS_NAMES = "it finds the weights by their checkpoint names, which the merge replaces"

_NAME = re.compile(r"^(?P<layer>.*layers\.\d+)\.(?P<block>attention|feed_forward)\.(?P<w>w[qkvo123])\.(?P<kind>weight|bias)$")


def _weights(gm: GraphModule) -> dict[str, dict[str, str]]:
    """{layer prefix: {"wq.weight": target, ...}} from the get_attr targets."""
    layers: dict[str, dict[str, str]] = {}
    for n in gm.graph.nodes:
        m = _NAME.match(n.target) if n.op == "get_attr" else None
        if m:
            layers.setdefault(m["layer"], {})[f"{m['w']}.{m['kind']}"] = n.target
    return layers


def _head_dim(gm: GraphModule, wq_target: str) -> int:
    """D of the [B, T, H, D] view right after the linear that reads wq."""
    for wq in (n for n in gm.graph.nodes if n.op == "get_attr" and n.target == wq_target):
        for lin in wq.users:
            if lin.target not in LINEAR:
                raise PassError(f"{wq_target} is read by {lin.target}, not a linear (run prune_structured before "
                                f"the fusion passes)")
            views = [val(u) for u in lin.users if u.target in RESHAPE and val(u) is not None and val(u).dim() == 4]
            if views:
                return int(views[0].shape[-1])
    raise PassError(f"no [B, T, H, D] view after the linear reading {wq_target}; pass ctx.model_args")


def _take(gm: GraphModule, target: str, keep: torch.Tensor, dim: int) -> None:
    t = attr(gm, target)
    set_attr(gm, target, t.detach().index_select(dim, keep.to(t.device)).contiguous())


FFN, ATTN = ("w1", "w2", "w3"), ("wq", "wk", "wv", "wo")


def _lowest_dropped(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Indices (sorted) of all but the n_remove lowest scores."""
    return torch.sort(torch.argsort(scores, stable=True)[n_remove:]).values


@dataclass
class _Attn:
    """One attention layer's layout and head scores."""
    n_heads: int
    n_kv: int
    head_dim: int
    q: torch.Tensor | None = None  # [n_heads] query head scores
    kv: torch.Tensor | None = None  # [n_kv] kv head scores


def _calibrate(gm: GraphModule, ctx: PassContext, targets: set[str]) -> CalibrationStats:
    o = ctx.options
    if o["calibration"] is None:
        raise PassError(f"criterion {o['criterion']} reads the model's activations on calibration text: set the "
                        f"option calibration: PATH (.txt, one sequence per line, or .jsonl with a 'text' key)")
    texts = read_calibration_text(o["calibration"], o["n_calibration"])
    tokenizer = ctx.tokenizer
    if o["tokenizer"] is not None:
        from graphopt.checkpoints.gguf import load_gguf_structure
        from graphopt.checkpoints.tokenizers import load_tokenizer
        try:
            gguf = str(o["tokenizer"]).lower().endswith(".gguf")
            tokenizer = load_gguf_structure(o["tokenizer"])[1] if gguf else load_tokenizer(o["tokenizer"])
        except CheckpointError as e:
            raise PassError(f"option tokenizer: {e}") from e
    if tokenizer is None:
        raise PassError(f"criterion {o['criterion']} needs the model's tokenizer for the calibration text: set the "
                        f"option tokenizer: PATH (tokenizer.json / tokenizer.model / .gguf or a checkpoint directory), "
                        f"or pass tokenizer= to graphopt.optimize")
    device = attr(gm, next(iter(targets))).device
    batches = calibration_batches(texts, tokenizer, o["max_tokens"], device=device)
    return gather_statistics(gm, batches, targets, grads=o["criterion"] == "taylor")


def _check_options(o: dict) -> None:
    if o["criterion"] not in NEEDS_CALIBRATION:
        given = [k for k in ("calibration", "tokenizer") if o[k] is not None]
        if given:
            raise PassError(f"criterion {o['criterion']} reads no calibration data, but {' and '.join(given)} "
                            f"{'is' if len(given) == 1 else 'are'} set (criteria that read it: "
                            f"{', '.join(NEEDS_CALIBRATION)})")


def _cap(max_layer_ratio: float, n: int) -> int:
    """The most units of n one layer gives up to a global budget (it keeps one at least)."""
    return min(int(max_layer_ratio * n), n - 1)


def _plan_ffn(layers: dict, hidden: dict, scores: dict, o: dict) -> dict[str, torch.Tensor]:
    """{layer: kept channel indices} for the layers that drop any."""
    ratio, budget = o["ratio"], o["budget"]
    if not layers:  # what: heads
        return {}
    if budget == "global":
        names = list(layers)
        caps = [_cap(o["max_layer_ratio"], hidden[p]) for p in names]
        ranked = normalised([scores[p] for p in names], o["normalize"])
        dropped = dict(zip(names, lowest_across_layers(ranked, int(ratio * sum(hidden.values())), caps)))
    else:
        dropped = {p: min(int(ratio * hidden[p]), hidden[p] - 1) for p in layers}
    return {p: _lowest_dropped(scores[p], n) for p, n in dropped.items() if n}


def _check_caps(what: str, want: int, caps: list[int], max_layer_ratio: float) -> None:
    if want > sum(caps):
        raise PassError(f"budget global asks for {want} {what} but max_layer_ratio {max_layer_ratio:g} lets the "
                        f"{len(caps)} layers give up at most {sum(caps)} (per layer: {sorted(set(caps))}): raise "
                        f"max_layer_ratio or lower ratio")


def _check_counts(what: str, o: dict, hidden: dict, attn: dict) -> None:
    """A ratio > 0 that would remove nothing, or a global budget the per-layer caps cannot hold, is an
    error, found before any calibration work."""
    ratio, budget, mlr = o["ratio"], o["budget"], o["max_layer_ratio"]
    if ratio == 0:
        return
    if what in ("ffn", "both"):
        total = sum(hidden.values()) if budget == "global" else min(hidden.values())
        if int(ratio * total) == 0:
            raise PassError(f"ffn ratio {ratio:g} of {total} FFN channels ({budget}) rounds to none: use ratio >= "
                            f"{math.ceil(1000 / total) / 1000:g}")
        if budget == "global":
            _check_caps("FFN channels", int(ratio * total), [_cap(mlr, h) for h in hidden.values()], mlr)
    if what in ("heads", "both"):
        if budget == "global":
            want = global_group_budget([(a.n_heads, a.n_kv) for a in attn.values()], ratio)
            _check_caps("kv groups", want, [_cap(mlr, a.n_kv) for a in attn.values()], mlr)
        else:
            for a in attn.values():
                head_cut(a.n_heads, a.n_kv, ratio)


def _apply_heads(gm: GraphModule, w: dict[str, str], a: _Attn, kept_kv: torch.Tensor, kept_q: torch.Tensor) -> None:
    hd = a.head_dim
    rows_q = (kept_q[:, None] * hd + torch.arange(hd)).flatten()
    rows_kv = (kept_kv[:, None] * hd + torch.arange(hd)).flatten()
    repeats = kv_repeats(gm, (w["wk.weight"], w["wv.weight"]))
    for key, rows, dim in (("wq", rows_q, 0), ("wk", rows_kv, 0), ("wv", rows_kv, 0), ("wo", rows_q, 1)):
        _take(gm, w[f"{key}.weight"], rows, dim)
        if dim == 0 and f"{key}.bias" in w:
            _take(gm, w[f"{key}.bias"], rows, 0)
    set_repeats(repeats, a.n_heads // a.n_kv, len(kept_q) // len(kept_kv))


@register_pass("prune_structured", "structured pruning of FFN channels and/or attention heads (GQA-aware: kv "
               "groups, query heads per group) by L1, Wanda or Taylor scores on calibration text; rewrites weights, "
               "the graph's head views follow them",
               options={"ratio": PassOption(float, 0.0, "fraction of FFN channels and of query heads (budget global: "
                                            "of all layers' FFN channels and kv groups) to remove, in [0, 1)",
                                            min=0.0, max=1.0, open_max=True),
                        "what": PassOption(str, "ffn", "what to prune: ffn, heads or both",
                                           choices=("ffn", "heads", "both")),
                        "criterion": PassOption(str, "l1", "score: l1 (|W|), wanda (|W| x ||X||), taylor "
                                                "(|W . dL/dW|); wanda/taylor read calibration text",
                                                choices=CRITERIA),
                        "budget": PassOption(str, "per_layer", "per_layer: ratio in every layer; global: one "
                                             "budget spent on the lowest scores across layers",
                                             choices=("per_layer", "global")),
                        "normalize": PassOption(str, "mean", "budget global: each layer's scores divided by their "
                                                "mean before the global ranking (mean), or raw (none)",
                                                choices=NORMALIZE),
                        "max_layer_ratio": PassOption(float, 0.5, "budget global: the most of one layer's FFN "
                                                      "channels / kv groups the budget may take", min=0.0, max=1.0),
                        "calibration": PassOption(str, None, "calibration text: .txt (a sequence per line) or "
                                                  ".jsonl ({\"text\": ...} rows); not the evaluation data"),
                        "n_calibration": PassOption(int, 128, "calibration sequences used (the file's first)",
                                                    min=1),
                        "max_tokens": PassOption(int, 256, "tokens per calibration sequence (longer ones are cut)",
                                                 min=2),
                        "tokenizer": PassOption(str, None, "tokenizer.json / tokenizer.model / .gguf file or checkpoint "
                                                "directory for the calibration text (default: the model's, from "
                                                "graphopt.optimize)")},
               exact=False, order=[before("merge_qkv", _NEEDS_NAMES), before("merge_gate_up", _NEEDS_NAMES)])
def prune_structured(gm: GraphModule, ctx: PassContext) -> PassResult:
    o = ctx.options
    ratio, what, criterion, budget = o["ratio"], o["what"], o["criterion"], o["budget"]
    _check_options(o)
    if cache_input(gm) is not None and criterion in NEEDS_CALIBRATION:
        raise PassError(f"prune_structured: criterion {criterion} on a graph that reads a KV cache: the graph that "
                        f"fills a cache and the one that reads it must cut the same channels and heads, which only "
                        f"a criterion of the weights alone (l1) guarantees; use l1, or prune once and save the "
                        f"model (graphopt.checkpoints save) to load it for cached scoring")
    layers = _weights(gm)
    need = ([FFN] if what in ("ffn", "both") else []) + ([ATTN] if what in ("heads", "both") else [])
    for keys in need:
        if not any(all(f"{k}.weight" in w for k in keys) for w in layers.values()):
            raise PassError(f"prune_structured found no {'/'.join(keys)} weights named like Meta checkpoint keys "
                            f"(layers.N.feed_forward.w1/w2/w3, layers.N.attention.wq/wk/wv/wo): run it before "
                            f"merge_qkv / merge_gate_up, which replace them")
    has = lambda w, keys: all(f"{k}.weight" in w for k in keys)  # noqa: E731
    ffn = {p: w for p, w in sorted(layers.items()) if what in ("ffn", "both") and has(w, FFN)}
    attn_w = {p: w for p, w in sorted(layers.items()) if what in ("heads", "both") and has(w, ATTN)}
    hidden = {p: attr(gm, w["w1.weight"]).shape[0] for p, w in ffn.items()}
    attn = {}
    for p, w in attn_w.items():
        hd = ctx.model_args.head_dim if ctx.model_args else _head_dim(gm, w["wq.weight"])
        n_heads, n_kv = attr(gm, w["wq.weight"]).shape[0] // hd, attr(gm, w["wk.weight"]).shape[0] // hd
        assert n_kv * hd == attr(gm, w["wk.weight"]).shape[0] and n_heads % n_kv == 0, (p, n_heads, n_kv, hd)
        attn[p] = _Attn(n_heads, n_kv, hd)
    _check_counts(what, o, hidden, attn)
    params_before = param_count(gm)
    stats = {"params_before": params_before, "criterion": criterion, "budget": budget,
             "calibration_sequences": 0, "calibration_tokens": 0}
    if ratio == 0:
        return PassResult(gm, False, {**stats, "matches": 0, "params_after": params_before, "params_removed": 0,
                                      "ffn_channels_removed": 0, "kv_groups_removed": 0, "query_heads_removed": 0,
                                      "layers": {}})

    targets = {w[f"{k}.weight"] for w in ffn.values() for k in FFN} | \
              {w[f"{k}.weight"] for w in attn_w.values() for k in ATTN}
    calib = _calibrate(gm, ctx, targets) if criterion in NEEDS_CALIBRATION else None
    if calib is not None:
        stats.update(calibration_sequences=calib.n_sequences, calibration_tokens=calib.n_tokens)
    imp = lambda w, keys: {k: importance(criterion, attr(gm, w[f"{k}.weight"]), w[f"{k}.weight"], calib)  # noqa: E731
                           for k in keys}
    ffn_scores = {p: ffn_channel_scores(imp(w, FFN)) for p, w in ffn.items()}
    for p, w in attn_w.items():
        attn[p].q, attn[p].kv = head_scores(imp(w, ATTN), attn[p].head_dim)

    splits = [n for n in gm.graph.nodes if splits_last_dim(n)]  # RoPE's [B, T, H, -1, 2], before H changes
    report = {p: {} for p in sorted(set(ffn) | set(attn))}
    ffn_removed = groups_removed = q_removed = matches = 0
    for p, keep in _plan_ffn(ffn, hidden, ffn_scores, o).items():
        w = ffn[p]
        _take(gm, w["w1.weight"], keep, 0)
        _take(gm, w["w3.weight"], keep, 0)
        _take(gm, w["w2.weight"], keep, 1)
        ffn_removed += hidden[p] - len(keep)
        matches += 1
    for p in ffn:
        report[p]["ffn_channels"] = attr(gm, ffn[p]["w1.weight"]).shape[0]

    if budget == "global" and attn:
        want = global_group_budget([(a.n_heads, a.n_kv) for a in attn.values()], ratio)
        ranked = normalised([group_scores(a.q, a.kv) for a in attn.values()], o["normalize"])
        dropped = lowest_across_layers(ranked, want, [_cap(o["max_layer_ratio"], a.n_kv) for a in attn.values()])
        cuts = {p: (g, 0) for p, g in zip(attn, dropped)}
    else:
        cuts = {p: head_cut(a.n_heads, a.n_kv, ratio) for p, a in attn.items()}
    for p, a in attn.items():
        g, q = cuts[p]
        if g or q:
            kept_kv, kept_q = select_heads(a.q, a.kv, g, q)
            _apply_heads(gm, attn_w[p], a, kept_kv, kept_q)
            groups_removed += g
            q_removed += a.n_heads - len(kept_q)
            matches += 1
        report[p].update(query_heads=attr(gm, attn_w[p]["wq.weight"]).shape[0] // a.head_dim,
                         kv_heads=attr(gm, attn_w[p]["wk.weight"]).shape[0] // a.head_dim)
    if matches:
        kv_heads = {r["kv_heads"] for r in report.values() if "kv_heads" in r}
        if cache_input(gm) is not None and len(kv_heads) > 1:
            raise PassError(f"prune_structured: the layers keep different kv head counts ({sorted(kv_heads)}, "
                            f"budget global), but this graph's KV cache holds one count for every layer; use "
                            f"budget per_layer with heads on a cached graph")
        if kv_heads:
            set_cache_heads(gm, kv_heads.pop())
        try:
            refit_vals(gm, splits)
        except Exception as e:
            raise PassError(f"after pruning, {e}") from e
    params_after = param_count(gm)
    return PassResult(gm, matches > 0, {**stats, "matches": matches, "params_after": params_after,
                                        "params_removed": params_before - params_after,
                                        "ffn_channels_removed": ffn_removed, "kv_groups_removed": groups_removed,
                                        "query_heads_removed": q_removed, "layers": report})
