"""Hugging Face LLaMA-family directories: config.json + safetensors / pytorch_model.bin (sharded or not).

HF stores wq/wk with each head's rows permuted for its rotate_half RoPE; graphopt.model rotates
Meta's interleaved pairs, so the permutation is undone on load (the same weights then give the
same logits). Qwen2's q/k biases get the same treatment.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from graphopt.checkpoints.assemble import TensorSource, materialize, parse_dtype
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.files import load_pth, open_safetensors, read_json
from graphopt.model import ModelArgs, Transformer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_TOP_LEVEL = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}
_IN_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
             "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_IGNORED = re.compile(r".*rotary_emb\.inv_freq")  # older checkpoints store RoPE frequencies

# weight files, most preferred first: (index file or None, single file)
_WEIGHT_FILES = [("model.safetensors.index.json", None), (None, "model.safetensors"),
                 ("pytorch_model.bin.index.json", None), (None, "pytorch_model.bin")]


def hf_to_meta_key(key: str) -> str | None:
    """Meta-layout name of an HF key; None for keys to ignore; unknown keys come back unchanged
    (the loader then reports them as unexpected)."""
    if _IGNORED.fullmatch(key):
        return None
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    m = _LAYER_KEY.fullmatch(key)
    if m and m.group(2) in _IN_LAYER:
        return f"layers.{m.group(1)}.{_IN_LAYER[m.group(2)]}.{m.group(3)}"
    return key


def unpermute_qk(out: Tensor, hf: Tensor, n_heads: int) -> None:
    """out <- HF's rotate_half row order turned back into Meta's interleaved pairs, per head.

    HF row (h, j, i) holds Meta row (h, i, j) for j in {0, 1}, i < head_dim/2. Works for weights
    [H*hd, dim] and biases [H*hd]."""
    rest = hf.shape[1:]
    half = hf.shape[0] // n_heads // 2
    out.view(n_heads, half, 2, *rest).copy_(hf.view(n_heads, 2, half, *rest).transpose(1, 2))


def _rope_theta(cfg: dict, path: Path) -> float:
    params = cfg.get("rope_parameters") or {}  # transformers >= 5
    scaling = cfg.get("rope_scaling") or {}    # transformers 4
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise CheckpointError(f"{path}: RoPE scaling {kind!r} is not supported by graphopt.model "
                              "(only plain rope_theta)")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def read_hf_config(ckpt_dir: str | Path, max_seq_len: int | None = None) -> ModelArgs:
    """ModelArgs from an HF config.json of model_type llama, mistral or qwen2."""
    path = Path(ckpt_dir) / "config.json"
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a LLaMA-family model; "
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
    if model_type == "qwen2" and cfg.get("use_sliding_window"):
        raise CheckpointError(f"{path}: use_sliding_window=true is not supported by graphopt.model")
    dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * n_heads != dim:
        raise CheckpointError(f"{path}: head_dim {head_dim} * num_attention_heads {n_heads} != hidden_size {dim}; "
                              "graphopt.model needs head_dim = hidden_size / num_attention_heads")
    if max_seq_len is None:
        max_seq_len = cfg.get("max_position_embeddings", 2048)
        window = cfg.get("sliding_window") if model_type == "mistral" else None
        if window:  # positions beyond the window would need sliding-window attention: refuse them
            max_seq_len = min(max_seq_len, window)
    try:
        return ModelArgs(dim=dim, n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
                         n_kv_heads=cfg.get("num_key_value_heads") or n_heads, vocab_size=cfg["vocab_size"],
                         hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
                         rope_theta=_rope_theta(cfg, path), max_seq_len=max_seq_len,
                         tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                         qkv_bias=model_type == "qwen2")
    except (AssertionError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: inconsistent model parameters ({e})") from e


def hf_weight_files(ckpt_dir: Path) -> tuple[dict[str, Path], Path | None]:
    """{hf key -> file that holds it} (None when a single file holds everything) and that single file."""
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
        n_heads = {"wq": args.n_heads, "wk": args.n_kv_heads}.get(key.split(".")[-2]) if key.startswith("layers.") else None
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
    """A Transformer (eval mode) from an HF LLaMA/Mistral/Qwen2 directory."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    args = read_hf_config(d, max_seq_len=max_seq_len)
    sources = hf_sources(d, args)
    if "output.weight" not in sources and "tie_word_embeddings" not in read_json(d / "config.json"):
        args = replace(args, tie_embeddings=True)  # no lm_head and no word on tying: the head is the embedding
    return materialize(args, sources, parse_dtype(dtype), device,
                       origin=str(d), config=str(d / "config.json"))
