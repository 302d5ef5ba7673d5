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

import numpy as np


def _die_with_parent() -> None:
    """If the sweep process is killed (even with SIGKILL), take this run down with it (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass


def loads_only_its_shard(exp: dict, run: dict) -> bool:
    """A tensor-parallel export run over a checkpoint directory never materialises the full model:
    each rank captures the model on the meta device, shards the graph, then reads only its slices."""
    names = [p if isinstance(p, str) else p.get("name") for p in run["passes"]]
    return (exp["world_size"] > 1 and run["capture"] == "export" and "tensor_parallel" in names
            and os.path.isdir(exp["model"]))


def build_sharded_graph(model_dir: str, module, example_inputs, run: dict, model_args, world_size: int,
                        rank: int, device):
    """module is ScoreModule of a meta-device model: capture, run the passes (tensor_parallel among
    them) on weightless tensors, then fill this rank's weights from the checkpoint."""
    from graphopt.graph_capture import capture as capture_graph
    from graphopt.compilers import compile_for
    from graphopt.distributed.load_shard import load_shard, retarget_device
    from graphopt.pipeline import PassContext, run_passes

    gm = capture_graph(module, tuple(t.to("meta") for t in example_inputs), method="export")
    retarget_device(gm, device)
    gm, records = run_passes(gm, run["passes"], PassContext((), model_args, rank, world_size))
    load_shard(gm, model_dir, rank, world_size, model_args)
    gm = gm.to(device)
    return compile_for(gm, run["compiler"]), records


def build_callable(module, example_inputs, run: dict, model_args, world_size: int, rank: int = 0):
    """-> (fn(*batch.model_inputs()) -> [N] logprobs, pass records as dicts)."""
    import torch

    from graphopt.compilers import compile_for

    capture, compiler, passes = run["capture"], run["compiler"], run["passes"]
    if capture == "none":
        assert not passes, "passes need capture: export or dynamo"
        return compile_for(module, compiler), []
    if capture == "dynamo":
        from graphopt.compile_backend import backend
        from graphopt.pipeline import PassContext
        then = compiler if compiler in ("inductor", "inductor-frozen") else "eager"
        ctx = PassContext((), model_args, rank, world_size)
        be = backend(passes=passes, then=then, ctx=ctx)
        return torch.compile(module, backend=be), be  # be.records is filled on the first call
    from graphopt.graph_capture import capture as capture_graph
    from graphopt.pipeline import PassContext, run_passes

    gm = capture_graph(module, example_inputs, method="export")
    gm, records = run_passes(gm, passes, PassContext(example_inputs, model_args, rank, world_size))
    return compile_for(gm, compiler), records


def _records(records) -> list[dict]:
    """Pass records (a list, or the dynamo backend holding `.records` after its first compile) -> dicts."""
    records = getattr(records, "records", records) or []
    return [{"name": r.name, "matches": r.matches, "nodes_before": r.nodes_before, "nodes_after": r.nodes_after,
             "seconds": r.seconds} for r in records if hasattr(r, "matches")]


def _graph_of(fn, records=None):
    """The GraphModule a run executes: under a torch.compile wrapper, or the last one the graphopt
    compile backend (passed as `records` for dynamo runs) optimised; None for an eager module."""
    inner = getattr(fn, "_orig_mod", fn)
    if hasattr(inner, "graph"):
        return inner
    graphs = getattr(records, "graphs", None)
    return graphs[-1] if graphs else None


def count_params(*modules) -> int:
    """Parameters of the first module that has any (the optimised graph after pruning, else the model)."""
    for m in modules:
        if m is None or not hasattr(m, "parameters"):
            continue
        seen, total = set(), 0
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if total:
            return total
    return 0


def first_calls(fn, batches, device) -> tuple[float, int]:
    """Compile / warm up: call fn once on each distinct input shape -> (seconds, number of shapes).
    Runs under inference_mode, as score_requests does: dynamo guards on the grad mode, so warming up
    under another mode would leave the recompilation to the timed passes."""
    import torch

    from graphopt.runner.timing import timed

    seconds, seen = 0.0, set()
    with torch.inference_mode():
        for b in batches:
            shape = tuple(tuple(t.shape) for t in b.model_inputs())
            if shape not in seen:
                seen.add(shape)
                seconds += timed(lambda: fn(*b.model_inputs()), device)[1]
    return seconds, len(seen)


def measure(spec: dict, rank: int = 0) -> dict:
    import torch

    from graphopt.checkpoints import load_model, load_model_structure
    from graphopt.data import load_hellaswag
    from graphopt.runner.timing import median, peak_memory_mb, reset_peak_memory, sync, timed
    from graphopt.scoring.batch import ScoreModule
    from graphopt.scoring.evaluate import score_requests
    from graphopt.scoring.metrics import choice_metrics, same_choices
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.strategies import build_batches

    exp, run = spec["experiment"], spec["run"]
    device, show = exp["device"], spec.get("progress", True) and rank == 0
    if device == "cuda":
        device = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    torch.manual_seed(exp["seed"])
    reset_peak_memory(device)
    t_load = time.perf_counter()
    sharded_load = loads_only_its_shard(exp, run)
    if sharded_load:  # weights are read after sharding, only this rank's part
        model, tokenizer = load_model_structure(exp["model"], dtype=run["dtype"])
    else:
        model, tokenizer = load_model(exp["model"], dtype=run["dtype"], device=device, seed=exp["seed"])
    model.eval()
    load_s = time.perf_counter() - t_load
    data = exp["data"]
    rows = load_hellaswag(data["path"], split=data["split"], limit=data["limit"])
    requests = build_requests(rows, tokenizer)
    batches = build_batches(requests, run["scoring"]["strategy"], **run["scoring"]["options"])
    batches = [b.to(device) for b in batches]
    assert batches, "no batches to score"
    n_req = len(requests)
    n_tokens = sum(len(r.context_ids) + len(r.continuation_ids) - 1 for r in requests)  # real tokens, no padding

    module = ScoreModule(model).eval()
    example = batches[0].model_inputs()
    if sharded_load:
        (fn, records), setup_s = timed(lambda: build_sharded_graph(exp["model"], module, example, run, model.args,
                                                                   exp["world_size"], rank, device), device)
    else:
        (fn, records), setup_s = timed(lambda: build_callable(module, example, run, getattr(model, "args", None),
                                                              exp["world_size"], rank), device)
    first_call_s, n_shapes = first_calls(fn, batches, device)
    for _ in range(exp["warmup"]):
        score_requests(fn, batches, n_req, progress=False, device=device)
    times, loglik = [], None
    for i in range(exp["repeats"]):
        desc = f"  {run['name']} [{i + 1}/{exp['repeats']}]"
        loglik, t = timed(lambda: score_requests(fn, batches, n_req, show, device, desc).numpy(), device)
        times.append(t)
    sync(device)
    assert loglik.shape == (n_req,) and np.isfinite(loglik).all(), "non-finite log-likelihoods"

    metrics = choice_metrics(rows, requests, torch.from_numpy(loglik))
    ref = np.load(spec["reference_loglik"]) if spec.get("reference_loglik") else None
    if ref is not None:
        assert ref.shape == loglik.shape, f"reference has {ref.shape[0]} requests, this run {loglik.shape[0]}"
        agree = float(np.mean(same_choices(metrics, choice_metrics(rows, requests, torch.from_numpy(ref)))))
        max_d = float(np.abs(ref - loglik).max())
    else:  # this is the reference
        agree, max_d = 1.0, 0.0
    if rank == 0:
        np.save(spec["loglik_out"], loglik)
    latency = median(times)
    return {
        "status": "ok", "error": "",
        "n_items": len(rows), "n_requests": n_req, "n_tokens": n_tokens, "n_batches": len(batches),
        "n_shapes": n_shapes,
        "acc": float(metrics["acc"]), "acc_norm": float(metrics["acc_norm"]),
        "agree": agree, "max_abs_dloglik": max_d,
        "latency_s": latency, "latency_min_s": float(min(times)),
        "items_per_s": len(rows) / latency, "tokens_per_s": n_tokens / latency,
        "compile_s": setup_s + first_call_s, "load_s": load_s,
        "peak_mem_mb": peak_memory_mb(device), "weights_loaded": "rank shard" if sharded_load else "full model",
        "n_params": count_params(_graph_of(fn, records), None if sharded_load else model),
        "pass_records": json.dumps(_records(records)),
    }


def _measure_rank(spec: dict) -> dict:
    """Entry point of one rank under graphopt.distributed.launch (RANK set in the environment)."""
    return measure(spec, rank=int(os.environ["RANK"]))


def measure_world(spec: dict) -> dict:
    """world_size > 1: every rank runs the same measurement on its shard (the passes see ctx.rank and
    ctx.world_size); rank 0's metrics are reported, with the largest peak memory over ranks."""
    try:
        from graphopt.distributed.launch import launch
    except ImportError as e:
        raise RuntimeError(f"world_size > 1 needs graphopt.distributed ({e})") from None
    results = launch(_measure_rank, spec["experiment"]["world_size"], args=(spec,),
                     timeout_s=float(spec.get("timeout_s") or 24 * 3600))
    out = dict(results[0])
    out["peak_mem_mb"] = max(r["peak_mem_mb"] for r in results)
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    _die_with_parent()
    faulthandler.enable()
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        if os.environ.get("GRAPHOPT_RUNNER_KILL") == spec["run"]["name"]:  # test hook: die as the OOM killer does
            os.kill(os.getpid(), 9)
        result = measure(spec) if spec["experiment"]["world_size"] == 1 else measure_world(spec)
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
