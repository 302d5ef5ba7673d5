"""One run, in its own process: `python -m graphopt.runner.worker SPEC.json RESULT.json`.

Loads the model and data, builds the run's batches, captures + runs passes + compiles, measures
compile time (first call on each distinct batch shape), then `warmup` and `repeats` timed passes
over all batches. Writes RESULT.json: the metrics, or {"status": "error", "error": traceback}.
Per-request log-likelihoods go to the spec's `loglik_out` (.npy) for comparison with the reference.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from graphopt.parent_death import end_with_parent, take_parent_pid_from_env
from graphopt.pipeline import pipeline_shards
from graphopt.runner.config import config_from_dict
from graphopt.runner.schema import ExperimentConfig, to_dict
from graphopt.runner.sweep import ResolvedRun


@dataclass
class WorkerJob:
    """What one worker process is given: the experiment, the run, where the reference's and this run's
    log-likelihoods live. Written as JSON by the sweep, read back typed here."""
    experiment: ExperimentConfig
    run: ResolvedRun
    loglik_out: str
    reference_loglik: str | None = None
    progress: bool = True
    timeout_s: float | None = None

    def to_json(self) -> str:
        return json.dumps({"experiment": to_dict(self.experiment), "source": self.experiment.source,
                           "run": self.run.to_dict(), "loglik_out": self.loglik_out,
                           "reference_loglik": self.reference_loglik, "progress": self.progress,
                           "timeout_s": self.timeout_s})

    @classmethod
    def from_json(cls, text: str) -> "WorkerJob":
        d = json.loads(text)
        exp = config_from_dict(d["experiment"], source=d.get("source", "<worker>"))
        return cls(exp, ResolvedRun.from_dict(d["run"]), d["loglik_out"], d.get("reference_loglik"),
                   d.get("progress", True), d.get("timeout_s"))


def loads_only_its_shard(exp: ExperimentConfig, run: ResolvedRun) -> bool:
    """A tensor-parallel or pipeline export run over a checkpoint directory never materialises the full
    model: each rank captures the model on the meta device, shards / splits the graph, then reads only
    its slices (tensor_parallel) or its stage's weights (pipeline_split: a tied embedding table is read
    by the first and the last stage, and each loads it)."""
    from graphopt.distributed.mesh import run_mesh
    return (run_mesh(exp, run).model > 1 and run.capture == "export" and bool(pipeline_shards(run.passes))
            and os.path.isdir(exp.model))


def load_rank_weights(gm, ckpt: str, rank: int, world_size: int, args, one_stage: bool) -> dict:
    """Fill a weightless optimised graph with what this rank holds: its stage's weights (one_stage:
    the other stages' become empty placeholders first) or its tensor_parallel shard."""
    from graphopt.distributed.load_shard import load_shard
    if one_stage:
        from graphopt.distributed.pipeline_run import drop_other_stages
        drop_other_stages(gm, rank)
    return load_shard(gm, ckpt, rank, world_size, args)


def count_params(*modules) -> int:
    """Parameters of the first module that has any (the optimised graph after pruning, else the model):
    what it holds in memory, each storage once (graph_attrs.held_numel: a tied embedding / LM head
    table is one table however many names or Parameter objects read it), the weights mkldnn_linear
    packed into oneDNN buffers included."""
    from graphopt.graph_attrs import held_numel

    for m in modules:
        if m is None or not hasattr(m, "parameters"):
            continue
        params = [t for _, t in m.named_parameters(remove_duplicate=False)]
        packed = [t for _, t in m.named_buffers(remove_duplicate=False) if t.is_mkldnn]
        total = held_numel(params + packed)
        if total:
            return total
    return 0


class StagePerRank:
    """An optimize() result whose graph pipeline_split cut: calling it runs this rank's stage over the
    micro-batches (every rank gets the [N] scores); graph / module / records as the result's."""

    def __init__(self, opt, n_micro: int):
        stages = opt.graph.meta.get("pipeline_stages", 1)
        if stages != n_micro:
            raise ValueError(f"pipeline_split made {stages} stages for world_size {n_micro}: one stage per rank "
                             f"needs n_stages 0 (= world_size) or {n_micro}")
        self.opt, self.n_micro = opt, n_micro
        self.graph, self.module, self.records = opt.graph, opt.module, opt.records

    def __call__(self, *inputs):
        from graphopt.distributed.pipeline_run import run_pipeline_rank
        return run_pipeline_rank(self.graph, inputs, self.n_micro)


def _shape(batch) -> tuple:
    return tuple(tuple(t.shape) for t in batch.model_inputs())


def first_calls(fn, batches, device) -> tuple[float, int]:
    """Compile / warm up: call fn once on each distinct input shape -> (seconds, number of shapes).
    Runs under inference_mode, as score_requests does: dynamo guards on the grad mode, so warming up
    under another mode would leave the recompilation to the timed passes."""
    import torch

    from graphopt.runner.timing import timed

    seconds, seen = 0.0, set()
    with torch.inference_mode():
        for b in batches:
            shape = _shape(b)
            if shape not in seen:
                seen.add(shape)
                seconds += timed(lambda: fn(*b.model_inputs()), device)[1]
    return seconds, len(seen)


def measure(job: WorkerJob, rank: int = 0) -> dict:
    import torch

    from graphopt.checkpoints import load_model, load_model_structure
    from graphopt.compile_cache import count_compiles
    from graphopt.data import load_hellaswag
    from graphopt.distributed.mesh import run_mesh, runs_one_stage_per_rank
    from graphopt.optimize_model import optimize
    from graphopt.runner.timing import median, peak_memory_mb, reset_peak_memory, sync, timed
    from graphopt.scoring.batch import ScoreModule
    from graphopt.scoring.evaluate import score_requests
    from graphopt.scoring.metrics import choice_metrics, same_choices
    from graphopt.scoring.requests import build_requests, first_identical
    from graphopt.scoring.strategies import build_batches

    exp, run = job.experiment, job.run
    device, show = exp.device, job.progress and rank == 0
    mesh = run_mesh(exp, run)  # [dp, pp, tp]; this rank: replica `replica`, rank `mrank` of its model group
    replica, mrank, msize = mesh.replica(rank), mesh.model_rank(rank), mesh.model
    one_stage = runs_one_stage_per_rank(exp, run)
    if one_stage and run.compiler != "none":
        raise ValueError(f"run {run.name!r}: pipeline_split over world_size {exp.world_size} ({mesh.pp} ranks per "
                         f"replica) runs each rank's stage as split (eager); compiler must be none, got "
                         f"{run.compiler!r}")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if exp.world_size > 1:
        from graphopt.distributed.mesh import activate
        activate(mesh, device)  # the passes' collectives run on this replica's sub-group
    torch.manual_seed(exp.seed)
    reset_peak_memory(device)
    t_load = time.perf_counter()
    sharded_load = loads_only_its_shard(exp, run)
    if sharded_load:  # weights are read after sharding, only this rank's part
        model, tokenizer = load_model_structure(exp.model, dtype=run.dtype, tokenizer=exp.tokenizer)
    else:
        model, tokenizer = load_model(exp.model, dtype=run.dtype, device=device, seed=exp.seed,
                                      tokenizer=exp.tokenizer)
    model.eval()
    load_s = time.perf_counter() - t_load
    rows = load_hellaswag(exp.data.path, split=exp.data.split, limit=exp.data.limit)
    requests = build_requests(rows, tokenizer)
    all_requests, mine = requests, list(range(len(requests)))
    if mesh.dp > 1:  # this replica scores its share of the questions (balanced by tokens)
        from graphopt.distributed.data_parallel import split_by_tokens
        mine = split_by_tokens(all_requests, mesh.dp)[replica]
        requests = [all_requests[i] for i in mine]
    batches = build_batches(requests, run.scoring.strategy, **run.scoring.options)
    batches = [b.to(device) for b in batches]
    assert batches, "no batches to score"
    n_req = len(requests)  # this replica's
    n_tokens = sum(len(r.context_ids) + len(r.continuation_ids) - 1 for r in all_requests)  # real tokens, no padding

    load_weights = None
    if sharded_load:
        load_weights = lambda gm: load_rank_weights(gm, exp.model, mrank, msize, model.args,  # noqa: E731
                                                    one_stage)
    fn, setup_s = timed(lambda: optimize(ScoreModule(model).eval(), batches[0].model_inputs(), run.passes,
                                         run.compiler, capture=run.capture, rank=mrank, world_size=msize,
                                         model_args=getattr(model, "args", None), load_weights=load_weights,
                                         device=device, tokenizer=tokenizer), device)
    if one_stage:
        if not sharded_load:  # the whole model was loaded: keep only this rank's stage
            from graphopt.distributed.pipeline_run import drop_other_stages
            drop_other_stages(fn.graph, mrank)
        fn = StagePerRank(fn, mesh.pp)
    # the eager reference (nothing to compile or warm) is scored once: its one pass is its timing
    once = run.is_reference and run.capture == "none" and run.compiler == "none"
    repeats = 1 if once else exp.repeats
    with count_compiles() as compiled:
        first_call_s, n_shapes = (0.0, len({_shape(b) for b in batches})) if once else first_calls(fn, batches, device)
        for _ in range(0 if once else exp.warmup):
            score_requests(fn, batches, n_req, progress=False, device=device)
        times, loglik = [], None
        score = lambda desc: score_requests(fn, batches, n_req, show, device, desc).numpy()  # noqa: E731
        if mesh.dp > 1:  # rank 0 gathers every replica's share, in request order (the gather is timed)
            score = lambda desc, local=score: gather_shares(local(desc), mine, len(all_requests), mrank)  # noqa: E731
        for i in range(repeats):
            loglik, t = timed(lambda: score(f"  {run.name} [{i + 1}/{repeats}]"), device)
            times.append(t)
    sync(device)
    if rank != 0:  # rank 0 reports; the others only their memory
        return {"status": "ok", "error": "", "peak_mem_mb": peak_memory_mb(device)}
    requests, n_req = all_requests, len(all_requests)
    assert loglik.shape == (n_req,) and np.isfinite(loglik).all(), "non-finite log-likelihoods"
    loglik = loglik[first_identical(requests)]  # identical requests: one value (exact ties stay ties)

    metrics = choice_metrics(rows, requests, torch.from_numpy(loglik))
    ref = np.load(job.reference_loglik) if job.reference_loglik else None
    if ref is not None:
        assert ref.shape == loglik.shape, f"reference has {ref.shape[0]} requests, this run {loglik.shape[0]}"
        agree = float(np.mean(same_choices(metrics, choice_metrics(rows, requests, torch.from_numpy(ref)))))
        max_d = float(np.abs(ref - loglik).max())
    else:  # this is the reference
        agree, max_d = 1.0, 0.0
    np.save(job.loglik_out, loglik)
    latency = median(times)
    return {
        "status": "ok", "error": "",
        "n_items": len(rows), "n_requests": n_req, "n_tokens": n_tokens, "n_batches": len(batches),
        "n_shapes": n_shapes, "n_compiles": compiled.compiles, "cache_hits": compiled.cache_hits,
        "timed_passes": repeats,
        "acc": float(metrics["acc"]), "acc_norm": float(metrics["acc_norm"]),
        "agree": agree, "max_abs_dloglik": max_d,
        "latency_s": latency, "latency_min_s": float(min(times)),
        "items_per_s": len(rows) / latency, "tokens_per_s": n_tokens / latency,
        "compile_s": setup_s + first_call_s, "load_s": load_s,
        "peak_mem_mb": peak_memory_mb(device), "weights_loaded": "rank shard" if sharded_load else "full model",
        "n_params": count_params(fn.graph, None if sharded_load else fn.module),
        "pass_records": json.dumps([r.summary() for r in fn.records]),
    }


def gather_shares(local, mine: list[int], n_requests: int, model_rank: int):
    """Data parallel: rank 0 gets every replica's scores in request order (None elsewhere); one rank
    of each replica's model group (model rank 0) sends them."""
    from graphopt.distributed.data_parallel import gather_loglik
    mine_or_none = (local, mine) if model_rank == 0 else (None, None)
    return gather_loglik(*mine_or_none, n_requests)


def _measure_rank(job_json: str) -> dict:
    """Entry point of one rank under graphopt.distributed.launch (RANK set in the environment)."""
    return measure(WorkerJob.from_json(job_json), rank=int(os.environ["RANK"]))


def measure_world(job: WorkerJob) -> dict:
    """world_size > 1: every rank runs the measurement on its shard of its replica's share of the
    questions (the run's mesh, graphopt.distributed.mesh; the passes see the rank and size of the
    replica's model group as ctx.rank and ctx.world_size); rank 0 gathers the log-likelihoods and its
    metrics are reported, with the largest peak memory over ranks."""
    try:
        from graphopt.distributed.launch import launch
    except ImportError as e:
        raise RuntimeError(f"world_size > 1 needs graphopt.distributed ({e})") from None
    from graphopt.distributed.groups import collective_timeout_s
    results = launch(_measure_rank, job.experiment.world_size, args=(job.to_json(),),
                     timeout_s=float(job.timeout_s or 24 * 3600), collective_timeout_s=collective_timeout_s(),
                     workdir=os.path.dirname(job.loglik_out))  # the sweep's folder for this run, cleared with it
    out = dict(results[0])
    out["peak_mem_mb"] = max(r["peak_mem_mb"] for r in results)
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    end_with_parent(take_parent_pid_from_env())  # the sweep process killed (even kill -9): this run ends too
    faulthandler.enable()
    try:
        with open(spec_path) as f:
            job = WorkerJob.from_json(f.read())
        if os.environ.get("GRAPHOPT_RUNNER_KILL") == job.run.name:  # test hook: die as the OOM killer does
            os.kill(os.getpid(), 9)
        result = measure(job) if job.experiment.world_size == 1 else measure_world(job)
    except KeyboardInterrupt:
        return 130  # interrupted, not failed: no result, so the run is not stored and re-runs on resume
    except BaseException as e:  # noqa: BLE001 - every failure becomes a result row
        tb = traceback.format_exc(limit=8)
        result = {"status": "error", "error": f"{type(e).__name__}: {e}\n{tb}"}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
