"""read_model_args: a model's ModelArgs (layers, heads, sizes) from a preset name or a checkpoint's
config, without reading any weights. For checks made before a run starts (graphopt.runner.preflight)."""
from __future__ import annotations

from pathlib import Path

from graphopt.checkpoints.errors import CheckpointError
from graphopt.model import PRESETS, ModelArgs


def read_model_args(model_spec: str | Path) -> ModelArgs:
    """ModelArgs of a preset name, a Meta directory (params.json), an HF directory (config.json) or a
    .gguf file (its metadata); the same resolution order as load_model. Weights are never read: a Meta
    params.json with vocab_size -1 reads the embedding's shape from consolidated.00.pth memory-mapped,
    a GGUF only its header."""
    p = Path(model_spec)
    if not p.exists() and str(model_spec).lower() in PRESETS:
        return ModelArgs.from_name(str(model_spec))
    if p.is_dir():
        if (p / "params.json").is_file():
            from graphopt.checkpoints.meta import read_meta_params
            return read_meta_params(p)
        if (p / "config.json").is_file():
            from graphopt.checkpoints.hf import read_hf_config
            return read_hf_config(p)
        raise CheckpointError(f"{p}: neither params.json (Meta layout) nor config.json (Hugging Face layout) found")
    if p.is_file() and p.suffix.lower() == ".gguf":
        from graphopt.checkpoints.gguf import read_gguf_config
        from graphopt.checkpoints.gguf_reader import open_gguf
        return read_gguf_config(open_gguf(p))
    if p.exists():
        raise CheckpointError(f"{p}: expected a checkpoint directory (params.json or config.json) or a .gguf "
                              "file, got another file")
    raise CheckpointError(f"{str(model_spec)!r} is neither a model preset ({', '.join(PRESETS)}) nor an "
                          f"existing checkpoint path")


def describe_model_args(args: ModelArgs) -> str:
    """The sizes sharding checks depend on, in one line: 'n_layers 2, n_heads 4, n_kv_heads 4, ...'."""
    return (f"n_layers {args.n_layers}, n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, dim {args.dim}, "
            f"hidden_dim {args.hidden_dim}, vocab_size {args.vocab_size}")
