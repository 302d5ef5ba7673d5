"""Generation speed of one run (an experiment with `measure: [score, generate]`), measured in its worker after
the scoring: the decode engine (graphopt.generation.engine) optimised by the run's passes and compiler
(capture none: the eager model reading its KV cache), greedy, exactly `generate.max_new_tokens` per
prompt (EOS does not stop it, so every batch size decodes the same tokens).

At each batch size b of `generate.batch_sizes` (1 always included): max(b, limit) prompts through b
slots (each prompt alone at b = 1), max(1, warmup) short calls first (first-call costs are not decode
speed), then `repeats` timed calls (median).
Columns of the row:
    prefill_tok_s    prompt tokens per second of the prefills at batch 1
    decode_tok_s_b1  new tokens per second after each prompt's first, at batch 1
    decode_tok_s     the same at the best batch size; best_batch is that size
    ttft_s           time to first token at batch 1: a prompt's prefill through its first new token (mean)
    gen_peak_mem_mb  peak memory while generating (CUDA: of generation alone; CPU: the process's peak RSS)
    gen_passes       the passes that ran on the decode step's graph (the run's, + cache_attention)
    gen_error        why generation could not be measured for this run ("" when it was): the run's scores
                     stay, its generation columns are empty
"""
from __future__ import annotations

import statistics
import traceback
from pathlib import Path

from graphopt.generation.engine import DecodeEngine
from graphopt.generation.requests import GenerationRequest
from graphopt.generation.step import build_generation_graph
from graphopt.generation.text import encode_prompt
from graphopt.runner.schema import GenerateConfig
from graphopt.runner.timing import peak_memory_mb, reset_peak_memory

GEN_COLUMNS = ("prefill_tok_s", "decode_tok_s_b1", "decode_tok_s", "best_batch", "ttft_s", "gen_peak_mem_mb",
               "gen_passes", "gen_error")


def generation_prompts(gen: GenerateConfig, tokenizer, requests, max_seq_len: int) -> list[tuple[int, ...]]:
    """Up to `limit` prompts' token ids: the lines of `prompts` (encoded as the tokenizer's default does) or
    the distinct contexts of the scoring requests, each left-truncated to leave max_new_tokens positions."""
    if gen.prompts is not None:
        lines = [line for line in Path(gen.prompts).read_text().splitlines() if line.strip()]
        prompts = [encode_prompt(tokenizer, line) for line in lines[:gen.limit]]
    else:
        prompts = list(dict.fromkeys(tuple(r.context_ids) for r in requests))[:gen.limit]
    room = max_seq_len - gen.max_new_tokens + 1
    prompts = [p[-room:] for p in prompts if p]
    if not prompts:
        raise ValueError(f"no prompts to generate from ({gen.prompts or 'the data contexts'})")
    return prompts


def _timed_calls(engine: DecodeEngine, requests: list[GenerationRequest], warmup: int, repeats: int) -> dict:
    """The engine's stats of `repeats` calls after `warmup` short ones: medians of the rates."""
    short = [GenerationRequest(r.prompt_ids, min(2, r.max_new_tokens)) for r in requests]
    for _ in range(max(warmup, 1)):
        engine.generate(short)
    runs = []
    for _ in range(repeats):
        engine.generate(requests)
        runs.append(dict(engine.stats))
    pick = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {"prefill_tok_s": pick("prefill_tok_s"), "decode_tok_s": pick("decode_tok_s"),
            "ttft_s": statistics.median(r["prefill_seconds"] / max(r["requests"], 1) for r in runs)}


def measure_generation(model, tokenizer, requests, run, gen: GenerateConfig, device, warmup: int,
                       repeats: int) -> dict:
    """The GEN_COLUMNS of this run; a failure (a pass the decode step cannot take, a prompt too long, ...) is
    gen_error, never an exception."""
    try:
        reset_peak_memory(device)
        pipeline = None if run.capture == "none" else list(run.passes)
        graph = build_generation_graph(model, pipeline, run.compiler, device, tokenizer=tokenizer)
        prompts = generation_prompts(gen, tokenizer, requests, model.args.max_seq_len)
        by_batch = {}
        for b in sorted(set(gen.batch_sizes) | {1}):
            batch = [GenerationRequest(prompts[i % len(prompts)], gen.max_new_tokens) for i in
                     range(max(b, len(prompts)))]
            engine = DecodeEngine(model, slots=b, device=device, graph=graph)
            by_batch[b] = _timed_calls(engine, batch, warmup, max(repeats, 1))
        best = max(by_batch, key=lambda b: by_batch[b]["decode_tok_s"])
        return {"prefill_tok_s": by_batch[1]["prefill_tok_s"], "decode_tok_s_b1": by_batch[1]["decode_tok_s"],
                "decode_tok_s": by_batch[best]["decode_tok_s"], "best_batch": best, "ttft_s": by_batch[1]["ttft_s"],
                "gen_peak_mem_mb": peak_memory_mb(device), "gen_passes": " + ".join(graph.pass_names) or "-",
                "gen_error": ""}
    except Exception as e:  # noqa: BLE001 - the run's scores stand; its generation columns say why they are empty
        first = traceback.format_exception_only(type(e), e)[-1].strip()
        return {**{c: None for c in GEN_COLUMNS}, "gen_error": first}
