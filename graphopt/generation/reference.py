"""The eager reference generator: greedy completions by recomputing the whole sequence through the eager
model at every step (no KV cache), one request at a time. Slow by design; it is the fidelity oracle
the decode engine is compared with token for token, and what lm-eval's generate_until uses where no
engine is asked for.

    generator = ReferenceGenerator(model)
    completions = generator.generate([GenerationRequest(prompt_ids, max_new_tokens=64, stop_ids=(eos,))])
    generator.stats  # prefill / decode tokens and seconds of that call

Each step runs the model on [prompt + new tokens so far] (B = 1, positions 0..T-1, causal), applies
the LM head at the last position only (as transformers' generate does: logits_to_keep=1), and takes
the argmax of its float32 logits (the first of equal maxima). finish_of decides when a completion
ends (graphopt.generation.requests).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from graphopt.generation.requests import Completion, GenerationRequest, finish_of


def check_fits(requests: Sequence[GenerationRequest], max_seq_len: int) -> None:
    """ValueError naming the first request whose prompt + new tokens need more positions than the model has
    (the last new token is never fed back, so prompt + max_new_tokens - 1 positions)."""
    for i, r in enumerate(requests):
        need = len(r.prompt_ids) + r.max_new_tokens - 1
        if r.max_new_tokens and need > max_seq_len:
            raise ValueError(f"request {i}: {len(r.prompt_ids)} prompt tokens + {r.max_new_tokens} new tokens need "
                             f"{need} positions, more than the model's max_seq_len {max_seq_len}; left-truncate the "
                             f"prompt or ask for fewer tokens")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReferenceGenerator:
    """See the module docstring. model: a graphopt Transformer (or any module with its forward and
    `args.max_seq_len`), on the device it runs on."""

    def __init__(self, model: nn.Module, device=None):
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.max_seq_len = model.args.max_seq_len
        self.stats: dict = {}

    @torch.inference_mode()
    def next_token(self, ids: list[int]) -> int:
        """The greedy next token after `ids`: the whole sequence through the model, the head at its last position."""
        inp = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, T]
        hidden = self.model(inp, return_hidden=True)[:, -1:]  # [1, 1, dim]
        return int(self.model.output(hidden).float()[0, -1].argmax())

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = False) -> list[Completion]:
        """Completions of `requests`, in their order. stats: requests, generated_tokens, prefill_tokens /
        prefill_seconds / prefill_tok_s (each prompt's first forward), decode_tokens / decode_seconds /
        decode_tok_s (the tokens after each prompt's first), first_token_seconds (from the call to the
        first completion's first token), seconds."""
        requests = list(requests)
        check_fits(requests, self.max_seq_len)
        s = self.stats = dict(requests=len(requests), generated_tokens=0, prefill_tokens=0, prefill_seconds=0.0,
                              decode_tokens=0, decode_seconds=0.0, first_token_seconds=None)
        start = time.perf_counter()
        out = []
        for request in tqdm(requests, unit="prompt", desc="generating", disable=not progress, leave=False):
            out.append(self._one(request, start))
        s["seconds"] = time.perf_counter() - start
        s["prefill_tok_s"] = s["prefill_tokens"] / s["prefill_seconds"] if s["prefill_seconds"] else 0.0
        s["decode_tok_s"] = s["decode_tokens"] / s["decode_seconds"] if s["decode_seconds"] else 0.0
        return out

    def _one(self, request: GenerationRequest, start: float) -> Completion:
        s, prompt = self.stats, list(request.prompt_ids)
        if request.max_new_tokens == 0:
            return Completion([], "length", 0, {"prompt_tokens": len(prompt)})
        new_ids: list[int] = []
        while True:
            _sync(self.device)
            t0 = time.perf_counter()
            new_ids.append(self.next_token(prompt + new_ids))
            _sync(self.device)
            seconds = time.perf_counter() - t0
            if len(new_ids) == 1:
                s["prefill_tokens"] += len(prompt)
                s["prefill_seconds"] += seconds
                if s["first_token_seconds"] is None:
                    s["first_token_seconds"] = time.perf_counter() - start
            else:
                s["decode_tokens"] += 1
                s["decode_seconds"] += seconds
            done = finish_of(new_ids, request)
            if done is not None:
                s["generated_tokens"] += len(new_ids)
                kept, reason = done
                return Completion(kept, reason, len(new_ids), {"prompt_tokens": len(prompt)})
