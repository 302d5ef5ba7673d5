"""The embedded default tokenizer: needs no files. Words and punctuation are hashed into the
vocabulary, so token counts look like a real subword tokenizer's (about one per word)."""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

from graphopt.checkpoints.errors import CheckpointError

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


# A checkpoint written for tests or benchmarks of speed (random weights, no real tokenizer) says so
# with this file; a checkpoint directory with no tokenizer file at all is an error, never a silent
# fallback (the accuracy of a real model scored with hashed words would be meaningless).
WORD_HASH_FILE = "tokenizer_word_hash.json"


def write_word_hash_tokenizer(ckpt_dir, vocab_size: int):
    """Declare in ckpt_dir that the model is scored with WordHashTokenizer(vocab_size); -> the file."""
    path = Path(ckpt_dir) / WORD_HASH_FILE
    path.write_text(json.dumps({"tokenizer": "word-hash", "vocab_size": int(vocab_size),
                                "note": "graphopt's file-free test tokenizer: words hashed into the vocabulary"}) + "\n")
    return path


def read_word_hash_tokenizer(path) -> WordHashTokenizer:
    try:
        spec = json.loads(Path(path).read_text())
        assert spec["tokenizer"] == "word-hash"
        return WordHashTokenizer(int(spec["vocab_size"]))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise CheckpointError(f"{path}: expected {{\"tokenizer\": \"word-hash\", \"vocab_size\": N}} "
                              f"({type(e).__name__}: {e})") from None
