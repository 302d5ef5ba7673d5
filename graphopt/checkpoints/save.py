"""Write a Transformer in Meta's layout: params.json + consolidated.NN.pth shards."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from graphopt.checkpoints.meta import meta_split_dim
from graphopt.model import Transformer, llama_ffn_hidden_dim


def meta_params(model: Transformer, vocab_size: int | None = None) -> dict:
    """params.json contents. graphopt extras (hidden_dim, max_seq_len, tie_embeddings, qkv_bias, head_dim,
    qk_norm, rope_scaling, sliding_window) are written only where they differ from what Meta's loader
    would assume."""
    a = model.args
    p = {"dim": a.dim, "n_layers": a.n_layers, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads,
         "vocab_size": a.vocab_size if vocab_size is None else vocab_size, "multiple_of": a.multiple_of,
         "ffn_dim_multiplier": a.ffn_dim_multiplier, "norm_eps": a.norm_eps, "rope_theta": a.rope_theta}
    if a.hidden_dim != llama_ffn_hidden_dim(a.dim, a.multiple_of, a.ffn_dim_multiplier):
        p["hidden_dim"] = a.hidden_dim
    if a.max_seq_len != 2048:
        p["max_seq_len"] = a.max_seq_len
    if a.tie_embeddings:
        p["tie_embeddings"] = True
    if a.qkv_bias:
        p["qkv_bias"] = True
    if a.head_dim != a.dim // a.n_heads:
        p["head_dim"] = a.head_dim
    if a.qk_norm:
        p["qk_norm"] = True
    if a.rope_scaling is not None:
        p["rope_scaling"] = a.to_dict()["rope_scaling"]
    if a.sliding_window is not None:
        p["sliding_window"], p["window_from_layer"] = a.sliding_window, a.window_from_layer
    return p


def save_meta_checkpoint(model: Transformer, ckpt_dir: str | Path, n_shards: int = 1,
                         tokenizer_vocab: int | str | Path | None = None) -> Path:
    """Write params.json and consolidated.00.pth .. consolidated.{n_shards-1}.pth into ckpt_dir.

    Weights are cut as Meta's model-parallel shards are (see meta_split_dim); tied embeddings are
    stored once (no output.weight). tokenizer_vocab: an int is written as params.json's vocab_size
    (-1 mimics LLaMA-1, whose loader reads it from the weights); a path to a tokenizer.model /
    tokenizer.json is copied into ckpt_dir under its own name."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer_vocab if isinstance(tokenizer_vocab, int) else None
    if isinstance(tokenizer_vocab, (str, Path)):
        shutil.copy(tokenizer_vocab, d / Path(tokenizer_vocab).name)
    state = model.state_dict()
    if model.args.tie_embeddings:
        state.pop("output.weight")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for key, t in state.items():
        t = t.detach().cpu()
        dim = meta_split_dim(key)
        if dim is None:
            for s in shards:
                s[key] = t.clone()
            continue
        if t.shape[dim] % n_shards:
            raise ValueError(f"{key} {list(t.shape)}: dim {dim} does not split into {n_shards} shards")
        for s, piece in zip(shards, t.chunk(n_shards, dim=dim)):
            s[key] = piece.clone()  # clone: torch.save would otherwise write the whole storage
    (d / "params.json").write_text(json.dumps(meta_params(model, vocab), indent=2) + "\n")
    for i, s in enumerate(shards):
        torch.save(s, d / f"consolidated.{i:02d}.pth")
    return d
