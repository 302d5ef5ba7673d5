"""ModelArgs: one flat dataclass describing a LLaMA-family model, plus named presets."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, replace


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None -> n_heads (MHA); fewer -> GQA
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # None -> derived by the LLaMA rule in __post_init__
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2-style bias on wq/wk/wv

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = llama_ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        assert self.dim % self.n_heads == 0, f"dim {self.dim} not divisible by n_heads {self.n_heads}"
        assert self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}"
        assert self.head_dim % 2 == 0, "RoPE needs an even head_dim"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        key = name.lower()
        if key not in PRESETS:
            close = difflib.get_close_matches(key, PRESETS, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown model preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
        return replace(PRESETS[key])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def llama_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The LLaMA rule: 2/3 of 4*dim, optionally scaled, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


PRESETS: dict[str, ModelArgs] = {
    # test configs: fast enough for unit tests on 2 CPU cores
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-gqa1": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32, max_seq_len=256, tie_embeddings=True),
    "tiny-qwen": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256, qkv_bias=True, rope_theta=1e6),
    # the embedded default: LLaMA-shaped, ~57M parameters, random weights (GQA, vocab 32000)
    "default": ModelArgs(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=32000, max_seq_len=1024),
    # CPU benchmark workload: ~110M parameters, GQA
    "bench-100m": ModelArgs(dim=768, n_layers=10, n_heads=12, n_kv_heads=4, vocab_size=32000, max_seq_len=1024),
    # LLaMA-1
    "llama-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6),
    "llama-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6),
    "llama-30b": ModelArgs(dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6),
    "llama-65b": ModelArgs(dim=8192, n_layers=80, n_heads=64, norm_eps=1e-5),
    # LLaMA-2
    "llama-2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
    "llama-2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-5, max_seq_len=4096),
    "llama-2-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3,
                             multiple_of=4096, norm_eps=1e-5, max_seq_len=4096),
    # Llama-3
    "llama-3-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                            ffn_dim_multiplier=1.3, multiple_of=1024, norm_eps=1e-5, rope_theta=500000.0,
                            max_seq_len=8192),
}
