"""lm-eval's generate_until requests -> GenerationRequests -> the strings lm-eval gets, as lm-eval 0.4.13's
hf model (HFLM.generate_until) makes them, on any graphopt generator (graphopt.generation).

Per request (context, gen_kwargs):
- gen_kwargs through lm-eval's own normalize_gen_kwargs (max_gen_toks and its aliases, the model's
  max_gen_toks when none is given; do_sample / temperature); greedy only: sampling, beams or a
  penalty are refused naming the task (check_greedy, also run on the task configs before the model
  loads: graphopt.harness.tasks);
- `until` through lm-eval's handle_stop_sequences: a string or list, the EOS token's text
  (decoded with special tokens) appended;
- the prompt: tok_encode (HFLM's BOS rules), left-truncated to max_length - max_gen_toks tokens;
- stopping: a completion ends when the model emits an EOS id (the checkpoint's generation_config
  eos_token_id, as transformers' generate stops), at max_gen_toks tokens, or when a stop string
  appears in the decoded last len(tokens(stop)) + 2 new tokens (lm-eval's MultiTokenEOSCriteria,
  special tokens spelled out) - checked per sequence;
- the answer: the new tokens (an EOS included, as transformers returns it) decoded without special
  tokens, cut at the first occurrence of each stop string (lm-eval's postprocess_generated_text).
A batch of hf's keeps decoding a sequence whose stop string appeared until its batch-mates stop too;
the text it then cuts is the same, so one sequence's answer does not depend on its batch.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from graphopt.checkpoints.encode import tok_encode
from graphopt.errors import UserError
from graphopt.generation.requests import GenerationRequest

GREEDY_IGNORED = ("top_p", "top_k", "min_p", "typical_p")  # what transformers' greedy search ignores
NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "num_return_sequences": 1, "no_repeat_ngram_size": 0}
HANDLED = ("until", "max_gen_toks", "do_sample", "temperature")


def check_greedy(task: str, gen_kwargs: dict, default_max_gen_toks: int) -> dict:
    """lm-eval's normalised gen_kwargs of `task` if they ask for greedy decoding, else UserError naming the
    task and the key. Sampling knobs that greedy decoding ignores (top_p, ...) are accepted, as hf accepts them."""
    from lm_eval.models.utils import normalize_gen_kwargs

    if not isinstance(gen_kwargs, dict):
        raise UserError(f"task {task}: generation_kwargs must be a mapping, got {gen_kwargs!r}")
    try:
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks))
    except (TypeError, ValueError) as e:
        raise UserError(f"task {task}: generation_kwargs {gen_kwargs}: {e}") from None
    if kwargs.get("do_sample"):
        raise UserError(f"task {task}: generation_kwargs ask for sampling (do_sample: {gen_kwargs.get('do_sample')}, "
                        f"temperature: {gen_kwargs.get('temperature')}); graphopt generates greedily only "
                        "(do_sample: false or temperature: 0) - set them with --gen_kwargs or run the task with "
                        "another model")
    if "max_length" in kwargs:
        raise UserError(f"task {task}: generation_kwargs max_length={kwargs['max_length']!r} (prompt + new tokens "
                        "of a padded batch) is not available; use max_gen_toks")
    for key, value in kwargs.items():
        if key in HANDLED or key in GREEDY_IGNORED or (key in NEUTRAL and value == NEUTRAL[key]):
            continue
        raise UserError(f"task {task}: generation_kwargs {key}={value!r} is not available: graphopt generates "
                        f"greedily (accepted: {', '.join(HANDLED + GREEDY_IGNORED)}, and "
                        f"{', '.join(f'{k}={v}' for k, v in NEUTRAL.items())})")
    if kwargs["max_gen_toks"] < 0:
        raise UserError(f"task {task}: max_gen_toks must be >= 0, got {kwargs['max_gen_toks']}")
    return kwargs


def decode_text(tok, ids, skip_special_tokens: bool = True) -> str:
    if not hasattr(tok, "decode"):
        raise UserError(f"{tok!r} cannot turn token ids into text, so it cannot generate; load a checkpoint with "
                        "a tokenizer file (tokenizer.json, tokenizer.model or a .gguf's own)")
    return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def eos_ids(pretrained: str, tok) -> tuple[int, ...]:
    """The ids transformers' generate stops at: generation_config.json's eos_token_id (an id or a list), else
    config.json's, else the tokenizer's EOS (a .gguf or a preset)."""
    folder = Path(pretrained)
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if folder.is_dir() and path.is_file():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (json.JSONDecodeError, AttributeError) as e:
                raise UserError(f"{path}: not a JSON mapping ({e})") from None
            if value is not None:
                return tuple(value) if isinstance(value, list) else (int(value),)
    return () if tok.eos_id is None else (tok.eos_id,)


class StopStrings:
    """lm-eval's MultiTokenEOSCriteria for one sequence (a stop string in the decoded last tokens(stop) + 2
    new tokens) and the EOS ids: the new ids so far -> how many to keep (all) if it ends here, else None."""

    def __init__(self, tok, until: list[str], eos: tuple[int, ...]):
        self.tok, self.eos = tok, set(eos)
        self.windows = [(s, len(tok.encode(s)) + 2) for s in until]

    def __call__(self, new_ids: list[int]) -> int | None:
        if new_ids[-1] in self.eos:
            return len(new_ids)
        for stop, window in self.windows:
            if stop in decode_text(self.tok, new_ids[-window:], skip_special_tokens=False):
                return len(new_ids)
        return None


@dataclass
class UntilRequest:
    """One generate_until request made ready: what the generator gets and the stop strings that cut its text."""
    request: GenerationRequest
    until: list[str]
    truncated: int = 0  # prompt tokens dropped on the left


def until_request(task: str, context: str, gen_kwargs: dict, tok, *, add_bos_token: bool | None, max_length: int,
                  default_max_gen_toks: int, eos: tuple[int, ...], eos_text: str) -> UntilRequest:
    """One lm-eval generate_until request (context, gen_kwargs) as hf's generate_until prepares it."""
    from lm_eval.models.utils import handle_stop_sequences

    kwargs = check_greedy(task, gen_kwargs, default_max_gen_toks)
    try:
        until = handle_stop_sequences(kwargs["until"], eos=eos_text)
    except ValueError as e:
        raise UserError(f"task {task}: generation_kwargs until: {e}") from None
    max_gen_toks = kwargs["max_gen_toks"]
    room = max_length - max_gen_toks  # tokens left for the prompt
    if room <= 0:
        raise UserError(f"task {task}: max_gen_toks {max_gen_toks} leaves no room for a prompt in the model's window "
                        f"of {max_length} tokens (max_length)")
    ids = tok_encode(tok, context, None, add_bos_token)
    if not ids:
        raise UserError(f"task {task}: an empty prompt (the context {context!r} encodes to no tokens)")
    kept = ids[-room:]
    return UntilRequest(GenerationRequest(tuple(kept), max_gen_toks, stop_at=StopStrings(tok, until, eos)), until,
                        len(ids) - len(kept))


def answer_text(tok, new_ids: list[int], until: list[str]) -> str:
    """The string lm-eval gets: the new tokens decoded without special tokens, cut at the stop strings."""
    from lm_eval.models.utils import postprocess_generated_text

    return postprocess_generated_text(decode_text(tok, new_ids), until, None)


def warn_truncated(prepared: list[UntilRequest]) -> None:
    cut = [p for p in prepared if p.truncated]
    if cut:
        warnings.warn(f"{len(cut)} generate_until prompt(s) longer than max_length - max_gen_toks were left-truncated "
                      f"(as lm-eval's hf model does; the longest lost {max(p.truncated for p in cut)} tokens)",
                      stacklevel=3)
