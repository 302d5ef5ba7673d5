"""Worker functions run on spawned ranks by the distributed tests (module level so spawn can pickle them)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def echo_rank():
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t.item()}
