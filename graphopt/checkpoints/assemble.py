"""Build a Transformer from lazily read tensors without holding the checkpoint twice in memory.

The model is created on the meta device (no storage), every tensor is copied straight from its
memory-mapped source into a fresh tensor of the target dtype/device (one at a time), and the
result is attached with load_state_dict(assign=True). The non-persistent RoPE tables are then
recomputed, since on the meta device they have no values.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from graphopt.checkpoints.errors import CheckpointError
from graphopt.model import ModelArgs, Transformer
from graphopt.model.llama import model_rope_tables

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def rename_key(key: str, top_level: dict[str, str], layer_key, in_layer: dict[str, str]) -> str:
    """graphopt's (Meta's) name for a checkpoint key, from a format's rename tables: top-level names,
    and per-layer names matched by layer_key (groups: layer index, part, weight|bias). Unknown keys come
    back unchanged (the loader then reports them as unexpected)."""
    if key in top_level:
        return top_level[key]
    m = layer_key.fullmatch(key)
    if m and m.group(2) in in_layer:
        return f"layers.{m.group(1)}.{in_layer[m.group(2)]}.{m.group(3)}"
    return key


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype {dtype} not supported; expected float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of float32, bfloat16, float16")
    return _DTYPES[key]


@dataclass
class TensorSource:
    """One model tensor as it lies in a checkpoint, read only when `fill` is called."""
    shape: tuple[int, ...]        # shape in Meta layout (after merging shards / un-permuting)
    fill: Callable[[Tensor], None]  # copies the Meta-layout values into `out` (any dtype/device)
    where: str                    # file (and key) it comes from, for error messages


def check_shape(key: str, expected: tuple[int, ...], got: tuple[int, ...], where: str, config: str):
    if tuple(expected) != tuple(got):
        raise CheckpointError(
            f"{where}: tensor {key!r} has shape {list(got)}, but {config} implies {list(expected)}")


@contextlib.contextmanager
def _no_initial_values():
    """Modules made inside skip torch.nn.init's random fills: the checkpoint's tensors replace them, and on
    the meta device a fill goes through torch's Python decompositions, whose first call imports dynamo
    (~0.8 s of a process's start that nothing else here needs)."""
    names = [n for n in _INIT_FILLS if hasattr(torch.nn.init, n)]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


_INIT_FILLS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
               "trunc_normal_", "zeros_", "ones_", "constant_")


def materialize(args: ModelArgs, sources: dict[str, TensorSource], dtype: torch.dtype, device,
                origin: str, config: str) -> Transformer:
    """Return Transformer(args) in eval mode holding the tensors of `sources`.

    origin: the checkpoint (directory) for messages; config: the file the shapes come from."""
    with torch.device("meta"), _no_initial_values():
        model = Transformer(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if args.tie_embeddings:
        expected.pop("output.weight")  # the same tensor as tok_embeddings.weight
        sources = {k: v for k, v in sources.items() if k != "output.weight"}
    missing = [k for k in expected if k not in sources]
    if missing:
        raise CheckpointError(f"{origin}: checkpoint lacks {len(missing)} tensor(s) that {config} requires, "
                              f"e.g. {missing[:4]}")
    unexpected = [k for k in sources if k not in expected]
    if unexpected:
        raise CheckpointError(f"{origin}: checkpoint has {len(unexpected)} tensor(s) that a model built from "
                              f"{config} does not have, e.g. {unexpected[:4]} (from {sources[unexpected[0]].where})")
    for key, shape in expected.items():
        check_shape(key, shape, sources[key].shape, sources[key].where, config)

    state = {}
    for key, shape in expected.items():
        out = torch.empty(shape, dtype=dtype, device=device)
        try:
            sources[key].fill(out)
        except CheckpointError:
            raise
        except Exception as e:  # truncated data, unreadable storage, ...
            raise CheckpointError(f"{sources[key].where}: cannot read tensor {key!r} ({type(e).__name__}: {e})") from e
        state[key] = out
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    finish_rope(model, device)
    return model.eval()


def finish_rope(model: Transformer, device) -> None:
    """(Re)compute the non-persistent RoPE tables (float32, with the args' scaling) on `device`."""
    cos, sin = model_rope_tables(model.args)
    model.rope_cos = cos.to(device)  # assigning a registered buffer keeps it non-persistent
    model.rope_sin = sin.to(device)
