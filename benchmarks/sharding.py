"""Sharding benchmark (CPU, gloo): tokens/s and communication per token of the tensor_parallel graph
at world size 2 and 4 vs the single-process graph vs the DTensor peer (parallelize_module), plus the
analytic all-reduce volume of LLaMA-30B on 4 GPUs next to NVLink bandwidth. Prints markdown tables.

    python benchmarks/sharding.py [--repeats 5] [--tokens 4400000]

CPU numbers show overheads, not speedups: 2 shared cores cannot run 4 ranks in parallel, and gloo
all-reduces go through loopback TCP. The analytic table is what matters for 4 x V100 (NVLink).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from graphopt.model.args import ModelArgs

BENCH = dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096, multiple_of=64, max_seq_len=512)
B, T = 4, 128


def _model():
    from graphopt.model.llama import Transformer, init_random_weights
    from graphopt.scoring.batch import ScoreModule
    args = ModelArgs(**BENCH)
    return args, ScoreModule(init_random_weights(Transformer(args)).eval())


def _inputs(args):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (B, T), generator=g)
    pos = torch.arange(T).expand(B, T).contiguous()
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T).contiguous()
    score_idx = torch.arange(B * T - 1)
    return ids, pos, mask, score_idx, ids.reshape(-1)[score_idx + 1]


def _time(fn, repeats: int, sync=None) -> float:
    with torch.no_grad():
        for _ in range(2):
            fn()
        ts = []
        for _ in range(repeats):
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _comm_bytes(gm, inputs) -> tuple[int, int]:
    """(all-reduce calls, payload bytes) of one forward, recorded while running the graph."""
    from graphopt.distributed.collectives import ALL_REDUCE
    seen = []

    class Rec(torch.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if target is ALL_REDUCE:
                seen.append(args[0].numel() * args[0].element_size())
            return super().call_function(target, args, kwargs)
    with torch.no_grad():
        Rec(gm).run(*inputs)
    return len(seen), sum(seen)


def single_worker(repeats: int) -> dict:
    import graphopt
    args, sm = _model()
    inputs = _inputs(args)
    gm = graphopt.optimize(sm, inputs)
    s = _time(lambda: gm(*inputs), repeats)
    return {"s": s, "calls": 0, "bytes": 0}


def tp_worker(repeats: int, vocab_parallel: bool) -> dict:
    import graphopt
    args, sm = _model()
    inputs = _inputs(args)
    gm = graphopt.optimize(sm, inputs, [("tensor_parallel", {"vocab_parallel": vocab_parallel})],
                           rank=dist.get_rank(), world_size=dist.get_world_size(), model_args=args).graph
    calls, nbytes = _comm_bytes(gm, inputs)
    s = _time(lambda: gm(*inputs), repeats, sync=dist.barrier)
    return {"s": s, "calls": calls, "bytes": nbytes}


def dtensor_worker(repeats: int) -> dict:
    from torch.distributed.tensor.debug import CommDebugMode
    from graphopt.distributed.dtensor_peer import parallelize_dtensor
    args, sm = _model()
    parallelize_dtensor(sm.model)
    inputs = _inputs(args)
    mode = CommDebugMode()
    with mode, torch.no_grad():
        sm(*inputs)
    calls = mode.get_total_counts()
    s = _time(lambda: sm(*inputs), repeats, sync=dist.barrier)
    return {"s": s, "calls": calls, "bytes": None}


def analytic_30b(tokens: int) -> str:
    a = ModelArgs.from_name("llama-30b")
    n, fp16 = 4, 2
    payload = 2 * a.n_layers * a.dim * fp16  # bytes all-reduced per token (2 per layer)
    ring = payload * 2 * (n - 1) / n  # bytes each GPU sends per token in a ring all-reduce
    rows = ["| quantity | value |", "|---|---|",
            f"| LLaMA-30B: layers, dim | {a.n_layers}, {a.dim} |",
            f"| all-reduce payload per token (2/layer x dim x 2 B fp16) | {payload / 1e6:.2f} MB |",
            f"| ring traffic per GPU per token (x 2(n-1)/n, n=4) | {ring / 1e6:.2f} MB |",
            f"| tokens assumed (HellaSwag val, per-pair: 10042 x 4 x ~110) | {tokens / 1e6:.2f} M |",
            f"| total payload | {payload * tokens / 1e9:.1f} GB |",
            f"| ring traffic per GPU | {ring * tokens / 1e9:.1f} GB |"]
    for label, bw in (("V100 NVLink, 300 GB/s aggregate", 300e9), ("V100 NVLink, 150 GB/s one direction", 150e9),
                      ("PCIe 3.0 x16, ~12 GB/s", 12e9)):
        rows.append(f"| time on the wire at {label} | {ring * tokens / bw:.1f} s |")
    rows.append("| (latency: 2 x 60 = 120 all-reduces per forward, ~10-20 us each on NVLink) | "
                f"{120 * 15e-6 * 1e3:.1f} ms per forward |")
    return "\n".join(rows)


def main() -> None:
    from graphopt.distributed.launch import launch
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=10042 * 4 * 110)
    a = p.parse_args()
    # the single-process graph runs through launch too (world of 1, all cores), first and last, so
    # that drift in machine load between the runs shows
    single = lambda when: {"setup": f"single process (graph), {when}", "world": 1,
                           **launch(single_worker, 1, args=(a.repeats,), timeout_s=600)[0]}
    rows = [single("first")]
    for ws in (2, 4):
        for vp in (False, True):
            r = launch(tp_worker, ws, args=(a.repeats, vp), timeout_s=600)[0]
            rows.append({"setup": f"tensor_parallel{' + vocab_parallel' if vp else ''} (graph)", "world": ws, **r})
        r = launch(dtensor_worker, ws, args=(a.repeats,), timeout_s=600)[0]
        rows.append({"setup": "DTensor parallelize_module (eager)", "world": ws, **r})
    rows.append(single("last"))
    ntok = B * T
    print(f"## CPU, gloo: model dim {BENCH['dim']}, {BENCH['n_layers']} layers, vocab {BENCH['vocab_size']}; "
          f"batch {B} x {T} = {ntok} tokens; median of {a.repeats}\n")
    print("| setup | world | ms / forward | tokens/s | all-reduces / forward | all-reduce bytes / token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per_tok = "n/a" if r["bytes"] is None else f"{r['bytes'] / ntok:,.0f}"
        print(f"| {r['setup']} | {r['world']} | {r['s'] * 1e3:.1f} | {ntok / r['s']:,.0f} | {r['calls']} | {per_tok} |")
    print("\n## Analytic: LLaMA-30B tensor-parallel on 4 GPUs\n")
    print(analytic_30b(a.tokens))


if __name__ == "__main__":
    main()
