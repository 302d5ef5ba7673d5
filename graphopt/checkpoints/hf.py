"""Hugging Face LLaMA-family directories: config.json + safetensors / pytorch_model.bin (sharded or not).

model_type llama (1/2/3/3.1/3.2: RoPE scaling llama3 or linear, optional head_dim), mistral (sliding
window), qwen2 / qwen2.5 (q/k/v bias; use_sliding_window from max_window_layers on) and qwen3 (q/k
RMSNorm over head_dim, head_dim independent of hidden_size). Anything else (gemma, phi3, yarn /
dynamic / longrope RoPE, partial rotary, biases graphopt.model lacks) is a CheckpointError naming
config.json and what it found.

HF stores wq/wk with each head's rows permuted for its rotate_half RoPE; graphopt.model rotates
Meta's interleaved pairs, so the permutation is undone on load (the same weights then give the
same logits). Qwen2's q/k biases get the same treatment, and so do Qwen3's q_norm / k_norm weights
(one head's worth of rows: they scale each dimension of every head before RoPE).
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from graphopt.checkpoints.assemble import TensorSource, materialize, parse_dtype, rename_key
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.files import load_pth, open_safetensors, read_json
from graphopt.model import ModelArgs, Transformer
from graphopt.model.args import ROPE_SCALINGS, RopeScaling

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
QK_PERMUTED = ("wq", "wk", "q_norm", "k_norm")  # Meta-layout leaf names whose rows HF permutes per head

_TOP_LEVEL = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}
_IN_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
             "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm", "self_attn.q_norm": "attention.q_norm",
             "self_attn.k_norm": "attention.k_norm"}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_IGNORED = re.compile(r".*rotary_emb\.inv_freq")  # older checkpoints store RoPE frequencies

# weight files, most preferred first: (index file or None, single file)
_WEIGHT_FILES = [("model.safetensors.index.json", None), (None, "model.safetensors"),
                 ("pytorch_model.bin.index.json", None), (None, "pytorch_model.bin")]
_SAME_FORMAT = [("model.safetensors", "model.safetensors.index.json"),  # (single file, its index)
                ("pytorch_model.bin", "pytorch_model.bin.index.json")]


def hf_to_meta_key(key: str) -> str | None:
    """Meta-layout name of an HF key; None for keys to ignore; unknown keys come back unchanged
    (the loader then reports them as unexpected)."""
    if _IGNORED.fullmatch(key):
        return None
    return rename_key(key, _TOP_LEVEL, _LAYER_KEY, _IN_LAYER)


def unpermute_qk(out: Tensor, hf: Tensor, n_heads: int) -> None:
    """out <- HF's rotate_half row order turned back into Meta's interleaved pairs, per head.

    HF row (h, j, i) holds Meta row (h, i, j) for j in {0, 1}, i < head_dim/2. Works for weights
    [H*hd, dim], biases [H*hd] and q/k norm weights [hd] (n_heads 1)."""
    rest = hf.shape[1:]
    half = hf.shape[0] // n_heads // 2
    out.view(n_heads, half, 2, *rest).copy_(hf.view(n_heads, 2, half, *rest).transpose(1, 2))


def _rope(cfg: dict, path: Path) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from transformers 5's rope_parameters or 4's rope_theta + rope_scaling."""
    params = cfg.get("rope_parameters") or {}  # transformers >= 5: theta, type and scaling together
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"{path}: rope_parameters per layer type ({', '.join(params)}) are not supported "
                              "by graphopt.model (one RoPE for every layer)")
    p = {**(cfg.get("rope_scaling") or {}), **params}  # transformers 4: rope_scaling
    kind = p.get("rope_type") or p.get("type") or "default"
    theta = float(p.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = p.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise CheckpointError(f"{path}: partial_rotary_factor {partial} is not supported (graphopt.model rotates "
                              "the whole head_dim)")
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALINGS:
        raise CheckpointError(f"{path}: RoPE scaling {kind!r} is not supported by graphopt.model "
                              f"(supported: default, {', '.join(ROPE_SCALINGS)})")
    need = ("factor", "low_freq_factor", "high_freq_factor") if kind == "llama3" else ("factor",)
    for key in need:
        if not isinstance(p.get(key), (int, float)):
            raise CheckpointError(f"{path}: RoPE scaling {kind!r} needs a number {key!r}, got {p.get(key)!r}")
    if kind == "linear":
        return theta, RopeScaling("linear", float(p["factor"]))
    old = p.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))  # as transformers
    if not isinstance(old, int):
        raise CheckpointError(f"{path}: RoPE scaling 'llama3' needs an integer original_max_position_embeddings, "
                              f"got {old!r}")
    try:
        return theta, RopeScaling("llama3", float(p["factor"]), float(p["low_freq_factor"]),
                                  float(p["high_freq_factor"]), old)
    except AssertionError as e:
        raise CheckpointError(f"{path}: RoPE scaling 'llama3': {e}") from e


def _sliding_window(cfg: dict, model_type: str, n_layers: int, path: Path) -> tuple[int | None, int]:
    """(window, first layer that uses it) as transformers' eager attention applies them.

    mistral: sliding_window (null: none) in every layer. qwen2/qwen3: only with use_sliding_window, in
    layers >= max_window_layers (or as layer_types lists them, if they are such a tail)."""
    window = cfg.get("sliding_window")
    if model_type == "llama" or (model_type in ("qwen2", "qwen3") and not cfg.get("use_sliding_window")):
        return None, 0
    if window is None:
        return None, 0
    if not isinstance(window, int) or window <= 0:
        raise CheckpointError(f"{path}: sliding_window must be a positive integer, got {window!r}")
    if model_type == "mistral":  # MistralModel windows every layer (it ignores layer_types)
        return window, 0
    start = cfg.get("max_window_layers", 28)
    if not isinstance(start, int):
        raise CheckpointError(f"{path}: max_window_layers must be an integer, got {start!r}")
    types = cfg.get("layer_types")
    if types is not None:  # transformers >= 4.54 writes them; they decide
        sliding = [t == "sliding_attention" for t in types]
        start = sliding.index(True) if any(sliding) else n_layers
        if len(types) != n_layers or any(t not in ("full_attention", "sliding_attention") for t in types) \
                or not all(sliding[start:]):
            raise CheckpointError(f"{path}: layer_types {types} are not supported: graphopt.model needs "
                                  f"{n_layers} entries, full_attention layers first, then sliding_attention")
    if start >= n_layers:  # no layer slides: the same graph as a model without a window
        return None, 0
    return window, start


def read_hf_config(ckpt_dir: str | Path, max_seq_len: int | None = None) -> ModelArgs:
    """ModelArgs from an HF config.json of model_type llama, mistral, qwen2 or qwen3."""
    path = Path(ckpt_dir) / "config.json"
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported by graphopt.model; "
                              f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise CheckpointError(f"{path}: expected an integer {key!r}, got {cfg.get(key)!r}")
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):
        raise CheckpointError(f"{path}: hidden_act {cfg['hidden_act']!r} unsupported (expected silu)")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{path}: mlp_bias=true is not supported by graphopt.model")
    if model_type != "qwen2" and cfg.get("attention_bias"):
        raise CheckpointError(f"{path}: attention_bias=true (bias on q/k/v/o) is not supported; "
                              "graphopt.model has Qwen2-style q/k/v bias only")
    dim, n_heads, n_layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim")
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2):
        raise CheckpointError(f"{path}: head_dim must be a positive even integer (RoPE rotates pairs), got {head_dim!r}")
    window, window_from = _sliding_window(cfg, model_type, n_layers, path)
    if max_seq_len is None:
        max_seq_len = cfg.get("max_position_embeddings", 2048)
    theta, scaling = _rope(cfg, path)
    try:
        return ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads,
                         n_kv_heads=cfg.get("num_key_value_heads") or n_heads, vocab_size=cfg["vocab_size"],
                         hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
                         rope_theta=theta, rope_scaling=scaling, max_seq_len=max_seq_len,
                         tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                         qkv_bias=model_type == "qwen2", head_dim=head_dim, qk_norm=model_type == "qwen3",
                         sliding_window=window, window_from_layer=window_from)
    except (AssertionError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: inconsistent model parameters ({e})") from e


def _one_checkpoint(ckpt_dir: Path) -> None:
    """A single file beside an index of the same format is two checkpoints: graphopt would read the
    index, transformers the single file (a model written over an older sharded one). Refused."""
    for single_name, index_name in _SAME_FORMAT:
        if (ckpt_dir / index_name).is_file() and (ckpt_dir / single_name).is_file():
            raise CheckpointError(f"{ckpt_dir}: holds two checkpoints, {single_name} and {index_name} (with the "
                                  f"shards it lists); loaders disagree on which one to read: remove the stale one")


def hf_weight_files(ckpt_dir: Path) -> tuple[dict[str, Path], Path | None]:
    """{hf key -> file that holds it} (None when a single file holds everything) and that single file."""
    _one_checkpoint(ckpt_dir)
    for index_name, single_name in _WEIGHT_FILES:
        if index_name and (ckpt_dir / index_name).is_file():
            index_path = ckpt_dir / index_name
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: expected a non-empty 'weight_map' object")
            files = {}
            for key, name in weight_map.items():
                files[key] = ckpt_dir / name
            for p in sorted(set(files.values())):
                if not p.is_file():
                    raise CheckpointError(f"{index_path}: lists weight file {p.name}, which does not exist")
            return files, None
        if single_name and (ckpt_dir / single_name).is_file():
            return {}, ckpt_dir / single_name
    raise CheckpointError(f"{ckpt_dir}: no weights found (expected model.safetensors, "
                          "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)")


class _File:
    """Uniform access to one weight file: keys, shape without reading, tensor on demand."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            self.st, self.state = open_safetensors(path), None
        else:
            self.st, self.state = None, load_pth(path)  # memory-mapped

    def keys(self) -> list[str]:
        return list(self.st.keys()) if self.st is not None else list(self.state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.st.get_slice(key).get_shape()) if self.st is not None else tuple(self.state[key].shape)

    def tensor(self, key: str) -> Tensor:
        return self.st.get_tensor(key) if self.st is not None else self.state[key]


def hf_sources(ckpt_dir: Path, args: ModelArgs) -> dict[str, TensorSource]:
    key_files, single = hf_weight_files(ckpt_dir)
    opened: dict[Path, _File] = {}
    keys_of: dict[Path, list[str]] = {}
    for p in ([single] if single else sorted(set(key_files.values()))):
        opened[p] = _File(p)
        keys_of[p] = opened[p].keys()
    if single:
        key_files = {k: single for k in keys_of[single]}
    else:
        for key, p in key_files.items():
            if key not in keys_of[p]:
                raise CheckpointError(f"{p}: the index says it holds {key!r}, but it does not")
    sources = {}
    for hf_key, p in key_files.items():
        key = hf_to_meta_key(hf_key)
        if key is None:
            continue
        f, where = opened[p], f"{p}[{hf_key!r}]"
        role = key.split(".")[-2] if key.startswith("layers.") else None
        n_heads = {"wq": args.n_heads, "wk": args.n_kv_heads, "q_norm": 1, "k_norm": 1}.get(role)
        if n_heads is not None:
            def fill(out, f=f, hf_key=hf_key, n_heads=n_heads):
                unpermute_qk(out, f.tensor(hf_key), n_heads)
        else:
            def fill(out, f=f, hf_key=hf_key):
                out.copy_(f.tensor(hf_key))
        if key in sources:
            raise CheckpointError(f"{where}: {key!r} appears twice in the checkpoint")
        sources[key] = TensorSource(f.shape(hf_key), fill, where)
    return sources


def load_hf_checkpoint(ckpt_dir: str | Path, dtype: str | torch.dtype = "float32", device="cpu",
                       max_seq_len: int | None = None) -> Transformer:
    """A Transformer (eval mode) from an HF LLaMA/Mistral/Qwen2/Qwen3 directory."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    args = read_hf_config(d, max_seq_len=max_seq_len)
    sources = hf_sources(d, args)
    if "output.weight" not in sources and "tie_word_embeddings" not in read_json(d / "config.json"):
        args = replace(args, tie_embeddings=True)  # no lm_head and no word on tying: the head is the embedding
    return materialize(args, sources, parse_dtype(dtype), device,
                       origin=str(d), config=str(d / "config.json"))
