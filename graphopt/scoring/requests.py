"""HellaSwag rows -> scoring requests, tokenised as lm-evaluation-harness's HFLM does."""
from __future__ import annotations

from typing import Sequence

from graphopt.scoring.batch import Request

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter: the continuation is " " + ending


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `_encode_pair` + HFLM.tok_encode.

    Trailing spaces of the context move to the front of the continuation; the continuation tokens are
    what encode(context + continuation) has beyond len(encode(context)), so a token that straddles the
    boundary belongs to the continuation. An empty context becomes [BOS] (lm-eval's prefix_token_id:
    BOS when the tokenizer has one, else EOS) and the continuation is encoded alone.
    """
    if context == "":
        prefix = tokenizer.bos_id if getattr(tokenizer, "bos_id", None) is not None else tokenizer.eos_id
        return [prefix], _encode(tokenizer, continuation, add_bos)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation, add_bos)
    context_ids = _encode(tokenizer, context, add_bos)
    return context_ids, whole[len(context_ids):]


def _encode(tokenizer, text: str, add_bos: bool) -> list[int]:
    ids = list(tokenizer.encode(text))
    return [tokenizer.bos_id] + ids if add_bos else ids


def build_requests(rows: Sequence, tokenizer, add_bos: bool = False, max_length: int | None = None) -> list[Request]:
    """One Request per (row, ending), in row order then ending order.

    context = row.query, continuation = " " + ending, tokenised by `encode_pair`.

    BOS: lm-eval's HFLM encodes with add_special_tokens=False unless add_bos_token=True (default
    False; only Gemma turns it on by itself), so a LLaMA is scored WITHOUT a leading BOS by default.
    `add_bos=True` prepends tokenizer.bos_id to both encodings (as HF's LLaMA tokenizer does with
    special tokens on), which leaves the continuation tokens unchanged. `tokenizer.encode` must not
    add special tokens itself.

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
            if max_length is not None:
                if len(cont_ids) > max_length:
                    raise ValueError(f"row {row.index}: ending {c} has {len(cont_ids)} tokens, more than the "
                                     f"model's context window {max_length}")
                keep = max_length + 1 - len(cont_ids)  # context tokens that fit in front of the continuation
                ctx_ids = ctx_ids[-keep:]
            requests.append(Request(question=q, choice=c, context_ids=tuple(ctx_ids),
                                    continuation_ids=tuple(cont_ids), continuation_chars=len(ending)))
    return requests
