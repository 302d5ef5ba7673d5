"""`--model graphopt` on several processes: data-parallel replicas x tensor-parallel shards, under torchrun.

    torchrun --nproc-per-node 4 -m graphopt lm-eval --model graphopt \\
        --model_args pretrained=DIR,data_parallel=2,tensor_parallel=2 --tasks hellaswag

lm-eval's own way (its `accelerate launch` path) splits documents round robin by lm.rank /
lm.world_size and pads every rank to the same number of requests. graphopt splits inside the model
instead, as `graphopt run` does: every rank builds every request (lm-eval is told world_size 1), the
replicas take whole contexts balanced by token count (graphopt.distributed.data_parallel), the ranks of
one replica run its tensor-parallel shards on their sub-group of the device mesh, and every rank gets
every answer back (all_gather). lm-eval then computes its metrics from all requests on every rank;
only global rank 0 returns them (prints, writes --output_path): `GraphoptLM.rank` is 0 while lm-eval
builds the requests (it splits documents by it) and the process's global rank once it has answered
(lm-eval reads it again to decide which process returns results).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from graphopt.distributed.mesh import MeshShape
from graphopt.errors import UserError

LAUNCH_HINT = "torchrun --nproc-per-node {n} -m graphopt lm-eval --model graphopt --model_args ..."


@dataclass(frozen=True)
class World:
    """This process's place in the joined world: its global rank in a [dp, 1, tp] mesh."""
    rank: int
    shape: MeshShape

    @property
    def dp(self) -> int:
        return self.shape.dp

    @property
    def tp(self) -> int:
        return self.shape.tp

    @property
    def replica(self) -> int:
        return self.shape.replica(self.rank)

    @property
    def model_rank(self) -> int:
        return self.shape.model_rank(self.rank)


def plan_world(cfg, model_spec: str) -> World | None:
    """The world `cfg` (GraphoptArgs) asks for, checked against torchrun's environment and the model's
    head layout before anything loads; None for one process. Raises UserError naming the key."""
    from graphopt.distributed.groups import under_torchrun

    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else 1
    tp = cfg.tensor_parallel
    dp = cfg.data_parallel or max(world // tp, 1)
    if dp * tp != world:
        hint = "" if world > 1 else f"; launch one process per rank: {LAUNCH_HINT.format(n=dp * tp)}"
        raise UserError(f"--model_args data_parallel {dp} x tensor_parallel {tp} = {dp * tp} processes, but "
                        f"{'torchrun started' if world > 1 else 'this is'} {world}{hint}")
    if world == 1:
        return None
    if tp > 1:
        from graphopt.checkpoints.model_args import read_model_args
        from graphopt.distributed.plan import tensor_parallel_problem
        problem = tensor_parallel_problem(read_model_args(model_spec), tp)
        if problem:
            raise UserError(f"--model_args tensor_parallel={tp}: {problem}")
    return World(int(os.environ["RANK"]), MeshShape(dp, 1, tp))


def join(world: World, device: str) -> str:
    """Join torchrun's process group and build the [dp, 1, tp] device mesh; -> this rank's device."""
    from graphopt.distributed.groups import collective_timeout_s, init_from_env
    from graphopt.distributed.mesh import activate

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", world.rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    init_from_env(timeout_s=collective_timeout_s())
    activate(world.shape, device)
    return device


def with_tensor_parallel(specs) -> list:
    """The pipeline (named pipelines expanded) with the tensor_parallel pass at the latest place the pass
    order allows: after the fusions and merges, before mkldnn_linear / cast passes that must see plain
    linears."""
    from graphopt.pipeline import PassError, check_order, parse_pipeline

    specs = parse_pipeline(specs)
    if any(s.name == "tensor_parallel" for s in specs):
        return specs
    last_error = None
    for at in range(len(specs), -1, -1):
        candidate = specs[:at] + parse_pipeline("tensor_parallel") + specs[at:]
        try:
            check_order(candidate)
            return candidate
        except PassError as e:
            last_error = e
    raise UserError(f"--model_args tensor_parallel: no place for the tensor_parallel pass in "
                    f"{[s.name for s in specs]}: {last_error}")


def check_same_requests(requests) -> None:
    """Every rank must have been handed the same requests (lm-eval builds them once per process)."""
    import torch.distributed as dist

    digest = hashlib.sha256()
    for r in requests:
        digest.update(np.asarray(r.context_ids, dtype=np.int64).tobytes() + b"|")
        digest.update(np.asarray(r.continuation_ids, dtype=np.int64).tobytes() + b";")
    mine = (len(requests), digest.hexdigest())
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    differ = [r for r, d in enumerate(everyone) if d != everyone[0]]
    if differ:
        raise RuntimeError(f"ranks {differ} were given other requests than rank 0 ({everyone[0][0]} requests): "
                           f"every rank must run the same lm-eval command on the same tasks")


def my_share(world: World, requests) -> list[int]:
    """Indices (ascending) of the requests this rank's replica scores."""
    from graphopt.distributed.data_parallel import split_by_tokens

    if world.dp == 1:
        return list(range(len(requests)))
    try:
        return split_by_tokens(requests, world.dp)[world.replica]
    except ValueError as e:
        raise UserError(f"--model_args data_parallel={world.dp}: {e}".replace("raise data.limit", "raise --limit"))


def gather_everywhere(world: World, mine: list[int], loglik, greedy, n_requests: int):
    """Every rank gets ([n_requests] log-likelihoods float64, [n_requests] is_greedy bool) in request order
    from the replicas' shares (model rank 0 of each replica sends); raises if a request was scored by no
    replica or by two."""
    import torch.distributed as dist

    from graphopt.distributed.data_parallel import assemble

    part = None
    if world.model_rank == 0:
        part = (np.asarray(mine, dtype=np.int64), np.asarray(loglik, dtype=np.float64), np.asarray(greedy, dtype=bool))
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    loglik, greedy = assemble(parts, n_requests)
    return loglik, greedy
