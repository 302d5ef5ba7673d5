"""Evaluate a model on HellaSwag rows end to end: rows -> requests -> the Scorer -> acc / acc_norm."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from graphopt.compile_cache import count_compiles
from graphopt.scoring.metrics import choice_metrics
from graphopt.scoring.requests import build_requests
from graphopt.scoring.scorer import Scorer


def evaluate(model: nn.Module, tokenizer, rows: Sequence, batch_size: int = 1, strategy: str | None = None,
             device="cpu", progress: bool = True, add_bos: bool | None = None, pipeline=None, compiler: str | None = None,
             keep_model_weights: bool = True, **strategy_options) -> dict:
    """Score HellaSwag `rows` with `model` (already on `device`) as lm-evaluation-harness does.

    strategy: None -> "per_pair" when batch_size == 1 and no pipeline, "packed" with a pipeline, else
    "padded"; any name in STRATEGIES, its other options as keyword arguments (batch_size goes to
    strategies that take one). add_bos: lm-eval's add_bos_token, see build_requests (None: the tokenizer's default). Pairs longer than
    model.args.max_seq_len are left-truncated. pipeline (None: the eager model): a named pipeline or
    pass list, run through graphopt.optimize with `compiler`; "auto": the fastest exact path for the
    device and compiler (graphopt.scoring.scorer.auto_pipeline). The requests go through one Scorer.
    Returns acc, acc_norm, loglik (per row, 4 floats), choices (argmax per row), choices_norm,
    n_items, n_requests, tokens_scored (continuation tokens), tokens_processed (input tokens incl.
    padding), seconds (scoring, device-synchronised: a compiler's work on the first calls included),
    setup_seconds (capture + passes), strategy, pipeline (the passes' labels), compiler, n_shapes
    (distinct batch shapes), n_compiles / cache_hits (compiles done while scoring, and how many came
    from the compile cache), setup_split (where the setup went: graphopt.time_line.merge_setups).
    keep_model_weights=False: the model's weights the optimised graph holds in another form are freed as
    it is built (the Scorer's option): less memory, and the model cannot run eagerly afterwards.
    """
    if any(getattr(r, "label", 0) < 0 for r in rows):
        raise ValueError("rows without labels (label -1, e.g. the HellaSwag test split) cannot be scored for "
                         "accuracy; use the validation split")
    param, dev = next(model.parameters(), None), torch.device(device)
    if param is not None and (param.device.type != dev.type or dev.index not in (None, param.device.index)):
        raise ValueError(f"the model is on {param.device} but evaluate() was asked for device {device!r}; "
                         f"move it first (model.to({str(device)!r}))")
    scorer = Scorer(model, pipeline, compiler, device=device, layout=strategy, batch_size=batch_size,
                    layout_options=strategy_options, keep_model_weights=keep_model_weights)
    max_length = getattr(getattr(model, "args", None), "max_seq_len", None)
    requests = build_requests(rows, tokenizer, add_bos=add_bos, max_length=max_length)
    prepared = scorer.prepare(requests)
    scorer.setup(prepared)
    with count_compiles() as compiled:
        scores = scorer.score_prepared(prepared, progress=progress)
    batches = prepared.batches

    result = choice_metrics(rows, requests, scores.loglik)
    result.update(
        n_requests=len(requests),
        tokens_scored=sum(len(r.continuation_ids) for r in requests),
        tokens_processed=prepared.tokens,
        seconds=scores.seconds,
        setup_seconds=scorer.setup_seconds,
        setup_split=scorer.setup_split(),
        strategy=scorer.layout,
        pipeline=scorer.labels,
        compiler=scorer.compiler,
        n_compiles=compiled.compiles,
        cache_hits=compiled.cache_hits,
        n_shapes=len({tuple(tuple(t.shape) for t in b.model_inputs()) for b in batches}),
    )
    return result
