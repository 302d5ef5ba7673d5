"""HellaSwag rows -> scoring requests, tokenised as lm-evaluation-harness's HFLM does."""
from __future__ import annotations

from typing import Sequence

from graphopt.scoring.batch import Request

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: the continuation is " " + ending


def tok_encode(tokenizer, text: str, add_special_tokens: bool | None = None,
               add_bos_token: bool | None = None) -> list[int]:
    """Token ids of `text` as lm-eval 0.4.13's HFLM.tok_encode gives them.

    add_special_tokens None (lm-eval's loglikelihood path) -> the setting add_bos_token (lm-eval's
    model arg) if given, else the tokenizer's own default (transformers' add_special_tokens=True: a
    Llama-2/3 tokenizer prepends BOS, a Qwen2 one does not), and no special tokens for a text that
    already starts with the BOS string. The special token is BOS only (what LLaMA-family tokenizers
    add): prepended when add_bos_token is True, or when it is None and `tokenizer.add_bos_token` (the
    tokenizer's default) is. `tokenizer.encode` itself never adds special tokens.
    """
    special = add_special_tokens if add_special_tokens is not None else add_bos_token
    if add_special_tokens is None and _starts_with_prefix(tokenizer, text):
        special = False
    if special is None:  # transformers' default: add_special_tokens=True
        special = True
    ids = list(tokenizer.encode(text))
    if not special:
        return ids
    if add_bos_token is None:  # the tokenizer's default: its own leading token, if it adds one
        if not getattr(tokenizer, "add_bos_token", False):
            return ids
        bos = getattr(tokenizer, "special_prefix_id", None)
        bos = tokenizer.bos_id if bos is None else bos
    else:
        bos = tokenizer.bos_id if add_bos_token else None
    return [bos] + ids if bos is not None else ids


def prefix_token_id(tokenizer) -> int:
    """lm-eval's prefix_token_id: what an empty context becomes (BOS when there is one, else EOS)."""
    return tokenizer.bos_id if getattr(tokenizer, "bos_id", None) is not None else tokenizer.eos_id


def _starts_with_prefix(tokenizer, text: str) -> bool:
    decode, prefix = getattr(tokenizer, "decode", None), prefix_token_id(tokenizer)
    if decode is None or prefix is None:
        return False
    try:  # as transformers' decode: special tokens spelled out ("<s>")
        prefix_text = decode([prefix], skip_special_tokens=False)
    except TypeError:
        prefix_text = decode([prefix])
    return bool(prefix_text) and text.startswith(prefix_text)


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

    BOS: as lm-eval 0.4.13's hf model (see tok_encode): add_bos None follows the tokenizer's default
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
