"""Reading and replacing the tensors a GraphModule's get_attr nodes name by dotted path
("model.layers.0.attention.wq.weight"); shared by the passes and the shard loader.

Tied weights: export keeps every name a tied tensor had (a tied LLaMA's graph holds the embedding
table as model.tok_embeddings.weight and model.output.weight, one Parameter), so a pass that
replaces a weight for all its readers calls `replace_tensor` (every name, one new Parameter), and
`held_numel` counts what a set of tensors holds in memory (each storage once)."""
from __future__ import annotations

import torch
from torch import nn


def owner_and_leaf(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    """"a.b.c" -> (root.a.b, "c")."""
    *path, leaf = target.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


def attr(root: nn.Module, target: str) -> torch.Tensor:
    owner, leaf = owner_and_leaf(root, target)
    return getattr(owner, leaf)


def set_attr(root: nn.Module, target: str, tensor: torch.Tensor) -> None:
    """Replace the parameter/buffer at `target` by `tensor`, keeping its kind (parameters stay
    parameters, without grad; buffers stay buffers; anything else becomes a plain attribute).
    An nn.Parameter is registered as it is, so one Parameter can sit under several targets."""
    owner, leaf = owner_and_leaf(root, target)
    if leaf in owner._parameters:
        param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False)
        owner._parameters[leaf] = param
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        setattr(owner, leaf, tensor)


def targets_holding(root: nn.Module, tensor: torch.Tensor) -> list[str]:
    """Every dotted name under root (parameter, buffer or plain tensor attribute) that holds this very
    tensor object: one name, or several for a tied weight."""
    out = []
    for prefix, module in root.named_modules(remove_duplicate=False):
        slots = {**{k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)},
                 **module._buffers, **module._parameters}
        out += [f"{prefix}.{name}" if prefix else name for name, t in slots.items() if t is tensor]
    return out


def names_by_tensor(root: nn.Module) -> dict[int, list[str]]:
    """id(tensor) -> every dotted name holding it (targets_holding for all tensors in one walk)."""
    out: dict[int, list[str]] = {}
    for prefix, module in root.named_modules(remove_duplicate=False):
        slots = {**{k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)},
                 **module._buffers, **module._parameters}
        for name, t in slots.items():
            if t is not None:
                out.setdefault(id(t), []).append(f"{prefix}.{name}" if prefix else name)
    return out


def replace_tensor(root: nn.Module, old: torch.Tensor, new: torch.Tensor) -> list[str]:
    """Every name holding `old` (targets_holding) now holds `new`; the parameter slots all get ONE
    nn.Parameter, so a tied weight stays one tensor and `old` is no longer held by root.
    Returns the names replaced."""
    names = targets_holding(root, old)
    param = new if isinstance(new, nn.Parameter) else nn.Parameter(new, requires_grad=False)
    for name in names:
        owner, leaf = owner_and_leaf(root, name)
        set_attr(root, name, param if leaf in owner._parameters else new)
    return names


def held_numel(tensors) -> int:
    """Elements `tensors` hold in memory: each storage counted once however many tensors, Parameter
    objects or views read it (a tied table under two names is one table); views of one storage that
    cover different elements count the union of what they cover. Opaque tensors (oneDNN-packed
    weights) have no shareable storage and count their numel; meta tensors hold nothing."""
    spans: dict[tuple, list[tuple[int, int, int]]] = {}  # storage -> [(first byte, end byte, numel)] per view
    itemsize: dict[tuple, int] = {}
    opaque: dict[int, int] = {}
    for t in tensors:
        if t.is_meta or t.numel() == 0:
            continue
        if t.is_mkldnn:
            opaque[id(t)] = t.numel()
            continue
        key = (str(t.device), t.untyped_storage().data_ptr())
        start = t.storage_offset() * t.element_size()
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))  # elements from first to last
        view = (start, start + extent * t.element_size(), t.numel())
        if view not in spans.setdefault(key, []):
            spans[key].append(view)
        itemsize[key] = min(itemsize.get(key, t.element_size()), t.element_size())
    total = sum(opaque.values())
    for key, views in spans.items():
        if len(views) == 1:  # one view (the usual case): exactly its elements, gaps of a strided view excluded
            total += views[0][2]
            continue
        covered, end = 0, -1
        for a, b, _ in sorted(views):
            covered += max(0, b - max(a, end))
            end = max(end, b)
        total += covered // itemsize[key]
    return total
