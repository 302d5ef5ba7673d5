"""What a generator takes and gives: a prompt's token ids, how many new tokens at most and when to stop,
and the completion. Every generator (an eager loop that recomputes the whole sequence each step, the
static-KV-cache decode engine) takes GenerationRequests and returns Completions in the same order, so
the two can be compared token for token.

A completion ends at the first of: a token in `stop_ids` (e.g. EOS; not kept), the `stop_at` rule
(lm-eval's `until` strings, checked on decoded text; it says how many new ids to keep), or
`max_new_tokens`. Greedy only: the next token is the argmax of the last position's logits (the first
of equal maxima, as torch.argmax)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

StopRule = Callable[[list[int]], "int | None"]  # new ids so far -> how many of them to keep if it ends here


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_ids: tuple[int, ...] = ()  # ids that end the completion when generated (not part of it)
    stop_at: StopRule | None = None  # called after each new token; None = go on

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a generation request needs at least one prompt token")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


FINISH_REASONS = ("stop", "eos", "length")  # stop_at matched / a stop id / max_new_tokens reached


@dataclass
class Completion:
    ids: list[int]  # the new tokens kept (a stop id and what stop_at cut are not in it)
    finish: str  # one of FINISH_REASONS
    steps: int = 0  # decode steps this completion took (tokens generated, a stop id included)
    stats: dict = field(default_factory=dict)  # a generator's own figures (prefill / decode seconds, ...)


def finish_of(new_ids: list[int], request: GenerationRequest) -> tuple[list[int], str] | None:
    """After a new token was appended to `new_ids`: (the ids kept, the finish reason) if the completion
    ends here, else None. The one place every generator decides when to stop."""
    if new_ids and new_ids[-1] in request.stop_ids:
        return new_ids[:-1], "eos"
    if request.stop_at is not None:
        keep = request.stop_at(new_ids)
        if keep is not None:
            return new_ids[:keep], "stop"
    if len(new_ids) >= request.max_new_tokens:
        return new_ids, "length"
    return None
