"""Data-parallel benchmark (CPU, gloo): the same questions scored by one process and by data_parallel
replicas, through `graphopt run`'s own path (run_experiment -> worker -> launch -> measure), then the
cost of rank 0's gather alone. Prints markdown tables.

    python -m benchmarks.data_parallel [--model default] [--limit 40] [--dp 2] [--repeats 3]

One process uses torch's default threads (every core); each of the dp replicas gets cores / dp
threads (graphopt.distributed.launch), so the ratio compares the same cores used two ways. On a
machine whose cores are shared with other work the figures move from run to run; say so next to them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

YAML = """\
name: dp{dp}
model: {model}
world_size: {dp}
data_parallel: {dp}
data: {{limit: {limit}}}
warmup: 1
repeats: {repeats}
output_dir: {out}
reference: {{capture: none, scoring: {{strategy: shared_prefix}}}}
scoring: {{strategy: shared_prefix}}
runs:
  - {{name: eager graph, capture: export, passes: []}}
"""


def run_sweep(tmp: Path, model: str, limit: int, dp: int, repeats: int):
    """-> (results table, {run: log-likelihoods}) of the sweep at world_size = data_parallel = dp."""
    from graphopt.runner.execute import run_experiment
    from graphopt.runner.config import load_config
    from graphopt.runner.store import ResultStore
    cfg = tmp / f"dp{dp}.yaml"
    cfg.write_text(YAML.format(dp=dp, model=model, limit=limit, repeats=repeats, out=tmp / f"dp{dp}"))
    df = run_experiment(load_config(cfg), progress=False, log=lambda *a: None)
    store = ResultStore(tmp / f"dp{dp}")
    return df, {row.run: store.load_loglik(row.run_key) for row in df.itertuples()}


def _gather_rank(n_requests: int, repeats: int) -> list[float]:
    """One rank of the gather benchmark: this replica's share of n_requests float64 scores, then rank 0
    gathers them (graphopt.distributed.data_parallel.gather_loglik); a barrier first, so the time is
    the gather, not waiting for a slower replica."""
    import torch.distributed as dist

    from graphopt.distributed.data_parallel import gather_loglik
    rank, ws = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, n_requests, ws))
    local = np.random.default_rng(rank).standard_normal(len(mine))
    times = []
    for _ in range(repeats + 2):
        dist.barrier()
        t0 = time.perf_counter()
        out = gather_loglik(local, mine, n_requests)
        times.append(time.perf_counter() - t0)
        assert rank != 0 or np.array_equal(out[mine], local)
    return times[2:]


def gather_cost(n_requests: int, dp: int, repeats: int = 20) -> float:
    """Median seconds of rank 0's gather of n_requests scores from dp replicas."""
    from graphopt.distributed.launch import launch
    return statistics.median(launch(_gather_rank, dp, args=(n_requests, repeats))[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="preset or checkpoint (default: the 57M 'default')")
    p.add_argument("--limit", type=int, default=40, help="questions")
    p.add_argument("--dp", type=int, default=2, help="replicas")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per run (median)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graphopt-dp-bench-") as tmp:
        tmp = Path(tmp)
        one, ll_one = run_sweep(tmp, a.model, a.limit, 1, a.repeats)
        many, ll_many = run_sweep(tmp, a.model, a.limit, a.dp, a.repeats)
    n_req = int(one["n_requests"].iloc[0])
    gather_s = gather_cost(n_req, a.dp)
    print(f"model {a.model}, {a.limit} questions ({n_req} requests, {int(one['n_tokens'].iloc[0])} tokens), "
          f"{os.cpu_count()} CPU cores, gloo; scoring shared_prefix\n")
    print(f"| run | 1 process: latency s | DP {a.dp}: latency s | ratio (1 / DP) | 1 process: wall s | "
          f"DP {a.dp}: wall s | max \\|Δ log-lik\\| | same choices |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r1, rn in zip(one.itertuples(), many.itertuples()):
        d = float(np.abs(ll_one[r1.run] - ll_many[rn.run]).max())
        same = r1.acc == rn.acc and r1.acc_norm == rn.acc_norm
        print(f"| {r1.run} | {r1.latency_s:.3f} | {rn.latency_s:.3f} | {r1.latency_s / rn.latency_s:.2f} | "
              f"{r1.wall_s:.1f} | {rn.wall_s:.1f} | {d:.1e} | {'yes' if same else 'no'} |")
    print(f"\nrank 0's gather of {n_req} log-likelihoods from {a.dp} replicas (after a barrier, median of 20): "
          f"{gather_s * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
