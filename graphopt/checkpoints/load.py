"""load_model: one entry point for presets (random weights), Meta and HF checkpoint directories and
GGUF files."""
from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch

from graphopt.checkpoints.assemble import finish_rope, parse_dtype
from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.hf import load_hf_checkpoint, read_hf_config
from graphopt.checkpoints.meta import load_meta_checkpoint, read_meta_params
from graphopt.checkpoints.tokenizers import TOKENIZER_FILES, find_tokenizer_file, load_tokenizer
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from graphopt.model import PRESETS, ModelArgs, Transformer, init_random_weights


def checkpoint_tokenizer_file(ckpt_dir: str | Path) -> Path | None:
    """The tokenizer file next to a checkpoint's weights, or in the folder above (Meta's releases keep
    tokenizer.model next to the size folders); None if neither has one."""
    p = Path(ckpt_dir)
    return next((f for f in (find_tokenizer_file(p), find_tokenizer_file(p.parent)) if f is not None), None)


def _tokenizer_for(ckpt_dir: Path, vocab_size: int, tokenizer=None):
    """The tokenizer a checkpoint is scored with: `tokenizer` if given (a tokenizer file or folder,
    "word-hash" for graphopt's file-free test tokenizer, or a tokenizer object), else the tokenizer
    file next to the weights or in the parent folder (Meta's releases keep tokenizer.model next to the
    size folders). None found is an error: a real model scored with hashed words means nothing."""
    if tokenizer is not None:
        if isinstance(tokenizer, str) and tokenizer == "word-hash":
            return WordHashTokenizer(vocab_size)
        return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    found = checkpoint_tokenizer_file(ckpt_dir)
    if found is not None:
        return load_tokenizer(found)
    raise CheckpointError(f"{ckpt_dir}: no tokenizer file here or in {ckpt_dir.parent} (expected "
                          f"{' or '.join(TOKENIZER_FILES[:2])}; copy the model's own tokenizer next to the weights, "
                          f"or give its path: graphopt eval --tokenizer PATH, YAML key tokenizer: PATH, "
                          f"lm-eval model_args tokenizer=PATH)")


def check_vocab_fits(where, tokenizer, n_embeddings: int) -> None:
    """Every id the tokenizer gives must index the model's embedding. An embedding with MORE rows than the
    tokenizer has tokens is common and fine (padded to a round size: Qwen2.5 has 151936 rows for 151665
    tokens); fewer rows would end in an IndexError inside the graph, so it is refused at load."""
    if tokenizer.vocab_size > n_embeddings:
        raise CheckpointError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
                              f"only {n_embeddings} rows, so ids {n_embeddings}..{tokenizer.vocab_size - 1} would "
                              f"index past it; use the model's own tokenizer (or give its path: tokenizer=PATH)")


def _vocab_size(p: Path, layout: str, read_args) -> int:
    """The vocabulary size from the config alone (LLaMA-1's params.json says -1: the weights know)."""
    if layout == "hf":
        return read_args(p).vocab_size
    vocab = json.loads((p / "params.json").read_text()).get("vocab_size", -1)
    return vocab if isinstance(vocab, int) and vocab > 0 else 32000


def load_model(path_or_preset: str | Path, dtype: str | torch.dtype = "float32", device="cpu", seed: int = 0,
               max_seq_len: int | None = None, tokenizer=None):
    """(model in eval mode, tokenizer) for a preset name (random weights, WordHashTokenizer), a Meta
    directory (params.json), an HF directory (config.json) or a .gguf file (llama.cpp / Ollama).
    tokenizer: for a checkpoint directory, a tokenizer file or folder, or "word-hash" (see _tokenizer_for);
    default: the tokenizer file next to the weights."""
    torch_dtype = parse_dtype(dtype)
    p = Path(path_or_preset)
    if not p.exists() and str(path_or_preset).lower() in PRESETS:
        args = ModelArgs.from_name(str(path_or_preset))
        if max_seq_len is not None:
            args.max_seq_len = max_seq_len
        tokenizer = _tokenizer_for(p, args.vocab_size, tokenizer or "word-hash")
        check_vocab_fits(f"model preset {str(path_or_preset)!r}", tokenizer, args.vocab_size)
        model = init_random_weights(Transformer(args), seed=seed).to(dtype=torch_dtype)
        finish_rope(model, "cpu")  # keep the RoPE tables float32 after .to(dtype)
        return model.to(device).eval(), tokenizer
    if p.is_dir():
        if (p / "params.json").is_file():
            layout, read_args, load = "meta", read_meta_params, load_meta_checkpoint
        elif (p / "config.json").is_file():
            layout, read_args, load = "hf", read_hf_config, load_hf_checkpoint
        else:
            raise CheckpointError(f"{p}: neither params.json (Meta layout) nor config.json (Hugging Face layout) found")
        # the tokenizer first: a missing one is reported before minutes of reading weights
        tokenizer = _tokenizer_for(p, _vocab_size(p, layout, read_args), tokenizer)
        if layout == "hf":  # (params.json may say -1: then only the weights know)
            check_vocab_fits(p, tokenizer, read_args(p).vocab_size)
        model = load(p, torch_dtype, device, max_seq_len=max_seq_len)
        check_vocab_fits(p, tokenizer, model.args.vocab_size)
        return model, tokenizer
    if p.is_file() and p.suffix.lower() == ".gguf":
        from graphopt.checkpoints.gguf import load_gguf
        model, own = load_gguf(p, torch_dtype, device, max_seq_len=max_seq_len)
        tokenizer = own if tokenizer is None else _tokenizer_for(p, model.args.vocab_size, tokenizer)
        check_vocab_fits(p, tokenizer, model.args.vocab_size)
        return model, tokenizer
    if p.exists():
        raise CheckpointError(f"{p}: expected a checkpoint directory (params.json or config.json) or a .gguf "
                              "file, got another file")
    close = difflib.get_close_matches(str(path_or_preset).lower(), PRESETS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CheckpointError(f"{path_or_preset!r} is neither a model preset nor an existing directory{hint} "
                          f"(presets: {', '.join(PRESETS)})")


def load_model_structure(ckpt_dir: str | Path, dtype: str | torch.dtype = "float32", tokenizer=None):
    """(model on the meta device — shapes and dtype, no weights —, tokenizer) for a checkpoint
    directory or .gguf file. For a rank that will fill in only its own shard (graphopt.distributed.load_shard)."""
    p = Path(ckpt_dir)
    if p.is_file() and p.suffix.lower() == ".gguf":
        from graphopt.checkpoints.gguf import load_gguf_structure
        args, tokenizer = load_gguf_structure(p)
        check_vocab_fits(p, tokenizer, args.vocab_size)
        with torch.device("meta"):
            model = Transformer(args).to(dtype=parse_dtype(dtype))
        return model.eval(), tokenizer
    if (p / "params.json").is_file():
        args = read_meta_params(p)
    elif (p / "config.json").is_file():
        args = read_hf_config(p)
    else:
        raise CheckpointError(f"{p}: neither params.json (Meta layout) nor config.json (Hugging Face layout) found")
    with torch.device("meta"):
        model = Transformer(args).to(dtype=parse_dtype(dtype))
    tokenizer = _tokenizer_for(p, args.vocab_size, tokenizer)
    check_vocab_fits(p, tokenizer, args.vocab_size)
    return model.eval(), tokenizer
