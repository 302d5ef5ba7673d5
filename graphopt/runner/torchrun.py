"""`torchrun --nnodes N --nproc-per-node G -m graphopt run cfg.yaml`: graphopt joins torchrun's world
instead of spawning its own processes.

Every rank loads and checks the YAML (the model and data paths must exist on every node). Rank 0
runs the sweep as `graphopt run` does (output-folder lock, resume, result rows, report), but measures
each run in the joined world: it broadcasts the run's job, every rank runs
graphopt.runner.worker.measure on it (the run's mesh: data-parallel replicas, tensor / pipeline
sub-groups), and only rank 0 writes the row and prints. The other ranks serve jobs until rank 0
broadcasts None.

Failure: a rank that raises prints its traceback and leaves at once (os._exit(1)); its peers' next
collective fails (connection closed) or times out (graphopt.distributed.groups.collective_timeout_s:
GRAPHOPT_COLLECTIVE_TIMEOUT_S, default 300 s), so every rank ends and torchrun reports the failed
rank; no row is written for the run that failed, and a re-run resumes there. `--timeout` (per run)
does not apply under torchrun.
"""
from __future__ import annotations

import os
import sys
import traceback

import torch.distributed as dist


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def measure_in_world(job, workdir=None, timeout_s=None) -> dict:
    """Rank 0: run `job` on every rank of the joined world (run_experiment's run_job); -> rank 0's
    metrics with the largest peak memory over ranks."""
    from graphopt.runner.worker import measure
    _broadcast(job.to_json())
    result = measure(job, rank=0)
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, result["peak_mem_mb"])
    return dict(result, peak_mem_mb=max(peaks))


def serve_jobs() -> None:
    """Ranks > 0: measure every job rank 0 broadcasts, until it broadcasts None."""
    from graphopt.runner.worker import WorkerJob, measure
    while (text := _broadcast(None)) is not None:
        result = measure(WorkerJob.from_json(text), rank=dist.get_rank())
        dist.all_gather_object([None] * dist.get_world_size(), result["peak_mem_mb"])


def run_under_torchrun(cfg, retry_errors: bool = False, progress: bool = True, wait: bool = False) -> int:
    """Join torchrun's world and run `cfg` on it (see the module doc); rank 0 prints the report."""
    from graphopt.distributed.groups import collective_timeout_s, init_from_env
    from graphopt.runner.execute import run_experiment
    from graphopt.runner.report import report

    rank = int(os.environ["RANK"])
    try:
        rank, world = init_from_env(timeout_s=collective_timeout_s())
        if world != cfg.world_size:  # preflight checks it at load; a hand-set WORLD_SIZE might not match
            raise ValueError(f"{cfg.source}: world_size {cfg.world_size}, but torchrun's WORLD_SIZE is {world}")
        if rank == 0:
            run_experiment(cfg, retry_errors=retry_errors, progress=progress, wait=wait, run_job=measure_in_world)
            _broadcast(None)
            print(report(cfg.out_dir))
        else:
            serve_jobs()
        dist.barrier()
    except BaseException as e:
        sys.stderr.write(f"graphopt run: rank {rank} failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        sys.stderr.flush()
        os._exit(1)  # no teardown: peers may be inside a collective with us; they fail or time out
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as launch's ranks: skip gloo teardown once peers may have gone
