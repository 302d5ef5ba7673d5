"""Meta's LLaMA layout: params.json + consolidated.00.pth ... consolidated.NN.pth.

Each shard holds a slice of every weight (Meta's model-parallel split): column-parallel weights
(wq/wk/wv/w1/w3/output) are cut along dim 0, row-parallel ones (wo/w2) and tok_embeddings along
dim 1, norms are replicated. Loading concatenates the slices back, tensor by tensor, from
memory-mapped shards.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from graphopt.checkpoints.assemble import TensorSource, materialize, parse_dtype
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.files import load_pth, read_json
from graphopt.model import ModelArgs, Transformer

_SPLIT_DIMS: list[tuple[re.Pattern, int | None]] = [
    (re.compile(r"tok_embeddings\.weight"), 1),
    (re.compile(r"output\.weight"), 0),
    (re.compile(r"layers\.\d+\.attention\.w[qkv]\.(weight|bias)"), 0),
    (re.compile(r"layers\.\d+\.attention\.wo\.weight"), 1),
    (re.compile(r"layers\.\d+\.feed_forward\.w[13]\.weight"), 0),
    (re.compile(r"layers\.\d+\.feed_forward\.w2\.weight"), 1),
    (re.compile(r"(layers\.\d+\.(attention_norm|ffn_norm|attention\.q_norm|attention\.k_norm)|norm)\.weight"), None),
    (re.compile(r"rope\.freqs"), None),  # Meta's precomputed RoPE frequencies; ignored on load
]
IGNORED_KEYS = {"rope.freqs"}
_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")
# params.json flags that change the maths in a way graphopt.model does not implement
# (use_scaled_rope: unless graphopt's own "rope_scaling" is there too, since the factor differs between
# Llama-3.1 and 3.2 and Meta's params.json does not give it; the HF release's config.json does)
_UNSUPPORTED_FLAGS = {"use_scaled_rope": "Llama-3.1/3.2 RoPE scaling, whose factor params.json does not give; "
                                         "load the Hugging Face release",
                      "moe": "mixture of experts"}


def meta_split_dim(key: str) -> int | None:
    """The dim along which Meta's model-parallel shards cut `key` (None: replicated)."""
    for pattern, dim in _SPLIT_DIMS:
        if pattern.fullmatch(key):
            return dim
    raise KeyError(f"{key!r} is not a LLaMA checkpoint key in Meta's layout")


def meta_shard_paths(ckpt_dir: str | Path) -> list[Path]:
    """consolidated.00.pth .. consolidated.NN.pth in order; checks that none is missing."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    found = {}
    for p in d.glob("consolidated.*.pth"):
        m = _SHARD_NAME.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise CheckpointError(f"{d}: no consolidated.NN.pth shards (expected consolidated.00.pth ...)")
    n = max(found) + 1
    missing = [f"consolidated.{i:02d}.pth" for i in range(n) if i not in found]
    if missing:
        raise CheckpointError(f"{d}: shard set is incomplete: found {len(found)} shard(s) up to "
                              f"consolidated.{n - 1:02d}.pth but {', '.join(missing)} is missing")
    return [found[i] for i in range(n)]


def read_meta_params(ckpt_dir: str | Path, max_seq_len: int | None = None,
                     shard0: dict[str, Tensor] | None = None) -> ModelArgs:
    """ModelArgs from params.json. vocab_size -1 (LLaMA-1) is resolved from the embedding's shape
    in consolidated.00.pth; a missing output.weight means tied embeddings, wq.bias means qkv_bias,
    attention.q_norm.weight means qk_norm. graphopt's own extras (save_meta_checkpoint writes them):
    head_dim, rope_scaling (a dict of ModelArgs.rope_scaling's fields), sliding_window, window_from_layer."""
    d = Path(ckpt_dir)
    path = d / "params.json"
    p = read_json(path)
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if p.get(flag) and not (flag == "use_scaled_rope" and p.get("rope_scaling")):
            raise CheckpointError(f"{path}: {flag}={p[flag]!r} ({what}) is not supported by graphopt.model")
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(p.get(key), int):
            raise CheckpointError(f"{path}: expected an integer {key!r}, got {p.get(key)!r}")
    if shard0 is None:
        shard0 = load_pth(meta_shard_paths(d)[0])
    vocab = p.get("vocab_size", -1)
    if vocab is None or vocab < 0:
        if "tok_embeddings.weight" not in shard0:
            raise CheckpointError(f"{path}: vocab_size is {vocab} and consolidated.00.pth has no tok_embeddings.weight to read it from")
        vocab = shard0["tok_embeddings.weight"].shape[0]
    kw = dict(dim=p["dim"], n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p.get("n_kv_heads"),
              vocab_size=vocab, multiple_of=p.get("multiple_of", 256),
              ffn_dim_multiplier=p.get("ffn_dim_multiplier"), hidden_dim=p.get("hidden_dim"),
              norm_eps=p.get("norm_eps", 1e-5), rope_theta=p.get("rope_theta", 10000.0),
              tie_embeddings=p.get("tie_embeddings", "output.weight" not in shard0),
              qkv_bias=p.get("qkv_bias", "layers.0.attention.wq.bias" in shard0),
              qk_norm=p.get("qk_norm", "layers.0.attention.q_norm.weight" in shard0))
    for key in ("head_dim", "rope_scaling", "sliding_window", "window_from_layer"):
        if key in p:
            kw[key] = p[key]
    if max_seq_len is not None or "max_seq_len" in p:
        kw["max_seq_len"] = max_seq_len if max_seq_len is not None else p["max_seq_len"]
    try:
        return ModelArgs(**kw)
    except (AssertionError, TypeError, ValueError) as e:  # rope_scaling's fields too
        raise CheckpointError(f"{path}: inconsistent model parameters ({e})") from e


def meta_sources(paths: list[Path], shards: list[dict[str, Tensor]]) -> dict[str, TensorSource]:
    """One TensorSource per key, merging the shards along meta_split_dim(key)."""
    keys = [k for k in shards[0] if k not in IGNORED_KEYS]
    for path, shard in zip(paths[1:], shards[1:]):
        other = [k for k in shard if k not in IGNORED_KEYS]
        if set(other) != set(keys):
            diff = sorted(set(other) ^ set(keys))
            raise CheckpointError(f"{path}: holds different tensors than {paths[0].name} (e.g. {diff[:3]}); "
                                  "shards must come from one checkpoint")
    sources = {}
    for key in keys:
        try:
            dim = meta_split_dim(key)
        except KeyError:
            dim = None  # not a model key: materialize() reports it as unexpected
        pieces = [s[key] for s in shards]
        where = f"{paths[0].parent}/consolidated.*.pth[{key!r}]" if len(paths) > 1 else f"{paths[0]}[{key!r}]"
        if dim is None or len(pieces) == 1:
            for path, t in zip(paths[1:], pieces[1:]):
                if t.shape != pieces[0].shape:
                    raise CheckpointError(f"{path}: replicated tensor {key!r} has shape {list(t.shape)}, "
                                          f"but {paths[0].name} has {list(pieces[0].shape)}")
            sources[key] = TensorSource(tuple(pieces[0].shape), lambda out, t=pieces[0]: out.copy_(t), where)
            continue
        ref = pieces[0].shape
        for path, t in zip(paths, pieces):
            if t.dim() != len(ref) or any(t.shape[i] != ref[i] for i in range(len(ref)) if i != dim):
                raise CheckpointError(f"{path}: shard of {key!r} has shape {list(t.shape)}, which does not "
                                      f"concatenate along dim {dim} with {paths[0].name}'s {list(ref)}")
        shape = list(ref)
        shape[dim] = sum(t.shape[dim] for t in pieces)

        def fill(out: Tensor, pieces=pieces, dim=dim):
            off = 0
            for t in pieces:  # copy_ converts dtype/device slice by slice: no merged intermediate
                out.narrow(dim, off, t.shape[dim]).copy_(t)
                off += t.shape[dim]
        sources[key] = TensorSource(tuple(shape), fill, where)
    return sources


def load_meta_checkpoint(ckpt_dir: str | Path, dtype: str | torch.dtype = "float32", device="cpu",
                         max_seq_len: int | None = None) -> Transformer:
    """A Transformer (eval mode) from a Meta checkpoint directory."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    if not (d / "params.json").is_file():
        raise CheckpointError(f"{d}: no params.json (expected Meta layout: params.json + consolidated.NN.pth)")
    paths = meta_shard_paths(d)
    shards = [load_pth(p) for p in paths]  # memory-mapped: nothing is read yet
    args = read_meta_params(d, max_seq_len=max_seq_len, shard0=shards[0])
    return materialize(args, meta_sources(paths, shards), parse_dtype(dtype), device,
                       origin=str(d), config=str(d / "params.json"))
