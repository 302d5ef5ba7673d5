"""Checks made when an experiment loads, before the reference runs, of everything that depends on the
model's sizes or on this machine rather than on the YAML alone:

- device: cuda is visible, and world_size ranks on cuda have a device each (under torchrun: this
  node's LOCAL_WORLD_SIZE ranks);
- mesh: data_parallel x tensor_parallel x pipeline_parallel makes world_size (and torchrun's
  WORLD_SIZE), data_parallel at most the number of questions (graphopt.distributed.mesh);
- tensor_parallel (world_size > 1): heads, kv heads and the FFN hidden size divide by the run's
  tensor-parallel size (world_size / data_parallel unless tensor_parallel is set), and
  the vocabulary (vocab_parallel) or dim (embedding_parallel) too: graphopt.distributed.plan's
  tensor_parallel_problem;
- pipeline_split: its stage count (n_stages, or world_size when 0) is between 1 and n_layers; over
  world_size > 1 ranks (export, no tensor_parallel: one stage per rank, as the worker runs it) it is
  world_size and the compiler is none.

The model's sizes come from the preset or the checkpoint's config (read_model_args), never its weights,
and are read only when some run shards. Each failure is one ConfigError naming the file, the run, the
key and the model's numbers:

    experiments/x.yaml: run 'tp' (key 'runs.0.passes' in x.yaml line 9) with world_size 3 (key 'world_size'
    in x.yaml line 4): tensor_parallel: n_heads 4 is not divisible by world_size 3; model 'tiny': n_layers 2, ...
"""
from __future__ import annotations

import os
from pathlib import Path

from graphopt.model import ModelArgs
from graphopt.runner.yaml_source import ConfigError, Where


def _where(cfg) -> Where:
    return cfg.where if cfg.where is not None else Where(cfg.source, {}, set())


def check_devices(cfg) -> None:
    """device: cuda needs a visible CUDA device, and one per rank when world_size > 1."""
    if cfg.device != "cuda":
        return
    import torch

    where = _where(cfg)
    if not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: {where(('device',))}: 'cuda' asked for but torch {torch.__version__} "
                          f"sees no CUDA device here; use device: cpu")
    count = torch.cuda.device_count()
    local = cfg.world_size
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun: this node's ranks (nproc-per-node), not all nodes'
        local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.world_size))
    if local > count:
        raise ConfigError(f"{cfg.source}: {where(('world_size',))}: world_size {cfg.world_size} on cuda needs one "
                          f"CUDA device per rank, this machine has {count} for its {local} ranks")


def pipeline_split_problem(args: ModelArgs, world_size: int, n_stages: int) -> str | None:
    """Why pipeline_split cannot cut a model of `args` (None: it can): the pass makes n_stages stages
    (0: world_size), each at least one layer; one stage or fewer leaves the graph as it is."""
    n = n_stages or world_size
    if n <= 1 or n <= args.n_layers:
        return None
    given = f"n_stages {n_stages}" if n_stages else f"n_stages 0 (one stage per rank: world_size {world_size})"
    return f"pipeline_split: {given} must be between 1 and n_layers {args.n_layers}"


def check_mesh(cfg) -> None:
    """world_size = data_parallel x tensor_parallel x pipeline_parallel (0: the rest), under torchrun
    also = its WORLD_SIZE; data_parallel is at most the number of questions (a replica with none to
    score would have nothing to do)."""
    from graphopt.distributed.mesh import mesh_problem
    where = _where(cfg)
    problem = mesh_problem(cfg.world_size, cfg.data_parallel, cfg.tensor_parallel, cfg.pipeline_parallel)
    if problem:
        raise ConfigError(f"{cfg.source}: {where(('world_size',))}, {where(('data_parallel',))}: {problem}")
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", cfg.world_size)) != cfg.world_size:
        raise ConfigError(f"{cfg.source}: {where(('world_size',))}: world_size {cfg.world_size}, but torchrun started "
                          f"WORLD_SIZE={os.environ['WORLD_SIZE']} processes (nnodes x nproc-per-node); make them equal")
    if cfg.data_parallel > 1:
        n = question_count(cfg)
        if n is not None and cfg.data_parallel > n:
            raise ConfigError(f"{cfg.source}: {where(('data_parallel',))}: data_parallel {cfg.data_parallel} is more "
                              f"than the {n} questions to score ({where(('data', 'limit'))}); a replica would have "
                              f"none")


def question_count(cfg) -> int | None:
    """How many questions a run scores, from data.limit and the data file's line count (None: unknown)."""
    from graphopt.data.synthetic import DEFAULT_N
    if cfg.data.path is None:
        total = DEFAULT_N
    elif Path(cfg.data.path).is_file() and str(cfg.data.path).endswith(".jsonl"):
        with open(cfg.data.path, "rb") as f:
            total = sum(1 for line in f if line.strip())
    else:
        total = None
    if cfg.data.limit is None:
        return total
    return cfg.data.limit if total is None else min(cfg.data.limit, total)


def stage_per_rank_problem(cfg, run, n_stages: int) -> str | None:
    """Why a pipeline_split run over world_size > 1 ranks cannot run one stage per rank as the worker
    does (graphopt.distributed.mesh.runs_one_stage_per_rank decides when it does); None: it can."""
    from graphopt.distributed.mesh import run_mesh, runs_one_stage_per_rank

    if not runs_one_stage_per_rank(cfg, run):
        return None
    ws = run_mesh(cfg, run).pp
    if n_stages not in (0, ws):
        return (f"pipeline_split over world_size {ws} runs one stage per rank: n_stages must be 0 (= world_size) "
                f"or {ws}, got {n_stages}")
    if run.compiler != "none":
        return (f"pipeline_split over world_size {ws} runs each rank's stage as split (eager): compiler must be "
                f"none, got {run.compiler!r}")
    return None


def _run_problem(cfg, run, args: ModelArgs) -> str | None:
    from graphopt.distributed.mesh import run_mesh
    from graphopt.distributed.plan import tensor_parallel_problem

    mesh = run_mesh(cfg, run)
    for spec in run.passes:
        opts = spec.opts
        if spec.name == "tensor_parallel":
            problem = tensor_parallel_problem(args, mesh.tp, bool(opts.get("vocab_parallel")),
                                              bool(opts.get("embedding_parallel")))
        elif spec.name == "pipeline_split":
            n_stages = int(opts.get("n_stages") or 0)
            problem = (stage_per_rank_problem(cfg, run, n_stages)
                       or pipeline_split_problem(args, mesh.model, n_stages))
        else:
            problem = None
        if problem:
            return problem
    return None


def _passes_key(run) -> tuple:
    """The config key a run's passes came from: runs.N.passes, reference.passes, sweep.base."""
    if run.where[:1] in (("runs",), ("reference",)):
        return tuple(run.where) + ("passes",)
    return ("sweep", "base")


def check_model_fits(cfg, runs=None) -> None:
    """Every run's sharding passes fit the model's sizes and the world size (see the module doc)."""
    from graphopt.checkpoints.errors import CheckpointError
    from graphopt.checkpoints.model_args import describe_model_args, read_model_args
    from graphopt.distributed.mesh import run_mesh
    from graphopt.runner.sweep import expand

    runs = expand(cfg) if runs is None else runs
    sharding = [r for r in runs if {"tensor_parallel", "pipeline_split"} & set(r.pass_names)]
    if not sharding:
        return
    where = _where(cfg)
    try:
        args = read_model_args(cfg.model)
    except (CheckpointError, KeyError) as e:
        raise ConfigError(f"{cfg.source}: {where(('model',))}: cannot read the model's sizes to check run "
                          f"{sharding[0].name!r}'s sharding: {e}") from None
    for run in sharding:
        problem = _run_problem(cfg, run, args)
        if problem:
            mesh = run_mesh(cfg, run)
            raise ConfigError(f"{cfg.source}: run {run.name!r} ({where(_passes_key(run))}) with world_size "
                              f"{cfg.world_size} ({where(('world_size',))}; mesh data_parallel {mesh.dp} x "
                              f"tensor_parallel {mesh.tp} x pipeline {mesh.pp}): {problem}; model {cfg.model!r}: "
                              f"{describe_model_args(args)}")


def check_tokenizer(cfg) -> None:
    """A checkpoint directory is scored with its own tokenizer: the `tokenizer` key's file, or one next to
    the weights (or in the folder above). Neither is an error now, not after the reference has run."""
    from graphopt.checkpoints.load import checkpoint_tokenizer_file
    where = _where(cfg)
    if cfg.tokenizer is not None:
        if cfg.tokenizer != "word-hash" and not Path(cfg.tokenizer).exists():
            raise ConfigError(f"{cfg.source}: {where(('tokenizer',))}: {cfg.tokenizer!r} does not exist "
                              f"(a tokenizer.json / tokenizer.model file or a folder holding one)")
        return
    model = Path(cfg.model)
    is_checkpoint = model.is_dir() and any((model / f).is_file() for f in ("params.json", "config.json"))
    if is_checkpoint and checkpoint_tokenizer_file(model) is None:
        raise ConfigError(f"{cfg.source}: {where(('model',))}: checkpoint {cfg.model!r} has no tokenizer file "
                          f"(tokenizer.json or tokenizer.model) here or in {str(model.parent)!r}; copy the model's "
                          f"own tokenizer there or give its path as the key 'tokenizer'")


def preflight(cfg) -> None:
    """All the checks above; raises the first ConfigError found."""
    check_devices(cfg)
    check_mesh(cfg)
    check_tokenizer(cfg)
    check_model_fits(cfg)
