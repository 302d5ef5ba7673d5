"""Running graphopt on several devices / processes.

- launch.py: `launch(fn, world_size, args=(), backend=None, timeout_s=120)` starts ranks (forked
  from a fork server that imported torch once) with torchrun's env, nccl on CUDA / gloo on CPU, fail-fast with the failing rank's traceback.
- groups.py: `init_from_env()` (torchrun; names ranks that never join), `under_torchrun()`, `free_port()`,
  `world_group_name()`.
- collectives.py: the functional collectives the sharding passes insert (all_reduce + wait_tensor).
- plan.py: which slice of each weight a tensor-parallel rank holds (`shard_slice`, `head_layout`).
- load_shard.py: `load_shard(gm, ckpt_dir, rank, world_size, args)` reads only the rank's shard.
- pipeline_run.py: `run_pipeline` (one process, stage s on device s) and `run_pipeline_rank`
  (stage = rank) for graphs cut by the pipeline_split pass.
- dtensor_peer.py: `parallelize_dtensor(model)`, the DTensor peer of the tensor_parallel pass.
- mesh.py: the run's DeviceMesh (data_parallel x pipeline x tensor ranks): `run_mesh`, `activate`,
  `shard_group("tp" | "pp")`, the sub-group the sharding passes' collectives run on.
- data_parallel.py: `split_by_tokens` (replicas' shares of the questions), `gather_loglik` (to rank 0).
The passes themselves are passes/tensor_parallel.py and passes/pipeline_split.py; `graphopt run` under
torchrun (rank 0 runs the sweep, all ranks measure) is the runner's: graphopt.runner.torchrun.
"""
from graphopt.distributed.groups import free_port, init_from_env, world_group_name  # noqa: F401
from graphopt.distributed.launch import LaunchError, launch  # noqa: F401
