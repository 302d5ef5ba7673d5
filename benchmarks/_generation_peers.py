"""What benchmarks/generation.py times and compares: graphopt's decode engine and transformers' `generate`
(eager, and its static cache + torch.compile) on the same prompts, the host's memory bandwidth, peak
memory per configuration, and token-for-token agreement with the step and logit margin of the first
difference. Used by benchmarks only."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from graphopt.generation.engine import DecodeEngine
from graphopt.generation.requests import GenerationRequest

# ---------------------------------------------------------------------------------------- the host


def memory_bandwidth_gbs(mib: int = 1024, reps: int = 5) -> dict:
    """Streaming-read bandwidth with this process's threads, best of `reps`: a sum over `mib` MiB and a
    matrix-vector product over a [mib MiB] fp32 matrix (what a batch-1 decode step does with its weights)."""
    n = mib * (1 << 20) // 4
    x = torch.ones(n)
    w = x.view(-1, 4096)
    v = torch.ones(4096)
    best_sum = best_mv = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best_sum = min(best_sum, time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.mv(w, v)
        best_mv = min(best_mv, time.perf_counter() - t0)
    nbytes = n * 4
    return {"bandwidth_sum_gbs": nbytes / best_sum / 1e9, "bandwidth_gemv_gbs": nbytes / best_mv / 1e9,
            "bandwidth_gbs": nbytes / min(best_sum, best_mv) / 1e9}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def weight_bytes(model) -> int:
    """Bytes a batch-1 decode step reads: every parameter once (a tied table is the LM head: once; the
    embedding lookup reads a row of it)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())  # (parameters() counts a tied one once)


def measure_peak_rss(fn):
    """(fn(), peak resident memory in MiB while it ran): Linux's VmHWM, reset first (/proc/self/clear_refs)."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    out = fn()
    hwm = next((int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM")), 0) \
        if status.exists() else 0
    return out, hwm / 1024


# ---------------------------------------------------------------------------------------- graphopt


def graphopt_run(engine: DecodeEngine, prompts: list[list[int]], new: int, stop_ids=()) -> dict:
    requests = [GenerationRequest(tuple(p), new, tuple(stop_ids)) for p in prompts]
    t0 = time.perf_counter()
    out = engine.generate(requests)
    seconds = time.perf_counter() - t0
    s = engine.stats
    return {"ids": [c.ids for c in out], "seconds": seconds, "new_tokens": s["generated_tokens"],
            "prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"],
            "total_tok_s": s["generated_tokens"] / seconds}


# ---------------------------------------------------------------------------------------- transformers


def _left_padded(prompts: list[list[int]], pad: int):
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (T - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def hf_generate(hf, prompts: list[list[int]], new: int, batch: int, stop_ids=(), pad: int = 0,
                scores: bool = False) -> dict:
    """transformers' greedy generate in batches of `batch` (longest prompts first, left padding, as lm-eval's
    hf model batches): {ids (each cut at its first stop id), seconds[, scores: per prompt the logits
    [new, V] of each step]}. Without stop ids every row makes exactly `new` tokens (the model's own
    generation_config.eos_token_id must be None: see hf_peer)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out_ids: list = [None] * len(prompts)
    out_scores: list = [None] * len(prompts)
    t0 = time.perf_counter()
    for lo in range(0, len(order), batch):
        idx = order[lo:lo + batch]
        ids, mask = _left_padded([prompts[i] for i in idx], pad)
        kwargs = dict(max_new_tokens=new, do_sample=False, pad_token_id=pad, attention_mask=mask,
                      eos_token_id=list(stop_ids) or None)
        if scores:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        res = hf.generate(ids, **kwargs)
        seqs = res.sequences if scores else res
        for b, i in enumerate(idx):
            gen = seqs[b, ids.shape[1]:].tolist()
            cut = next((k for k, t in enumerate(gen) if t in stop_ids), len(gen))
            out_ids[i] = gen[:cut]
            if scores:
                out_scores[i] = torch.stack([s[b] for s in res.scores]).float()
    out = {"ids": out_ids, "seconds": time.perf_counter() - t0}
    if scores:
        out["scores"] = out_scores
    return out


def hf_rates(hf, prompts: list[list[int]], new: int, batch: int, pad: int = 0) -> dict:
    """Prefill and decode tokens/s of transformers' generate: a call making 1 token (prefill) and one making
    `new` (decode rate = the extra tokens over the extra time), as graphopt's engine separates them."""
    one = hf_generate(hf, prompts, 1, batch, pad=pad)
    full = hf_generate(hf, prompts, new, batch, pad=pad)
    n = len(prompts)
    prompt_tokens = sum(len(p) for p in prompts)
    extra = max(full["seconds"] - one["seconds"], 1e-9)
    return {"ids": full["ids"], "seconds": full["seconds"], "new_tokens": n * new,
            "prefill_tok_s": prompt_tokens / one["seconds"], "decode_tok_s": n * (new - 1) / extra,
            "total_tok_s": n * new / full["seconds"]}


def hf_peer(model):
    """Our Transformer -> transformers' LlamaForCausalLM with the same weights, in the model's dtype, that
    stops only where a call asks (no default EOS)."""
    from benchmarks._hf_peer import to_transformers
    hf = to_transformers(model).to(next(model.parameters()).dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def hf_static_compiled(hf):
    """transformers' fastest documented generate: a static KV cache and torch.compile of the forward."""
    hf.generation_config.cache_implementation = "static"
    hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
    return hf


# ---------------------------------------------------------------------------------------- agreement


def agreement(got: list[list[int]], want: list[list[int]], want_scores=None) -> dict:
    """Token-for-token comparison of greedy completions: identical share, and per differing completion
    its first differing step and (want_scores given) the reference's top-1 minus top-2 logit there."""
    diffs = []
    for i, (a, b) in enumerate(zip(got, want)):
        if a == b:
            continue
        k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        row = {"prompt": i, "step": k}
        if want_scores is not None and k < len(want_scores[i]):
            top = want_scores[i][k].topk(2).values
            row["margin"] = float(top[0] - top[1])
        diffs.append(row)
    return {"identical": len(got) - len(diffs), "n": len(got), "diffs": diffs}
