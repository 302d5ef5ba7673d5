"""ModelArgs: one flat dataclass describing a LLaMA-family model, plus named presets.

Families: LLaMA 1/2/3/3.1/3.2 (RoPE scaling llama3 / linear, or GGUF's per-frequency freq_factors), Mistral
(sliding window), Qwen2/2.5 (q/k/v bias), Qwen3 (per-head q/k RMSNorm, head_dim not dim / n_heads).
ModelArgs stays JSON-able: to_dict() gives plain values and ModelArgs(**d) takes them back (rope_scaling as a dict too).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields, replace

ROPE_SCALINGS = ("linear", "llama3")  # the kinds a Hugging Face config names
ROPE_SCALING_KINDS = ROPE_SCALINGS + ("freq_factors",)  # + explicit per-frequency divisors (GGUF rope_freqs)


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's inverse frequencies are stretched for a longer context than pretraining's.

    linear: every inv_freq / factor. llama3 (Llama-3.1/3.2): wavelengths longer than
    original_max_seq_len / low_freq_factor are divided by factor, shorter than
    original_max_seq_len / high_freq_factor kept, the band between interpolated. freq_factors
    (llama.cpp's rope_freqs tensor, how GGUF files carry Llama-3.1/3.2's llama3 scaling): inv_freq[i] /
    factors[i], one divisor per frequency (head_dim // 2 of them); factor is unused (1.0)."""
    kind: str  # one of ROPE_SCALING_KINDS
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_seq_len: int = 8192  # llama3 only: the pretraining context
    factors: tuple[float, ...] | None = None  # freq_factors only: the per-frequency divisors

    def __post_init__(self):
        assert self.kind in ROPE_SCALING_KINDS, f"RoPE scaling {self.kind!r} not one of {ROPE_SCALING_KINDS}"
        assert self.factor > 0, f"RoPE scaling factor {self.factor} must be > 0"
        if self.factors is not None:  # a list from JSON -> a tuple of floats (hashable, compares equal)
            object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        if self.kind == "freq_factors":
            assert self.factors, "freq_factors RoPE scaling needs factors (one divisor per frequency)"
            assert all(math.isfinite(f) and f > 0 for f in self.factors), \
                "freq_factors RoPE scaling needs finite factors > 0"
        else:
            assert self.factors is None, f"RoPE scaling {self.kind!r} takes no per-frequency factors"
        if self.kind == "llama3":
            assert 0 < self.low_freq_factor < self.high_freq_factor, \
                f"llama3 RoPE needs 0 < low_freq_factor ({self.low_freq_factor}) < high_freq_factor ({self.high_freq_factor})"
            assert self.original_max_seq_len > 0, "llama3 RoPE needs original_max_seq_len > 0"


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
    head_dim: int | None = None  # None -> dim // n_heads; Qwen3 / Llama-3.2-style configs may set it
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    rope_scaling: RopeScaling | None = None  # None: plain rope_theta (a dict is converted)
    sliding_window: int | None = None  # Mistral: a query attends keys with pos_q - pos_k < window
    window_from_layer: int = 0  # layers >= this use the window (Qwen2's max_window_layers); Mistral: 0

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = llama_ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        if self.head_dim is None:
            assert self.dim % self.n_heads == 0, f"dim {self.dim} not divisible by n_heads {self.n_heads}"
            self.head_dim = self.dim // self.n_heads
        if isinstance(self.rope_scaling, dict):  # from to_dict() / JSON
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        assert self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}"
        assert self.head_dim > 0 and self.head_dim % 2 == 0, f"RoPE needs an even head_dim, got {self.head_dim}"
        if self.rope_scaling is not None and self.rope_scaling.factors is not None:
            assert len(self.rope_scaling.factors) == self.head_dim // 2, \
                f"{len(self.rope_scaling.factors)} RoPE frequency factors for head_dim {self.head_dim} " \
                f"(expected head_dim // 2 = {self.head_dim // 2})"
        assert self.sliding_window is None or self.sliding_window > 0, f"sliding_window {self.sliding_window} must be > 0"

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        key = name.lower()
        if key not in PRESETS:
            close = difflib.get_close_matches(key, PRESETS, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown model preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
        return replace(PRESETS[key])

    def to_dict(self) -> dict:
        """Plain JSON-able values; ModelArgs(**d) gives the same ModelArgs back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.rope_scaling is not None:
            d["rope_scaling"] = asdict(self.rope_scaling)
        return d


def llama_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The LLaMA rule: 2/3 of 4*dim, optionally scaled, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


_LLAMA31_ROPE = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
_LLAMA32_ROPE = replace(_LLAMA31_ROPE, factor=32.0)

PRESETS: dict[str, ModelArgs] = {
    # test configs: fast enough for unit tests on 2 CPU cores
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-gqa1": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=512, multiple_of=32, max_seq_len=256),
    "tiny-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32, max_seq_len=256, tie_embeddings=True),
    "tiny-qwen": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256, qkv_bias=True, rope_theta=1e6),
    "tiny-qwen3": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=24, qk_norm=True, vocab_size=512,
                            multiple_of=32, max_seq_len=256, rope_theta=1e6, norm_eps=1e-6),
    "tiny-window": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32,
                             max_seq_len=256, sliding_window=8),
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
    # Llama-3.1 / 3.2 (HF config.json numbers; RoPE scaling llama3, 128K context)
    "llama-3.1-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, hidden_dim=14336,
                              norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, rope_scaling=_LLAMA31_ROPE),
    "llama-3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, hidden_dim=8192,
                              head_dim=64, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072,
                              rope_scaling=_LLAMA32_ROPE, tie_embeddings=True),
    "llama-3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, hidden_dim=8192,
                              head_dim=128, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072,
                              rope_scaling=_LLAMA32_ROPE, tie_embeddings=True),
    # Qwen2.5 (q/k/v bias; use_sliding_window false in the release) and Qwen3 (q/k norm, head_dim 128)
    "qwen2.5-7b": ModelArgs(dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, vocab_size=152064, hidden_dim=18944,
                            norm_eps=1e-6, rope_theta=1e6, max_seq_len=131072, qkv_bias=True),
    "qwen3-8b": ModelArgs(dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, vocab_size=151936, hidden_dim=12288,
                          head_dim=128, qk_norm=True, norm_eps=1e-6, rope_theta=1e6, max_seq_len=40960),
    # Mistral-7B v0.1: sliding-window attention over 4096 positions
    "mistral-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=32000, hidden_dim=14336,
                            norm_eps=1e-5, rope_theta=10000.0, max_seq_len=32768, sliding_window=4096),
}
