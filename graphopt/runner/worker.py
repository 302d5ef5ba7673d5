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


def _place(job: WorkerJob, rank: int):
    """This rank's device and mesh ([dp, pp, tp]); joins the mesh's sub-groups, seeds, resets peak memory."""
    import torch

    from graphopt.distributed.mesh import run_mesh, runs_one_stage_per_rank
    from graphopt.runner.timing import reset_peak_memory

    exp, run = job.experiment, job.run
    mesh, device = run_mesh(exp, run), exp.device
    if runs_one_stage_per_rank(exp, run) and run.compiler != "none":
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
    return device, mesh


def _load(job: WorkerJob, device: str, mesh, rank: int):
    """-> (model, tokenizer, load_weights): the whole model, or (a tensor-parallel / pipeline run over a
    checkpoint directory) its structure on the meta device and a function filling this rank's weights."""
    from graphopt.checkpoints import load_model, load_model_structure
    from graphopt.distributed.mesh import runs_one_stage_per_rank

    exp, run = job.experiment, job.run
    if not loads_only_its_shard(exp, run):
        model, tokenizer = load_model(exp.model, dtype=run.dtype, device=device, seed=exp.seed,
                                      tokenizer=exp.tokenizer)
        return model.eval(), tokenizer, None
    model, tokenizer = load_model_structure(exp.model, dtype=run.dtype, tokenizer=exp.tokenizer)
    one_stage = runs_one_stage_per_rank(exp, run)
    return model.eval(), tokenizer, lambda gm: load_rank_weights(gm, exp.model, mesh.model_rank(rank), mesh.model,
                                                                 model.args, one_stage)


def _quality(rows, requests, loglik, reference_path: str | None) -> dict:
    """acc / acc_norm, and agreement with the reference run's choices and the largest |d loglik|."""
    import torch

    from graphopt.scoring.metrics import choice_metrics, same_choices

    metrics = choice_metrics(rows, requests, torch.from_numpy(loglik))
    agree, max_d = 1.0, 0.0  # this is the reference
    if reference_path:
        ref = np.load(reference_path)
        assert ref.shape == loglik.shape, f"reference has {ref.shape[0]} requests, this run {loglik.shape[0]}"
        agree = float(np.mean(same_choices(metrics, choice_metrics(rows, requests, torch.from_numpy(ref)))))
        max_d = float(np.abs(ref - loglik).max())
    return {"acc": float(metrics["acc"]), "acc_norm": float(metrics["acc_norm"]), "agree": agree,
            "max_abs_dloglik": max_d}


def measure(job: WorkerJob, rank: int = 0) -> dict:
    """The run's rows through one Scorer: load, setup (capture + passes + compile), the first call on each
    batch shape, warm-up, timed repeats; rank 0 reports the row, the others their peak memory."""
    from graphopt.compile_cache import count_compiles
    from graphopt.data import load_hellaswag
    from graphopt.pipeline import CheckedPipeline
    from graphopt.runner.timing import median, peak_memory_mb, sync, timed
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.scorer import Scorer, Sharding

    from graphopt.time_line import Clock, time_columns

    exp, run = job.experiment, job.run
    device, mesh = _place(job, rank)
    clock = Clock()  # startup: this worker process's start -> the load
    (model, tokenizer, load_weights), load_s = timed(lambda: _load(job, device, mesh, rank), device)
    rows = load_hellaswag(exp.data.path, split=exp.data.split, limit=exp.data.limit)
    requests = build_requests(rows, tokenizer)
    scorer = Scorer(model, CheckedPipeline(tuple(run.passes), run.compiler), run.compiler, device=device,
                    layout=run.scoring.strategy, layout_options=run.scoring.options, capture=run.capture,
                    sharding=Sharding(mesh, rank, load_weights), tokenizer=tokenizer)
    prepared = scorer.prepare(requests, to_device=True)
    fn, setup_s = timed(lambda: scorer.setup(prepared), device)
    # the eager reference (nothing to compile or warm) is scored once: its one pass is its timing
    once = run.is_reference and run.capture == "none" and run.compiler == "none"
    repeats = 1 if once else exp.repeats
    with count_compiles() as compiled:
        first_call_s, n_shapes = (0.0, len({_shape(b) for b in prepared.batches})) if once else \
            first_calls(fn, prepared.batches, device)
        for _ in range(0 if once else exp.warmup):
            scorer.run(prepared, progress=False)
        times, loglik = [], None
        for i in range(repeats):  # every replica's share gathered, in request order (the gather is timed)
            desc = f"  {run.name} [{i + 1}/{repeats}]"
            (loglik, _), t = timed(lambda: scorer.collect(prepared, *scorer.run(
                prepared, job.progress and rank == 0, desc)), device)
            times.append(t)
    sync(device)
    if rank != 0:  # rank 0 reports; the others only their memory
        return {"status": "ok", "error": "", "peak_mem_mb": peak_memory_mb(device)}
    loglik = loglik.numpy()
    assert loglik.shape == (len(requests),) and np.isfinite(loglik).all(), "non-finite log-likelihoods"
    np.save(job.loglik_out, loglik)
    latency = median(times)
    n_tokens = sum(len(r.context_ids) + len(r.continuation_ids) - 1 for r in requests)  # real tokens, no padding
    peak_mem_mb, n_batches, records = peak_memory_mb(device), prepared.n_batches, fn.records
    n_params = count_params(fn.graph, fn.module if load_weights is None else None)
    setup_split = scorer.setup_split()
    generation = {}
    if "generate" in exp.measure:
        del fn, prepared  # the scoring graph's memory (packed weights, batches) is not the generator's
        scorer.runnable = None
        generation = _generation(job, model, tokenizer, requests, device)
    return {
        "status": "ok", "error": "",
        "n_items": len(rows), "n_requests": len(requests), "n_tokens": n_tokens, "n_batches": n_batches,
        "n_shapes": n_shapes, "n_compiles": compiled.compiles, "cache_hits": compiled.cache_hits,
        "timed_passes": repeats, **_quality(rows, requests, loglik, job.reference_loglik),
        "latency_s": latency, "latency_min_s": float(min(times)),
        "items_per_s": len(rows) / latency, "tokens_per_s": n_tokens / latency,
        "compile_s": setup_s + first_call_s,
        # where the time went, as graphopt eval's time line (scoring_s: the median timed pass, after the
        # first calls; first_call_s: the first of them)
        **time_columns(clock.startup_s, load_s, setup_split, setup_s, latency),
        "peak_mem_mb": peak_mem_mb, "weights_loaded": "full model" if load_weights is None else "rank shard",
        "n_params": n_params, "pass_records": json.dumps([r.summary() for r in records]), **generation,
    }


def _generation(job: WorkerJob, model, tokenizer, requests, device) -> dict:
    """The run's generation speed (graphopt.runner.generation); a failure is printed and kept as gen_error."""
    from graphopt.runner.generation import measure_generation

    exp = job.experiment
    out = measure_generation(model, tokenizer, requests, job.run, exp.generate, device, exp.warmup, exp.repeats)
    if out["gen_error"]:
        print(f"  {job.run.name}: generation not measured: {out['gen_error']}", file=sys.stderr, flush=True)
    return out


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
