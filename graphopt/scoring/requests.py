"""HellaSwag rows -> scoring requests, tokenised as lm-evaluation-harness's HFLM does."""
from __future__ import annotations

from typing import Sequence

from graphopt.checkpoints.encode import prefix_token_id, tok_encode
from graphopt.scoring.batch import Request

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: the continuation is " " + ending


def encode_pair(tokenizer, context: str, continuation: str,
                add_bos: bool | None = None) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `loglikelihood` + `_encode_pair` + HFLM.tok_encode;
    add_bos is lm-eval's add_bos_token (None: the tokenizer's default, see tok_encode).

    Trailing spaces of the context move to the front of the continuation; the continuation tokens are
    what encode(context + continuation) has beyond len(encode(context)), so a token that straddles the
    boundary belongs to the continuation. An empty context: the continuation is encoded without
    special tokens and the context is [prefix_token_id], unless the continuation already starts with
    that token, which then becomes the context.
    """
    if context == "":
        cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, add_bos_token=add_bos)
    context_ids = tok_encode(tokenizer, context, add_bos_token=add_bos)
    return context_ids, whole[len(context_ids):]


def fit_context(context_ids, continuation_ids, max_length: int | None, where: str) -> tuple:
    """lm-eval's truncation: a pair longer than max_length + 1 tokens keeps the right end of
    (context + continuation), i.e. loses context tokens from the left; a continuation longer than the
    model's window is an error naming the request."""
    if max_length is None:
        return tuple(context_ids), tuple(continuation_ids)
    if len(continuation_ids) > max_length:
        raise ValueError(f"{where}: the continuation has {len(continuation_ids)} tokens, more than the model's "
                         f"context window of {max_length} tokens")
    keep = max_length + 1 - len(continuation_ids)  # context tokens that fit in front of the continuation
    return tuple(context_ids[-keep:]), tuple(continuation_ids)


def build_requests(rows: Sequence, tokenizer, add_bos: bool | None = None,
                   max_length: int | None = None) -> list[Request]:
    """One Request per (row, ending), in row order then ending order.

    context = row.query, continuation = " " + ending, tokenised by `encode_pair`.

    BOS: as lm-eval 0.4.13's hf model (see graphopt.checkpoints.encode): add_bos None follows the tokenizer's default
    (a Llama-2/3 tokenizer prepends BOS, Qwen2's and graphopt's word-hash tokenizer do not); True / False
    force it (lm-eval's add_bos_token). BOS goes in front of both encodings, so the continuation tokens
    do not change. `tokenizer.encode` must not add special tokens itself.

    max_length: the model's context window. A pair longer than max_length + 1 tokens loses tokens
    from the left of its context, as lm-eval's `(context + continuation)[-(max_length + 1):]`.

    Request.question is the position of the row in `rows`; continuation_chars = len(ending), the
    string lm-eval's acc_norm divides by (`completion_len = len(choice)` over doc_to_choice, which
    excludes the target delimiter).
    """
    requests = []
    for q, row in enumerate(rows):
        for c, ending in enumerate(row.endings):
            ctx_ids, cont_ids = encode_pair(tokenizer, row.query, TARGET_DELIMITER + ending, add_bos)
            if not cont_ids:
                raise ValueError(f"row {row.index}: ending {c} {ending!r} encodes to no tokens")
            if not ctx_ids:  # the first continuation token needs a position in front of it
                raise ValueError(f"row {row.index}: query {row.query!r} encodes to no tokens")
            ctx_ids, cont_ids = fit_context(ctx_ids, cont_ids, max_length, f"row {row.index} ending {c}")
            requests.append(Request(question=q, choice=c, context_ids=ctx_ids, continuation_ids=cont_ids,
                                    continuation_chars=len(ending)))
    return requests


def first_identical(requests: Sequence[Request]) -> list[int]:
    """For each request, the index of the first request with the same context and continuation ids
    (itself when none came before). Index log-likelihoods with it after scoring: identical requests have
    one log-likelihood, and taking the first copy's keeps a tie between identical endings exact, so the
    choice is the first ending, as in the per-pair reference and lm-eval. (A packed row scores the copies
    at other offsets, whose fp32 rounding differs by ~1e-5: on 2,000 synthetic questions with repeated
    endings that broke one such tie the other way.)"""
    first: dict[tuple, int] = {}
    return [first.setdefault((r.context_ids, r.continuation_ids), i) for i, r in enumerate(requests)]
