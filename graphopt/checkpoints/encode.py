"""Text -> token ids exactly as lm-evaluation-harness 0.4.13's HFLM encodes them (its BOS rules), for
any tokenizer with graphopt's interface (graphopt.checkpoints.tokenizers): the scoring requests
(graphopt.scoring.requests) and the pruning pass's calibration text both encode through it."""
from __future__ import annotations


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
