"""Text in, text out: prompts encoded as the tokenizer's default encoding does (BOS when it adds one),
generation stopped at EOS and at stop strings, completions decoded. What `graphopt generate` and
`generate_text` use; the decode engine itself works on token ids (graphopt.generation.requests).

    texts = generate_text(model, tokenizer, ["Once upon a time"], max_new_tokens=32, pipeline="exact-cpu")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from graphopt.generation.engine import DecodeEngine
from graphopt.generation.requests import Completion, GenerationRequest, StopRule


def encode_prompt(tokenizer, text: str, add_bos: bool | None = None) -> tuple[int, ...]:
    """The prompt's ids; BOS first when add_bos (None: the tokenizer's own default, add_bos_token)."""
    add_bos = getattr(tokenizer, "add_bos_token", False) if add_bos is None else add_bos
    bos = getattr(tokenizer, "bos_id", None)
    return tuple(([bos] if add_bos and bos is not None else []) + list(tokenizer.encode(text)))


def decode(tokenizer, ids: Sequence[int]) -> str:
    """The tokenizer's text of ids; a tokenizer that cannot decode (the file-free word-hash tokenizer of
    random-weight presets: words are hashed) shows the ids, as "[id]" each."""
    if hasattr(tokenizer, "decode"):
        return tokenizer.decode(list(ids))
    return "".join(f"[{i}]" for i in ids)


def stop_strings_rule(tokenizer, stops: Sequence[str]) -> StopRule | None:
    """A stop rule that ends a completion once its decoded text holds one of `stops` (the ids are all
    kept; cut_at_stop cuts the text). None when there are no stop strings."""
    stops = [s for s in stops if s]
    if not stops:
        return None
    if not hasattr(tokenizer, "decode"):
        raise ValueError(f"stop strings need a tokenizer that decodes ids to text; {tokenizer!r} cannot")

    def rule(new_ids: list[int]) -> int | None:
        text = tokenizer.decode(new_ids)
        return len(new_ids) if any(s in text for s in stops) else None
    return rule


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (lm-eval's `until`)."""
    for s in stops:
        if s:
            text = text.split(s, 1)[0]
    return text


@dataclass
class TextCompletion:
    prompt: str
    text: str
    finish: str  # graphopt.generation.requests.FINISH_REASONS
    prompt_tokens: int
    new_tokens: int


def text_requests(tokenizer, prompts: Sequence[str], max_new_tokens: int, stops: Sequence[str] = (),
                  add_bos: bool | None = None, stop_at_eos: bool = True) -> list[GenerationRequest]:
    eos = getattr(tokenizer, "eos_id", None)
    stop_ids = (eos,) if stop_at_eos and eos is not None else ()
    rule = stop_strings_rule(tokenizer, stops)
    out = []
    for i, p in enumerate(prompts):
        ids = encode_prompt(tokenizer, p, add_bos)
        if not ids:
            raise ValueError(f"prompt {i + 1} is empty and the tokenizer adds no BOS: nothing to continue from")
        out.append(GenerationRequest(ids, max_new_tokens, stop_ids, rule))
    return out


def decode_completions(tokenizer, prompts: Sequence[str], requests: Sequence[GenerationRequest],
                       completions: Sequence[Completion], stops: Sequence[str] = ()) -> list[TextCompletion]:
    return [TextCompletion(p, cut_at_stop(decode(tokenizer, c.ids), stops), c.finish, len(r.prompt_ids), c.steps)
            for p, r, c in zip(prompts, requests, completions)]


def generate_text(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, stops: Sequence[str] = (),
                  pipeline="exact", compiler: str = "none", add_bos: bool | None = None, stop_at_eos: bool = True,
                  progress: bool = False, engine: DecodeEngine | None = None, **engine_kwargs) -> list[TextCompletion]:
    """Greedy completions of `prompts` (see the module docstring). engine: a DecodeEngine built already
    (pipeline, compiler and engine_kwargs are then unused)."""
    requests = text_requests(tokenizer, prompts, max_new_tokens, stops, add_bos, stop_at_eos)
    if engine is None:
        engine = DecodeEngine(model, pipeline, compiler, **engine_kwargs)
    with torch.inference_mode():
        completions = engine.generate(requests, progress=progress)
    return decode_completions(tokenizer, prompts, requests, completions, stops)
