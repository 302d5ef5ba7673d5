"""The embedded default tokenizer: needs no files. Words and punctuation are hashed into the
vocabulary, so token counts look like a real subword tokenizer's (about one per word)."""
from __future__ import annotations

import re
import zlib

_PIECES = re.compile(r" ?\w+| ?[^\w\s]|\s+")


class WordHashTokenizer:
    bos_id = 1
    eos_id = 2
    n_special = 3  # 0 pad/unk, 1 bos, 2 eos
    add_bos_token = False  # encoding with special tokens adds none (the synthetic benchmarks' setting)

    def __init__(self, vocab_size: int = 32000):
        assert vocab_size > self.n_special
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        # the leading space belongs to the word, as with sentencepiece's "▁word" pieces
        span = self.vocab_size - self.n_special
        return [self.n_special + zlib.crc32(p.encode("utf-8")) % span for p in _PIECES.findall(text)]

    def __repr__(self) -> str:
        return f"WordHashTokenizer(vocab_size={self.vocab_size})"
