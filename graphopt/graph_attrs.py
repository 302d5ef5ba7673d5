"""Reading and replacing the tensors a GraphModule's get_attr nodes name by dotted path
("model.layers.0.attention.wq.weight"); shared by the passes and the shard loader."""
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
    parameters, without grad; buffers stay buffers; anything else becomes a plain attribute)."""
    owner, leaf = owner_and_leaf(root, target)
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        setattr(owner, leaf, tensor)
