"""Scoring layouts head to head, eager through ScoreModule on CPU (short):

    python -m benchmarks.scoring_strategies [--preset default] [--questions 10] [--repeats 3]

Synthetic requests (random token ids; Q questions x 4 endings, contexts 20-60 tokens, endings
5-30), random weights. Prints seconds (median of repeats after one warmup), speedup vs per-pair,
tokens processed (B*T summed, padding included), padding fraction and max |Δ loglik| vs per-pair.
Strategies are timed round-robin within each repeat so that load changes hit all of them alike.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from graphopt.model.args import ModelArgs
from graphopt.model.llama import Transformer, init_random_weights
from graphopt.scoring.batch import Request, ScoreModule, sum_by_owner
from graphopt.scoring.buckets import bucketed_batches
from graphopt.scoring.pack_layout import layout_stats
from graphopt.scoring.reference import padded_batches, per_pair_batches
from graphopt.scoring.row_packing import packed_batches
from graphopt.scoring.shared_prefix import shared_prefix_batches


def synthetic_requests(n_questions: int, vocab: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for q in range(n_questions):
        ctx = tuple(rng.randrange(vocab) for _ in range(rng.randint(20, 60)))
        for c in range(4):
            cont = tuple(rng.randrange(vocab) for _ in range(rng.randint(5, 30)))
            out.append(Request(q, c, ctx, cont, 4 * len(cont)))
    return out


BUILDERS = {
    "per_pair": per_pair_batches,
    "padded (bs 8)": lambda rs: padded_batches(rs, batch_size=8),
    "shared_prefix": lambda rs: shared_prefix_batches(rs, max_tokens=2048),
    "packed": lambda rs: packed_batches(rs, max_tokens=2048),
    "bucketed shared_prefix (bs 4)": lambda rs: bucketed_batches(rs, batch_size=4, layout="shared_prefix"),
    "bucketed packed (bs 4)": lambda rs: bucketed_batches(rs, batch_size=4, layout="packed"),
}


def run(module, batches, n):
    out = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            out += sum_by_owner(module(*b.model_inputs()), b.owners, n)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model_args = ModelArgs.from_name(args.preset)
    module = ScoreModule(init_random_weights(Transformer(model_args)).eval())
    requests = synthetic_requests(args.questions, model_args.vocab_size)
    built = {name: build(requests) for name, build in BUILDERS.items()}
    for batches in built.values():
        run(module, batches[:1], len(requests))  # warmup
    times: dict[str, list[float]] = {name: [] for name in built}
    loglik = {}
    for _ in range(args.repeats):  # round-robin, so a change in machine load hits every strategy alike
        for name, batches in built.items():
            t0 = time.perf_counter()
            loglik[name] = run(module, batches, len(requests))
            times[name].append(time.perf_counter() - t0)
    print(f"preset={args.preset} requests={len(requests)} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'strategy':30s} {'batches':>7s} {'seconds':>8s} {'speedup':>8s} {'tokens':>7s} {'real':>6s} "
          f"{'pad %':>6s} {'max|dLL|':>9s}")
    base, ref = statistics.median(times["per_pair"]), loglik["per_pair"]
    for name, batches in built.items():
        sec, st = statistics.median(times[name]), layout_stats(batches)
        print(f"{name:30s} {len(batches):7d} {sec:8.3f} {base / sec:7.2f}x {st['tokens_processed']:7d} "
              f"{st['tokens_real']:6d} {100 * st['padding_fraction']:5.1f}% "
              f"{float((loglik[name] - ref).abs().max()):9.2e}")

if __name__ == "__main__":
    main()
