"""`--model graphopt` on several processes: data-parallel replicas x tensor-parallel shards, under torchrun.

    torchrun --nproc-per-node 4 -m graphopt lm-eval --model graphopt \\
        --model_args pretrained=DIR,data_parallel=2,tensor_parallel=2 --tasks hellaswag

lm-eval's own way (its `accelerate launch` path) splits documents round robin by lm.rank /
lm.world_size and pads every rank to the same number of requests. graphopt splits inside the model
instead, as `graphopt run` does: every rank builds every request (lm-eval is told world_size 1), the
replicas take whole contexts balanced by token count, the ranks of one replica run its tensor-parallel
shards on their sub-group of the device mesh, and every rank gets every answer back (all of it in the
Scorer: graphopt.scoring.scorer). lm-eval then computes its metrics from all requests on every rank;
only global rank 0 prints and writes them (graphopt.commands.lm_eval).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

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
