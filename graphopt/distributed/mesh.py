"""The run's device mesh: data_parallel x pipeline x tensor ranks (torch.distributed.device_mesh).

A world of `world_size` ranks is laid out row-major as [dp, pp, tp] (mesh dims "dp", "pp", "tp"):
global rank r is replica r // (pp * tp), and within its replica model rank r % (pp * tp). The
sharding passes run on the model-parallel sub-group of their replica (`shard_group()`: the "tp"
group for tensor_parallel, the "pp" group for pipeline_split); with no mesh active (the passes'
own tests, one replica) that is the default group.

Sizes (`mesh_shape`): the YAML keys data_parallel, tensor_parallel, pipeline_parallel (0: the rest of
world_size / data_parallel, given to the sharding pass the run has). Ranks a run does not shard over
become data-parallel replicas too: a run without tensor_parallel / pipeline_split (the reference)
splits the questions over every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class MeshShape:
    dp: int = 1  # replicas, each scoring its share of the questions
    pp: int = 1  # pipeline stages across ranks (stage = rank in the "pp" group)
    tp: int = 1  # tensor-parallel shards

    @property
    def world(self) -> int:
        return self.dp * self.pp * self.tp

    @property
    def model(self) -> int:
        """Ranks holding one replica (its model-parallel group); one of pp, tp is 1."""
        return self.pp * self.tp

    def replica(self, rank: int) -> int:
        return rank // self.model

    def model_rank(self, rank: int) -> int:
        return rank % self.model


def _sizes(world_size: int, data_parallel: int, tensor_parallel: int, pipeline_parallel: int) -> tuple[int, int]:
    """(tp, pp) with a 0 filled by what world_size / data_parallel leaves (both 0: both stay 0, the rest
    goes to the run's sharding pass); ValueError when the sizes do not make the world."""
    for key, v, low in (("data_parallel", data_parallel, 1), ("tensor_parallel", tensor_parallel, 0),
                        ("pipeline_parallel", pipeline_parallel, 0)):
        if v < low:
            raise ValueError(f"{key} must be >= {low}, got {v}")
    tp, pp = tensor_parallel, pipeline_parallel
    product = data_parallel * (tp or 1) * (pp or 1)
    if world_size % product or (tp and pp and product != world_size):
        raise ValueError(f"mesh data_parallel {data_parallel} x tensor_parallel {tp or 'rest'} x pipeline_parallel "
                         f"{pp or 'rest'} does not make world_size {world_size}: the product of the sizes must "
                         f"equal it")
    fill = world_size // product
    if tensor_parallel == 0 and pipeline_parallel:
        tp = fill
    if pipeline_parallel == 0 and tensor_parallel:
        pp = fill
    if tensor_parallel == 0 and pipeline_parallel == 0:
        tp = pp = 0
    if tp > 1 and pp > 1:
        raise ValueError(f"tensor_parallel {tp} x pipeline_parallel {pp}: pipeline stages across ranks with "
                         f"tensor-parallel shards inside each are not supported; make one of them 1")
    return tp, pp


def mesh_problem(world_size: int, data_parallel: int, tensor_parallel: int, pipeline_parallel: int) -> str | None:
    """Why these sizes do not make a mesh of world_size ranks (None: they do); 0 = the rest."""
    try:
        _sizes(world_size, data_parallel, tensor_parallel, pipeline_parallel)
    except ValueError as e:
        return str(e)
    return None


def mesh_shape(world_size: int, data_parallel: int, tensor_parallel: int, pipeline_parallel: int,
               shards: set) -> MeshShape:
    """The mesh one run uses; `shards` is what its passes split ({"tensor", "pipeline"} subset).
    tensor_parallel (alone, or with pipeline_split run in-process on each shard): tp ranks per
    replica; pipeline_split alone: pp ranks (stage = rank); neither: every rank is a replica. A size
    left 0 is world_size / data_parallel."""
    tp, pp = _sizes(world_size, data_parallel, tensor_parallel, pipeline_parallel)
    rest = world_size // data_parallel
    if "tensor" in shards:
        tp = tp or rest
        return MeshShape(world_size // tp, 1, tp)
    if "pipeline" in shards:
        pp = pp or rest
        return MeshShape(world_size // pp, pp, 1)
    return MeshShape(world_size, 1, 1)


def run_mesh(exp, run) -> MeshShape:
    """The mesh of one run of an experiment (graphopt.runner's ExperimentConfig / ResolvedRun)."""
    from graphopt.pipeline import pipeline_shards
    return mesh_shape(exp.world_size, getattr(exp, "data_parallel", 1), getattr(exp, "tensor_parallel", 0),
                      getattr(exp, "pipeline_parallel", 0), pipeline_shards(run.passes) if run.capture == "export"
                      else set())


def runs_one_stage_per_rank(exp, run) -> bool:
    """pipeline_split over world_size > 1 ranks (without tensor_parallel): rank r runs stage r only
    (graphopt.distributed.pipeline_run.run_pipeline_rank, world_size micro-batches); the stages run as
    captured and split, so the compiler must be none. With data_parallel replicas: the ranks of one
    replica's pipeline group."""
    return run_mesh(exp, run).pp > 1


_ACTIVE: dict = {}  # "mesh": the DeviceMesh of the run in this process, "shape": its MeshShape
_BUILT: dict = {}  # (MeshShape, device type) -> DeviceMesh built in this process


def activate(shape: MeshShape, device: str = "cpu"):
    """Build the DeviceMesh of `shape` over the default group (every rank must call it) and make its
    model-parallel sub-group the one `shard_group()` returns. -> the DeviceMesh."""
    from torch.distributed.device_mesh import init_device_mesh
    assert dist.is_initialized(), "activate: torch.distributed is not initialised"
    if shape.world != dist.get_world_size():
        raise ValueError(f"mesh dp {shape.dp} x pp {shape.pp} x tp {shape.tp} = {shape.world} ranks, but the "
                         f"process group has {dist.get_world_size()} (WORLD_SIZE)")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    mesh = _BUILT.get((shape, kind))
    if mesh is None:  # one per shape and process: a torchrun rank measures many runs; groups are not freed
        mesh = _BUILT[(shape, kind)] = init_device_mesh(kind, (shape.dp, shape.pp, shape.tp),
                                                        mesh_dim_names=("dp", "pp", "tp"))
    _ACTIVE.update(mesh=mesh, shape=shape)
    return mesh


def shard_group(kind: str = "tp"):
    """The process group tensor_parallel ("tp") or pipeline_split ("pp") runs its collectives on:
    this replica's sub-group of the active mesh, else the default group."""
    assert dist.is_initialized(), "torch.distributed is not initialised (use graphopt.distributed.launch)"
    mesh = _ACTIVE.get("mesh")
    return dist.group.WORLD if mesh is None else mesh.get_group(kind)


def global_rank(group, group_rank: int) -> int:
    return group_rank if group is dist.group.WORLD else dist.get_global_rank(group, group_rank)
