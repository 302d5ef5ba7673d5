"""Peers benchmark: the same requests, the same weights, one process, one table.

    python -m benchmarks.peers                       # CPU: bench-100m (GQA, ~110M), 200 synthetic questions
    python -m benchmarks.peers --questions 20 --preset default --skip hf   # a quick look

Rows: per-pair eager fp32 (lm-evaluation-harness style, the reference), Hugging Face transformers
LlamaForCausalLM batched eager fp32, plain torch.compile of our ScoreModule (padded batches), and
graphopt's combinations (packed shared-prefix rows + a named pipeline: exact (fp32), fast (bf16),
fast-cpu, int8), each built by graphopt.optimize exactly as `graphopt run` builds it (compiled with
dynamic shapes: one compilation for every batch shape). Speedups are
ratios from this one run; compile/capture time is reported apart from run time. Every peer is built
and warmed up first, then timed round-robin (`--repeats` rounds, median), so a change in the host's
load mid-run hits every peer alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import graphopt
from benchmarks._common import layout_batches, optimised_graph
from graphopt.scoring import (ScoreModule, build_requests, choice_metrics, same_choices,
                              score_requests)


def time_round_robin(peers, repeats: int) -> list[tuple[str, float, float, torch.Tensor]]:
    """peers: [(name, run () -> loglik [R], compile_s)]. Each repeat times every peer once, in turn, so
    that a change in the host's load hits all of them alike; -> [(name, median seconds, compile_s,
    loglik of the last repeat)]."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in peers}
    loglik: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        for name, run, _ in peers:
            t0 = time.perf_counter()
            loglik[name] = run()
            times[name].append(time.perf_counter() - t0)
            print(f"  [{r + 1}/{repeats}] {name}: {times[name][-1]:.2f} s", flush=True)
    return [(name, statistics.median(times[name]), compile_s, loglik[name]) for name, _, compile_s in peers]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bench-100m", help="model preset (random weights)")
    p.add_argument("--questions", type=int, default=200, help="synthetic HellaSwag-format questions")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per peer, round-robin over the peers "
                   "(median reported)")
    p.add_argument("--hf-batch-size", type=int, default=8)
    p.add_argument("--row-len", type=int, default=128, help="packed row length for graphopt's layout")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per graphopt batch (rows x row length)")
    p.add_argument("--skip", default="", help="comma list of peers to skip: hf,compile,inductor "
                   "(graphopt's inductor rows)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    skip = set(filter(None, args.skip.split(",")))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tokenizer = graphopt.load_model(args.preset)
    rows = graphopt.load_hellaswag(None, limit=args.questions)
    requests = build_requests(rows, tokenizer)
    R = len(requests)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# peers: {args.preset} ({n_params / 1e6:.0f}M params), {len(rows)} questions, {R} requests, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    peers = []  # (name, run () -> loglik [R], compile_s), timed after all are built and warmed up

    def add(name, fn, batches, compile_s=0.0, warmup=True):
        if warmup:  # untimed calls on a few shapes so compile/first-call costs stay out of run time
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches[:3]:
                    fn(*b.model_inputs())
            compile_s += time.perf_counter() - t0
        peers.append((name, lambda: score_requests(fn, batches, R, progress=False), compile_s))
        print(f"  built {name} (+{compile_s:.1f} s compile/warmup)", flush=True)

    add("per-pair eager fp32 (lm-eval style, reference)", ScoreModule(model).eval(), layout_batches(model, requests, "per_pair"))
    if "hf" not in skip:
        from benchmarks._hf_peer import hf_batched_loglik, to_transformers
        hf = to_transformers(model)
        t0 = time.perf_counter()
        hf_batched_loglik(hf, requests[:3 * args.hf_batch_size], args.hf_batch_size)  # warmup, as for the others
        peers.append((f"transformers LlamaForCausalLM batched eager fp32 (bs {args.hf_batch_size})",
                      lambda: hf_batched_loglik(hf, requests, args.hf_batch_size), time.perf_counter() - t0))
    if "compile" not in skip:
        padded = layout_batches(model, requests, "padded", batch_size=args.hf_batch_size)
        t0 = time.perf_counter()
        compiled = graphopt.optimize(ScoreModule(model).eval(), (), compiler="inductor", capture="none")
        with torch.inference_mode():
            for b in padded[:3]:  # distinct shapes, so dynamic-shape compile settles before timing
                compiled(*b.model_inputs())
        add(f"plain torch.compile fp32 (padded bs {args.hf_batch_size})", compiled, padded,
            time.perf_counter() - t0, warmup=False)

    packed = layout_batches(model, requests, "packed", row_len=args.row_len, max_tokens=args.max_tokens)
    compilers = ["none"] + ([] if "inductor" in skip else ["inductor", "inductor-frozen"])
    for pipeline in ("exact", "fast"):
        for compiler in compilers:
            fn, cs = optimised_graph(model, packed, pipeline, compiler)
            add(f"graphopt packed shared-prefix, pipeline {pipeline}, compiler {compiler}", fn, packed, cs)
    if "inductor" not in skip:  # variants that trade fidelity for speed, measured but not fidelity-preserving
        # int8 with inductor-frozen: every new batch shape takes minutes (freezing's constant folding
        # around the int8 weights), so the int8 row uses inductor
        for pipeline, compiler in (("fast-cpu", "inductor-frozen"), ("int8", "inductor")):
            fn, cs = optimised_graph(model, packed, pipeline, compiler)
            add(f"graphopt packed shared-prefix, pipeline {pipeline}, compiler {compiler}", fn, packed, cs)

    results = time_round_robin(peers, args.repeats)
    ref_ll = results[0][3]
    ref_choices = choice_metrics(rows, requests, ref_ll)
    hf_seconds = next((s for n, s, _, _ in results if n.startswith("transformers")), None)
    print()
    print("| peer | run s | compile s | × per-pair | × transformers | acc_norm | agree | max abs dloglik |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, compile_s, ll in results:
        m = choice_metrics(rows, requests, ll)
        agree = statistics.mean(map(float, same_choices(m, ref_choices)))
        vs_hf = f"{hf_seconds / seconds:.2f}" if hf_seconds else "-"
        print(f"| {name} | {seconds:.2f} | {compile_s:.1f} | {results[0][1] / seconds:.2f} | {vs_hf} | "
              f"{m['acc_norm']:.3f} | {agree:.3f} | {(ll - ref_ll).abs().max().item():.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
