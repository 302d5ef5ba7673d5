"""GGUF files (llama.cpp, Ollama): one file holding the config (metadata), the tensors (often quantised)
and the tokenizer. `load_gguf(path)` -> (Transformer, tokenizer).

Layouts. GGUF lists each tensor's dims in ggml order (ne[0] = the contiguous one), the reverse of
torch's; gguf's reader and `gguf.quants.dequantize` give numpy arrays in torch order ([out, in]).
llama.cpp's converter writes architecture "llama" with each head's q/k rows permuted from HF's
rotate_half order back to Meta's interleaved pairs (its LLAMA_ROPE_TYPE_NORM), which is graphopt's
layout: copied as they are. "qwen2" and "qwen3" (NEOX RoPE in llama.cpp) keep HF's order: un-permuted
as the HF loader does (Qwen3's q/k norm weights as one head's rows). tests/test_gguf.py checks each
against transformers' logits.

RoPE scaling: rope.scaling.type linear (rope.scaling.factor) -> RopeScaling("linear"); Llama-3.1/3.2's
llama3 scaling, which llama.cpp's converter writes as the F32 tensor rope_freqs.weight [head_dim // 2] of
per-frequency divisors (ggml's rope uses freq / rope_freqs[i]), -> RopeScaling("freq_factors") (with a
linear factor too, folded into the divisors as llama.cpp applies both). rope_freqs is not a model weight.

Quantised tensors (Q8_0, Q4_K, Q6_K, ...) are dequantised one at a time by the gguf package (numpy,
float32) and copied into the requested dtype; no tensor is held twice.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from graphopt.checkpoints.assemble import TensorSource, materialize, parse_dtype, rename_key
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.gguf_reader import MISSING, gguf_value, import_gguf, open_gguf
from graphopt.checkpoints.gguf_tokenizer import gguf_tokenizer
from graphopt.checkpoints.hf import unpermute_qk
from graphopt.model import ModelArgs, Transformer
from graphopt.model.args import RopeScaling

# architecture -> q/k rows (and q/k norm weights) stored in HF's rotate_half order; q/k/v bias; q/k RMSNorm
ARCHITECTURES = {"llama": {"hf_qk_order": False, "qkv_bias": False, "qk_norm": False},
                 "qwen2": {"hf_qk_order": True, "qkv_bias": True, "qk_norm": False},
                 "qwen3": {"hf_qk_order": True, "qkv_bias": False, "qk_norm": True}}

_TOP_LEVEL = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
              "output.weight": "output.weight"}
_IN_LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
             "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_up": "feed_forward.w3",
             "ffn_down": "feed_forward.w2", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
             "attn_q_norm": "attention.q_norm", "attn_k_norm": "attention.k_norm"}
NON_MODEL_TENSORS = {"rope_freqs.weight"}  # Llama-3.1/3.2 RoPE factors: ModelArgs.rope_scaling, not a weight
_LAYER_KEY = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_to_meta_key(name: str) -> str:
    """graphopt's name for a GGUF tensor name; unknown names come back unchanged (reported as unexpected)."""
    return rename_key(name, _TOP_LEVEL, _LAYER_KEY, _IN_LAYER)


def _int(reader, key: str, default=MISSING) -> int:
    value = gguf_value(reader, key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{reader.data.filename}: GGUF metadata {key!r}: expected a positive integer, "
                              f"got {str(value)[:80]}")
    return value


def gguf_architecture(reader) -> str:
    arch = gguf_value(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{reader.data.filename}: GGUF architecture {arch!r} is not supported by graphopt "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def _rope_freqs(reader, tensor, head_dim: int) -> tuple[float, ...]:
    """llama.cpp's rope_freqs.weight (Llama-3.1/3.2's llama3 scaling as convert_hf_to_gguf.py writes it):
    one divisor per RoPE frequency, ggml's rope divides each frequency by its factor. Shape [head_dim // 2]."""
    gguf = import_gguf()
    path = reader.data.filename
    shape = [int(n) for n in reversed(tensor.shape.tolist())]
    if shape != [head_dim // 2]:
        raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (per-frequency RoPE factors) has shape {shape}, "
                              f"expected [{head_dim // 2}] (head_dim {head_dim} // 2)")
    try:
        values = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(-1)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor 'rope_freqs.weight' ({type(e).__name__}: {e})") from e
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (per-frequency RoPE factors) must be finite "
                              f"and > 0, got {values.tolist()[:8]}")
    return tuple(float(v) for v in values)


def _rope_scaling(reader, arch: str, tensors: dict, head_dim: int) -> RopeScaling | None:
    path = reader.data.filename
    kind = gguf_value(reader, f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise CheckpointError(f"{path}: GGUF {arch}.rope.scaling.type {kind!r} is not supported (none or linear)")
    factor = 1.0
    if kind == "linear":
        factor = gguf_value(reader, f"{arch}.rope.scaling.factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise CheckpointError(f"{path}: GGUF {arch}.rope.scaling.factor: expected a positive number, "
                                  f"got {factor!r}")
    if "rope_freqs.weight" in tensors:  # Llama-3.1/3.2: llama3 scaling as per-frequency divisors
        divisors = _rope_freqs(reader, tensors["rope_freqs.weight"], head_dim)
        if factor != 1:  # llama.cpp applies both: freq * (1 / factor) / rope_freqs[i]
            divisors = tuple(d * float(factor) for d in divisors)
        return RopeScaling("freq_factors", factors=divisors)
    return None if factor == 1 else RopeScaling("linear", float(factor))


def read_gguf_config(reader, max_seq_len: int | None = None) -> ModelArgs:
    """ModelArgs from a GGUF's metadata (and its tensor list: vocabulary size, tied head)."""
    path = reader.data.filename
    arch = gguf_architecture(reader)
    family = ARCHITECTURES[arch]
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: GGUF has no tensor 'token_embd.weight'")
    dim = _int(reader, f"{arch}.embedding_length")
    n_heads = _int(reader, f"{arch}.attention.head_count")
    vocab_size = int(tensors["token_embd.weight"].shape[-1])  # ne = [dim, vocab]
    meta_vocab = gguf_value(reader, f"{arch}.vocab_size", vocab_size)
    if meta_vocab != vocab_size:
        raise CheckpointError(f"{path}: GGUF {arch}.vocab_size {meta_vocab} != token_embd rows {vocab_size}")
    head_dim = gguf_value(reader, f"{arch}.attention.key_length", None)
    rope_dims = gguf_value(reader, f"{arch}.rope.dimension_count", None)
    if rope_dims is not None and rope_dims != (head_dim or dim // n_heads):
        raise CheckpointError(f"{path}: GGUF {arch}.rope.dimension_count {rope_dims} != head_dim "
                              f"{head_dim or dim // n_heads}: partial RoPE is not supported by graphopt.model")
    try:
        return ModelArgs(dim=dim, n_layers=_int(reader, f"{arch}.block_count"), n_heads=n_heads,
                         n_kv_heads=_int(reader, f"{arch}.attention.head_count_kv", n_heads),
                         vocab_size=vocab_size, hidden_dim=_int(reader, f"{arch}.feed_forward_length"),
                         norm_eps=float(gguf_value(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
                         rope_theta=float(gguf_value(reader, f"{arch}.rope.freq_base", 10000.0)),
                         max_seq_len=max_seq_len or _int(reader, f"{arch}.context_length", 2048),
                         tie_embeddings="output.weight" not in tensors, qkv_bias=family["qkv_bias"],
                         qk_norm=family["qk_norm"],
                         head_dim=head_dim if head_dim not in (None, dim // n_heads) else None,
                         rope_scaling=_rope_scaling(reader, arch, tensors, head_dim or dim // n_heads))
    except (AssertionError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: inconsistent GGUF model parameters ({e})") from e


def _dequantizable(gguf, qtype) -> bool:
    traits = getattr(gguf.quants, "_type_traits", None)  # the types this gguf version has a dequantiser for
    if traits is None:  # a version without that table: dequantize's NotImplementedError is reported per tensor
        return True
    return qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or qtype in traits


def gguf_sources(reader, args: ModelArgs, arch: str) -> dict[str, TensorSource]:
    """{graphopt key -> TensorSource} for every tensor in the file; a type that cannot be dequantised
    is reported before anything is read."""
    gguf = import_gguf()
    path = reader.data.filename
    hf_qk_order = ARCHITECTURES[arch]["hf_qk_order"]
    sources = {}
    for t in reader.tensors:
        if t.name in NON_MODEL_TENSORS:  # read into ModelArgs by read_gguf_config
            continue
        if not _dequantizable(gguf, t.tensor_type):
            raise CheckpointError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which the gguf package "
                                  f"cannot dequantise (F32, F16, BF16, Q4_0..Q8_0, K-quants, IQ* are supported)")
        key = gguf_to_meta_key(t.name)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml ne order -> torch order
        leaf = key.split(".")[-2] if key.startswith("layers.") else None
        heads = {"wq": args.n_heads, "wk": args.n_kv_heads, "q_norm": 1, "k_norm": 1}  # rows permuted per head
        n_heads = heads.get(leaf) if hf_qk_order else None

        def fill(out, t=t, shape=shape, n_heads=n_heads):
            values = torch.from_numpy(np.asarray(gguf.quants.dequantize(t.data, t.tensor_type))).view(shape)
            if n_heads is not None:
                unpermute_qk(out, values, n_heads)
            else:
                out.copy_(values)
        sources[key] = TensorSource(shape, fill, f"{path}[{t.name!r}, {t.tensor_type.name}]")
    return sources


def load_gguf(path: str | Path, dtype: str | torch.dtype = "float32", device="cpu",
              max_seq_len: int | None = None) -> tuple[Transformer, object]:
    """(Transformer in eval mode, tokenizer from the file's metadata) from a .gguf file."""
    reader = open_gguf(path)
    args = read_gguf_config(reader, max_seq_len)
    sources = gguf_sources(reader, args, gguf_architecture(reader))
    model = materialize(args, sources, parse_dtype(dtype), device, origin=str(path),
                        config=f"{path} (GGUF metadata)")
    return model, gguf_tokenizer(reader)


def load_gguf_structure(path: str | Path) -> tuple[ModelArgs, object]:
    """(ModelArgs, tokenizer) of a .gguf file without reading its tensors."""
    reader = open_gguf(path)
    return read_gguf_config(reader), gguf_tokenizer(reader)
