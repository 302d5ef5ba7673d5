"""The peer for tensor_parallel: the eager model sharded by torch.distributed.tensor.parallel
(DTensor ColwiseParallel / RowwiseParallel, as gpt-fast's tp.py does). Used by tests and benchmarks."""
from __future__ import annotations

import torch.distributed as dist
from torch import nn


def parallelize_dtensor(model: nn.Module) -> nn.Module:
    """Shard graphopt.model.Transformer `model` in place over the default group (CPU/gloo or CUDA)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    ws = dist.get_world_size()
    args = model.args
    if args.n_heads % ws or args.n_kv_heads % ws:
        raise ValueError(f"DTensor column sharding needs n_heads {args.n_heads} and n_kv_heads {args.n_kv_heads} "
                         f"divisible by world size {ws} (it cannot replicate kv heads)")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device, (ws,))
    for layer in model.layers:
        parallelize_module(layer.attention, mesh, {"wq": ColwiseParallel(), "wk": ColwiseParallel(),
                                                   "wv": ColwiseParallel(), "wo": RowwiseParallel()})
        parallelize_module(layer.feed_forward, mesh, {"w1": ColwiseParallel(), "w3": ColwiseParallel(),
                                                      "w2": RowwiseParallel()})
    return model
