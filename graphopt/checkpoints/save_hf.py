"""Write a (pruned) Transformer as a Hugging Face LLaMA directory: config.json + model.safetensors + the
tokenizer, which graphopt.load_model and transformers' LlamaForCausalLM both load.

A graph pruned by prune_structured with budget per_layer is a regular LLaMA of a smaller shape (one
intermediate_size, one head count for every layer); pruned_transformer() reads its weights back into an
eager Transformer of that shape. A global budget leaves layers of different sizes, which a config.json
(one intermediate_size, one num_attention_heads) cannot describe: saving one is refused, naming the
layers' sizes. In memory, pruned_transformer(varying_ffn=True) builds FFNs of different widths (each
layer's FeedForward at its own width; heads must still agree), so such a cut can be scored eagerly.
head_dim is always written: after a head cut it is no longer hidden_size / num_attention_heads.

The folder is checked first (graphopt.checkpoints.out_dir): one that holds files is refused unless
force, and with force the new files are written beside the old ones in a temporary subfolder, then the
files they supersede are removed and the new ones moved in; files that are not a checkpoint's stay.

HF stores wq / wk with each head's rows in rotate_half order; graphopt keeps Meta's interleaved pairs,
so the rows are permuted on the way out (graphopt.checkpoints.hf.unpermute_qk undoes it on the way in).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from torch.fx import GraphModule

from graphopt.checkpoints.errors import CheckpointError
from graphopt.checkpoints.out_dir import check_out_dir, superseded
from graphopt.graph_attrs import attr
from graphopt.model import ModelArgs, Transformer
from graphopt.model.llama import FeedForward

_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_IN_LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}


def _layer_sizes(gm: GraphModule, prefix: str, args: ModelArgs) -> list[tuple[int, int, int]]:
    """(ffn channels, query heads, kv heads) of each layer, from the graph's weights."""
    hd, out = args.head_dim, []
    for i in range(args.n_layers):
        p = f"{prefix}layers.{i}."
        try:
            w1, wq, wk = (attr(gm, p + k) for k in ("feed_forward.w1.weight", "attention.wq.weight",
                                                     "attention.wk.weight"))
        except AttributeError as e:
            raise CheckpointError(f"the graph has no {p}feed_forward.w1 / attention.wq / attention.wk weights ({e}): "
                                  f"save it before merge_qkv / merge_gate_up, which replace them") from e
        out.append((w1.shape[0], wq.shape[0] // hd, wk.shape[0] // hd))
    return out


def pruned_transformer(gm: GraphModule, args: ModelArgs, prefix: str = "model.",
                       varying_ffn: bool = False) -> Transformer:
    """An eager Transformer holding the weights of `gm` (a ScoreModule graph, weights under `prefix` with
    Meta names), its shape read from them. args: the unpruned model's. Non-uniform layers are an error;
    with varying_ffn, layers whose FFN widths differ (heads alike) get FeedForwards of their own width
    (args.hidden_dim: the widest), a model for scoring in memory that save_hf_checkpoint refuses."""
    sizes = _layer_sizes(gm, prefix, args)
    differ = {(q, kv) for _, q, kv in sizes} if varying_ffn else set(sizes)
    if len(differ) > 1:
        per_layer = ", ".join(f"{i}: {f}/{q}/{kv}" for i, (f, q, kv) in enumerate(sizes))
        raise CheckpointError(f"the pruned layers differ in size (layer: ffn channels/query heads/kv heads: {per_layer}); "
                              f"a LLaMA config.json has one intermediate_size and one head count for every layer, so "
                              f"neither transformers nor graphopt.model can hold it: save a per_layer (uniform) cut")
    hidden, n_heads, n_kv = max(f for f, _, _ in sizes), sizes[0][1], sizes[0][2]
    new = replace(args, hidden_dim=hidden, n_heads=n_heads, n_kv_heads=n_kv, head_dim=args.head_dim)
    model = Transformer(new)
    for layer, (width, _, _) in zip(model.layers, sizes):
        if width != hidden:
            layer.feed_forward = FeedForward(replace(new, hidden_dim=width))
    state = {}
    for key, t in model.state_dict().items():
        if key == "output.weight" and new.tie_embeddings:
            state[key] = attr(gm, prefix + "tok_embeddings.weight").detach()
            continue
        if not key.endswith((".weight", ".bias")):
            state[key] = t  # RoPE tables: the model's own
            continue
        got = attr(gm, prefix + key).detach()
        if got.shape != t.shape:
            raise CheckpointError(f"{prefix + key}: shape {list(got.shape)}, expected {list(t.shape)} for "
                                  f"{new.n_heads} heads / {new.n_kv_heads} kv heads / hidden {new.hidden_dim}")
        state[key] = got
    model.load_state_dict(state, assign=True)
    if new.tie_embeddings:  # assign=True gave the head its own Parameter: one table again
        model.output.weight = model.tok_embeddings.weight
    return model.eval()


def _permute_qk(w: Tensor, n_heads: int) -> Tensor:
    """Meta's interleaved pair rows -> HF's rotate_half rows, per head (inverse of hf.unpermute_qk)."""
    rest = w.shape[1:]
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *rest).transpose(1, 2).reshape(w.shape)


def hf_config(args: ModelArgs, dtype: torch.dtype) -> dict:
    """config.json of a LlamaForCausalLM with args' shape (head_dim written out)."""
    unsupported = [k for k, v in (("qkv_bias", args.qkv_bias), ("qk_norm", args.qk_norm),
                                  ("rope_scaling", args.rope_scaling), ("sliding_window", args.sliding_window)) if v]
    if unsupported:
        raise CheckpointError(f"cannot write a LLaMA config.json for a model with {', '.join(unsupported)} "
                              f"(only plain LLaMA shapes are written)")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": args.dim, "intermediate_size": args.hidden_dim, "num_hidden_layers": args.n_layers,
            "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
            "vocab_size": args.vocab_size, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
            "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": bool(args.tie_embeddings),
            "attention_bias": False, "mlp_bias": False, "torch_dtype": str(dtype).removeprefix("torch.")}


def _write_tokenizer(tokenizer, d: Path) -> None:
    """The model's tokenizer next to the weights: its own file copied (tokenizer.json with its
    tokenizer_config.json, or tokenizer.model), a GGUF's built tokenizer saved as tokenizer.json (with
    its bos / eos names), or graphopt's word-hash test tokenizer file."""
    from graphopt.checkpoints.word_tokenizer import WordHashTokenizer, write_word_hash_tokenizer
    path = getattr(tokenizer, "path", None)
    if isinstance(tokenizer, WordHashTokenizer):
        write_word_hash_tokenizer(d, tokenizer.vocab_size)
    elif path is not None and Path(path).is_file():
        shutil.copy(path, d / Path(path).name)  # (d: a new folder, never the file's own)
        config = Path(path).parent / "tokenizer_config.json"
        if config.is_file():
            shutil.copy(config, d / config.name)
    elif hasattr(tokenizer, "tok"):  # GGUFTokenizer: a tokenizers.Tokenizer built from the GGUF's metadata
        tokenizer.tok.save(str(d / "tokenizer.json"))
        names = {f"{k}_token": tokenizer.tok.id_to_token(i) for k, i in
                 (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id)) if i is not None}
        (d / "tokenizer_config.json").write_text(json.dumps(names, indent=1) + "\n")
    else:
        raise CheckpointError(f"cannot write tokenizer {tokenizer!r}: expected one read from a tokenizer.json / "
                              f"tokenizer.model file, a GGUF's, or graphopt's word-hash tokenizer")


def save_hf_checkpoint(model: Transformer, out_dir: str | Path, tokenizer, force: bool = False,
                       source: str | Path | None = None, log=print) -> Path:
    """config.json + model.safetensors (+ the tokenizer) in out_dir; tied embeddings stored once.
    An out_dir that holds files is refused unless force; then the checkpoint files the new ones
    supersede are removed (out_dir.superseded), said in one line to `log`. source: the model read
    (refused as out_dir)."""
    from safetensors.torch import save_file
    d = check_out_dir(out_dir, source=source, force=force)
    a = model.args
    widths = [layer.feed_forward.w1.weight.shape[0] for layer in model.layers]
    if set(widths) != {a.hidden_dim}:
        raise CheckpointError(f"the layers' FFN widths differ ({widths}); a LLaMA config.json has one "
                              f"intermediate_size for every layer: save a per_layer (uniform) cut")
    config = hf_config(a, next(model.parameters()).dtype)
    tensors = {}
    for key, t in model.state_dict().items():
        if not key.endswith((".weight", ".bias")) or (key == "output.weight" and a.tie_embeddings):
            continue
        if key in _TOP:
            name = _TOP[key]
        else:
            _, i, rest = key.split(".", 2)  # layers.N.<module>.weight
            module, kind = rest.rsplit(".", 1)
            name = f"model.layers.{i}.{_IN_LAYER[module]}.{kind}"
        t = t.detach().cpu()
        if key.endswith(("attention.wq.weight", "attention.wk.weight")):
            t = _permute_qk(t, a.n_heads if ".wq." in key else a.n_kv_heads)
        tensors[name] = t.contiguous().clone()  # clone: one storage per tensor for safetensors
    d.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=d, prefix=".graphopt-save-"))  # the old checkpoint stays until all is written
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        _write_tokenizer(tokenizer, staging)
        tokenizer_file = getattr(tokenizer, "path", None)
        removed = [p for p in superseded(d, keep={Path(tokenizer_file)} if tokenizer_file else set())
                   if not (staging / p.name).exists()]
        for p in removed:
            p.unlink()
        for p in d.glob(".graphopt-save-*"):  # left by a save that was stopped halfway (graphopt's own)
            if p != staging:
                shutil.rmtree(p, ignore_errors=True)
        for p in sorted(staging.iterdir()):
            p.replace(d / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if removed:
        log(f"removed from {d} the old checkpoint's {', '.join(p.name for p in removed)} (superseded by the new "
            f"one; other files kept)")
    return d
