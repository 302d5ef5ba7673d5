"""Run a scoring function over batches, and evaluate a model on HellaSwag rows end to end."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphopt.compile_cache import count_compiles
from graphopt.scoring.batch import ScoreBatch, ScoreModule, all_by_owner, sum_by_owner
from graphopt.scoring.metrics import choice_metrics
from graphopt.scoring.requests import build_requests, first_identical
from graphopt.scoring.strategies import build_batches, strategy_options as strategy_options_of


def auto_pipeline(device, model_args=None) -> tuple[str, str]:
    """The fastest exact path (answers equal to the per-pair reference in fp32) for a device, compile
    included: (pipeline, compiler). CPU: exact-cpu, no compiler: its oneDNN matmuls on weights packed
    once match inductor-frozen's speed without its compile (which inductor cannot cache). CUDA: gpu
    (exact + the block-skipping attention kernel), run as the FX graph: 62 % MFU on an H100 with no
    compile (benchmarks/RESULTS.md); exact for a sliding-window model (the kernel has no window)."""
    if torch.device(device).type != "cuda":
        return "exact-cpu", "none"
    return ("exact" if getattr(model_args, "sliding_window", None) else "gpu"), "none"


def _specs(pipeline) -> list:
    from graphopt.pipeline import parse_pipeline
    return parse_pipeline(pipeline) if pipeline is not None else []


def _sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_requests(fn: Callable[..., Tensor], batches: Sequence[ScoreBatch], n_requests: int,
                   progress: bool = True, device="cpu", desc: str = "scoring") -> Tensor:
    """Log-likelihood of every request, float64 [n_requests].

    fn(input_ids, positions, mask, score_idx, targets) -> [N] token log-probs (a ScoreModule, its
    captured graph, or a compiled one); each batch is moved to `device` first. Per-token scores are
    summed per request by `owners` (entries with owner -1 are padding). Every request must be scored.
    """
    return score_requests_greedy(fn, batches, n_requests, progress, device, desc)[0]


def score_requests_greedy(fn: Callable[..., Tensor | tuple[Tensor, Tensor]], batches: Sequence[ScoreBatch],
                          n_requests: int, progress: bool = True, device="cpu",
                          desc: str = "scoring") -> tuple[Tensor, Tensor | None]:
    """(log-likelihood [n_requests] float64, is_greedy [n_requests] bool or None) as score_requests; fn
    may return ([N] log-probs, [N] bool: target is the argmax) as ScoreModule(greedy=True) does, and a
    request is greedy when all its tokens are (lm-eval's is_greedy). None when fn returns log-probs only."""
    total = torch.zeros(n_requests, dtype=torch.float64)
    greedy = None
    seen = torch.zeros(n_requests, dtype=torch.bool)
    with torch.inference_mode(), tqdm(total=n_requests, unit="req", desc=desc, disable=not progress,
                                      leave=False) as bar:
        for batch in batches:
            out = fn(*batch.to(device).model_inputs())  # [N] or ([N], [N] bool)
            token_logprobs = out[0] if isinstance(out, (tuple, list)) else out
            assert token_logprobs.shape == batch.targets.shape, \
                f"scoring fn returned {tuple(token_logprobs.shape)}, expected {tuple(batch.targets.shape)}"
            total += sum_by_owner(token_logprobs, batch.owners, n_requests)
            if isinstance(out, (tuple, list)):
                batch_greedy = all_by_owner(out[1], batch.owners, n_requests)
                greedy = batch_greedy if greedy is None else greedy & batch_greedy
            owners = batch.owners.cpu()  # the batch may already live on `device`; `seen` stays on the host
            owners = owners[owners >= 0].unique()
            bar.update(int((~seen[owners]).sum()))
            seen[owners] = True
    missing = (~seen).nonzero().flatten()
    if len(missing):
        raise AssertionError(f"{len(missing)} requests were never scored (first: {missing[:5].tolist()}); "
                             f"the batch builder dropped them")
    return total, greedy


def evaluate(model: nn.Module, tokenizer, rows: Sequence, batch_size: int = 1, strategy: str | None = None,
             device="cpu", progress: bool = True, add_bos: bool | None = None, pipeline=None, compiler: str = "none",
             **strategy_options) -> dict:
    """Score HellaSwag `rows` with `model` (already on `device`) as lm-evaluation-harness does.

    strategy: None -> "per_pair" when batch_size == 1 and no pipeline, "packed" with a pipeline, else
    "padded"; any name in STRATEGIES, its other options as keyword arguments (batch_size goes to
    strategies that take one). add_bos: lm-eval's add_bos_token, see build_requests (None: the tokenizer's default). Pairs longer than
    model.args.max_seq_len are left-truncated. pipeline (None: the eager model): a named pipeline or
    pass list, run through graphopt.optimize with `compiler`; "auto": the fastest exact path for the
    device (auto_pipeline).
    Returns acc, acc_norm, loglik (per row, 4 floats), choices (argmax per row), choices_norm,
    n_items, n_requests, tokens_scored (continuation tokens), tokens_processed (input tokens incl.
    padding), seconds (scoring, device-synchronised: a compiler's work on the first calls included),
    setup_seconds (capture + passes), strategy, pipeline (the passes' labels), compiler, n_shapes
    (distinct batch shapes), n_compiles / cache_hits (compiles done while scoring, and how many came
    from the compile cache).
    """
    if any(getattr(r, "label", 0) < 0 for r in rows):
        raise ValueError("rows without labels (label -1, e.g. the HellaSwag test split) cannot be scored for "
                         "accuracy; use the validation split")
    if pipeline == "auto":
        pipeline, compiler = auto_pipeline(device, getattr(model, "args", None))
    if strategy is None:
        strategy = "packed" if pipeline is not None else "per_pair" if batch_size == 1 else "padded"
    if "batch_size" in strategy_options_of(strategy):
        strategy_options.setdefault("batch_size", batch_size)
    elif batch_size != 1:
        raise ValueError(f"scoring strategy {strategy!r} takes no batch_size (got {batch_size})")
    param, dev = next(model.parameters(), None), torch.device(device)
    if param is not None and (param.device.type != dev.type or dev.index not in (None, param.device.index)):
        raise ValueError(f"the model is on {param.device} but evaluate() was asked for device {device!r}; "
                         f"move it first (model.to({str(device)!r}))")
    max_length = getattr(getattr(model, "args", None), "max_seq_len", None)
    requests = build_requests(rows, tokenizer, add_bos=add_bos, max_length=max_length)
    batches = build_batches(requests, strategy, **strategy_options)
    _sync(device)
    start = time.perf_counter()
    scorer = ScoreModule(model).eval()
    if pipeline is not None or compiler != "none":
        from graphopt.optimize_model import optimize
        scorer = optimize(scorer, batches[0].to(device).model_inputs(), pipeline or (), compiler,
                          capture="export" if pipeline is not None else "none")
    _sync(device)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with count_compiles() as compiled:
        loglik = score_requests(scorer, batches, len(requests), progress=progress, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    loglik = loglik[first_identical(requests)]  # identical requests: one value (exact ties stay ties)

    result = choice_metrics(rows, requests, loglik)
    result.update(
        n_requests=len(requests),
        tokens_scored=sum(len(r.continuation_ids) for r in requests),
        tokens_processed=sum(b.n_tokens for b in batches),
        seconds=seconds,
        setup_seconds=setup_seconds,
        strategy=strategy,
        pipeline=[s.label() for s in _specs(pipeline)],
        compiler=compiler,
        n_compiles=compiled.compiles,
        cache_hits=compiled.cache_hits,
        n_shapes=len({tuple(tuple(t.shape) for t in b.model_inputs()) for b in batches}),
    )
    return result
