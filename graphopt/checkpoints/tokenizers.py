"""File tokenizers with WordHashTokenizer's interface: encode(str) -> ids without BOS, bos_id,
eos_id, vocab_size, add_bos_token (whether the tokenizer's default encoding, transformers'
add_special_tokens=True, prepends BOS; graphopt.checkpoints.encode.tok_encode applies it as lm-eval does).

Leading spaces: sentencepiece LLaMA models (add_dummy_prefix) prepend "▁" to the text, so
encode("hello") and encode(" hello") usually both give "▁hello", and encode(" world") alone differs
from the tail of encode("hello world") only where whitespace is collapsed. lm-evaluation-harness
therefore encodes context + continuation together and splits at the context's length; that is the
scoring code's job. tokenizer.json (byte-level BPE, e.g. Llama-3/Qwen2) keeps the space as part of
the next token ("Ġworld").
"""
from __future__ import annotations

import json
from pathlib import Path

from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.word_tokenizer import WORD_HASH_FILE, read_word_hash_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", WORD_HASH_FILE)  # preferred first
_BOS_GUESSES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_EOS_GUESSES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")


class SentencePieceTokenizer:
    def __init__(self, path: str | Path):
        import sentencepiece as spm
        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a readable sentencepiece model ({e})") from e
        self.vocab_size = self.sp.GetPieceSize()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        # what transformers' LlamaTokenizer does with this file by default (add_bos_token=True)
        self.add_bos_token = self.bos_id is not None

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)  # no BOS/EOS: add_bos/add_eos default to False

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(list(ids))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _special_id(tok, config: dict, name: str, guesses: tuple[str, ...]) -> int | None:
    """Id of the bos/eos token named in tokenizer_config.json, else of a well-known token."""
    value = config.get(f"{name}_token")
    if isinstance(value, dict):  # older AddedToken serialisation
        value = value.get("content")
    for token in ([value] if isinstance(value, str) else []) + list(guesses):
        tid = tok.token_to_id(token)
        if tid is not None:
            return tid
    return None


class HFTokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer
        self.path = Path(path)
        try:
            self.tok = Tokenizer.from_file(str(self.path))
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a readable tokenizer.json ({e})") from e
        config = {}
        config_path = self.path.parent / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = _special_id(self.tok, config, "bos", _BOS_GUESSES)
        self.eos_id = _special_id(self.tok, config, "eos", _EOS_GUESSES)
        self.add_bos_token, self.special_prefix_id = self._post_processor_prefix()

    def _post_processor_prefix(self) -> tuple[bool, int | None]:
        """Whether encoding with special tokens (transformers' default) puts a token in front, and which:
        what the tokenizer.json's post-processor does (transformers 5 writes add_bos_token into it)."""
        plain = self.tok.encode("a", add_special_tokens=False).ids
        special = self.tok.encode("a", add_special_tokens=True).ids
        if special == plain:
            return False, None
        if len(special) == len(plain) + 1 and special[1:] == plain:
            return True, special[0]
        raise CheckpointError(f"{self.path}: its post-processor adds special tokens other than one leading token "
                              f"({plain} -> {special}); graphopt's scoring supports a leading BOS only")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids  # no BOS from the post-processor

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def find_tokenizer_file(directory: str | Path) -> Path | None:
    d = Path(directory)
    for name in TOKENIZER_FILES:
        if (d / name).is_file():
            return d / name
    return None


def load_tokenizer(dir_or_file: str | Path):
    """A tokenizer from tokenizer.json / tokenizer.model, or from a directory holding one."""
    p = Path(dir_or_file)
    if p.is_dir():
        found = find_tokenizer_file(p)
        if found is None:
            raise CheckpointError(f"{p}: no tokenizer file (expected {' or '.join(TOKENIZER_FILES)})")
        p = found
    if not p.is_file():
        raise CheckpointError(f"{p}: tokenizer file not found")
    if p.name == WORD_HASH_FILE:
        return read_word_hash_tokenizer(p)
    if p.suffix == ".json":
        return HFTokenizer(p)
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    raise CheckpointError(f"{p}: unknown tokenizer format (expected a .model sentencepiece file or tokenizer.json)")
