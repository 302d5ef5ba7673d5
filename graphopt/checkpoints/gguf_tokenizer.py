"""The tokenizer a GGUF file describes in its metadata (tokenizer.ggml.*), as a `tokenizers.Tokenizer`
behind graphopt's tokenizer interface (encode(str) -> ids without BOS, decode, bos_id, eos_id,
vocab_size).

tokenizer.ggml.model "gpt2": byte-level BPE from tokens + merges, built as transformers builds it for a
GGUF (GPT2Tokenizer: BPE without prefixes/suffixes, ByteLevel decoder; control tokens special, user-
defined tokens added), with the split regex of llama.cpp's tokenizer.ggml.pre where it differs from
GPT-2's. "llama": sentencepiece-style BPE from tokens + scores (merges ranked by the merged token's
score, byte fallback, "▁" for spaces and a dummy prefix unless tokenizer.ggml.add_space_prefix is false).

add_bos_token: what llama.cpp does by default (tokenizer.ggml.add_bos_token; for "llama" vocabularies
that do not say, True). graphopt's scoring adds BOS only when asked (lm-eval's default), so this is
information for the caller, not applied by encode().
"""
from __future__ import annotations

import warnings

from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.gguf_reader import gguf_value

_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)

# split regexes of llama.cpp's pre-tokenizer types (llama-vocab.cpp) that are not GPT-2's
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    "default": [], "gpt-2": [], "gpt2": [],
    "llama3": [_LLAMA3_SPLIT], "llama-v3": [_LLAMA3_SPLIT], "llama-bpe": [_LLAMA3_SPLIT],
    "smaug-bpe": [_LLAMA3_SPLIT], "dbrx": [_LLAMA3_SPLIT], "falcon3": [_LLAMA3_SPLIT],
    "qwen2": [_QWEN2_SPLIT], "deepseek-r1-qwen": [_QWEN2_SPLIT],
    # each digit alone, then GPT-2's split (llama.cpp: STARCODER, REFACT, COMMAND_R, SMOLLM, ...)
    "smollm": [r"\p{N}", _GPT2_SPLIT], "starcoder": [r"\p{N}", _GPT2_SPLIT], "refact": [r"\p{N}", _GPT2_SPLIT],
    "command-r": [r"\p{N}", _GPT2_SPLIT], "codeshell": [r"\p{N}", _GPT2_SPLIT],
}


class GGUFTokenizer:
    def __init__(self, tok, bos_id: int | None, eos_id: int | None, add_bos_token: bool, where: str):
        self.tok = tok
        self.where = where
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos_token = add_bos_token

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids))

    def __repr__(self) -> str:
        return f"GGUFTokenizer({self.where!r}, vocab_size={self.vocab_size})"


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str, where: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # a token written with characters outside the byte alphabet (a real space, say) is respelled
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    if pre not in _PRE_SPLITS:
        warnings.warn(f"{where}: tokenizer.ggml.pre {pre!r} unknown to graphopt; splitting words as GPT-2 "
                      "does (as transformers does for it)", stacklevel=4)
    splits = _PRE_SPLITS.get(pre, [])
    if splits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(tokens: list[str], scores: list[float], add_space_prefix: bool, unk: str | None):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []  # (left, right, rank): every split of a token into two tokens, best score first
    for t, i in vocab.items():
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk,
                               fuse_unk=True, byte_fallback=True))
    norm = [normalizers.Replace(" ", "\u2581")]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if add_space_prefix else []) + norm)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes that are not printable move to 256+)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def gguf_tokenizer(reader) -> GGUFTokenizer:
    """The tokenizer of an opened GGUF (graphopt.checkpoints.gguf_reader.open_gguf)."""
    from tokenizers import AddedToken

    where = str(reader.data.filename)
    kind = gguf_value(reader, "tokenizer.ggml.model", None)
    if kind is None:
        raise CheckpointError(f"{where}: GGUF metadata has no tokenizer (tokenizer.ggml.model missing)")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    types = gguf_value(reader, "tokenizer.ggml.token_type", None) or [1] * len(tokens)
    if len(types) != len(tokens):
        raise CheckpointError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries, tokens {len(tokens)}")
    if kind == "gpt2":
        tok = _byte_level_bpe(tokens, gguf_value(reader, "tokenizer.ggml.merges"),
                              gguf_value(reader, "tokenizer.ggml.pre", "default"), where)
        add_bos = gguf_value(reader, "tokenizer.ggml.add_bos_token", False)
    elif kind == "llama":
        unk_id = gguf_value(reader, "tokenizer.ggml.unknown_token_id", None)
        tok = _sentencepiece_bpe(tokens, gguf_value(reader, "tokenizer.ggml.scores"),
                                 gguf_value(reader, "tokenizer.ggml.add_space_prefix", True),
                                 tokens[unk_id] if unk_id is not None else None)
        add_bos = gguf_value(reader, "tokenizer.ggml.add_bos_token", True)
    else:
        raise CheckpointError(f"{where}: GGUF tokenizer.ggml.model {kind!r} is not supported (gpt2 or llama)")
    # control tokens (<|im_start|>, <s>) stay whole and are special; user-defined ones stay whole
    byte_level = set(_bytes_to_unicode().values()) if kind == "gpt2" else None
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types)
                            if ty == _CONTROL and (byte_level is None or set(t) <= byte_level)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types)
                    if ty == _USER_DEFINED])
    bos = gguf_value(reader, "tokenizer.ggml.bos_token_id", None)
    eos = gguf_value(reader, "tokenizer.ggml.eos_token_id", None)
    for name, tid in (("bos_token_id", bos), ("eos_token_id", eos)):
        if tid is not None and not 0 <= tid < len(tokens):
            raise CheckpointError(f"{where}: tokenizer.ggml.{name} {tid} outside the vocabulary ({len(tokens)})")
    return GGUFTokenizer(tok, bos, eos, bool(add_bos), where)
