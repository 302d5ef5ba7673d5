"""Process groups: torchrun-style env -> init_process_group (nccl on CUDA, gloo on CPU), with a
collective timeout so a dead peer turns into an error instead of a hang."""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port that was free a moment ago (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "gloo"


def collective_timeout_s() -> float:
    """How long a collective (or a rank checking in) may wait for its peers before it fails: the
    environment's GRAPHOPT_COLLECTIVE_TIMEOUT_S, default 300 s (data-parallel replicas meet only at
    the gather, so the slower replica's lag must fit in it)."""
    return float(os.environ.get("GRAPHOPT_COLLECTIVE_TIMEOUT_S", 300))


def under_torchrun() -> bool:
    """True when torchrun (torch.distributed.run) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def init_from_env(backend: str | None = None, timeout_s: float = 60.0) -> tuple[int, int]:
    """Join the group described by torchrun's env (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
    Returns (rank, world_size). Idempotent. Every rank first checks in at the store on MASTER_ADDR:
    MASTER_PORT; a rank that has not after timeout_s -> TimeoutError naming the missing ranks."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"init_from_env: environment lacks {', '.join(missing)} (run under torchrun or "
                           "graphopt.distributed.launch)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    store = join_store(rank, world, timeout_s)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return rank, world


def join_store(rank: int, world: int, timeout_s: float):
    """The TCPStore at MASTER_ADDR:MASTER_PORT (hosted by rank 0, or by torchrun's agent), after every
    rank has checked in under a key of its own; a prefix store for the process group."""
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    where = f"{addr}:{port}"
    try:
        store = dist.TCPStore(addr, port, world, is_master=rank == 0 and not agent,
                              timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, dist.DistError) as e:
        raise TimeoutError(f"rank {rank} of {world} could not reach the group's store at {where} within "
                           f"{timeout_s:g}s (rank 0 never joined?): {str(e).splitlines()[0]}") from None
    prefix = f"graphopt/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/"
    store.set(f"{prefix}joined/{rank}", "1")
    deadline = time.monotonic() + timeout_s
    while True:
        absent = [r for r in range(world) if not store.check([f"{prefix}joined/{r}"])]
        if not absent:
            return dist.PrefixStore(prefix + "pg", store)
        if time.monotonic() > deadline:
            raise TimeoutError(f"ranks {absent} of {world} never joined the group at {where} within {timeout_s:g}s "
                               f"(rank {rank} waited; a node or process that did not start?)")
        time.sleep(0.05)


def device_for_rank(rank: int) -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def world_group_name() -> str:
    """The name functional collectives use to find the default group."""
    assert dist.is_initialized(), "torch.distributed is not initialised (use graphopt.distributed.launch)"
    return dist.group.WORLD.group_name


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
